//! The edge agent: the host side of Steward.
//!
//! - **Identity.** Host id, labels, drain flag, enabled workers and the journal of handled
//!   commands live in the agent's own redb store, so a restarted agent comes back as the same
//!   host with the same workers.
//! - **Presence.** Heartbeats on `steward.v1.<account>.host.heartbeat.<host>` carry labels,
//!   version, facts, enabled workers (the "dispatchers map"), the worker catalog and the drain
//!   state; a state change sends one at once; a clean stop sends a last `leaving` heartbeat.
//!
//! Layout: this file is the actor ([`EdgeMsg`], [`EdgeArgs`], [`EdgeState`], [`EdgeAgent`], the
//! typed [`EdgeHandle`]); `commands` consumes and runs host commands; `catalog` is the
//! [`WorkerCatalog`]; `leaf` starts the site's leaf node ([`start_leaf`]). Each agent also
//! registers a `steward-edge` health service on its connection.

mod catalog;
mod commands;
mod leaf;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_storage::edge::{EdgeIdentity, EdgeStore};
use steward_subjects::api::health::{ComponentState, ComponentStatus};
use steward_subjects::api::host::{CommandReply, Heartbeat, HostCommand, HostFacts};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::{HostId, Subjects, STEWARD_VERSION};
use tracing::{debug, info, warn};

pub use self::catalog::WorkerCatalog;
pub use self::commands::ConsumeError;
use self::commands::{command_loop, run_command};
pub use self::leaf::{leaf_domain, start_leaf, LeafConfig};
use crate::health::{HealthArgs, HealthService};
use crate::status::StatusBoard;
use crate::tasks::TaskSet;
use crate::{connect_with, ActorsError, ConnectOptions};

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
    /// The heartbeat ticker and the command loop.
    tasks: TaskSet<EdgeMsg>,
}

/// The edge agent actor.
#[derive(Debug, Default)]
pub struct EdgeAgent;

/// Why a blocking store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreTaskError {
    /// The store refused the operation.
    #[error(transparent)]
    Store(#[from] steward_storage::Error),
    /// The blocking task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a store operation off the actor task.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, steward_storage::Error> + Send + 'static,
) -> Result<T, StoreTaskError> {
    Ok(tokio::task::spawn_blocking(f).await??)
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
        let mut tasks = TaskSet::unreported(myself.clone());
        tasks.spawn_detached(command_loop(
            js,
            args.subjects.clone(),
            host.clone(),
            myself.clone(),
            Arc::downgrade(&store),
        ));
        tasks.adopt(myself.send_interval(args.heartbeat, || EdgeMsg::Heartbeat));
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
            tasks,
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
        state.tasks.abort_all();
        publish_heartbeat(state, true).await;
        if let Err(e) = state.client.flush().await {
            debug!(host_id = %state.host, error = %e, "flush on stop failed");
        }
        info!(host_id = %state.host, "edge agent stopped");
        Ok(())
    }
}

/// Publishes a heartbeat (the last one of a clean stop with `leaving`).
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
