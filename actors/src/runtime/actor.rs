//! The assessment runtime actor: holds leased job specs, runs each on its interval with its
//! executor, and delivers results through its durable outbox.
//!
//! - Start: loads the last-known specs from its redb store and starts running them at once,
//!   whether or not the hub answers (host specs always; pool specs only while their lease was
//!   confirmed within the TTL, since another runtime may take them over).
//! - Sync (every renew interval, on a change notice, when specs become available): renews
//!   with the epochs it holds (refused ones are dropped and their runs canceled), asks `mine`
//!   after a notice, a refusal or a reconnection and adopts that authoritative set, then
//!   leases up to its capacity. Network calls run in a spawned task; the actor only applies
//!   their outcome, so it stays responsive while the hub is away.
//! - Results: every run's result goes into the outbox first (its sequence number is assigned
//!   there), then a drain task submits the outbox head in order and removes what the hub
//!   stored, found duplicate or refused; while the hub is unreachable results wait, and they
//!   are sent in order after reconnection. The hub stores each once (`<spec>:<epoch>:<seq>`).
//! - Large output: a run keeps up to [`MAX_STORED_OUTPUT`] bytes of output; the result carries
//!   the first [`MAX_INLINE_OUTPUT`] bytes inline, and when there is more the whole output goes
//!   into the outbox with it and `output_ref` names its object in the `steward_artifacts` store
//!   (`results/<account>/<spec>/<epoch>/<seq>`). The drain task uploads it (skipped when an
//!   object of that name and size is already there) before it submits the result; when the
//!   object store keeps refusing while the hub answers, the result is sent without the
//!   reference after a few attempts rather than blocking the outbox.
//! - Clean stop: after a last bounded drain, the runtime releases the pool specs it holds so
//!   another runtime can lease them at once instead of after the TTL, and forgets them locally.
//!   Host specs are kept (no other runtime may run them), so a restarted edge goes on checking
//!   them offline under the same epoch.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_storage::runtime::{CachedSpec, RuntimeConfigRecord, RuntimeStore};
use steward_subjects::api::lease::{
    AvailableNotice, ChangeNotice, LeaseRequest, LeasedSpec, LeasesRequest, MineRequest, ReleaseRequest, RenewRequest,
    SpecEpoch,
};
use steward_subjects::api::result::{
    ResultRecord, ResultStatus, SubmitRequest, SubmitStatus, MAX_INLINE_OUTPUT, MAX_STORED_OUTPUT,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{Comparison, JobSpec, TargetKind, Threshold};
use steward_subjects::streams::ARTIFACTS_STORE;
use steward_subjects::subject::{result_host_of, result_output_object};
use steward_subjects::{HostId, RuntimeId, Subjects};
use tracing::{debug, info, warn};

use super::executor::{self, cancel_pair, CancelHandle, ExecError, ExecSettings, Observation, RunContext};
use crate::lease::now_ms;
use crate::lease_client::{is_unreachable, LeaseClient};
use crate::{ActorsError, ConnectOptions};

/// Results submitted per request when draining the outbox.
const DRAIN_BATCH: usize = 256;
/// Rough bound on the encoded size of one submit request (well under NATS' 1 MiB payload).
const DRAIN_BYTES: usize = 512 * 1024;
/// Longest one full-output upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Failed uploads of one output, while the hub answers, before its result is sent without it.
const UPLOAD_ATTEMPTS: u32 = 5;
/// Longest the last drain of a clean stop may take (results left over stay in the outbox).
const STOP_DRAIN_BUDGET: Duration = Duration::from_millis(1000);
/// Longest the lease release of a clean stop may take (together with the drain, within the
/// 2 s a supervisor gives each component to stop).
const STOP_RELEASE_BUDGET: Duration = Duration::from_millis(800);
/// Lease time-to-live assumed until the hub has said otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Shortest interval a spec is run at (guards against a zero interval).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

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
    /// JetStream domain of the hub, for the artifacts object store (edges behind a leaf node);
    /// `None` = the connected server's own JetStream.
    pub hub_domain: Option<String>,
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
}

/// Messages of the runtime.
#[derive(Debug)]
pub enum RuntimeMsg {
    /// Time to renew and lease.
    Tick,
    /// A change notice from the hub.
    Notice(ChangeNotice),
    /// Unassigned specs appeared.
    Available,
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
}

/// What a sync task learned.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    online: bool,
    ttl_ms: Option<u64>,
    refused: Vec<String>,
    authoritative: Option<Vec<LeasedSpec>>,
    granted: Vec<LeasedSpec>,
    more: bool,
}

struct Running {
    epoch: u64,
    content_hash: String,
    cancel: CancelHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
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
    online: bool,
    was_offline: bool,
    resync: bool,
    syncing: bool,
    draining: bool,
    drain_again: bool,
    ttl_ms: u64,
    confirmed_at_ms: u64,
    status: RuntimeStatus,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The runtime actor.
#[derive(Debug, Default)]
pub struct RuntimeActor;

async fn connect_lazily(opts: &ConnectOptions, name: &str) -> Result<async_nats::Client, ActorsError> {
    let err = |reason: String| ActorsError::Connect { url: opts.url.clone(), reason };
    let mut o = match &opts.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| err(format!("cannot read credentials {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    // Start even when the hub is down: the runtime works offline and connects when it can.
    o = o.name(name).retry_on_initial_connect().max_reconnects(None);
    let addrs: Vec<async_nats::ServerAddr> = opts
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad url: {e}")))?;
    o.connect(addrs).await.map_err(|e| err(e.to_string()))
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
        let client = connect_lazily(&args.connect, &format!("steward-runtime-{}", args.runtime)).await?;
        let lease = LeaseClient::new(client.clone(), args.subjects.clone()).with_timeout(args.call_timeout);
        let js = match &args.hub_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        let mut tasks = Vec::new();
        // Notices to this runtime (plain subscription: only it listens on its own subject) and
        // the account-wide "specs available" broadcast.
        for (subject, available) in
            [(args.subjects.jobspec_notice(&args.runtime), false), (args.subjects.jobspec_available(), true)]
        {
            let mut sub = client
                .subscribe(subject)
                .await
                .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to notices: {e}")))?;
            let me = myself.clone();
            tasks.push(tokio::spawn(async move {
                use futures::StreamExt;
                while let Some(msg) = sub.next().await {
                    let m = if available {
                        codec::decode::<AvailableNotice>(Encoding::MsgPack, &msg.payload)
                            .ok()
                            .map(|_| RuntimeMsg::Available)
                    } else {
                        codec::decode::<ChangeNotice>(Encoding::MsgPack, &msg.payload).ok().map(RuntimeMsg::Notice)
                    };
                    if let Some(m) = m {
                        if me.cast(m).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        let settings = ExecSettings::in_dir(&args.data_dir);
        let confirmed_at_ms = specs.iter().map(|s| s.confirmed_at_ms).max().unwrap_or(0);
        let mut state = RuntimeState {
            held: specs.into_iter().map(|s| (s.spec.id.clone(), s)).collect(),
            args,
            client,
            lease,
            js,
            store,
            upload_failures: Arc::default(),
            settings,
            running: HashMap::new(),
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
        };
        // Run what we held last time, before the hub has said anything.
        reschedule(&mut state, &myself);
        info!(runtime = %state.args.runtime, specs = state.held.len(), starts = config.starts, "runtime started");
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
                // Pool specs stop when their lease can no longer be trusted.
                reschedule(state, &myself);
                let every = state.args.renew_every.unwrap_or(Duration::from_millis((state.ttl_ms / 3).max(100)));
                let me = myself.clone();
                state.tasks.retain(|t| !t.is_finished());
                state.tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(every).await;
                    let _ = me.cast(RuntimeMsg::Tick);
                }));
            }
            RuntimeMsg::Notice(n) => {
                debug!(runtime = %state.args.runtime, changed = n.changed.len(), removed = n.removed.len(), revoked = n.revoked.len(), "change notice");
                // Stop removed and revoked specs now; `mine` brings the rest up to date.
                let gone: Vec<String> = n.removed.iter().chain(n.revoked.iter()).cloned().collect();
                drop_specs(state, &gone).await;
                state.resync = true;
                start_sync(state, &myself);
            }
            RuntimeMsg::Available => {
                if state.held.len() < state.args.capacity as usize {
                    start_sync(state, &myself);
                }
            }
            RuntimeMsg::SyncDone(outcome) => {
                state.syncing = false;
                let again = apply_sync(state, *outcome).await;
                reschedule(state, &myself);
                if again {
                    start_sync(state, &myself);
                }
                start_drain(state, &myself);
            }
            RuntimeMsg::RunDone(done) => {
                state.status.runs += 1;
                let store = state.store.clone();
                let account = state.args.subjects.account().clone();
                let name = move |r: &ResultRecord| result_output_object(&account, &r.spec, r.epoch, r.seq);
                match tokio::task::spawn_blocking(move || store.enqueue_with_outputs(vec![*done], &name)).await {
                    Ok(Ok(_)) => start_drain(state, &myself),
                    Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "result not stored in the outbox"),
                    Err(e) => warn!(runtime = %state.args.runtime, error = %e, "outbox task failed"),
                }
            }
            RuntimeMsg::DrainDone { online, delivered, refused } => {
                state.draining = false;
                state.status.delivered += delivered;
                state.status.refused += refused;
                if !online {
                    set_online(state, false);
                }
                if state.drain_again && online {
                    start_drain(state, &myself);
                }
            }
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
        for t in &state.tasks {
            t.abort();
        }
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

fn set_online(state: &mut RuntimeState, online: bool) {
    if state.online != online {
        info!(runtime = %state.args.runtime, online, "hub connectivity changed");
    }
    if !online {
        state.was_offline = true;
    }
    state.online = online;
}

fn start_sync(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    if state.syncing {
        return;
    }
    state.syncing = true;
    let full = state.resync || state.was_offline;
    state.resync = false;
    let lease = state.lease.clone();
    let runtime = state.args.runtime.to_string();
    let host = state.args.host.as_ref().map(ToString::to_string).unwrap_or_default();
    let labels = state.args.labels.clone();
    let held: Vec<SpecEpoch> =
        state.held.values().map(|c| SpecEpoch { spec: c.spec.id.clone(), epoch: c.epoch }).collect();
    let room = (state.args.capacity as usize).saturating_sub(state.held.len());
    let batch = state.args.batch;
    let capacity = state.args.capacity as usize;
    let me = myself.clone();
    tokio::spawn(async move {
        let outcome = sync(lease, runtime, host, labels, held, room, capacity, batch, full).await;
        let _ = me.cast(RuntimeMsg::SyncDone(Box::new(outcome)));
    });
}

#[allow(clippy::too_many_arguments)]
async fn sync(
    lease: LeaseClient,
    runtime: String,
    host: String,
    labels: BTreeMap<String, String>,
    held: Vec<SpecEpoch>,
    room: usize,
    capacity: usize,
    batch: u32,
    full: bool,
) -> SyncOutcome {
    let mut out = SyncOutcome::default();
    let renew =
        lease.renew(&RenewRequest { runtime: runtime.clone(), host: host.clone(), labels: labels.clone(), held }).await;
    match renew {
        Ok(r) => {
            out.online = true;
            out.ttl_ms = Some(r.ttl_ms);
            out.refused = r.refused.into_iter().map(|x| x.spec).collect();
        }
        Err(e) => {
            if !is_unreachable(&e) {
                warn!(runtime, error = %e, "renew refused");
            }
            return out;
        }
    }
    let mut room = room.saturating_add(out.refused.len());
    if full || !out.refused.is_empty() {
        match lease.mine(&MineRequest { runtime: runtime.clone() }).await {
            Ok(m) => {
                room = capacity.saturating_sub(m.specs.len());
                out.authoritative = Some(m.specs);
            }
            Err(e) => {
                debug!(runtime, error = %e, "mine failed");
                out.online = !is_unreachable(&e);
                return out;
            }
        }
    }
    if room > 0 {
        let max = u32::try_from(room).unwrap_or(u32::MAX).min(batch.max(1));
        match lease.lease(&LeaseRequest { runtime: runtime.clone(), host, labels, max }).await {
            Ok(r) => {
                out.more = r.more && !r.granted.is_empty();
                out.granted = r.granted;
            }
            Err(e) => debug!(runtime, error = %e, "lease failed"),
        }
    }
    out
}

/// Applies a sync outcome; returns whether another sync should follow at once (more specs
/// are available and there is room).
async fn apply_sync(state: &mut RuntimeState, outcome: SyncOutcome) -> bool {
    if !outcome.online {
        set_online(state, false);
        return false;
    }
    let now = now_ms();
    if let Some(ttl) = outcome.ttl_ms {
        state.ttl_ms = ttl;
    }
    state.confirmed_at_ms = now;
    set_online(state, true);
    state.was_offline = false;
    let mut removed: Vec<String> = outcome.refused.clone();
    let mut set: BTreeMap<String, CachedSpec> = match outcome.authoritative {
        Some(specs) => {
            let set: BTreeMap<String, CachedSpec> = specs
                .into_iter()
                .map(|l| (l.spec.id.clone(), CachedSpec { spec: l.spec, epoch: l.epoch, confirmed_at_ms: now }))
                .collect();
            removed.extend(state.held.keys().filter(|k| !set.contains_key(*k)).cloned());
            set
        }
        None => {
            let mut set = std::mem::take(&mut state.held);
            for r in &outcome.refused {
                set.remove(r);
            }
            for c in set.values_mut() {
                c.confirmed_at_ms = now;
            }
            set
        }
    };
    for l in outcome.granted {
        set.insert(l.spec.id.clone(), CachedSpec { spec: l.spec, epoch: l.epoch, confirmed_at_ms: now });
    }
    removed.sort();
    removed.dedup();
    if !removed.is_empty() {
        info!(runtime = %state.args.runtime, dropped = removed.len(), "stale specs dropped");
    }
    for id in &removed {
        state.running.remove(id);
    }
    state.held = set;
    let snapshot: Vec<CachedSpec> = state.held.values().cloned().collect();
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.replace_specs(&snapshot)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "spec cache not written"),
        Err(e) => warn!(runtime = %state.args.runtime, error = %e, "spec cache task failed"),
    }
    outcome.more && state.held.len() < state.args.capacity as usize
}

async fn drop_specs(state: &mut RuntimeState, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    for id in ids {
        state.running.remove(id);
        state.held.remove(id);
    }
    let store = state.store.clone();
    let ids = ids.to_vec();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.remove_specs(&ids)).await {
        warn!(runtime = %state.args.runtime, error = %e, "spec cache not written");
    }
}

/// Starts runs for held specs that are not running (or whose epoch or content changed), and
/// stops pool specs whose lease has not been confirmed within the TTL.
fn reschedule(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    let trusted = now_ms() < state.confirmed_at_ms.saturating_add(state.ttl_ms);
    let wanted: Vec<CachedSpec> =
        state.held.values().filter(|c| c.spec.target.kind == TargetKind::Host || trusted).cloned().collect();
    let keep: std::collections::HashSet<&str> = wanted.iter().map(|c| c.spec.id.as_str()).collect();
    state.running.retain(|id, r| {
        keep.contains(id.as_str())
            && state.held.get(id).is_some_and(|c| c.epoch == r.epoch && c.spec.content_hash == r.content_hash)
    });
    for c in wanted {
        if state.running.contains_key(&c.spec.id) {
            continue;
        }
        let (cancel, signal) = cancel_pair();
        let ctx = SpecCtx {
            runtime: state.args.runtime.to_string(),
            host: result_host_of(state.args.host.as_ref(), &state.args.runtime),
            settings: state.settings.clone(),
            me: myself.clone(),
        };
        let (epoch, content_hash) = (c.epoch, c.spec.content_hash.clone());
        let id = c.spec.id.clone();
        let task = tokio::spawn(run_spec(ctx, c.spec, c.epoch, signal));
        state.running.insert(id, Running { epoch, content_hash, cancel, task });
    }
}

struct SpecCtx {
    runtime: String,
    host: String,
    settings: ExecSettings,
    me: ActorRef<RuntimeMsg>,
}

fn jitter(max: Duration) -> Duration {
    let nanos = u64::from(uuid::Uuid::new_v4().as_fields().0);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(nanos % max_ms)
}

async fn run_spec(ctx: SpecCtx, spec: JobSpec, epoch: u64, cancel: executor::Cancel) {
    let interval = Duration::from_millis(spec.interval_ms).max(MIN_INTERVAL);
    let timeout = Duration::from_millis(spec.timeout_ms).clamp(MIN_INTERVAL, interval.max(MIN_INTERVAL) * 10);
    let exec = executor::build(&spec.executor, &ctx.settings);
    // Spread the first runs of many specs over up to one interval (at most 1 s).
    tokio::time::sleep(jitter(interval.min(Duration::from_secs(1)))).await;
    let mut next = tokio::time::Instant::now();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started_at_ms = now_ms();
        let outcome = match &exec {
            Ok(e) => e.run(RunContext { timeout, cancel: cancel.clone() }).await,
            Err(e) => Err(ExecError::Command(executor::CommandError::Spawn {
                program: spec.executor.kind().to_owned(),
                reason: e.to_string(),
            })),
        };
        if matches!(outcome, Err(ExecError::Canceled)) {
            return;
        }
        let record = result_record(&ctx, &spec, epoch, started_at_ms, outcome);
        if ctx.me.cast(RuntimeMsg::RunDone(Box::new(record))).is_err() {
            return;
        }
        // Next run one interval after the previous start, with up to 10% jitter.
        next += interval + jitter(interval / 10);
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

fn breached(t: &Threshold, value: f64, limit: f64) -> bool {
    match t.op {
        Comparison::Gt => value > limit,
        Comparison::Ge => value >= limit,
        Comparison::Lt => value < limit,
        Comparison::Le => value <= limit,
    }
}

fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

/// The output of a run: (inline head, whether anything was cut, the whole output when it is
/// longer than the inline head). The whole is stdout then stderr, at most
/// [`MAX_STORED_OUTPUT`] bytes.
fn output_of(obs: &Observation) -> (String, bool, Option<Vec<u8>>) {
    let mut full = obs.stdout.bytes.clone();
    if !obs.stderr.bytes.is_empty() {
        if !full.is_empty() && !full.ends_with(b"\n") {
            full.push(b'\n');
        }
        full.extend_from_slice(&obs.stderr.bytes);
    }
    let mut truncated = obs.stdout.truncated || obs.stderr.truncated;
    if full.len() > MAX_STORED_OUTPUT {
        full.truncate(MAX_STORED_OUTPUT);
        truncated = true;
    }
    if full.len() <= MAX_INLINE_OUTPUT {
        return (String::from_utf8_lossy(&full).into_owned(), truncated, None);
    }
    // The head is cut from the raw bytes first so a huge output is not converted whole.
    let head = String::from_utf8_lossy(&full[..full.len().min(MAX_INLINE_OUTPUT + 4)]).into_owned();
    let (inline, _) = cut(&head, MAX_INLINE_OUTPUT);
    (inline, true, Some(full))
}

fn result_record(
    ctx: &SpecCtx,
    spec: &JobSpec,
    epoch: u64,
    started_at_ms: u64,
    outcome: Result<Observation, ExecError>,
) -> (ResultRecord, Option<Vec<u8>>) {
    let mut r = ResultRecord {
        spec: spec.id.clone(),
        epoch,
        seq: 0,
        runtime: ctx.runtime.clone(),
        host: ctx.host.clone(),
        content_hash: spec.content_hash.clone(),
        executor: spec.executor.kind().to_owned(),
        started_at_ms,
        ended_at_ms: now_ms(),
        ..ResultRecord::default()
    };
    let mut full = None;
    match outcome {
        Ok(obs) => {
            r.status = if obs.passed { ResultStatus::Pass } else { ResultStatus::Fail };
            r.message = obs.message.clone();
            r.exit_code = obs.exit_code;
            let mut notes = Vec::new();
            for t in &spec.thresholds {
                let Some(v) = obs.metrics.get(&t.metric).copied() else { continue };
                if t.fail.is_some_and(|l| breached(t, v, l)) {
                    r.status = ResultStatus::Fail;
                    notes.push(format!("{} = {v} breaches fail limit", t.metric));
                } else if t.warn.is_some_and(|l| breached(t, v, l)) {
                    notes.push(format!("{} = {v} breaches warn limit", t.metric));
                }
            }
            if !notes.is_empty() {
                r.message = format!("{}; {}", r.message, notes.join("; "));
            }
            (r.output, r.output_truncated, full) = output_of(&obs);
            r.metrics = obs.metrics;
        }
        Err(ExecError::Timeout { after, partial }) => {
            r.status = ResultStatus::Timeout;
            r.error_kind = "timeout".into();
            r.message = format!("timed out after {after:?}");
            (r.output, r.output_truncated, full) = output_of(&partial);
            r.metrics = partial.metrics;
        }
        Err(e) => {
            r.status = ResultStatus::Error;
            r.error_kind = e.kind().to_owned();
            r.message = e.to_string();
        }
    }
    (r, full)
}

/// Releases the pool specs the runtime holds (bounded by [`STOP_RELEASE_BUDGET`]) and forgets the
/// released ones locally.
async fn release_pool_specs(state: &mut RuntimeState) {
    let specs: Vec<SpecEpoch> = state
        .held
        .values()
        .filter(|c| c.spec.target.kind == TargetKind::Pool)
        .map(|c| SpecEpoch { spec: c.spec.id.clone(), epoch: c.epoch })
        .collect();
    if specs.is_empty() {
        return;
    }
    let req = ReleaseRequest { runtime: state.args.runtime.to_string(), specs };
    match tokio::time::timeout(STOP_RELEASE_BUDGET, state.lease.release(&req)).await {
        Ok(Ok(reply)) => {
            info!(runtime = %state.args.runtime, released = reply.released.len(), refused = reply.refused.len(), "leases released");
            let store = state.store.clone();
            let ids = reply.released;
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.remove_specs(&ids)).await {
                warn!(runtime = %state.args.runtime, error = %e, "spec cache not written");
            }
        }
        Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "leases not released"),
        Err(_) => warn!(runtime = %state.args.runtime, "leases not released: the hub did not answer in time"),
    }
}

/// What a drain task needs.
struct DrainCtx {
    store: Arc<RuntimeStore>,
    lease: LeaseClient,
    js: jetstream::Context,
    runtime: String,
    upload_failures: Arc<std::sync::Mutex<HashMap<u64, u32>>>,
}

fn drain_ctx(state: &RuntimeState) -> DrainCtx {
    DrainCtx {
        store: state.store.clone(),
        lease: state.lease.clone(),
        js: state.js.clone(),
        runtime: state.args.runtime.to_string(),
        upload_failures: state.upload_failures.clone(),
    }
}

fn start_drain(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    if state.draining {
        state.drain_again = true;
        return;
    }
    state.draining = true;
    state.drain_again = false;
    let (ctx, me) = (drain_ctx(state), myself.clone());
    tokio::spawn(async move {
        let (online, delivered, refused) = drain(ctx).await;
        let _ = me.cast(RuntimeMsg::DrainDone { online, delivered, refused });
    });
}

/// Rough encoded size of a result in a submit request.
fn approx_size(r: &ResultRecord) -> usize {
    512 + r.output.len() + r.message.len() + r.metrics.keys().map(|k| k.len() + 16).sum::<usize>()
}

/// Uploads the full output stored with outbox result `id` as object `name`, unless an object
/// of that name and size is already there (an earlier attempt whose result was not yet sent).
async fn upload_output(ctx: &DrainCtx, id: u64, name: &str) -> Result<(), String> {
    let s = ctx.store.clone();
    let Some(bytes) = tokio::task::spawn_blocking(move || s.output(id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let upload = async {
        let os = ctx.js.get_object_store(ARTIFACTS_STORE).await.map_err(|e| e.to_string())?;
        if let Ok(info) = os.info(name).await {
            if !info.deleted && info.size == bytes.len() {
                return Ok(());
            }
        }
        let mut reader = bytes.as_slice();
        os.put(name, &mut reader).await.map(|_| ()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(UPLOAD_TIMEOUT, upload).await.map_err(|_| "upload timed out".to_owned())?
}

/// Whether the hub answers at all (told apart from the object store refusing).
async fn hub_answers(ctx: &DrainCtx) -> bool {
    let req = LeasesRequest { runtime: Some(ctx.runtime.clone()), unassigned: false, limit: 1, ..Default::default() };
    ctx.lease.leases(&req).await.is_ok()
}

/// Submits the outbox head in order until it is empty or the hub cannot be reached; returns
/// (reachable, delivered, refused). Full outputs are uploaded before their results are sent.
async fn drain(ctx: DrainCtx) -> (bool, u64, u64) {
    let runtime = ctx.runtime.as_str();
    let (mut delivered, mut refused) = (0u64, 0u64);
    loop {
        let s = ctx.store.clone();
        let pending = match tokio::task::spawn_blocking(move || s.pending(DRAIN_BATCH)).await {
            Ok(Ok(p)) => p,
            _ => return (true, delivered, refused),
        };
        if pending.is_empty() {
            return (true, delivered, refused);
        }
        // A prefix of the head that fits one request, each full output uploaded first.
        let mut ready = Vec::with_capacity(pending.len());
        let mut bytes = 0usize;
        // `stalled`: an output could not be uploaded, stop after what is ready; `reachable`:
        // whether the hub answered meanwhile (the object store alone may be refusing).
        let (mut stalled, mut reachable) = (false, true);
        for mut p in pending {
            let size = approx_size(&p.record);
            if !ready.is_empty() && bytes + size > DRAIN_BYTES {
                break;
            }
            if let Some(name) = p.record.output_ref.clone() {
                if let Err(e) = upload_output(&ctx, p.id, &name).await {
                    stalled = true;
                    if !hub_answers(&ctx).await {
                        reachable = false;
                        break;
                    }
                    let attempts = {
                        let mut f = ctx.upload_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let n = f.entry(p.id).or_insert(0);
                        *n += 1;
                        *n
                    };
                    warn!(runtime, object = %name, attempts, error = %e, "full output not uploaded");
                    if attempts < UPLOAD_ATTEMPTS {
                        break;
                    }
                    // Give up on the object rather than block every later result.
                    let s = ctx.store.clone();
                    let note = format!("full output not stored: {e}");
                    match tokio::task::spawn_blocking(move || s.forget_output(p.id, &note)).await {
                        Ok(Ok(Some(r))) => {
                            stalled = false;
                            p.record = r;
                        }
                        _ => break,
                    }
                }
            }
            bytes += size;
            ready.push(p);
        }
        if ready.is_empty() {
            return (reachable, delivered, refused);
        }
        let ids: Vec<u64> = ready.iter().map(|p| p.id).collect();
        let req = SubmitRequest { results: ready.into_iter().map(|p| p.record).collect() };
        let reply = match ctx.lease.submit(&req).await {
            Ok(r) => r,
            Err(e) => {
                if !is_unreachable(&e) {
                    warn!(runtime, error = %e, "results refused as a whole");
                }
                return (false, delivered, refused);
            }
        };
        let mut done = Vec::with_capacity(ids.len());
        let mut retry = false;
        for (id, o) in ids.iter().zip(&reply.outcomes) {
            match o.status {
                SubmitStatus::Stored | SubmitStatus::Duplicate => {
                    delivered += 1;
                    done.push(*id);
                }
                SubmitStatus::Refused => {
                    refused += 1;
                    debug!(runtime, key = %o.key, reason = %o.reason, "result refused");
                    done.push(*id);
                }
                SubmitStatus::Retry => retry = true,
            }
        }
        {
            let mut f = ctx.upload_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in &done {
                f.remove(id);
            }
        }
        let s = ctx.store.clone();
        if !matches!(tokio::task::spawn_blocking(move || s.ack(&done)).await, Ok(Ok(()))) {
            return (true, delivered, refused);
        }
        if stalled {
            return (reachable, delivered, refused);
        }
        if retry || reply.outcomes.len() < ids.len() {
            return (true, delivered, refused);
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::runtime::executor::Captured;

    fn obs(stdout: &[u8], stderr: &[u8], truncated: bool) -> Observation {
        Observation {
            stdout: Captured { bytes: stdout.to_vec(), truncated, total: stdout.len() as u64 },
            stderr: Captured { bytes: stderr.to_vec(), truncated: false, total: stderr.len() as u64 },
            ..Observation::default()
        }
    }

    #[test]
    fn short_output_stays_inline_only() {
        let (inline, cut, full) = output_of(&obs(b"out", b"err\n", false));
        assert_eq!(inline, "out\nerr\n");
        assert!(!cut);
        assert_eq!(full, None);
    }

    #[test]
    fn long_output_keeps_a_valid_inline_head_and_the_whole() {
        // Three-byte characters: the 4096-byte cut falls inside one.
        let text = "€".repeat(3000);
        let (inline, cut, full) = output_of(&obs(text.as_bytes(), b"", false));
        assert!(cut);
        assert!(inline.len() <= MAX_INLINE_OUTPUT && inline.len() > MAX_INLINE_OUTPUT - 3);
        assert!(text.starts_with(&inline));
        assert_eq!(full.unwrap(), text.as_bytes());
    }

    #[test]
    fn output_is_bounded_and_executor_truncation_is_reported() {
        let big = vec![b'a'; MAX_STORED_OUTPUT];
        let (_, cut, full) = output_of(&obs(&big, b"tail", false));
        assert!(cut);
        assert_eq!(full.unwrap().len(), MAX_STORED_OUTPUT);
        let (_, cut, full) = output_of(&obs(b"x", b"", true));
        assert!(cut, "the executor dropped bytes");
        assert_eq!(full, None);
    }
}
