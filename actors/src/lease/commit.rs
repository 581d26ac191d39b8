//! The group commit: the one loop that owns every change of a leader. It drains the queued
//! requests (up to a bound), applies them in memory, appends ONE journal entry with all their
//! changes and answers them only once that append and every earlier one are confirmed. Up to
//! [`PIPELINE_DEPTH`] appends are in flight at once (each expects this leader's fence, not the
//! previous append's sequence); meanwhile the next requests are applied. A request that changes
//! nothing is answered with the newest commit in flight. Snapshots are taken only where memory
//! equals the journal (nothing in flight, pending or waiting).
//!
//! When an append fails, later ones in flight may still be stored (a gap): none of them is ever
//! answered, and every entry names whole assignments (spec → holder, epoch; whole sessions), so a
//! replay without the failed entry is a state no runtime was told otherwise of.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use steward_subjects::api::lease::{LeaseJournalEntry, RuntimeSession};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::WireError;
use tracing::{debug, warn};

use super::api::{decode, respond, LoopEndpoints, Op, Out};
use super::journal::{self, Fence, JournalError};
use super::leader::LeaderGuard;
use super::notices::NoticeEvent;
use super::requests::{Input, Shared};
use super::LeaseError;
use crate::now_ms;

/// Journal entries are cut at about this size (below the server's default payload limit).
const MAX_COMMIT_BYTES: usize = 384 * 1024;
/// Longest wait for a journal append's ack before stepping down.
pub(super) const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most journal appends in flight at once.
const PIPELINE_DEPTH: usize = 4;

/// A reply waiting for its commit: the request, its encoding and the answer.
pub(super) type Reply = (async_nats::service::Request, Encoding, Out);

/// What one group commit collects.
#[derive(Default)]
pub(super) struct Commit {
    pub(super) entry: LeaseJournalEntry,
    pub(super) replies: Vec<Reply>,
    pub(super) notices: Vec<NoticeEvent>,
    bytes: usize,
}

impl Commit {
    /// Rough encoded size of the journal entry so far.
    fn size_estimate(&self) -> usize {
        self.bytes + self.entry.leases.len() * 96
    }

    pub(super) fn add_session(&mut self, s: RuntimeSession) {
        self.bytes += 128 + s.host.len() + s.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
        self.entry.sessions.push(s);
    }

    /// Whether the commit changes anything the journal must hold.
    fn has_changes(&self) -> bool {
        !self.entry.sessions.is_empty() || !self.entry.leases.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.has_changes() && self.replies.is_empty() && self.notices.is_empty()
    }
}

/// A journal append on its way, with the commit whose replies wait for it.
type InFlight = (futures::future::BoxFuture<'static, Result<u64, JournalError>>, Commit);

/// When the next snapshot is due.
struct SnapshotSchedule {
    /// Appends since the last snapshot.
    since: u64,
    last: Instant,
    due: bool,
    /// A snapshot is being written.
    busy: Arc<AtomicBool>,
}

/// Commit counters, logged every ten seconds.
struct Stats {
    commits: u64,
    requests: u64,
    at: Instant,
}

/// The loop that owns every change: drain, apply, append once per commit, then answer.
pub(super) struct Loop<'a> {
    shared: &'a Arc<Shared>,
    guard: &'a LeaderGuard,
    journal: &'a str,
    /// This leader's instance and lock generation, stamped on every entry it appends (so the
    /// journal shows which leadership wrote what).
    writer: (&'a str, u64),
    fence: Fence,
    last_seq: u64,
    endpoints: LoopEndpoints,
    /// Decoded inputs not yet applied (what did not fit the commit being built waits here).
    inputs: VecDeque<Input>,
    /// Applied in memory, not yet sent to the journal.
    pending: Commit,
    /// Sent, oldest first.
    inflight: VecDeque<InFlight>,
    /// Durable, replies not yet sent.
    acked: Option<Commit>,
    snapshots: SnapshotSchedule,
    stats: Stats,
}

impl<'a> Loop<'a> {
    /// A loop appending to `journal` as `writer` (instance, generation) behind `fence`, after
    /// the entry at `last_seq`.
    pub(super) fn new(
        shared: &'a Arc<Shared>,
        guard: &'a LeaderGuard,
        (journal, writer): (&'a str, (&'a str, u64)),
        (fence, last_seq): (Fence, u64),
        endpoints: LoopEndpoints,
    ) -> Self {
        let commit_max = shared.config.commit_max;
        Loop {
            shared,
            guard,
            journal,
            writer,
            fence,
            last_seq,
            endpoints,
            inputs: VecDeque::with_capacity(commit_max),
            pending: Commit::default(),
            inflight: VecDeque::new(),
            acked: None,
            snapshots: SnapshotSchedule {
                since: 0,
                last: Instant::now(),
                due: false,
                busy: Arc::new(AtomicBool::new(false)),
            },
            stats: Stats { commits: 0, requests: 0, at: Instant::now() },
        }
    }

    /// Runs until shutdown (`Ok`) or until the leader must step down (`Err`).
    pub(super) async fn run(
        mut self,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>,
        notice_tx: &tokio::sync::mpsc::UnboundedSender<NoticeEvent>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        pending_notices: Vec<NoticeEvent>,
    ) -> Result<(), LeaseError> {
        for n in pending_notices {
            let _ = notice_tx.send(n);
        }
        let cfg = &self.shared.config;
        let mut sweep = tokio::time::interval(cfg.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut received = Vec::with_capacity(cfg.commit_max);
        loop {
            self.apply_inputs()?;
            self.send_pending().await?;
            self.answer_durable(notice_tx).await?;
            self.snapshot_if_due();
            let accept = !self.snapshots.due && self.inputs.len() < cfg.commit_max;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                r = next_ack(&mut self.inflight) => self.on_ack(r)?,
                _ = sweep.tick() => self.on_sweep(notice_tx),
                n = rx.recv_many(&mut received, cfg.commit_max), if accept => {
                    if n == 0 {
                        return Err(LeaseError::Closed("lease inputs".into()));
                    }
                    self.inputs.extend(received.drain(..));
                }
                req = self.endpoints.next(), if accept => self.on_request(req, rx)?,
            }
        }
    }

    /// Applies what waits, up to one commit's worth.
    fn apply_inputs(&mut self) -> Result<(), LeaseError> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        let shared = self.shared;
        let now = now_ms();
        let mut view = shared.view();
        while self.pending.size_estimate() < MAX_COMMIT_BYTES && self.pending.replies.len() < shared.config.commit_max {
            let Some(input) = self.inputs.pop_front() else { break };
            if let Err(e) = shared.apply(&mut view, input, now, &mut self.pending) {
                drop(view);
                fail(std::mem::take(&mut self.inflight), self.acked.take(), &mut self.pending, &e, false);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends the pending commit when the pipeline has room; a commit that changes nothing is
    /// answered once every change it could show is durable, i.e. with the newest commit in
    /// flight, or now when none is.
    async fn send_pending(&mut self) -> Result<(), LeaseError> {
        if self.inflight.len() < PIPELINE_DEPTH && self.pending.has_changes() {
            return self.send().await;
        }
        if self.pending.has_changes() || self.pending.is_empty() {
            return Ok(());
        }
        let quiet = std::mem::take(&mut self.pending);
        match self.inflight.back_mut() {
            Some((_, last)) => {
                last.replies.extend(quiet.replies);
                last.notices.extend(quiet.notices);
            }
            None => match self.acked.as_mut() {
                Some(a) => {
                    a.replies.extend(quiet.replies);
                    a.notices.extend(quiet.notices);
                }
                None => self.acked = Some(quiet),
            },
        }
        Ok(())
    }

    /// Hands the pending commit's journal entry to the connection (before the previous
    /// commit's replies go out) and puts it in flight.
    async fn send(&mut self) -> Result<(), LeaseError> {
        if !self.guard.is_valid() {
            return Err(LeaseError::LockExpiring);
        }
        let mut commit = std::mem::take(&mut self.pending);
        self.writer.0.clone_into(&mut commit.entry.instance);
        commit.entry.generation = self.writer.1;
        let sent = journal::send(&self.shared.js, self.journal, &self.fence, &commit.entry, APPEND_TIMEOUT).await;
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) => {
                let why = LeaseError::Append(e);
                fail(std::mem::take(&mut self.inflight), self.acked.take(), &mut commit, &why, false);
                return Err(why);
            }
        };
        self.stats.commits += 1;
        self.stats.requests += commit.replies.len() as u64;
        self.inflight.push_back((ack.boxed(), commit));
        Ok(())
    }

    /// Answers the commit that became durable (later appends are already out). Answered right
    /// here: a hand-over to another task would add a scheduling hop to every request.
    async fn answer_durable(
        &mut self,
        notice_tx: &tokio::sync::mpsc::UnboundedSender<NoticeEvent>,
    ) -> Result<(), LeaseError> {
        let Some(done) = self.acked.take() else { return Ok(()) };
        if !self.guard.is_valid() {
            return Err(LeaseError::LockExpiring);
        }
        for (req, enc, out) in done.replies {
            respond(&req, enc, out).await;
        }
        for n in done.notices {
            let _ = notice_tx.send(n);
        }
        Ok(())
    }

    /// Starts a due snapshot where memory equals the journal: nothing in flight or pending.
    fn snapshot_if_due(&mut self) {
        let s = &mut self.snapshots;
        if !(s.due && self.inflight.is_empty() && self.pending.is_empty() && self.inputs.is_empty()) {
            return;
        }
        s.due = false;
        if !s.busy.load(Ordering::Acquire) {
            s.since = 0;
            s.last = Instant::now();
            snapshot(self.shared, self.guard, self.journal, self.last_seq, &s.busy);
        }
    }

    /// The oldest append in flight was confirmed (its commit is answered next) or failed.
    fn on_ack(&mut self, r: Result<u64, JournalError>) -> Result<(), LeaseError> {
        let done = self.inflight.pop_front().map(|f| f.1);
        match r {
            Ok(seq) => {
                self.shared.metrics.journal_append();
                self.last_seq = seq;
                self.snapshots.since += 1;
                self.snapshots.due |= self.snapshots.since >= self.shared.config.snapshot_entries;
                self.acked = done;
                Ok(())
            }
            Err(e) => {
                // Later appends in flight may still be stored: none of them is answered.
                let fenced = matches!(e, JournalError::Fenced(_));
                let why = LeaseError::Append(e);
                self.inflight.push_front((futures::future::pending().boxed(), done.unwrap_or_default()));
                fail(std::mem::take(&mut self.inflight), None, &mut self.pending, &why, fenced);
                Err(why)
            }
        }
    }

    /// Frees expired leases, decides whether a snapshot is due, logs the commit counters.
    fn on_sweep(&mut self, notice_tx: &tokio::sync::mpsc::UnboundedSender<NoticeEvent>) {
        let cfg = &self.shared.config;
        let freed = self.shared.view().sweep(now_ms());
        if freed > 0 {
            debug!(freed, "expired leases freed");
            let _ = notice_tx.send(NoticeEvent::Available);
        }
        let s = &mut self.snapshots;
        s.due |= s.since >= cfg.snapshot_entries || (s.since > 0 && s.last.elapsed() >= cfg.snapshot_every);
        let Stats { commits, requests, at } = self.stats;
        if at.elapsed() >= Duration::from_secs(10) && commits > 0 {
            debug!(commits, requests, per_commit = requests as f64 / commits as f64, "lease group commits");
            self.stats = Stats { commits: 0, requests: 0, at: Instant::now() };
        }
    }

    /// Takes a request polled from an endpoint, and everything else already waiting.
    fn on_request(
        &mut self,
        req: Option<(Op, async_nats::service::Request)>,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>,
    ) -> Result<(), LeaseError> {
        let closed = || LeaseError::Closed("lease endpoints".into());
        let Some((op, req)) = req else { return Err(closed()) };
        if let Some(i) = decode(op, req, self.shared, &mut self.pending) {
            self.inputs.push_back(i);
        }
        while self.inputs.len() < self.shared.config.commit_max {
            match self.endpoints.next().now_or_never() {
                Some(Some((op, req))) => {
                    if let Some(i) = decode(op, req, self.shared, &mut self.pending) {
                        self.inputs.push_back(i);
                    }
                }
                Some(None) => return Err(closed()),
                None => break,
            }
        }
        while let Ok(i) = rx.try_recv() {
            self.inputs.push_back(i);
        }
        Ok(())
    }
}

/// The confirmation of the oldest append in flight (pending forever when none is).
async fn next_ack(inflight: &mut VecDeque<InFlight>) -> Result<u64, JournalError> {
    match inflight.front_mut() {
        Some((append, _)) => append.await,
        None => std::future::pending().await,
    }
}

/// Stepping down: the callers of commits whose outcome is unknown (in flight) or that were
/// never sent (pending) are told `unavailable` (they learn the outcome from the next leader);
/// after a fenced append the in-flight callers are not answered at all. A durable commit not
/// yet answered gets its real replies.
fn fail(inflight: VecDeque<InFlight>, acked: Option<Commit>, pending: &mut Commit, why: &LeaseError, fenced: bool) {
    let err = WireError::unavailable(why.to_string());
    let mut replies = acked.map(|c| c.replies).unwrap_or_default();
    let unknown: Vec<_> = if fenced { Vec::new() } else { inflight.into_iter().flat_map(|(_, c)| c.replies).collect() };
    let never = std::mem::take(&mut pending.replies);
    replies.extend(unknown.into_iter().chain(never).map(|(r, enc, _)| (r, enc, Out::Error(err.clone()))));
    send_replies(replies);
}

fn send_replies(replies: Vec<Reply>) {
    if replies.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (req, enc, out) in replies {
            respond(&req, enc, out).await;
        }
    });
}

/// Encodes the state at `through_seq` (the loop is between commits, so memory equals the
/// journal) and writes it out in the background.
fn snapshot(shared: &Arc<Shared>, guard: &LeaderGuard, subject: &str, through_seq: u64, busy: &Arc<AtomicBool>) {
    let encoded = match codec::encode(Encoding::MsgPack, &shared.view().snapshot(through_seq)) {
        Ok(b) => b.to_vec(),
        Err(e) => {
            warn!(error = %e, "lease snapshot not encoded");
            return;
        }
    };
    busy.store(true, Ordering::Release);
    let (shared, guard, subject, busy) = (shared.clone(), guard.clone(), subject.to_owned(), busy.clone());
    tokio::spawn(async move {
        let r = journal::write_snapshot(&shared.js, shared.subjects.account(), &subject, through_seq, encoded, || {
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
