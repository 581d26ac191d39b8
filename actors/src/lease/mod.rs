//! The lease service (hub side): leases job specs to assessment runtimes and accepts their
//! results, as the NATS micro service `steward-lease`.
//!
//! Endpoints: `jobspec.lease`, `jobspec.renew`, `jobspec.mine`, `jobspec.release`,
//! `jobspec.leases` and `result.submit`. Notices go out on `jobspec.notice.<runtime>` and
//! `jobspec.available`.
//!
//! # One writer per account, state in memory, a group-committed journal
//!
//! Every hub instance runs this actor, but only the *leader* of the account serves: the holder
//! of the lock `<account>.leader` in `steward_leases` ([`crate::lease::leader`]). The others
//! stand by and retry taking the lock every third of its TTL. The leader:
//!
//! 1. raises the account's *fence* (`jobspec.fence`, one message, compare-and-set on its last
//!    sequence): every journal append a leader makes expects the fence where that leader raised
//!    it (`Nats-Expected-Last-Subject-Sequence-Subject`), so from this moment no append of an
//!    older leader is stored, however many it had in flight. It then loads the latest snapshot
//!    and replays the lease journal after it ([`crate::lease::journal`]), follows
//!    `steward_jobspecs` (ordered consumer) until it has every spec, and appends a *takeover*
//!    entry expecting the journal's last sequence (refused if its replay missed an entry);
//! 2. registers the micro endpoints; requests are decoded by the endpoint tasks and queued to
//!    one loop that owns the state ([`crate::lease::state::LeaseView`]). The loop drains every
//!    queued request (up to a bound), applies them in memory, appends ONE journal entry with all
//!    their changes (grants with epochs, releases, sessions, removals) and sends the replies
//!    only once that append and every earlier one are confirmed. Up to four appends are in
//!    flight at once (they expect the fence, not each other's sequences); meanwhile the loop
//!    decodes and applies the next requests. No reply ever reports a change that is not
//!    durable; a `mine` (or any request that changes nothing) is answered with the newest
//!    commit in flight, after every change it could show is durable; snapshots are taken only
//!    where memory equals the journal (nothing in flight or applied-but-unsent). When an append
//!    fails while later ones are in flight, those may still be stored (a gap in the journal):
//!    none of them is ever answered, and every entry names whole assignments (spec → holder,
//!    epoch; whole session records), so a replay without the failed entry is a state no runtime
//!    was told otherwise of, with at most one holder per spec and epochs only rising;
//! 3. refreshes its lock every third of its TTL. A refresh that fails, or a lock about to expire
//!    by its own clock, or an append that fails (fenced or unconfirmed), makes it step down at
//!    once: it stops answering, drops its whole state and becomes a candidate again (the state is
//!    rebuilt from the journal on the next takeover, so nothing undurable survives);
//! 4. snapshots the state every `snapshot_every` or `snapshot_entries` appends (object store +
//!    pointer + purge, crash-safe in every order, see [`crate::lease::journal`]).
//!
//! Why this is sound: grants only happen in the leader's loop, one batch at a time, and become
//! visible to runtimes only after the journal holds them; a new leader's state is the journal
//! (every reply ever sent is in it), and its fence makes the old leader's appends fail, so the
//! old leader can never make another change durable. (A leader of a version before the fence
//! appends expecting the journal's last sequence: the takeover append refuses those too; a
//! pre-fence *new* leader would not fence a fenced old one, so mixed versions must not lead
//! side by side during an upgrade — stop the old instances first.) The old leader also stops on
//! its own clock a third of the lock TTL before a candidate may take over.
//!
//! Deviations from a per-key compare-and-set design, and why: session expiries are journaled
//! (renewals and leases that move the expiry), but lease *expiries* are not — a lease whose
//! holder's session expired is simply free, and the grant that takes it over is journaled with
//! the higher epoch. A new leader gives every session still live at takeover a fresh TTL
//! (runtimes could not renew while leadership moved); that only delays hand-overs, it never
//! shortens a promise made in a reply. `jobspec.leases` (operator listing) and `result.submit`
//! read the state under a short lock beside the loop: a listing may show a grant a few hundred
//! microseconds before it is durable, and results are only accepted for the holder and epoch in
//! memory, which a runtime can only know from a durable reply.
//!
//! Per-request work is kept lean (batch 1 is close to the machine's request/reply ceiling): the
//! loop polls the `lease`, `renew`, `mine` and `release` endpoints itself (no hand-over per
//! request), answers its commit's requests itself, replies in MessagePack without a content-type
//! header (what no header means to every Steward client), and writes the `lease` reply by hand,
//! splicing each spec's stored MessagePack instead of serializing it again (a unit test checks
//! it decodes exactly like the serde reply). The leader does not pre-load on standby: a takeover
//! costs the lock TTL plus loading the specs (seconds for 200,000 specs).
//!
//! Results are fenced: a result is stored only when its runtime holds its spec at its epoch;
//! the accepted results of a request go to `STEWARD_RESULTS` as one segment per host
//! (the crate's `result_store` module), so a result sent twice within the dedupe window is stored once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use steward_subjects::api::lease::{
    AvailableNotice, ChangeNotice, JournalLease, LeaseJournalEntry, LeaseRequest, LeasesReply, LeasesRequest,
    MineRequest, Refusal, ReleaseReply, ReleaseRequest, RenewReply, RenewRequest, RuntimeSession,
};
use steward_subjects::api::result::{
    ResultRecord, SubmitOutcome, SubmitReply, SubmitRequest, SubmitStatus, MAX_SUBMIT_BATCH,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::JobSpec;
use steward_subjects::streams::JOBSPECS_BUCKET;
use steward_subjects::subject::{jobspec_account_filter, kv_subject, service_name};
use steward_subjects::token::{validate, HostId, RuntimeId, TokenKind};
use steward_subjects::{rpc, Subjects, WireError, STEWARD_VERSION};
use tracing::{debug, info, warn};

use crate::results::store;
use journal::JournalError;
use leader::{LeaderGuard, LeaderLock};
use msgpack as mp;
use state::{LeaseView, NotHeld, RowFilter, SpecEntry};

pub mod client;
pub mod journal;
pub mod leader;
pub(crate) mod msgpack;
pub mod state;

/// KV operation header (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";
/// How often pending notices are flushed.
const NOTICE_FLUSH: Duration = Duration::from_millis(50);
/// Journal entries are cut at about this size (the server's default payload limit is 1 MiB).
const MAX_COMMIT_BYTES: usize = 384 * 1024;
/// Longest wait for a journal append's ack before stepping down.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the lease service.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease time-to-live: a runtime that does not renew within it loses its specs.
    pub ttl: Duration,
    /// Most specs granted by one `lease` request.
    pub max_batch: u32,
    /// Most specs one runtime may hold.
    pub per_runtime_cap: u32,
    /// How often expired sessions are looked for.
    pub sweep: Duration,
    /// TTL of the leader lock (refreshed every third of it; a standby takes over after it).
    pub leader_ttl: Duration,
    /// Longest time between snapshots while the journal grows.
    pub snapshot_every: Duration,
    /// Journal appends after which a snapshot is taken.
    pub snapshot_entries: u64,
    /// Most requests in one group commit.
    pub commit_max: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(15),
            max_batch: 100,
            per_runtime_cap: 10_000,
            sweep: Duration::from_millis(200),
            // Generous: under heavy JetStream load (result ingestion at full speed) a lock
            // refresh can take more than a second, and a needless step-down costs a reload.
            leader_ttl: Duration::from_secs(10),
            snapshot_every: Duration::from_secs(30),
            snapshot_entries: 10_000,
            commit_max: 1024,
        }
    }
}

/// Arguments of the lease service.
#[derive(Debug, Clone)]
pub struct LeaseArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// Settings.
    pub config: LeaseConfig,
}

/// Messages of the lease service.
#[derive(Debug)]
pub enum LeaseMsg {
    /// A background task ended: restart the service.
    TaskEnded(String),
}

/// Tasks aborted when dropped (so a killed actor leaves nothing running).
#[derive(Debug, Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// State of the lease service.
pub struct LeaseState {
    shutdown: tokio::sync::watch::Sender<bool>,
    candidate: Option<tokio::task::JoinHandle<()>>,
}

/// The lease service actor.
#[derive(Debug, Default)]
pub struct LeaseService;

impl Actor for LeaseService {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(&self, myself: ActorRef<LeaseMsg>, args: LeaseArgs) -> Result<LeaseState, ActorProcessingErr> {
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let task = tokio::spawn(async move {
            candidate(args, instance, shutdown_rx).await;
            let _ = myself.cast(LeaseMsg::TaskEnded("lease candidate loop ended".into()));
        });
        Ok(LeaseState { shutdown, candidate: Some(task) })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaseMsg>,
        msg: LeaseMsg,
        _state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaseMsg::TaskEnded(reason) => Err(ActorProcessingErr::from(reason)),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<LeaseMsg>, state: &mut LeaseState) -> Result<(), ActorProcessingErr> {
        let _ = state.shutdown.send(true);
        if let Some(task) = state.candidate.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), task).await.is_err() {
                abort.abort();
            }
        }
        Ok(())
    }
}

impl Drop for LeaseState {
    // A killed actor (no `post_stop`) still stops leading: its state is dropped.
    fn drop(&mut self) {
        if let Some(task) = self.candidate.take() {
            task.abort();
        }
    }
}

/// Milliseconds since the Unix epoch (the hub clock every lease time is measured on).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn valid_labels(labels: &BTreeMap<String, String>) -> Result<(), WireError> {
    for (k, v) in labels {
        validate(TokenKind::LabelKey, k)?;
        validate(TokenKind::LabelValue, v)?;
    }
    Ok(())
}

fn optional_host(host: &str) -> Result<Option<HostId>, WireError> {
    if host.is_empty() {
        Ok(None)
    } else {
        Ok(Some(HostId::parse(host)?))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tries to become leader until shut down; leads while it can.
async fn candidate(args: LeaseArgs, instance: String, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let js = jetstream::new(args.client.clone());
    let poll = (args.config.leader_ttl / 3).max(Duration::from_millis(50));
    loop {
        if *shutdown.borrow() {
            return;
        }
        match LeaderLock::try_acquire(&js, args.subjects.account(), &instance, args.config.leader_ttl).await {
            Ok(Some(lock)) => {
                info!(account = %args.subjects.account(), generation = lock.generation(), "lease leader");
                match lead(&args, &js, &instance, lock, &mut shutdown).await {
                    Ok(()) => return,
                    Err(e) => warn!(account = %args.subjects.account(), error = %e, "lease leader stepped down"),
                }
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "leader lock not available"),
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}

enum NoticeEvent {
    Changed(String, String),
    Removed(String, String),
    Revoked(String, String),
    Available,
}

/// What the loop is asked to do.
enum Input {
    Lease(LeaseRequest, Encoding, async_nats::service::Request),
    Renew(RenewRequest, Encoding, async_nats::service::Request),
    Mine(MineRequest, Encoding, async_nats::service::Request),
    Release(ReleaseRequest, Encoding, async_nats::service::Request),
    SpecUpsert(String, SpecEntry),
    SpecRemoved(String),
    StepDown(String),
}

/// A granted spec as answered: the shared decoded spec, serialized like
/// [`steward_subjects::api::lease::LeasedSpec`].
#[derive(Serialize)]
struct LeasedOut {
    spec: SpecRef,
    epoch: u64,
}

/// A spec as decoded, and as stored (MessagePack, spliced into MessagePack replies as is).
struct SpecRef(Arc<JobSpec>, Bytes);

impl Serialize for SpecRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl LeaseReplyOut {
    /// The success envelope in MessagePack.
    fn msgpack(&self) -> Bytes {
        let mut b = Vec::with_capacity(64 + self.granted.iter().map(|g| g.spec.1.len() + 24).sum::<usize>());
        mp::map(&mut b, 2);
        mp::str(&mut b, "ok");
        mp::bool(&mut b, true);
        mp::str(&mut b, "data");
        mp::map(&mut b, 5);
        mp::str(&mut b, "granted");
        mp::array(&mut b, self.granted.len());
        for g in &self.granted {
            mp::map(&mut b, 2);
            mp::str(&mut b, "spec");
            b.extend_from_slice(&g.spec.1);
            mp::str(&mut b, "epoch");
            mp::uint(&mut b, g.epoch);
        }
        mp::str(&mut b, "held");
        mp::uint(&mut b, u64::from(self.held));
        mp::str(&mut b, "cap");
        mp::uint(&mut b, u64::from(self.cap));
        mp::str(&mut b, "ttl_ms");
        mp::uint(&mut b, self.ttl_ms);
        mp::str(&mut b, "more");
        mp::bool(&mut b, self.more);
        Bytes::from(b)
    }
}

/// Serialized like [`steward_subjects::api::lease::LeaseReply`].
#[derive(Serialize)]
struct LeaseReplyOut {
    granted: Vec<LeasedOut>,
    held: u32,
    cap: u32,
    ttl_ms: u64,
    more: bool,
}

/// Serialized like [`steward_subjects::api::lease::MineReply`].
#[derive(Serialize)]
struct MineReplyOut {
    specs: Vec<LeasedOut>,
    ttl_ms: u64,
}

enum Out {
    Lease(LeaseReplyOut),
    Renew(RenewReply),
    Mine(MineReplyOut),
    Release(ReleaseReply),
    Error(WireError),
}

impl Out {
    fn of<T>(r: Result<T, WireError>, f: impl FnOnce(T) -> Out) -> Out {
        match r {
            Ok(v) => f(v),
            Err(e) => Out::Error(e),
        }
    }

    fn encode(self, enc: Encoding) -> Bytes {
        match self {
            Out::Lease(r) if enc == Encoding::MsgPack => r.msgpack(),
            Out::Lease(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Renew(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Mine(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Release(r) => rpc::encode_reply(enc, Ok(r)),
            Out::Error(e) => rpc::encode_reply::<()>(enc, Err(e)),
        }
    }
}

/// What one group commit collects.
#[derive(Default)]
struct Commit {
    entry: LeaseJournalEntry,
    replies: Vec<(async_nats::service::Request, Encoding, Out)>,
    notices: Vec<NoticeEvent>,
    bytes: usize,
}

impl Commit {
    /// Rough encoded size of the journal entry so far.
    fn size_estimate(&self) -> usize {
        self.bytes + self.entry.leases.len() * 96
    }

    fn add_session(&mut self, s: RuntimeSession) {
        self.bytes += 128 + s.host.len() + s.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
        self.entry.sessions.push(s);
    }
}

/// The state shared by the loop and the side endpoints (`leases`, `submit`).
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    config: LeaseConfig,
    view: Mutex<LeaseView>,
}

impl Shared {
    fn view(&self) -> MutexGuard<'_, LeaseView> {
        // A panic while holding the lock cannot leave the view half-updated in a way that
        // matters more than losing the service, so a poisoned lock is taken over.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ttl_ms(&self) -> u64 {
        ms(self.config.ttl)
    }
}

fn refusal(spec: &str, epoch: u64, why: NotHeld) -> Refusal {
    let (current_epoch, reason) = match why {
        NotHeld::Removed => (0, "removed"),
        NotHeld::NotHolder(e) => (e, "not_holder"),
        NotHeld::StaleEpoch(e) => (e, "stale_epoch"),
    };
    Refusal { spec: spec.to_owned(), epoch, current_epoch, reason: reason.into() }
}

/// Leads until shutdown (`Ok`) or until it must step down (`Err`; the whole state is dropped).
async fn lead(
    args: &LeaseArgs,
    js: &jetstream::Context,
    instance: &str,
    lock: LeaderLock,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let guard = lock.guard();
    let generation = lock.generation();
    let account = args.subjects.account().clone();
    let journal = args.subjects.jobspec_journal();
    let mut tasks = Tasks::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();

    // Keep the lock fresh from the start (loading may take longer than its TTL). The refresher
    // owns the lock; on shutdown it gives it up so a standby takes over at once.
    let refresher = {
        let (tx, mut stop) = (tx.clone(), shutdown.clone());
        let every = (args.config.leader_ttl / 3).max(Duration::from_millis(20));
        tokio::spawn(async move {
            let mut lock = lock;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.changed() => { lock.release().await; return; }
                }
                if let Err(e) = lock.refresh().await {
                    let _ = tx.send(Input::StepDown(e));
                    return;
                }
            }
        })
    };

    // 0. Raise the fence: from here on no append of an older leader is stored (every append
    // expects the fence where its leader raised it), so the replay below misses nothing.
    let fence = journal::raise_fence(js, &args.subjects.jobspec_fence(), instance, APPEND_TIMEOUT)
        .await
        .map_err(|e| format!("lease fence not raised: {e}"))?;

    // 1. Snapshot + journal replay.
    let loaded_at = Instant::now();
    let (snapshot, pointer_rev) = journal::load_snapshot(js, &account).await.map_err(|e| e.to_string())?;
    let mut last_seq = snapshot.as_ref().map_or(0, |s| s.through_seq);
    let now = now_ms();
    let mut entries = 0u64;
    let mut view = LeaseView::default();
    if let Some(s) = snapshot {
        view.load_snapshot(s);
    }
    last_seq = journal::replay(js, &journal, last_seq, |_, entry| {
        entries += 1;
        for s in entry.sessions {
            view.set_session(s, now);
        }
        for l in &entry.leases {
            view.apply_lease(l, now);
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        client: args.client.clone(),
        js: js.clone(),
        subjects: args.subjects.clone(),
        config: args.config.clone(),
        view: Mutex::new(view),
    });
    // A snapshot written meanwhile (by a deposed leader) may have purged what was replayed
    // from: start over.
    let (_, rev) = journal::read_pointer(js, &account).await.map_err(|e| e.to_string())?;
    if rev != pointer_rev {
        return Err("the snapshot moved while loading; loading again".into());
    }

    // 2. The spec feed, until every existing spec is in.
    let stream = js
        .get_stream(format!("KV_{JOBSPECS_BUCKET}"))
        .await
        .map_err(|e| format!("cannot open bucket {JOBSPECS_BUCKET}: {e}"))?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    {
        let (tx, client) = (tx.clone(), args.client.clone());
        let filter = jobspec_account_filter(&account);
        tasks.0.push(tokio::spawn(async move {
            let r = follow(&client, &stream, JOBSPECS_BUCKET, &filter, ready_tx, |key, _rev, deleted, value| {
                let Some(id) = key.rsplit('.').next().map(str::to_owned) else { return };
                if deleted {
                    let _ = tx.send(Input::SpecRemoved(id));
                    return;
                }
                match codec::decode_limited::<JobSpec>(Encoding::MsgPack, value, usize::MAX) {
                    Ok(spec) => {
                        let _ = tx.send(Input::SpecUpsert(id, SpecEntry::new(spec, Bytes::copy_from_slice(value))));
                    }
                    Err(e) => warn!(key, error = %e, "undecodable job spec skipped"),
                }
            })
            .await;
            let reason = match r {
                Ok(()) => format!("watch of {JOBSPECS_BUCKET} ended"),
                Err(e) => format!("watch of {JOBSPECS_BUCKET} failed: {e}"),
            };
            let _ = tx.send(Input::StepDown(reason));
        }));
    }
    let mut takeover =
        LeaseJournalEntry { instance: instance.to_owned(), generation, takeover: true, ..LeaseJournalEntry::default() };
    let mut notices_ev = Vec::new();
    loop {
        tokio::select! {
            r = ready_rx.recv() => { if r.is_some() { break } return Err("spec feed ended while loading".into()) }
            i = rx.recv() => {
                let Some(i) = i else { return Err("input closed".into()) };
                apply_feed(&shared, i, &mut takeover, &mut notices_ev, false)?;
            }
        }
    }
    while let Ok(i) = rx.try_recv() {
        apply_feed(&shared, i, &mut takeover, &mut notices_ev, false)?;
    }
    let now = now_ms();
    {
        let mut view = shared.view();
        view.rebuild(now);
        view.extend_live_sessions(now, now + shared.ttl_ms());
    }

    // 3. Fence every older leader.
    if !guard.is_valid() {
        return Err("leader lock lost while loading".into());
    }
    last_seq = journal::append(js, &journal, last_seq, &takeover, APPEND_TIMEOUT)
        .await
        .map_err(|e| format!("takeover append: {e}"))?;
    info!(
        account = %account,
        specs = shared.view().spec_count(),
        replayed = entries,
        took_ms = loaded_at.elapsed().as_millis() as u64,
        "lease state loaded; serving"
    );

    // 4. Notices and endpoints.
    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.0.push(tokio::spawn(notices(shared.clone(), notice_rx)));
    let service = args
        .client
        .service_builder()
        .description("steward job-spec leases and results")
        .metadata(HashMap::from([("account".to_owned(), account.to_string())]))
        .start(service_name("lease"), STEWARD_VERSION)
        .await
        .map_err(|e| format!("cannot register lease service: {e}"))?;
    let served = serve_endpoints(&service, &shared, &tx, &guard, &mut tasks).await;
    let result = match served {
        Ok(endpoints) => {
            let mut lp = Loop { shared: &shared, guard: &guard, journal: &journal, fence, last_seq, endpoints };
            lp.run(&mut rx, &notice_tx, shutdown, notices_ev).await
        }
        Err(e) => Err(e),
    };
    guard.revoke();
    if let Err(e) = service.stop().await {
        debug!(error = %e, "lease service did not stop cleanly");
    }
    drop(tasks);
    if result.is_ok() {
        // Shutdown: let the refresher give the lock up.
        let abort = refresher.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), refresher).await.is_err() {
            abort.abort();
        }
    } else {
        refresher.abort();
    }
    result
}

/// Applies a spec-feed input (loading phase); a request input cannot arrive before the
/// endpoints exist.
fn apply_feed(
    shared: &Shared,
    input: Input,
    entry: &mut LeaseJournalEntry,
    notices: &mut Vec<NoticeEvent>,
    serving: bool,
) -> Result<(), String> {
    let now = now_ms();
    match input {
        Input::SpecUpsert(id, spec) => {
            let holder = shared.view().upsert_spec(&id, spec, now, serving);
            match holder {
                Some(h) => notices.push(NoticeEvent::Changed(h, id)),
                None => notices.push(NoticeEvent::Available),
            }
        }
        Input::SpecRemoved(id) => {
            if let Some((holder, cleared)) = shared.view().remove_spec(&id) {
                entry.leases.push(cleared);
                notices.push(NoticeEvent::Removed(holder, id));
            }
        }
        Input::StepDown(reason) => return Err(reason),
        Input::Lease(_, enc, req)
        | Input::Renew(_, enc, req)
        | Input::Mine(_, enc, req)
        | Input::Release(_, enc, req) => {
            tokio::spawn(async move {
                let e = WireError::unavailable("the lease leader is not serving yet");
                let _ = rpc::respond::<()>(&req, enc, Err(e)).await;
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Lease,
    Renew,
    Mine,
    Release,
    Leases,
    Submit,
}

/// The endpoints the loop polls itself (no hand-over per request), tagged with their operation.
type LoopEndpoints = futures::stream::SelectAll<
    futures::stream::Map<
        async_nats::service::endpoint::Endpoint,
        Box<dyn FnMut(async_nats::service::Request) -> (Op, async_nats::service::Request) + Send>,
    >,
>;

/// Registers every endpoint: `lease`, `renew`, `mine` and `release` are returned for the loop
/// to poll; `leases` and `submit` are served by tasks of their own beside it.
async fn serve_endpoints(
    service: &async_nats::service::Service,
    shared: &Arc<Shared>,
    tx: &tokio::sync::mpsc::UnboundedSender<Input>,
    guard: &LeaderGuard,
    tasks: &mut Tasks,
) -> Result<LoopEndpoints, String> {
    let s = &shared.subjects;
    let mut looped = futures::stream::SelectAll::new();
    for (name, subject, op) in [
        ("lease", s.jobspec_lease(), Op::Lease),
        ("renew", s.jobspec_renew(), Op::Renew),
        ("mine", s.jobspec_mine(), Op::Mine),
        ("release", s.jobspec_release(), Op::Release),
        ("leases", s.jobspec_leases(), Op::Leases),
        ("submit", s.result_submit(), Op::Submit),
    ] {
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| format!("cannot add lease endpoint {name}: {e}"))?;
        if matches!(op, Op::Lease | Op::Renew | Op::Mine | Op::Release) {
            let tag: Box<dyn FnMut(async_nats::service::Request) -> (Op, async_nats::service::Request) + Send> =
                Box::new(move |r| (op, r));
            looped.push(endpoint.map(tag));
            continue;
        }
        let (shared, tx, guard) = (shared.clone(), tx.clone(), guard.clone());
        tasks.0.push(tokio::spawn(async move {
            while let Some(req) = endpoint.next().await {
                if !guard.is_valid() {
                    // Stepping down: stay silent (the caller retries another instance).
                    continue;
                }
                let shared = shared.clone();
                if matches!(op, Op::Leases) {
                    tokio::spawn(async move {
                        let _ = rpc::serve(&req, |r: LeasesRequest| async move { shared.leases(&r) }).await;
                    });
                } else {
                    tokio::spawn(async move {
                        let _ = rpc::serve(&req, |r: SubmitRequest| async move { shared.submit(r).await }).await;
                    });
                }
            }
            let _ = tx.send(Input::StepDown(format!("endpoint {name} closed")));
        }));
    }
    Ok(looped)
}

/// Decodes a request polled by the loop; a malformed one gets its error reply with the commit.
fn decode(op: Op, req: async_nats::service::Request, c: &mut Commit) -> Option<Input> {
    fn with<T: serde::de::DeserializeOwned>(
        req: async_nats::service::Request,
        c: &mut Commit,
        wrap: fn(T, Encoding, async_nats::service::Request) -> Input,
    ) -> Option<Input> {
        match rpc::decode_request::<T>(&req.message) {
            Ok((r, enc)) => Some(wrap(r, enc, req)),
            Err((e, enc)) => {
                c.replies.push((req, enc, Out::Error(e)));
                None
            }
        }
    }
    match op {
        Op::Lease => with(req, c, Input::Lease),
        Op::Renew => with(req, c, Input::Renew),
        Op::Mine => with(req, c, Input::Mine),
        Op::Release => with(req, c, Input::Release),
        Op::Leases | Op::Submit => None,
    }
}

/// The loop that owns every change: drain, apply, append once per commit, then answer. Up to
/// [`PIPELINE_DEPTH`] appends are in flight at once (each expects this leader's fence, not the
/// previous append's sequence, so they need not wait for each other); meanwhile the next
/// requests are decoded and applied in memory. A commit is answered when its own append and
/// every earlier one are confirmed, in order.
struct Loop<'a> {
    shared: &'a Arc<Shared>,
    guard: &'a LeaderGuard,
    journal: &'a str,
    fence: journal::Fence,
    last_seq: u64,
    endpoints: LoopEndpoints,
}

/// Most journal appends in flight at once.
const PIPELINE_DEPTH: usize = 4;

/// A journal append on its way, with the commit whose replies wait for it.
type InFlight = (futures::future::BoxFuture<'static, Result<u64, JournalError>>, Commit);

impl Commit {
    /// Whether the commit changes anything the journal must hold.
    fn has_changes(&self) -> bool {
        !self.entry.sessions.is_empty() || !self.entry.leases.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.has_changes() && self.replies.is_empty() && self.notices.is_empty()
    }
}

impl Loop<'_> {
    #[allow(clippy::too_many_lines)]
    async fn run(
        &mut self,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>,
        notice_tx: &tokio::sync::mpsc::UnboundedSender<NoticeEvent>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        pending_notices: Vec<NoticeEvent>,
    ) -> Result<(), String> {
        for n in pending_notices {
            let _ = notice_tx.send(n);
        }
        let shared = self.shared;
        let cfg = &shared.config;
        let mut sweep = tokio::time::interval(cfg.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since_snapshot = 0u64;
        let mut last_snapshot = Instant::now();
        let mut snapshot_due = false;
        let snapshotting = Arc::new(AtomicBool::new(false));
        // Decoded inputs not yet applied (what did not fit the commit being built waits here).
        let mut inputs: std::collections::VecDeque<Input> = std::collections::VecDeque::with_capacity(cfg.commit_max);
        let mut received = Vec::with_capacity(cfg.commit_max);
        // Applied in memory, not yet sent to the journal.
        let mut pending = Commit::default();
        // Sent, oldest first.
        let mut inflight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        // Durable, replies not yet sent.
        let mut acked: Option<Commit> = None;
        let (mut commits, mut requests, mut stats_at) = (0u64, 0u64, Instant::now());
        loop {
            // Apply what waits, up to one commit's worth.
            if !inputs.is_empty() {
                let now = now_ms();
                let mut view = shared.view();
                while pending.size_estimate() < MAX_COMMIT_BYTES && pending.replies.len() < cfg.commit_max {
                    let Some(input) = inputs.pop_front() else { break };
                    if let Err(e) = shared.apply(&mut view, input, now, &mut pending) {
                        drop(view);
                        fail(inflight, acked.take(), &mut pending, &e, false);
                        return Err(e);
                    }
                }
            }
            // Send the next commit when the pipeline has room.
            if inflight.len() < PIPELINE_DEPTH && pending.has_changes() {
                if !self.guard.is_valid() {
                    return Err("leader lock about to expire".into());
                }
                let mut commit = std::mem::take(&mut pending);
                // Handed to the connection now, before the previous commit's replies.
                let sent = journal::send(&shared.js, self.journal, &self.fence, &commit.entry, APPEND_TIMEOUT).await;
                let ack = match sent {
                    Ok(ack) => ack,
                    Err(e) => {
                        let why = format!("journal append failed: {e}");
                        fail(inflight, acked.take(), &mut commit, &why, false);
                        return Err(why);
                    }
                };
                commits += 1;
                requests += commit.replies.len() as u64;
                inflight.push_back((ack.boxed(), commit));
            } else if !pending.has_changes() && !pending.is_empty() {
                // Changes nothing: answered once every change it could show is durable, i.e.
                // with the newest commit in flight, or now when none is.
                let quiet = std::mem::take(&mut pending);
                match inflight.back_mut() {
                    Some((_, last)) => {
                        last.replies.extend(quiet.replies);
                        last.notices.extend(quiet.notices);
                    }
                    None => match acked.as_mut() {
                        Some(a) => {
                            a.replies.extend(quiet.replies);
                            a.notices.extend(quiet.notices);
                        }
                        None => acked = Some(quiet),
                    },
                }
            }
            // Answer the commit that became durable (later appends are already out).
            if let Some(done) = acked.take() {
                if !self.guard.is_valid() {
                    return Err("leader lock about to expire".into());
                }
                // Answered right here: a hand-over to another task would add a scheduling hop
                // to every request's latency (publishing only queues the reply).
                for (req, enc, out) in done.replies {
                    respond(&req, enc, out).await;
                }
                for n in done.notices {
                    let _ = notice_tx.send(n);
                }
            }
            // Snapshots are taken where memory equals the journal: nothing in flight or pending.
            if snapshot_due && inflight.is_empty() && pending.is_empty() && inputs.is_empty() {
                snapshot_due = false;
                if !snapshotting.load(Ordering::Acquire) {
                    since_snapshot = 0;
                    last_snapshot = Instant::now();
                    snapshot(shared, self.guard, self.journal, self.last_seq, &snapshotting);
                }
            }
            let accept = !snapshot_due && inputs.len() < cfg.commit_max;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                r = async {
                    match inflight.front_mut() {
                        Some((append, _)) => append.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let done = inflight.pop_front().map(|f| f.1);
                    match r {
                        Ok(seq) => {
                            self.last_seq = seq;
                            since_snapshot += 1;
                            snapshot_due |= since_snapshot >= cfg.snapshot_entries;
                            acked = done;
                        }
                        Err(e) => {
                            // Later appends in flight may still be stored (a gap): nothing of
                            // theirs is ever answered, and every journal entry names whole
                            // holder/epoch assignments, so a replay without the failed one is
                            // a state no runtime was told otherwise of.
                            let fenced = matches!(e, JournalError::Fenced(_));
                            let why = format!("journal append failed: {e}");
                            inflight.push_front((futures::future::pending().boxed(), done.unwrap_or_default()));
                            fail(inflight, None, &mut pending, &why, fenced);
                            return Err(why);
                        }
                    }
                }
                _ = sweep.tick() => {
                    let freed = shared.view().sweep(now_ms());
                    if freed > 0 {
                        debug!(freed, "expired leases freed");
                        let _ = notice_tx.send(NoticeEvent::Available);
                    }
                    snapshot_due |= since_snapshot >= cfg.snapshot_entries
                        || (since_snapshot > 0 && last_snapshot.elapsed() >= cfg.snapshot_every);
                    if stats_at.elapsed() >= Duration::from_secs(10) && commits > 0 {
                        debug!(commits, requests, per_commit = requests as f64 / commits as f64, "lease group commits");
                        (commits, requests, stats_at) = (0, 0, Instant::now());
                    }
                }
                n = rx.recv_many(&mut received, cfg.commit_max), if accept => {
                    if n == 0 {
                        return Err("lease inputs closed".into());
                    }
                    inputs.extend(received.drain(..));
                }
                req = self.endpoints.next(), if accept => {
                    let Some((op, req)) = req else { return Err("lease endpoints closed".into()) };
                    if let Some(i) = decode(op, req, &mut pending) {
                        inputs.push_back(i);
                    }
                    // Everything else already waiting joins too.
                    while inputs.len() < cfg.commit_max {
                        match self.endpoints.next().now_or_never() {
                            Some(Some((op, req))) => {
                                if let Some(i) = decode(op, req, &mut pending) {
                                    inputs.push_back(i);
                                }
                            }
                            Some(None) => return Err("lease endpoints closed".into()),
                            None => break,
                        }
                    }
                    while let Ok(i) = rx.try_recv() {
                        inputs.push_back(i);
                    }
                }
            }
        }
    }
}

/// Stepping down: the callers of commits whose outcome is unknown (in flight) or that were
/// never sent (pending) are told `unavailable` (they learn the outcome from the next leader);
/// after a fenced append the in-flight callers are not answered at all. A durable commit not
/// yet answered gets its real replies.
fn fail(
    inflight: std::collections::VecDeque<InFlight>,
    acked: Option<Commit>,
    pending: &mut Commit,
    why: &str,
    fenced: bool,
) {
    let err = WireError::unavailable(why.to_owned());
    let mut replies = acked.map(|c| c.replies).unwrap_or_default();
    let unknown: Vec<_> = if fenced { Vec::new() } else { inflight.into_iter().flat_map(|(_, c)| c.replies).collect() };
    let never = std::mem::take(&mut pending.replies);
    replies.extend(unknown.into_iter().chain(never).map(|(r, enc, _)| (r, enc, Out::Error(err.clone()))));
    send_replies(replies);
}

fn send_replies(replies: Vec<(async_nats::service::Request, Encoding, Out)>) {
    if replies.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (req, enc, out) in replies {
            respond(&req, enc, out).await;
        }
    });
}

async fn respond(req: &async_nats::service::Request, enc: Encoding, out: Out) {
    let payload = out.encode(enc);
    // MessagePack is what a reply without a content type means (`Encoding::from_headers`), so
    // the hot path skips the header; JSON replies say so.
    let sent = match enc {
        Encoding::MsgPack => req.respond(Ok(payload)).await,
        Encoding::Json => req.respond_with_headers(Ok(payload), enc.headers()).await,
    };
    if let Err(e) = sent {
        debug!(error = %e, "lease reply not sent");
    }
}

/// Encodes the state at `through_seq` (the loop is between commits, so memory equals the
/// journal) and writes it out in the background.
fn snapshot(shared: &Arc<Shared>, guard: &LeaderGuard, journal: &str, through_seq: u64, busy: &Arc<AtomicBool>) {
    let encoded = match codec::encode(Encoding::MsgPack, &shared.view().snapshot(through_seq)) {
        Ok(b) => b.to_vec(),
        Err(e) => {
            warn!(error = %e, "lease snapshot not encoded");
            return;
        }
    };
    busy.store(true, Ordering::Release);
    let (shared, guard, journal, busy) = (shared.clone(), guard.clone(), journal.to_owned(), busy.clone());
    tokio::spawn(async move {
        let r = journal::write_snapshot(&shared.js, shared.subjects.account(), &journal, through_seq, encoded, || {
            guard.is_valid()
        })
        .await;
        match r {
            Ok(()) => debug!(through_seq, "lease snapshot written"),
            Err(e) => warn!(error = %e, "lease snapshot not written"),
        }
        busy.store(false, Ordering::Release);
    });
}

impl Shared {
    /// Applies one input to the view, collecting journal changes, replies and notices.
    fn apply(&self, view: &mut LeaseView, input: Input, now: u64, c: &mut Commit) -> Result<(), String> {
        match input {
            Input::Lease(r, enc, req) => {
                let out = Out::of(self.lease(view, &r, now, c), Out::Lease);
                c.replies.push((req, enc, out));
            }
            Input::Renew(r, enc, req) => {
                let out = Out::of(self.renew(view, &r, now, c), Out::Renew);
                c.replies.push((req, enc, out));
            }
            Input::Mine(r, enc, req) => {
                let out = Out::of(self.mine(view, &r), Out::Mine);
                c.replies.push((req, enc, out));
            }
            Input::Release(r, enc, req) => {
                let out = Out::of(self.release(view, &r, now, c), Out::Release);
                c.replies.push((req, enc, out));
            }
            Input::SpecUpsert(id, spec) => match view.upsert_spec(&id, spec, now, true) {
                Some(h) => c.notices.push(NoticeEvent::Changed(h, id)),
                None => c.notices.push(NoticeEvent::Available),
            },
            Input::SpecRemoved(id) => {
                if let Some((holder, cleared)) = view.remove_spec(&id) {
                    c.entry.leases.push(cleared);
                    c.notices.push(NoticeEvent::Removed(holder, id));
                }
            }
            Input::StepDown(reason) => return Err(reason),
        }
        Ok(())
    }

    fn touch_session(
        &self,
        view: &mut LeaseView,
        runtime: &RuntimeId,
        (host, labels): (&str, &BTreeMap<String, String>),
        now: u64,
        always: bool,
        c: &mut Commit,
    ) -> u64 {
        let needs = always
            || view.session(runtime.as_str()).is_none_or(|s| {
                s.record.expires_at_ms < now + self.ttl_ms() / 2 || s.record.labels != *labels || s.record.host != host
            });
        if !needs {
            return view.session(runtime.as_str()).map_or(0, |s| s.record.expires_at_ms);
        }
        let record = RuntimeSession {
            runtime: runtime.to_string(),
            host: host.to_owned(),
            labels: labels.clone(),
            expires_at_ms: now + self.ttl_ms(),
            renewed_at_ms: now,
        };
        let expires = record.expires_at_ms;
        view.set_session(record.clone(), now);
        c.add_session(record);
        expires
    }

    fn lease(
        &self,
        view: &mut LeaseView,
        req: &LeaseRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<LeaseReplyOut, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let host = optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        self.touch_session(view, &runtime, (&req.host, &req.labels), now, false, c);
        let held = u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX);
        let budget = req.max.min(self.config.max_batch).min(self.config.per_runtime_cap.saturating_sub(held));
        let host = host.as_ref().map(HostId::as_str);
        let grants = view.grant(runtime.as_str(), host, &req.labels, budget as usize, now);
        let mut granted = Vec::with_capacity(grants.len());
        for g in grants {
            if let Some(spec) = view.spec(&g.spec) {
                granted.push(LeasedOut { spec: SpecRef(spec.spec.clone(), spec.raw.clone()), epoch: g.epoch });
            }
            c.entry.leases.push(JournalLease { spec: g.spec.clone(), holder: runtime.to_string(), epoch: g.epoch });
            if let Some(prev) = g.previous {
                c.notices.push(NoticeEvent::Revoked(prev, g.spec));
            }
        }
        Ok(LeaseReplyOut {
            granted,
            held: u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX),
            cap: self.config.per_runtime_cap,
            ttl_ms: self.ttl_ms(),
            more: view.has_free_for(host, &req.labels),
        })
    }

    fn renew(
        &self,
        view: &mut LeaseView,
        req: &RenewRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<RenewReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        let expires_at_ms = self.touch_session(view, &runtime, (&req.host, &req.labels), now, true, c);
        let mut renewed = 0u32;
        let mut refused = Vec::new();
        for item in &req.held {
            match view.check_held(&item.spec, runtime.as_str(), item.epoch) {
                Ok(()) => renewed += 1,
                Err(why) => refused.push(refusal(&item.spec, item.epoch, why)),
            }
        }
        Ok(RenewReply { renewed, refused, ttl_ms: self.ttl_ms(), expires_at_ms })
    }

    fn mine(&self, view: &LeaseView, req: &MineRequest) -> Result<MineReplyOut, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let specs = view
            .held_by(runtime.as_str())
            .into_iter()
            .filter_map(|id| {
                let lease = view.lease(&id)?;
                let spec = view.spec(&id)?;
                Some(LeasedOut { spec: SpecRef(spec.spec.clone(), spec.raw.clone()), epoch: lease.epoch })
            })
            .collect();
        Ok(MineReplyOut { specs, ttl_ms: self.ttl_ms() })
    }

    fn release(
        &self,
        view: &mut LeaseView,
        req: &ReleaseRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<ReleaseReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let mut reply = ReleaseReply::default();
        for item in &req.specs {
            match view.release(&item.spec, runtime.as_str(), item.epoch, now) {
                Ok(cleared) => {
                    c.entry.leases.push(cleared);
                    reply.released.push(item.spec.clone());
                }
                Err(why) => reply.refused.push(refusal(&item.spec, item.epoch, why)),
            }
        }
        if !reply.released.is_empty() {
            c.notices.push(NoticeEvent::Available);
        }
        Ok(reply)
    }

    fn leases(&self, req: &LeasesRequest) -> Result<LeasesReply, WireError> {
        if let Some(r) = &req.runtime {
            validate(TokenKind::RuntimeId, r)?;
        }
        let limit = if req.limit == 0 { 1000 } else { req.limit as usize };
        let now = now_ms();
        let view = self.view();
        let filter =
            RowFilter { runtime: req.runtime.as_deref(), spec: req.spec.as_deref(), unassigned: req.unassigned };
        let (rows, total) = view.rows(filter, limit, now);
        Ok(LeasesReply {
            rows,
            total,
            specs: view.spec_count() as u64,
            runtimes: view.live_runtimes(now) as u64,
            sessions: if req.sessions { view.sessions() } else { Vec::new() },
        })
    }

    async fn submit(&self, req: SubmitRequest) -> Result<SubmitReply, WireError> {
        if req.results.len() > MAX_SUBMIT_BATCH {
            return Err(WireError::invalid(format!(
                "{} results in one request, at most {MAX_SUBMIT_BATCH} allowed",
                req.results.len()
            )));
        }
        let mut outcomes: Vec<SubmitOutcome> = Vec::with_capacity(req.results.len());
        // Accepted results by host, in request order: each host's become one segment.
        let mut by_host: Vec<(HostId, Vec<(usize, &ResultRecord)>)> = Vec::new();
        for (i, r) in req.results.iter().enumerate() {
            let key = r.idempotency_key();
            let checked = (|| -> Result<HostId, (String, &'static str)> {
                validate(TokenKind::Name, &r.spec).map_err(|e| (e.to_string(), "invalid"))?;
                validate(TokenKind::RuntimeId, &r.runtime).map_err(|e| (e.to_string(), "invalid"))?;
                let host = HostId::parse(&r.host).map_err(|e| (e.to_string(), "invalid"))?;
                if r.seq == 0 || r.epoch == 0 {
                    return Err(("epoch and seq must be positive".into(), "invalid"));
                }
                let view = self.view();
                let lease = view.lease(&r.spec).cloned().unwrap_or_default();
                if lease.holder != r.runtime || lease.epoch != r.epoch {
                    return Err((
                        format!(
                            "stale epoch: spec {} is at epoch {} held by {:?}, result carries epoch {} from {}",
                            r.spec, lease.epoch, lease.holder, r.epoch, r.runtime
                        ),
                        "conflict",
                    ));
                }
                Ok(host)
            })();
            outcomes.push(SubmitOutcome { key, ..SubmitOutcome::default() });
            match checked {
                Err((reason, code)) => {
                    outcomes[i].status = SubmitStatus::Refused;
                    outcomes[i].reason = format!("{code}: {reason}");
                }
                Ok(host) => match by_host.iter_mut().find(|(h, _)| *h == host) {
                    Some((_, v)) => v.push((i, r)),
                    None => by_host.push((host, vec![(i, r)])),
                },
            }
        }
        let stores = by_host.into_iter().map(|(host, results)| async move {
            store::store_host_results(&self.js, &self.subjects, &host, results).await
        });
        for stored in futures::future::join_all(stores).await.into_iter().flatten() {
            let o = &mut outcomes[stored.index];
            o.status = stored.status;
            o.stream_seq = stored.stream_seq;
            o.reason = stored.reason;
        }
        Ok(SubmitReply { outcomes })
    }
}

/// Follows the latest value of every key of a KV bucket under `filter` with an ordered
/// consumer, calling `apply(key, revision, deleted, value)` for each; sends on `ready` once the
/// snapshot of existing keys has been applied.
async fn follow<F>(
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    bucket: &str,
    filter: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    mut apply: F,
) -> Result<(), String>
where
    F: FnMut(&str, u64, bool, &[u8]),
{
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: kv_subject(bucket, filter),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut snapshot = consumer.cached_info().num_pending;
    let mut ready = Some(ready);
    if snapshot == 0 {
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
    }
    let prefix = kv_subject(bucket, "");
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let Ok(info) = msg.info() else { continue };
        let revision = info.stream_sequence;
        let key = msg.subject.as_str().strip_prefix(prefix.as_str()).unwrap_or_default().to_owned();
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        apply(&key, revision, deleted, &msg.payload);
        if ready.is_some() {
            snapshot = snapshot.saturating_sub(1);
            if snapshot == 0 || info.pending == 0 {
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
            }
        }
    }
    Ok(())
}

async fn notices(hub: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<NoticeEvent>) {
    let mut pending: BTreeMap<String, ChangeNotice> = BTreeMap::new();
    let mut available = false;
    let mut tick = tokio::time::interval(NOTICE_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = rx.recv() => {
                let Some(e) = e else { return };
                let (runtime, spec, which) = match e {
                    NoticeEvent::Available => { available = true; continue; }
                    NoticeEvent::Changed(r, s) => (r, s, 0),
                    NoticeEvent::Removed(r, s) => (r, s, 1),
                    NoticeEvent::Revoked(r, s) => (r, s, 2),
                };
                let n = pending.entry(runtime.clone()).or_insert_with(|| ChangeNotice { runtime, ..ChangeNotice::default() });
                match which {
                    0 => n.changed.push(spec),
                    1 => n.removed.push(spec),
                    _ => n.revoked.push(spec),
                }
            }
            _ = tick.tick() => {
                for (runtime, notice) in std::mem::take(&mut pending) {
                    let Ok(rt) = RuntimeId::parse(&runtime) else { continue };
                    if let Ok(payload) = codec::encode(Encoding::MsgPack, &notice) {
                        if let Err(e) = hub.client.publish(hub.subjects.jobspec_notice(&rt), payload).await {
                            debug!(runtime = %rt, error = %e, "notice not sent");
                        }
                    }
                }
                if std::mem::take(&mut available) {
                    let unassigned = hub.view().free_estimate();
                    if unassigned > 0 {
                        if let Ok(payload) = codec::encode(Encoding::MsgPack, &AvailableNotice { unassigned }) {
                            let _ = hub.client.publish(hub.subjects.jobspec_available(), payload).await;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use steward_subjects::api::lease::LeaseReply;
    use steward_subjects::config::{SpecTarget, TargetKind};
    use steward_subjects::Envelope;

    use super::*;

    #[test]
    fn hand_written_lease_reply_decodes_like_the_serde_one() {
        for n in [0usize, 1, 15, 16, 40] {
            let granted: Vec<LeasedOut> = (0..n)
                .map(|i| {
                    let spec = JobSpec {
                        id: format!("{i:032x}"),
                        target: SpecTarget { kind: TargetKind::Pool, id: "p".repeat(i * 9) },
                        content_hash: "h".repeat(i * 7),
                        interval_ms: 1 << (i % 40),
                        ..JobSpec::default()
                    };
                    let raw = codec::encode(Encoding::MsgPack, &spec).unwrap();
                    LeasedOut { spec: SpecRef(Arc::new(spec), raw), epoch: (1u64 << (i % 64)) + i as u64 }
                })
                .collect();
            let out = LeaseReplyOut { granted, held: 70_000, cap: 10_000, ttl_ms: 15_000, more: n % 2 == 0 };
            let by_serde: Envelope<LeaseReply> =
                codec::decode(Encoding::MsgPack, &rpc::encode_reply(Encoding::MsgPack, Ok(&out))).unwrap();
            let by_hand: Envelope<LeaseReply> = codec::decode(Encoding::MsgPack, &out.msgpack()).unwrap();
            assert_eq!(by_hand, by_serde);
            assert_eq!(by_hand.data.unwrap().granted.len(), n);
        }
    }
}
