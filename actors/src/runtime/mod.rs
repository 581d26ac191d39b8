//! The assessment runtime: it runs in every edge agent and standalone as `steward runtime`.
//! It holds leased job specs, runs each on its interval with its executor, and delivers the
//! results through a durable outbox.
//!
//! On start it loads the last-known specs from its redb store (`steward_storage::runtime`) and
//! runs them at once, whether or not the hub answers: host specs always, pool specs only while
//! their lease was confirmed within the TTL, since another runtime may take them over.
//!
//! Layout: this file is the actor (`RuntimeMsg`, `RuntimeArgs`, `RuntimeState`, [`RuntimeActor`],
//! the typed [`RuntimeHandle`]); `sync` renews, leases and releases specs with the hub;
//! `schedule` runs each held spec on its interval; `result` turns an observation into a
//! result record; `outbox` delivers results in order; [`executor`] runs one check (command,
//! http, tcp, ssh).

pub mod executor;
mod outbox;
mod result;
mod schedule;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_storage::runtime::{CachedSpec, RuntimeConfigRecord, RuntimeStore};
use steward_subjects::api::lease::{AvailableNotice, ChangeNotice};
use steward_subjects::api::remediation::RecheckNotice;
use steward_subjects::api::result::ResultRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::subject::{result_host_of, result_output_msg_id};
use steward_subjects::{trace, HostId, RuntimeId, Subjects};
use tracing::{debug, info, warn};

use self::executor::ExecSettings;
use self::outbox::{drain, drain_ctx, start_drain};
use self::schedule::{reschedule, Running};
pub use self::sync::SyncOutcome;
use self::sync::{apply_sync, drop_specs, release_pool_specs, start_sync};
use crate::lease::client::LeaseClient;
use crate::spec_signing::{TrustedKeys, VerifiedRoots};
use crate::tasks::TaskSet;
use crate::{ActorsError, ConnectOptions};

/// Longest the last drain of a clean stop may take (results left over stay in the outbox).
const STOP_DRAIN_BUDGET: Duration = Duration::from_millis(1000);
/// Lease time-to-live assumed until the hub has said otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// Arguments of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeArgs {
    /// How to reach NATS (the runtime keeps working while it cannot).
    pub connect: ConnectOptions,
    /// Account subjects.
    pub subjects: Subjects,
    /// Runtime id.
    pub runtime: RuntimeId,
    /// Host it runs on (edge runtimes); `None` for a standalone pool runtime.
    pub host: Option<HostId>,
    /// Labels matched against pool specs' runtime selectors.
    pub labels: BTreeMap<String, String>,
    /// Folder of the runtime's redb store and ssh `known_hosts`.
    pub data_dir: PathBuf,
    /// Most specs held.
    pub capacity: u32,
    /// Most specs asked for per lease request.
    pub batch: u32,
    /// Renew interval; `None` = a third of the hub's TTL.
    pub renew_every: Option<Duration>,
    /// Reply timeout of hub calls.
    pub call_timeout: Duration,
    /// JetStream domain of the hub, for its JetStream API (edges behind a leaf node);
    /// `None` = the connected server's own JetStream.
    pub hub_domain: Option<String>,
    /// Keys whose signed specs this runtime runs; a spec that does not verify against them is
    /// never run, and reported as an `error` result `refused: <why>`. Empty refuses every spec.
    pub trusted: TrustedKeys,
}

impl RuntimeArgs {
    /// Defaults for `runtime` with its store in `data_dir`.
    #[must_use]
    pub fn new(connect: ConnectOptions, subjects: Subjects, runtime: RuntimeId, data_dir: PathBuf) -> Self {
        RuntimeArgs {
            connect,
            subjects,
            runtime,
            host: None,
            labels: BTreeMap::new(),
            data_dir,
            capacity: 1000,
            batch: 50,
            renew_every: None,
            call_timeout: Duration::from_secs(2),
            hub_domain: None,
            trusted: TrustedKeys::default(),
        }
    }
}

/// What a runtime reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// Specs held, id → epoch.
    pub held: BTreeMap<String, u64>,
    /// Content hash of each held spec, id → hash.
    pub content: BTreeMap<String, String>,
    /// Specs currently scheduled (running on their interval).
    pub scheduled: Vec<String>,
    /// Whether the last hub call succeeded.
    pub online: bool,
    /// Results waiting in the outbox.
    pub outbox: u64,
    /// Runs finished since start.
    pub runs: u64,
    /// Results the hub stored (new or duplicate) since start.
    pub delivered: u64,
    /// Results the hub refused since start.
    pub refused: u64,
    /// Spec versions this runtime refused to run (unsigned, tampered, re-targeted or signed by
    /// a key it does not trust) since start.
    pub specs_refused: u64,
}

/// Messages of the runtime.
#[derive(Debug)]
pub enum RuntimeMsg {
    /// Time to renew and lease.
    Tick,
    /// A change notice from the hub (with the trace context it carried, while tracing is on).
    Notice(ChangeNotice, Option<trace::Context>),
    /// Unassigned specs appeared (with the trace context the hint carried).
    Available(Option<trace::Context>),
    /// A sync task finished.
    SyncDone(Box<SyncOutcome>),
    /// A run finished: its result, and its full output when that is too long to keep inline.
    RunDone(Box<(ResultRecord, Option<Vec<u8>>)>),
    /// A drain task finished.
    DrainDone {
        /// Whether the hub answered.
        online: bool,
        /// Results the hub took (stored or duplicate).
        delivered: u64,
        /// Results it refused.
        refused: u64,
    },
    /// Report the status.
    Status(RpcReplyPort<RuntimeStatus>),
    /// Run this held spec now (a remediation ended), not at its next interval.
    Recheck(String),
}

/// State of a runtime.
pub struct RuntimeState {
    args: RuntimeArgs,
    client: async_nats::Client,
    lease: LeaseClient,
    js: jetstream::Context,
    store: Arc<RuntimeStore>,
    upload_failures: Arc<std::sync::Mutex<HashMap<u64, u32>>>,
    settings: ExecSettings,
    held: BTreeMap<String, CachedSpec>,
    running: HashMap<String, Running>,
    refused_specs: HashMap<String, (u64, steward_subjects::config::JobSpec)>,
    verified_roots: VerifiedRoots,
    online: bool,
    was_offline: bool,
    resync: bool,
    syncing: bool,
    draining: bool,
    drain_again: bool,
    ttl_ms: u64,
    confirmed_at_ms: u64,
    status: RuntimeStatus,
    tasks: TaskSet<RuntimeMsg>,
    metrics: crate::metrics::RuntimeMetrics,
    /// While tracing is on: the context of the latest notice, for the next sync to continue.
    sync_trace: Option<trace::Context>,
    /// While tracing is on: specs newly held in a traced sync, whose first run continues it.
    spec_traces: HashMap<String, trace::Context>,
    /// While tracing is on: the context of a first run, for the next drain to continue.
    drain_trace: Arc<std::sync::Mutex<Option<trace::Context>>>,
}

/// The runtime actor.
#[derive(Debug, Default)]
pub struct RuntimeActor;

/// Connects through [`crate::connect_with`] (so a JWT credentials file and a bare nkey seed
/// file both work) without waiting for the hub: the runtime works offline and the connection
/// comes up, and comes back, on its own. An edge's runtime uses its host's inbox prefix, the
/// only one a host identity may receive replies on.
async fn connect_lazily(args: &RuntimeArgs) -> Result<async_nats::Client, ActorsError> {
    let inbox = args.host.as_ref().map(|h| args.subjects.host_inbox_prefix(h));
    crate::connect_with(&args.connect, &format!("steward-runtime-{}", args.runtime), |o| {
        let o = o.retry_on_initial_connect().max_reconnects(None);
        match inbox {
            Some(prefix) => o.custom_inbox_prefix(prefix),
            None => o,
        }
    })
    .await
}

impl Actor for RuntimeActor {
    type Msg = RuntimeMsg;
    type State = RuntimeState;
    type Arguments = RuntimeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RuntimeMsg>,
        args: RuntimeArgs,
    ) -> Result<RuntimeState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| ActorProcessingErr::from(format!("cannot create {}: {e}", args.data_dir.display())))?;
        let path = args.data_dir.join("runtime.redb");
        let record = RuntimeConfigRecord {
            runtime: args.runtime.to_string(),
            host: args.host.as_ref().map(ToString::to_string).unwrap_or_default(),
            labels: args.labels.clone(),
            capacity: args.capacity,
            starts: 0,
        };
        let (store, specs, config) = tokio::task::spawn_blocking(move || -> Result<_, steward_storage::Error> {
            let store = RuntimeStore::open(&path)?;
            let config = store.start(record)?;
            let specs = store.specs()?;
            Ok((Arc::new(store), specs, config))
        })
        .await??;
        let client = connect_lazily(&args).await?;
        let lease = LeaseClient::new(client.clone(), args.subjects.clone()).with_timeout(args.call_timeout);
        let js = match &args.hub_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        let mut tasks = TaskSet::unreported(myself.clone());
        subscribe_notices(&client, &args, &mut tasks).await?;
        let settings = ExecSettings::in_dir(&args.data_dir);
        let confirmed_at_ms = specs.iter().map(|s| s.confirmed_at_ms).max().unwrap_or(0);
        let metrics = crate::metrics::global().runtime(args.runtime.as_str());
        let mut state = RuntimeState {
            metrics,
            held: specs.into_iter().map(|s| (s.spec.id.clone(), s)).collect(),
            args,
            client,
            lease,
            js,
            store,
            upload_failures: Arc::default(),
            settings,
            running: HashMap::new(),
            refused_specs: HashMap::new(),
            verified_roots: VerifiedRoots::default(),
            online: false,
            was_offline: true,
            resync: true,
            syncing: false,
            draining: false,
            drain_again: false,
            ttl_ms: u64::try_from(DEFAULT_TTL.as_millis()).unwrap_or(15_000),
            confirmed_at_ms,
            status: RuntimeStatus::default(),
            tasks,
            sync_trace: None,
            spec_traces: HashMap::new(),
            drain_trace: Arc::default(),
        };
        // Run what we held last time, before the hub has said anything.
        reschedule(&mut state, &myself);
        let trusted_keys = state.args.trusted.key_ids().join(",");
        info!(runtime = %state.args.runtime, specs = state.held.len(), starts = config.starts, trusted_keys, "runtime started");
        let _ = myself.cast(RuntimeMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RuntimeMsg>,
        msg: RuntimeMsg,
        state: &mut RuntimeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RuntimeMsg::Tick => {
                start_sync(state, &myself);
                start_drain(state, &myself);
                sample_outbox(state);
                // Pool specs stop when their lease can no longer be trusted.
                reschedule(state, &myself);
                let every = state.args.renew_every.unwrap_or(Duration::from_millis((state.ttl_ms / 3).max(100)));
                let me = myself.clone();
                state.tasks.spawn_detached(async move {
                    tokio::time::sleep(every).await;
                    let _ = me.cast(RuntimeMsg::Tick);
                });
            }
            RuntimeMsg::Notice(n, cx) => {
                if cx.is_some() {
                    state.sync_trace = cx;
                }
                debug!(runtime = %state.args.runtime, changed = n.changed.len(), removed = n.removed.len(), revoked = n.revoked.len(), "change notice");
                // Stop removed and revoked specs now; `mine` brings the rest up to date.
                let gone: Vec<String> = n.removed.iter().chain(n.revoked.iter()).cloned().collect();
                drop_specs(state, &gone).await;
                state.resync = true;
                start_sync(state, &myself);
            }
            RuntimeMsg::Available(cx) => {
                if cx.is_some() {
                    state.sync_trace = cx;
                }
                if state.held.len() < state.args.capacity as usize {
                    start_sync(state, &myself);
                }
            }
            RuntimeMsg::SyncDone(outcome) => {
                state.syncing = false;
                let again = apply_sync(state, *outcome).await;
                reschedule(state, &myself);
                // A traced notice that came while the sync ran gets a sync of its own.
                if again || state.sync_trace.is_some() {
                    start_sync(state, &myself);
                }
                start_drain(state, &myself);
            }
            RuntimeMsg::RunDone(done) => {
                state.status.runs += 1;
                state.metrics.check_done(&done.0);
                let store = state.store.clone();
                // A provisional reference until the output is stored (see `outbox`).
                let host = result_host_of(state.args.host.as_ref(), &state.args.runtime);
                let name = move |r: &ResultRecord| result_output_msg_id(&host, &r.spec, r.epoch, r.seq);
                match tokio::task::spawn_blocking(move || store.enqueue_with_outputs(vec![*done], &name)).await {
                    Ok(Ok(_)) => {
                        start_drain(state, &myself);
                        sample_outbox(state);
                    }
                    Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "result not stored in the outbox"),
                    Err(e) => warn!(runtime = %state.args.runtime, error = %e, "outbox task failed"),
                }
            }
            RuntimeMsg::DrainDone { online, delivered, refused } => {
                state.draining = false;
                state.status.delivered += delivered;
                state.status.refused += refused;
                sample_outbox(state);
                if !online {
                    set_online(state, false);
                }
                if state.drain_again && online {
                    start_drain(state, &myself);
                }
            }
            RuntimeMsg::Recheck(spec) => match state.running.get(&spec) {
                Some(r) => {
                    info!(runtime = %state.args.runtime, spec = %spec, "re-check asked for, running now");
                    r.recheck();
                }
                None => {
                    debug!(runtime = %state.args.runtime, spec = %spec, "re-check of a spec not running here ignored")
                }
            },
            RuntimeMsg::Status(reply) => {
                let store = state.store.clone();
                let outbox = tokio::task::spawn_blocking(move || store.outbox_len()).await.ok().and_then(Result::ok);
                let mut s = state.status.clone();
                s.held = state.held.iter().map(|(k, v)| (k.clone(), v.epoch)).collect();
                s.content = state.held.iter().map(|(k, v)| (k.clone(), v.spec.content_hash.clone())).collect();
                s.scheduled = state.running.keys().cloned().collect();
                s.scheduled.sort();
                s.online = state.online;
                s.outbox = outbox.unwrap_or(0);
                let _ = reply.send(s);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RuntimeMsg>,
        state: &mut RuntimeState,
    ) -> Result<(), ActorProcessingErr> {
        state.running.clear();
        state.tasks.abort_all();
        if state.online {
            // Last results out while their leases still hold, then hand the pool specs back.
            if tokio::time::timeout(STOP_DRAIN_BUDGET, drain(drain_ctx(state))).await.is_err() {
                debug!(runtime = %state.args.runtime, "last drain cut short");
            }
            release_pool_specs(state).await;
        }
        let _ = state.client.flush().await;
        info!(runtime = %state.args.runtime, "runtime stopped");
        Ok(())
    }
}

/// Subscribes to the notices addressed to this runtime (plain subscription: only it listens on
/// its own subject), to the account-wide "specs available" broadcast, and to its re-check
/// requests (plain subscription on its own subject).
async fn subscribe_notices(
    client: &async_nats::Client,
    args: &RuntimeArgs,
    tasks: &mut TaskSet<RuntimeMsg>,
) -> Result<(), ActorProcessingErr> {
    let mut rechecks = client
        .subscribe(args.subjects.jobspec_recheck(&args.runtime))
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to re-checks: {e}")))?;
    let me = tasks.actor().clone();
    tasks.spawn_detached(async move {
        use futures::StreamExt;
        while let Some(msg) = rechecks.next().await {
            let Ok(n) = codec::decode::<RecheckNotice>(Encoding::MsgPack, &msg.payload) else { continue };
            if me.cast(RuntimeMsg::Recheck(n.spec)).is_err() {
                break;
            }
        }
    });
    for (subject, available) in
        [(args.subjects.jobspec_notice(&args.runtime), false), (args.subjects.jobspec_available(), true)]
    {
        let mut sub = client
            .subscribe(subject)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to notices: {e}")))?;
        let me = tasks.actor().clone();
        tasks.spawn_detached(async move {
            use futures::StreamExt;
            while let Some(msg) = sub.next().await {
                let cx = trace::context_of(msg.headers.as_ref());
                let m = if available {
                    codec::decode::<AvailableNotice>(Encoding::MsgPack, &msg.payload)
                        .ok()
                        .map(|_| RuntimeMsg::Available(cx))
                } else {
                    codec::decode::<ChangeNotice>(Encoding::MsgPack, &msg.payload)
                        .ok()
                        .map(|n| RuntimeMsg::Notice(n, cx))
                };
                if let Some(m) = m {
                    if me.cast(m).is_err() {
                        break;
                    }
                }
            }
        });
    }
    Ok(())
}

/// Updates the outbox gauges from the store, off the actor, while the metrics are served.
fn sample_outbox(state: &RuntimeState) {
    if !crate::metrics::global().serving() {
        return;
    }
    let (store, metrics) = (state.store.clone(), state.metrics.clone());
    tokio::task::spawn_blocking(move || {
        if let Ok((depth, oldest_ms)) = store.outbox_summary() {
            metrics.outbox(depth, oldest_ms);
        }
    });
}

fn set_online(state: &mut RuntimeState, online: bool) {
    if state.online != online {
        info!(runtime = %state.args.runtime, online, "hub connectivity changed");
    }
    if !online {
        state.was_offline = true;
    }
    state.online = online;
}

/// Typed handle of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    actor: ActorRef<RuntimeMsg>,
}

impl RuntimeHandle {
    /// Starts a runtime (not linked to a supervisor).
    ///
    /// # Errors
    /// [`ActorsError::Spawn`] when the store cannot be opened or the actor cannot start.
    pub async fn start(args: RuntimeArgs) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let (actor, join) =
            Actor::spawn(None, RuntimeActor, args).await.map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok((
            RuntimeHandle { actor },
            tokio::spawn(async move {
                let _ = join.await;
            }),
        ))
    }

    /// Wraps a running runtime actor.
    #[must_use]
    pub fn from_ref(actor: ActorRef<RuntimeMsg>) -> Self {
        RuntimeHandle { actor }
    }

    /// The runtime's status.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the actor is gone.
    pub async fn status(&self) -> Result<RuntimeStatus, ActorsError> {
        crate::call(&self.actor, RuntimeMsg::Status, Duration::from_secs(5)).await
    }

    /// Stops the runtime: its runs are canceled (process groups killed).
    pub fn stop(&self) {
        self.actor.stop(None);
    }

    /// Kills the runtime abruptly (as a crash would): no further renewals or results.
    pub fn kill(&self) {
        self.actor.kill();
    }
}
