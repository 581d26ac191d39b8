//! The edge agent: the host side of Steward.
//!
//! - **Identity.** Host id, labels, drain flag, enabled workers and the journal of handled
//!   commands live in the agent's own redb store, so a restarted agent comes back as the same
//!   host with the same workers.
//! - **Presence.** Heartbeats on `steward.v1.<account>.host.heartbeat.<host>` carry labels,
//!   version, facts, enabled workers (the "dispatchers map"), the worker catalog and the drain
//!   state; a state change sends one at once; a clean stop sends a last `leaving` heartbeat.
//! - **Workers.** [`WorkerCatalog`] names the executors the agent can enable (`command` and
//!   `playbook` are registered here; later issues attach their executors by name).
//! - **Commands.** A durable consumer on the hub's `STEWARD_HOST_COMMANDS` stream, filtered to
//!   this host, delivers commands sent while the host was away when it returns. Each command is
//!   run once: its reply is journalled in redb before the message is acknowledged, so a
//!   redelivery is answered from the journal. Replies go to
//!   `steward.v1.<account>.host.reply.<host>` (recorded by the stream). A `run` command (the
//!   dispatcher's work order) is handed to the host's run worker instead, without a command
//!   reply; an order the worker took is journalled before it is acknowledged, so a redelivery
//!   after a restart of the agent (or of the whole host) does not run it again.
//! - **Leaf node.** [`start_leaf`] runs a local `nats-server` as a leaf of the hub (own
//!   JetStream domain, the host's credentials on the link); the agent then connects to it over
//!   loopback and reaches the hub's streams through the hub's JetStream domain.
//!
//! Each agent also registers a `steward-edge` health service on its connection.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_deploy::auth::{leaf_remote_block, LeafAuth};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_storage::edge::{EdgeIdentity, EdgeStore};
use steward_subjects::api::health::{ComponentState, ComponentStatus};
use steward_subjects::api::host::{
    CommandAction, CommandReply, CommandStatus, Heartbeat, HostCommand, HostFacts, COMMAND_ID_HEADER,
};
use steward_subjects::api::run::WorkAck;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::{self, RequestErrorKind};
use steward_subjects::streams::HOST_COMMANDS_STREAM;
use steward_subjects::token::{validate, Name, TokenKind};
use steward_subjects::{HostId, Subjects, STEWARD_VERSION};
use tracing::{debug, info, warn};

use crate::health::{HealthArgs, HealthService};
use crate::status::StatusBoard;
use crate::{connect_with, ActorsError, ConnectOptions};

/// The executors an agent can enable, with the version it would report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCatalog {
    workers: BTreeMap<String, String>,
}

impl Default for WorkerCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl WorkerCatalog {
    /// The built-in catalog: `command` and `playbook` at the Steward version.
    #[must_use]
    pub fn builtin() -> Self {
        let mut c = WorkerCatalog { workers: BTreeMap::new() };
        for name in ["command", "playbook"] {
            c.workers.insert(name.to_owned(), STEWARD_VERSION.to_owned());
        }
        c
    }

    /// Registers (or re-versions) an executor by name.
    pub fn register(&mut self, name: &Name, version: &str) {
        self.workers.insert(name.to_string(), version.to_owned());
    }

    /// The version of a worker the catalog has.
    #[must_use]
    pub fn version(&self, name: &str) -> Option<&str> {
        self.workers.get(name).map(String::as_str)
    }

    /// Every worker and version.
    #[must_use]
    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.workers
    }
}

/// Arguments of an edge agent.
#[derive(Debug, Clone)]
pub struct EdgeArgs {
    /// How to reach NATS (the hub, or the local leaf node).
    pub connect: ConnectOptions,
    /// Account subjects.
    pub subjects: Subjects,
    /// Host id (used on first start; a stored identity wins afterwards).
    pub host_id: HostId,
    /// Labels (replace the stored ones when non-empty).
    pub labels: BTreeMap<String, String>,
    /// Folder of the agent's local store.
    pub data_dir: PathBuf,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Workers the agent can enable.
    pub catalog: WorkerCatalog,
    /// JetStream domain of the hub, when the agent reaches the hub through a leaf node with its
    /// own JetStream (`None` when connected to the hub directly).
    pub hub_domain: Option<String>,
}

impl EdgeArgs {
    /// Arguments with the built-in catalog, a 5 s heartbeat and no hub domain.
    #[must_use]
    pub fn new(connect: ConnectOptions, subjects: Subjects, host_id: HostId, data_dir: PathBuf) -> Self {
        EdgeArgs {
            connect,
            subjects,
            host_id,
            labels: BTreeMap::new(),
            data_dir,
            heartbeat: Duration::from_secs(5),
            catalog: WorkerCatalog::builtin(),
            hub_domain: None,
        }
    }
}

/// Counters of an edge agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Commands run (each at most once).
    pub commands_run: u64,
    /// Redeliveries answered from the journal.
    pub duplicates: u64,
    /// Commands that arrived after their expiry.
    pub expired: u64,
    /// Heartbeats published.
    pub heartbeats: u64,
    /// Whether the agent is draining.
    pub draining: bool,
    /// Enabled workers.
    pub workers: BTreeMap<String, String>,
}

/// Messages of the edge agent.
pub enum EdgeMsg {
    /// Time to publish a heartbeat.
    Heartbeat,
    /// A command from the hub; the reply is journalled before it is returned.
    Command(Box<HostCommand>, RpcReplyPort<CommandReply>),
    /// Counters.
    Stats(RpcReplyPort<EdgeStats>),
}

/// State of an edge agent.
pub struct EdgeState {
    client: async_nats::Client,
    subjects: Subjects,
    host: HostId,
    identity: EdgeIdentity,
    store: Arc<EdgeStore>,
    catalog: WorkerCatalog,
    facts: HostFacts,
    workers: BTreeMap<String, String>,
    seq: u64,
    interval: Duration,
    stats: EdgeStats,
    ticker: tokio::task::JoinHandle<()>,
    consumer: tokio::task::JoinHandle<()>,
}

/// The edge agent actor.
#[derive(Debug, Default)]
pub struct EdgeAgent;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, steward_storage::Error> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("store task failed: {e}")),
    }
}

impl Actor for EdgeAgent {
    type Msg = EdgeMsg;
    type State = EdgeState;
    type Arguments = EdgeArgs;

    async fn pre_start(&self, myself: ActorRef<EdgeMsg>, args: EdgeArgs) -> Result<EdgeState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| ActorProcessingErr::from(format!("cannot create {}: {e}", args.data_dir.display())))?;
        let path = args.data_dir.join("edge.redb");
        let (host_id, labels) = (args.host_id.to_string(), args.labels.clone());
        let now = crate::now_rfc3339();
        let (store, identity, workers) = tokio::task::spawn_blocking(move || -> Result<_, steward_storage::Error> {
            let store = EdgeStore::open(&path)?;
            let identity = store.start(&host_id, &labels, &now)?;
            let workers = store.workers()?;
            Ok((Arc::new(store), identity, workers))
        })
        .await??;
        let host = HostId::parse(&identity.host_id)?;
        let inbox = args.subjects.host_inbox_prefix(&host);
        let client =
            connect_with(&args.connect, &format!("steward-edge-{host}"), |o| o.custom_inbox_prefix(inbox)).await?;
        let board = StatusBoard::new();
        board.set(ComponentStatus {
            name: format!("edge-{host}"),
            state: ComponentState::Running,
            restarts: 0,
            last_error: None,
        });
        let health = HealthArgs {
            client: client.clone(),
            subjects: args.subjects.clone(),
            kind: "edge".into(),
            roles: vec!["edge".into()],
            metadata: HashMap::from([("host_id".to_owned(), host.to_string())]),
            started_at: crate::now_rfc3339(),
            started: Instant::now(),
            board,
        };
        Actor::spawn_linked(None, HealthService, health, myself.get_cell()).await?;
        let facts = HostFacts {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        };
        let js = match &args.hub_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        // The loop holds the store weakly: a killed agent's store (and its file lock) goes with
        // the agent's state, and the loop ends.
        let consumer =
            tokio::spawn(command_loop(js, args.subjects.clone(), host.clone(), myself.clone(), Arc::downgrade(&store)));
        let ticker = myself.send_interval(args.heartbeat, || EdgeMsg::Heartbeat);
        info!(host_id = %host, starts = identity.starts, draining = identity.draining, "edge agent started");
        let mut state = EdgeState {
            client,
            subjects: args.subjects,
            host,
            stats: EdgeStats { draining: identity.draining, workers: workers.clone(), ..EdgeStats::default() },
            identity,
            store,
            catalog: args.catalog,
            facts,
            workers,
            seq: 0,
            interval: args.heartbeat,
            ticker,
            consumer,
        };
        publish_heartbeat(&mut state, false).await;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<EdgeMsg>,
        msg: EdgeMsg,
        state: &mut EdgeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EdgeMsg::Heartbeat => publish_heartbeat(state, false).await,
            EdgeMsg::Command(cmd, reply) => {
                let r = run_command(state, *cmd).await;
                let _ = reply.send(r);
            }
            EdgeMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<EdgeMsg>, state: &mut EdgeState) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        state.consumer.abort();
        publish_heartbeat(state, true).await;
        if let Err(e) = state.client.flush().await {
            debug!(host_id = %state.host, error = %e, "flush on stop failed");
        }
        info!(host_id = %state.host, "edge agent stopped");
        Ok(())
    }
}

fn is_expired(expires_at: Option<&str>) -> bool {
    expires_at
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .is_some_and(|t| t < time::OffsetDateTime::now_utc())
}

async fn run_command(state: &mut EdgeState, cmd: HostCommand) -> CommandReply {
    let id = cmd.command_id.clone();
    let store = state.store.clone();
    if let Ok(Some(bytes)) = blocking(move || store.command_reply(&id)).await {
        if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &bytes) {
            state.stats.duplicates += 1;
            debug!(host_id = %state.host, command_id = %cmd.command_id, "command already handled, answering from the journal");
            return reply;
        }
    }
    let mut reply = CommandReply {
        command_id: cmd.command_id.clone(),
        host_id: state.host.to_string(),
        action: cmd.action,
        status: CommandStatus::Ok,
        message: String::new(),
        workers: BTreeMap::new(),
        draining: state.identity.draining,
        incarnation: state.identity.starts,
        replied_at: String::new(),
    };
    let mut changed = false;
    let (status, message) = if is_expired(cmd.expires_at.as_deref()) {
        state.stats.expired += 1;
        (CommandStatus::Expired, format!("command expired at {}", cmd.expires_at.as_deref().unwrap_or_default()))
    } else if cmd.action.needs_worker() && validate(TokenKind::Name, &cmd.worker).is_err() {
        (CommandStatus::Failed, format!("invalid worker name {:?}", cmd.worker))
    } else {
        state.stats.commands_run += 1;
        match cmd.action {
            CommandAction::Ping => (CommandStatus::Ok, "pong".to_owned()),
            CommandAction::InstallWorker => match state.catalog.version(&cmd.worker).map(str::to_owned) {
                None => (
                    CommandStatus::Failed,
                    format!(
                        "unknown worker {:?} (catalog: {})",
                        cmd.worker,
                        state.catalog.all().keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(version) => {
                    let (store, name, v) = (state.store.clone(), cmd.worker.clone(), version.clone());
                    match blocking(move || store.enable_worker(&name, &v)).await {
                        Ok(()) => {
                            changed =
                                state.workers.insert(cmd.worker.clone(), version.clone()).as_ref() != Some(&version);
                            (CommandStatus::Ok, format!("worker {} enabled at version {version}", cmd.worker))
                        }
                        Err(e) => (CommandStatus::Failed, format!("cannot enable worker {}: {e}", cmd.worker)),
                    }
                }
            },
            CommandAction::RemoveWorker => {
                let (store, name) = (state.store.clone(), cmd.worker.clone());
                match blocking(move || store.disable_worker(&name)).await {
                    Ok(was) => {
                        state.workers.remove(&cmd.worker);
                        changed = was;
                        let m = if was { "disabled" } else { "was not enabled" };
                        (CommandStatus::Ok, format!("worker {} {m}", cmd.worker))
                    }
                    Err(e) => (CommandStatus::Failed, format!("cannot disable worker {}: {e}", cmd.worker)),
                }
            }
            CommandAction::Drain | CommandAction::Resume => {
                let draining = cmd.action == CommandAction::Drain;
                let store = state.store.clone();
                match blocking(move || store.set_draining(draining)).await {
                    Ok(identity) => {
                        changed = state.identity.draining != identity.draining;
                        state.identity = identity;
                        let m = if draining { "draining: no new work is taken" } else { "taking new work" };
                        (CommandStatus::Ok, m.to_owned())
                    }
                    Err(e) => (CommandStatus::Failed, format!("cannot change the drain state: {e}")),
                }
            }
            // Handed to the run worker by the command consumer before it gets here.
            CommandAction::Run => (CommandStatus::Failed, "run commands go to the run worker".to_owned()),
            CommandAction::Unknown => (CommandStatus::Failed, "unknown command action".to_owned()),
        }
    };
    reply.status = status;
    reply.message = message;
    reply.workers = state.workers.clone();
    reply.draining = state.identity.draining;
    reply.replied_at = crate::now_rfc3339();
    state.stats.workers = state.workers.clone();
    state.stats.draining = state.identity.draining;
    match codec::encode(Encoding::MsgPack, &reply) {
        Ok(bytes) => {
            let (store, id) = (state.store.clone(), cmd.command_id.clone());
            if let Err(e) = blocking(move || store.record_command(&id, &bytes)).await {
                warn!(host_id = %state.host, command_id = %cmd.command_id, error = %e, "command reply not journalled");
            }
        }
        Err(e) => warn!(host_id = %state.host, error = %e, "command reply not encoded"),
    }
    info!(host_id = %state.host, command_id = %cmd.command_id, action = cmd.action.as_str(), status = reply.status.as_str(), "command handled");
    if changed {
        publish_heartbeat(state, false).await;
    }
    reply
}

/// Reads this host's commands from its durable consumer, hands each to the actor, publishes
/// the reply and acknowledges; reconnects with back-off whenever the hub is out of reach.
async fn command_loop(
    js: jetstream::Context,
    subjects: Subjects,
    host: HostId,
    actor: ActorRef<EdgeMsg>,
    store: Weak<EdgeStore>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if store.strong_count() == 0 {
            debug!(host_id = %host, "agent gone; command consumer ends");
            return;
        }
        match consume(&js, &subjects, &host, &actor, &store).await {
            Ok(()) => return,
            Err(e) => {
                debug!(host_id = %host, error = %e, backoff_ms = backoff.as_millis() as u64, "command consumer interrupted, retrying");
            }
        }
        // Back-off between reconnect attempts of a long-running loop (not a test wait).
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// How long a command delivered to this host's consumer waits for its acknowledgement before
/// it is offered again. It bounds the delay of a command that reached an agent which stopped or
/// died before acknowledging it: the pull request of a stopped agent stays at the hub until its
/// going away has crossed the leaf link, and a command stored in that window is delivered to
/// it. Handling a command takes milliseconds (a redb write, a local request to the run
/// worker); one delivered twice is answered from the journal or dropped by the worker.
const COMMAND_ACK_WAIT: Duration = Duration::from_secs(5);

async fn consume(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    actor: &ActorRef<EdgeMsg>,
    store: &Weak<EdgeStore>,
) -> Result<(), String> {
    let name = subjects.host_command_consumer(host);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("commands of host {host}")),
        filter_subject: subjects.host_command(host),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: COMMAND_ACK_WAIT,
        // A host away longer than the commands stream keeps commands loses nothing by losing
        // its consumer; decommissioned hosts' consumers go away on their own.
        inactive_threshold: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer =
        js.create_consumer_on_stream(config, HOST_COMMANDS_STREAM).await.map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    debug!(host_id = %host, consumer = %name, "command consumer ready");
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let cmd = match codec::decode::<HostCommand>(Encoding::MsgPack, &msg.payload) {
            Ok(cmd) if cmd.host_id == host.as_str() && validate(TokenKind::Name, &cmd.command_id).is_ok() => cmd,
            Ok(cmd) => {
                warn!(host_id = %host, command_host = %cmd.host_id, "command for another host or without id dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
            Err(e) => {
                warn!(host_id = %host, error = %e, "malformed command dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        if cmd.action == CommandAction::Run {
            hand_over(js, subjects, host, &msg, cmd, store).await?;
            continue;
        }
        let reply = crate::call(actor, |r| EdgeMsg::Command(Box::new(cmd), r), Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        publish_reply(js, subjects, host, &reply).await?;
        msg.double_ack().await.map_err(|e| format!("ack failed: {e}"))?;
    }
    Err("command stream ended".to_owned())
}

/// How long a work order waits before it is offered again when the host's run worker did not
/// answer (not started yet, restarting).
const WORKER_RETRY: Duration = Duration::from_secs(1);

/// Hands a `run` command's work order to this host's run worker (a request on
/// `run.work.<host>` over the agent's own connection: the worker is a separate actor with its
/// own connection and may restart on its own) and acknowledges the command once the worker
/// answered, whether it took the order or refused it (the refusal is the worker's to report).
/// An expired or malformed order is terminated; a worker that does not answer gets it again
/// after [`WORKER_RETRY`]. An order the worker took is journalled (its command id) before the
/// acknowledgement, and a journalled order is acknowledged without being handed over again: the
/// worker's own (run, attempt) memory does not survive its restart. No command reply: the
/// run's job events are the answer. A restart between the worker's answer and the journal
/// write can still run an order twice.
async fn hand_over(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    msg: &jetstream::Message,
    cmd: HostCommand,
    store: &Weak<EdgeStore>,
) -> Result<(), String> {
    let order = match cmd.work {
        Some(order) if order.host_id == host.as_str() => order,
        _ => {
            warn!(host_id = %host, command_id = %cmd.command_id, "run command without a work order for this host dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return Ok(());
        }
    };
    if is_expired(cmd.expires_at.as_deref()) {
        info!(host_id = %host, run_id = %order.run_id, attempt = order.attempt, "work order reached the host after its deadline; not run");
        let _ = msg.ack_with(AckKind::Term).await;
        return Ok(());
    }
    let st = store.upgrade().ok_or("agent stopped")?;
    let id = cmd.command_id.clone();
    if let Ok(Some(_)) = blocking(move || st.command_reply(&id)).await {
        // Handed over before (the agent, or the host, restarted before acknowledging it): the
        // worker may have restarted too and forgotten it, so it is not offered again.
        debug!(host_id = %host, run_id = %order.run_id, attempt = order.attempt, "work order already handed to the run worker");
        return msg.double_ack().await.map_err(|e| format!("ack failed: {e}"));
    }
    let client = js.client();
    match rpc::request::<_, WorkAck>(&client, subjects.run_work(host), &order, Duration::from_secs(5)).await {
        Ok(ack) => {
            if ack.accepted {
                // Journalled while the job already runs (off its path), before the acknowledgement.
                let reply = CommandReply {
                    command_id: cmd.command_id.clone(),
                    host_id: host.to_string(),
                    action: CommandAction::Run,
                    status: CommandStatus::Ok,
                    message: format!("handed to the run worker (run {}, attempt {})", order.run_id, order.attempt),
                    replied_at: crate::now_rfc3339(),
                    ..CommandReply::default()
                };
                match codec::encode(Encoding::MsgPack, &reply) {
                    Ok(bytes) => {
                        let st = store.upgrade().ok_or("agent stopped")?;
                        let id = cmd.command_id.clone();
                        if let Err(e) = blocking(move || st.record_command(&id, &bytes)).await {
                            warn!(host_id = %host, command_id = %cmd.command_id, error = %e, "work order hand-over not journalled");
                        }
                    }
                    Err(e) => warn!(host_id = %host, error = %e, "work order hand-over not encoded"),
                }
            } else {
                info!(host_id = %host, run_id = %order.run_id, message = %ack.message, "work order refused by the run worker");
            }
            msg.double_ack().await.map_err(|e| format!("ack failed: {e}"))
        }
        Err(e) if matches!(e.kind(), RequestErrorKind::Remote(_) | RequestErrorKind::Codec) => {
            warn!(host_id = %host, run_id = %order.run_id, error = %e, "work order rejected by the run worker");
            let _ = msg.ack_with(AckKind::Term).await;
            Ok(())
        }
        Err(e) => {
            debug!(host_id = %host, run_id = %order.run_id, error = %e, "run worker not answering; work order offered again later");
            msg.ack_with(AckKind::Nak(Some(WORKER_RETRY))).await.map_err(|e| format!("nak failed: {e}"))
        }
    }
}

async fn publish_reply(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    reply: &CommandReply,
) -> Result<(), String> {
    let payload = codec::encode(Encoding::MsgPack, reply).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("reply-{}", reply.command_id).as_str());
    headers.insert(COMMAND_ID_HEADER, reply.command_id.as_str());
    js.publish_with_headers(subjects.host_reply(host), headers, payload)
        .await
        .map_err(|e| format!("reply not published: {e}"))?
        .await
        .map_err(|e| format!("reply not stored: {e}"))?;
    Ok(())
}

async fn publish_heartbeat(state: &mut EdgeState, leaving: bool) {
    state.seq += 1;
    let hb = Heartbeat {
        host_id: state.host.to_string(),
        labels: state.identity.labels.clone(),
        agent_version: STEWARD_VERSION.to_owned(),
        facts: state.facts.clone(),
        workers: state.workers.clone(),
        available_workers: state.catalog.all().clone(),
        draining: state.identity.draining,
        interval_ms: u64::try_from(state.interval.as_millis()).unwrap_or(u64::MAX),
        seq: state.seq,
        incarnation: state.identity.starts,
        leaving,
    };
    match codec::encode(Encoding::MsgPack, &hb) {
        Ok(payload) => {
            if let Err(e) = state.client.publish(state.subjects.host_heartbeat(&state.host), payload).await {
                warn!(host_id = %state.host, error = %e, "heartbeat not published");
            } else {
                state.stats.heartbeats += 1;
            }
        }
        Err(e) => warn!(host_id = %state.host, error = %e, "heartbeat not encoded"),
    }
}

/// Typed handle in front of an edge agent.
#[derive(Debug, Clone)]
pub struct EdgeHandle {
    actor: ActorRef<EdgeMsg>,
}

impl EdgeHandle {
    /// Starts an agent outside a supervisor (tests, tools); processes use [`EdgeAgent`] as a
    /// supervised child.
    ///
    /// # Errors
    /// [`ActorsError::Spawn`] when the store cannot be opened or NATS cannot be reached.
    pub async fn start(args: EdgeArgs) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let (actor, join) = Actor::spawn(None, EdgeAgent, args).await.map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok((EdgeHandle { actor }, join))
    }

    /// Wraps a running agent.
    #[must_use]
    pub fn from_ref(actor: ActorRef<EdgeMsg>) -> Self {
        EdgeHandle { actor }
    }

    /// The agent's counters.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the agent is gone.
    pub async fn stats(&self) -> Result<EdgeStats, ActorsError> {
        crate::call(&self.actor, EdgeMsg::Stats, Duration::from_secs(5)).await
    }

    /// Stops the agent cleanly (last `leaving` heartbeat) and waits for it.
    pub async fn stop(&self) {
        let _ = self.actor.stop_and_wait(Some("stop".into()), Some(Duration::from_secs(5))).await;
    }

    /// Kills the agent without the clean-shutdown heartbeat (a crash, for tests) and waits
    /// until it is gone and its store is closed.
    pub async fn kill(&self) {
        let _ = self.actor.kill_and_wait(Some(Duration::from_secs(5))).await;
    }
}

/// How an edge site's local leaf node reaches the hub.
#[derive(Debug, Clone)]
pub struct LeafConfig {
    /// The hub's leafnode URL (`nats-leaf://hub:7422`).
    pub remote_url: String,
    /// The host's credentials (nkey seed file or JWT credentials file), carried on the link.
    pub creds: Option<PathBuf>,
    /// The leaf's folder (config, log, JetStream store).
    pub data_dir: PathBuf,
    /// Client port of the leaf; `None` picks a free one.
    pub port: Option<u16>,
}

/// The JetStream domain of an edge site's leaf node: `edge-<host>`.
#[must_use]
pub fn leaf_domain(host: &HostId) -> String {
    format!("edge-{host}")
}

/// Starts the local leaf `nats-server` of host `host`: its own JetStream domain
/// ([`leaf_domain`]), loopback client port, one remote to the hub carrying the host's
/// credentials. Waits until the server is ready (not until the hub link is up: the agent works
/// cut off and the link comes up on its own).
///
/// # Errors
/// [`ActorsError::Spawn`] naming why the server did not start.
pub async fn start_leaf(host: &HostId, config: &LeafConfig) -> Result<NatsServer, ActorsError> {
    let auth = match &config.creds {
        Some(path) => LeafAuth::from_file(path).map_err(|e| ActorsError::Spawn(e.to_string()))?,
        None => LeafAuth::None,
    };
    // The rendered configuration holds the host's seed: keep the folder private.
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
        .map_err(|e| ActorsError::Spawn(format!("cannot prepare {}: {e}", config.data_dir.display())))?;
    let opts = ServerOptions {
        name: format!("steward-edge-{host}"),
        port: config.port,
        data_dir: Some(config.data_dir.clone()),
        jetstream: true,
        jetstream_domain: Some(leaf_domain(host)),
        max_memory_store: 64 * 1024 * 1024,
        max_file_store: 1024 * 1024 * 1024,
        extra_config: leaf_remote_block(&config.remote_url, &auth),
        ..ServerOptions::default()
    };
    NatsServer::start(opts).await.map_err(|e| ActorsError::Spawn(format!("cannot start the leaf nats-server: {e}")))
}
