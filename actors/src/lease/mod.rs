//! The lease service (hub side): leases job specs to assessment runtimes and accepts their
//! results, as the NATS micro service `steward-lease` (endpoints in `api`, typed client in
//! [`client`]).
//!
//! One writer per account: every hub instance runs this actor, but only the holder of the
//! account's leader lock ([`leader`]) serves; the others retry taking it every third of its TTL.
//! A new leader raises the account's *fence* (so no append of an older leader is stored any
//! more), loads the latest snapshot, replays the journal after it ([`journal`]), follows every
//! job spec, and appends a takeover entry. It then keeps the state in memory ([`state`]) and
//! *group-commits* (`commit`): it applies a batch of requests, appends one journal entry with
//! all their changes, and answers only once that append is durable, so no reply reports a change
//! the next leader could miss. A failed lock refresh or append makes it *step down* at once: it
//! stops answering and drops its state (rebuilt from the journal on the next takeover). It
//! snapshots where memory equals the journal. Results are fenced: one is stored ([`crate::results`])
//! only when its runtime holds its spec at its epoch. The caller of every lease and result
//! request is the runtime and host its subject names ([`identity`]), never the body's.

use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use steward_subjects::Subjects;

use crate::tasks::TaskSet;
use crate::ActorsError;
use journal::JournalError;
use leader::{LeaderError, LeaderLock};

mod api;
pub mod client;
mod commit;
mod feed;
mod identity;
pub mod journal;
mod lead;
pub mod leader;
pub(crate) mod msgpack;
mod notices;
mod requests;
pub mod state;

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
    TaskEnded(&'static str),
}

/// State of the lease service.
pub struct LeaseState {
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The candidate loop; dropping the state (a killed actor, no `post_stop`) aborts it, so
    /// the instance stops leading.
    tasks: TaskSet<LeaseMsg>,
}

/// The lease service actor. Its work runs on spawned tasks sharing the `Arc`'d lease state, for
/// latency: a request is served without a hop through the actor's mailbox; the actor only owns
/// the candidate loop and restarts (through its supervisor) when it ends.
#[derive(Debug, Default)]
pub struct LeaseService;

impl Actor for LeaseService {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(&self, myself: ActorRef<LeaseMsg>, args: LeaseArgs) -> Result<LeaseState, ActorProcessingErr> {
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let mut tasks = TaskSet::new(myself.clone(), LeaseMsg::TaskEnded);
        tasks.spawn("candidate loop", candidate(args, instance, shutdown_rx, myself));
        Ok(LeaseState { shutdown, tasks })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaseMsg>,
        msg: LeaseMsg,
        _state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaseMsg::TaskEnded(name) => Err(crate::tasks::ended("lease", name)),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<LeaseMsg>, state: &mut LeaseState) -> Result<(), ActorProcessingErr> {
        let _ = state.shutdown.send(true);
        state.tasks.wait(Duration::from_secs(3)).await;
        Ok(())
    }
}

/// Typed handle in front of a lease service started unsupervised (the process supervisor
/// spawns [`LeaseService`] itself).
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    actor: ActorRef<LeaseMsg>,
}

impl LeaseHandle {
    /// Starts a lease service: it competes for the account's leadership at once.
    ///
    /// # Errors
    /// [`ActorsError::Spawn`] when the actor cannot be spawned.
    pub async fn start(args: LeaseArgs) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let (actor, join) =
            Actor::spawn(None, LeaseService, args).await.map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok((LeaseHandle { actor }, join))
    }

    /// Wraps a running lease service.
    #[must_use]
    pub fn from_ref(actor: ActorRef<LeaseMsg>) -> Self {
        LeaseHandle { actor }
    }

    /// The actor (to link or kill it).
    #[must_use]
    pub fn actor(&self) -> &ActorRef<LeaseMsg> {
        &self.actor
    }

    /// Stops the service: a leader gives its lock up so a standby takes over at once.
    pub fn stop(&self) {
        self.actor.stop(None);
    }
}

/// Why a leader stepped down (or could not take over). Each ends the leadership; the
/// candidate loop logs it and tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// The fence could not be raised (another candidate raised it, or JetStream failed).
    #[error("lease fence not raised: {0}")]
    Fence(JournalError),
    /// The snapshot or the journal could not be read.
    #[error(transparent)]
    Load(JournalError),
    /// A deposed leader wrote a snapshot while this one loaded.
    #[error("the snapshot moved while loading; loading again")]
    SnapshotMoved,
    /// A bucket could not be opened.
    #[error("cannot open bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: &'static str,
        /// Why.
        reason: String,
    },
    /// The watch of a bucket ended.
    #[error("watch of {bucket} ended")]
    WatchEnded {
        /// The bucket.
        bucket: &'static str,
    },
    /// The watch of a bucket failed.
    #[error("watch of {bucket} failed: {reason}")]
    Watch {
        /// The bucket.
        bucket: &'static str,
        /// Why.
        reason: String,
    },
    /// The spec feed ended before every existing spec was in.
    #[error("spec feed ended while loading")]
    FeedEnded,
    /// The leader lock expired (by this process's clock) while loading.
    #[error("leader lock lost while loading")]
    LockLost,
    /// The leader lock is about to expire (by this process's clock).
    #[error("leader lock about to expire")]
    LockExpiring,
    /// The leader lock could not be refreshed.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// The takeover entry was not appended (another leader appended, or the replay missed one).
    #[error("takeover append: {0}")]
    Takeover(JournalError),
    /// A group commit's journal append failed ([`JournalError::Fenced`]: a newer leader).
    #[error("journal append failed: {0}")]
    Append(JournalError),
    /// The micro service could not be registered.
    #[error("cannot register lease service: {0}")]
    Register(String),
    /// An endpoint could not be added.
    #[error("cannot add lease endpoint {name}: {reason}")]
    Endpoint {
        /// The endpoint.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// An input of the leader (channel or endpoint) closed.
    #[error("{0} closed")]
    Closed(String),
}

/// Tries to become leader until shut down; leads while it can (each term's tasks belong to
/// `owner`, the lease service actor).
async fn candidate(
    args: LeaseArgs,
    instance: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    owner: ActorRef<LeaseMsg>,
) {
    let js = jetstream::new(args.client.clone());
    let poll = (args.config.leader_ttl / 3).max(Duration::from_millis(50));
    // Set after a step-down: the wait before trying to lead again (shorter than `poll`), and
    // how many attempts failed since.
    let mut retake: Option<Duration> = None;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let limit = if retake.is_some() { attempt_timeout(failures) } else { commit::APPEND_TIMEOUT };
        let acquired = tokio::time::timeout(
            limit,
            LeaderLock::try_acquire(&js, args.subjects.account(), &instance, args.config.leader_ttl),
        )
        .await
        .unwrap_or(Err(LeaderError::TimedOut));
        match acquired {
            Ok(Some(lock)) => {
                info!(account = %args.subjects.account(), instance = %instance, generation = lock.generation(), "lease leader");
                let started = std::time::Instant::now();
                match lead::lead(&args, &js, &instance, lock, &mut shutdown, &owner, limit).await {
                    Ok(()) => return,
                    Err(e) => {
                        let term = started.elapsed();
                        failures = if term < poll { failures.saturating_add(u32::from(retake.is_some())) } else { 0 };
                        retake = Some(retake_wait(retake, term, poll));
                        warn!(account = %args.subjects.account(), instance = %instance, error = %e, "lease leader stepped down");
                    }
                }
            }
            Ok(None) => {
                retake = None;
                failures = 0;
            }
            Err(e) => {
                if retake.is_some() {
                    failures = failures.saturating_add(1);
                }
                retake = retake.map(|d| retake_wait(Some(d), Duration::ZERO, poll));
                debug!(error = %e, "leader lock not available");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retake.unwrap_or(poll)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// First wait before a leader that stepped down tries to lead again.
const RETAKE_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between attempts to lead again while they keep failing (a failed attempt costs
/// a lock read and a fence read, so once a second is cheap during a JetStream outage).
const RETAKE_MAX: Duration = Duration::from_secs(1);

/// The wait before trying to lead again after a step-down (or a failed lock read after one).
/// The lock still names this instance, so it may take it back at once, and while it does not
/// lead nobody serves the account: a step-down caused by a JetStream hiccup (a stream leader
/// lost with its node, an election) ends as soon as the journal answers again, instead of a
/// third of the lock's TTL later. The wait starts at [`RETAKE_FIRST`] and doubles, up to
/// [`RETAKE_MAX`] (never beyond `poll`), while terms keep ending quickly; a term that lasted at
/// least `poll` starts it over.
fn retake_wait(previous: Option<Duration>, term: Duration, poll: Duration) -> Duration {
    match previous {
        Some(p) if term < poll => (p * 2).min(RETAKE_MAX).min(poll),
        _ => RETAKE_FIRST.min(poll),
    }
}

/// How long one attempt to lead again (the lock read and write, the fence read and write) may
/// take after `failures` failed attempts since a step-down: 1 s, then doubling up to the
/// journal's append timeout. A request to a stream that has no leader yet (its node was lost,
/// an election is under way) is never answered; a short bound lets the next attempt, sent once
/// the leader is elected, succeed at once, while a longer one after repeated failures still
/// lets a takeover through on a slow, loaded JetStream.
fn attempt_timeout(failures: u32) -> Duration {
    let first = Duration::from_secs(1);
    first.saturating_mul(1u32 << failures.min(8)).min(commit::APPEND_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_stepped_down_tries_again_soon_then_backs_off_to_a_second() {
        let poll = Duration::from_millis(3333);
        let quick = Duration::from_millis(10);
        let first = retake_wait(None, quick, poll);
        assert_eq!(first, RETAKE_FIRST);
        assert!(first < poll);
        let mut waits = vec![first];
        for _ in 0..6 {
            let next = retake_wait(waits.last().copied(), quick, poll);
            waits.push(next);
        }
        assert_eq!(waits[1], RETAKE_FIRST * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap_or(&Duration::ZERO), RETAKE_MAX, "{waits:?}");
        assert!(RETAKE_MAX < poll);
        // A term that served for a while starts the back-off over.
        assert_eq!(retake_wait(Some(poll), poll, poll), RETAKE_FIRST);
        // Never longer than the poll, even with a tiny TTL.
        let tiny = Duration::from_millis(50);
        assert_eq!(retake_wait(None, quick, tiny), tiny);
    }

    #[test]
    fn an_attempt_to_lead_again_is_bounded_short_first_then_up_to_the_append_timeout() {
        assert_eq!(attempt_timeout(0), Duration::from_secs(1));
        assert_eq!(attempt_timeout(1), Duration::from_secs(2));
        assert_eq!(attempt_timeout(2), Duration::from_secs(4));
        assert_eq!(attempt_timeout(3), commit::APPEND_TIMEOUT);
        assert_eq!(attempt_timeout(u32::MAX), commit::APPEND_TIMEOUT);
    }
}
