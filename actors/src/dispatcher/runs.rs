//! The runs this dispatcher instance holds ([`Core`]): what it remembers of each run not ended
//! (host records and their revisions, delivered work orders, count changes), applying the
//! hosts' job events from the shared durable consumer, and the sweeper's work each tick
//! (adopting runs of other instances, writing count changes, deadlines, retries and
//! re-deliveries). Every store write is a compare-and-set against a remembered revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use steward_subjects::api::run::{
    EventKind, HostRun, RunEvent, RunRecord, RunStatus, StatusCounts, StopAck, StopOrder, WorkOrder,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::streams::HOST_COMMANDS_STREAM;
use steward_subjects::subject::run_event_host;
use steward_subjects::{trace, HostId, Subjects};
use tracing::{debug, info, warn, Instrument};

use super::delivery::{deliver_all, find_work_command, Stored, INLINE_ORDERS};
use super::events::{acknowledge, judge_run_id, Acks, RunIdAge, Verdict, RECORD_LOOKS};
use super::lifecycle;
use super::store::{HostChange, KnownHost, RunStore, RunStoreError};
use crate::now_ms;
use crate::signing::{JobSigner, OrderBinding};

/// What the dispatcher keeps in memory about a run that has not ended (rebuilt from the store
/// on start, or adopted from the store when this instance applies an event of a run another
/// instance dispatched).
#[derive(Debug, Clone, Default)]
pub(super) struct ActiveRun {
    pub(super) cancel_requested: bool,
    /// Hosts of the run.
    pub(super) hosts_total: u64,
    pub(super) next_check_ms: u64,
    /// Earliest retry noted while a check was under way (the check must not push it later).
    pub(super) wake_ms: Option<u64>,
    /// Host → the attempt whose work order the commands stream stored (durable from there on:
    /// the host's command consumer delivers it, now or when the host comes back) and its
    /// stream sequence (a cancel withdraws an order not taken yet).
    pub(super) delivered: HashMap<String, (u32, u64)>,
    /// Host → the last record (and its revision) this instance read or wrote: updates
    /// compare-and-set against it without reading first; another writer makes the first try
    /// fail and the record is read again.
    pub(super) hosts: HashMap<String, KnownHost>,
    /// The run record and its revision as this instance last wrote it (same use).
    pub(super) record: Option<(RunRecord, u64)>,
    /// How many of `hosts` are in a terminal state.
    pub(super) ended: usize,
}

impl ActiveRun {
    pub(super) fn new(hosts: HashMap<String, KnownHost>) -> Self {
        let ended = hosts.values().filter(|k| k.0.status.is_terminal()).count();
        ActiveRun { hosts, ended, ..ActiveRun::default() }
    }

    /// Remembers a host record, keeping `ended` right.
    fn put_host(&mut self, k: KnownHost) {
        let now_ended = k.0.status.is_terminal();
        let was_ended = self.hosts.insert(k.0.host_id.clone(), k).is_some_and(|old| old.0.status.is_terminal());
        match (was_ended, now_ended) {
            (false, true) => self.ended += 1,
            (true, false) => self.ended = self.ended.saturating_sub(1),
            _ => {}
        }
    }

    /// Remembers `k` unless a newer revision of its record is remembered already.
    fn put_newer(&mut self, k: KnownHost) {
        if self.hosts.get(&k.0.host_id).is_none_or(|c| c.1 < k.1) {
            self.put_host(k);
        }
    }

    /// Whether every host of the run is known here and ended.
    fn all_ended(&self) -> bool {
        self.hosts.len() as u64 >= self.hosts_total && self.ended >= self.hosts.len()
    }
}

/// Host counts changes not yet written to the run record, per status (see [`StatusCounts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CountsDelta([i64; 6]);

impl CountsDelta {
    fn slot(s: RunStatus) -> usize {
        match s {
            RunStatus::Pending | RunStatus::Unknown => 0,
            RunStatus::Running => 1,
            RunStatus::Success => 2,
            RunStatus::Failure => 3,
            RunStatus::Timeout => 4,
            RunStatus::Canceled => 5,
        }
    }

    fn moved(&mut self, from: RunStatus, to: RunStatus) {
        self.0[Self::slot(from)] -= 1;
        self.0[Self::slot(to)] += 1;
    }

    fn merge(&mut self, other: CountsDelta) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn apply(&self, c: &mut StatusCounts) {
        let fields = [&mut c.pending, &mut c.running, &mut c.success, &mut c.failure, &mut c.timeout, &mut c.canceled];
        for (f, d) in fields.into_iter().zip(self.0) {
            *f = f.saturating_add_signed(d);
        }
    }
}

/// One dispatcher instance's state, shared by its service, event consumer and sweeper.
pub(super) struct Core {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) subjects: Subjects,
    pub(super) store: RunStore,
    pub(super) signer: Option<JobSigner>,
    pub(super) redeliver_after_ms: u64,
    pub(super) active: Mutex<HashMap<String, ActiveRun>>,
    /// Count changes of host transitions this instance wrote, flushed into run records by the
    /// sweeper (one compare-and-set per run per tick, whichever instance wrote the host).
    pub(super) deltas: Mutex<HashMap<String, CountsDelta>>,
    /// Runs this instance applied events of without holding them (dispatched by another hub
    /// instance): the sweeper adopts them so deadlines and retries are enforced here too.
    pub(super) adopt: Mutex<HashSet<String>>,
    /// Job events terminated without being applied (naming a run the hub never created, or
    /// past the redelivery bound).
    pub(super) dropped_events: AtomicU64,
}

/// Signs each order for `account`, its host, run id, attempt and deadline.
fn sign_orders(signer: &JobSigner, account: &str, mut orders: Vec<WorkOrder>) -> Vec<WorkOrder> {
    for o in &mut orders {
        o.signature = signer.sign_order(&OrderBinding {
            account,
            host_id: &o.host_id,
            run_id: &o.run_id,
            attempt: o.attempt,
            deadline_ms: o.deadline_ms,
            job: &o.job,
        });
        o.key_id = signer.key_id().to_owned();
    }
    orders
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    pub(super) fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        lock(&self.active)
    }

    pub(super) async fn load_active(&self) -> Result<(), RunStoreError> {
        let runs = self.store.runs().await?;
        let mut n = 0;
        for run in runs.into_iter().filter(|r| !r.status.is_terminal()) {
            self.hold(&run).await?;
            n += 1;
        }
        if n > 0 {
            info!(runs = n, "dispatcher resumed active runs");
        }
        Ok(())
    }

    /// Takes a run this instance did not dispatch (on start, or adopted): reads its hosts,
    /// checks it at once, and recounts it from its host records (count changes of a stopped
    /// instance may have been lost).
    async fn hold(&self, run: &RunRecord) -> Result<(), RunStoreError> {
        let hosts = self.store.hosts_with_revisions(&run.run_id).await?;
        let cache: HashMap<String, KnownHost> = hosts.iter().map(|k| (k.0.host_id.clone(), k.clone())).collect();
        self.active().entry(run.run_id.clone()).or_insert_with(|| ActiveRun {
            cancel_requested: run.cancel_requested,
            hosts_total: run.hosts_total,
            ..ActiveRun::new(cache)
        });
        self.settle_counted(&run.run_id, &hosts).await?;
        Ok(())
    }

    pub(super) fn mark_delivered(&self, run_id: &str, delivered: Vec<Stored>) {
        if let Some(a) = self.active().get_mut(run_id) {
            for ((host, attempt), seq) in delivered {
                a.delivered.insert(host, (attempt, seq));
            }
        }
    }

    /// Deletes the stored work orders of hosts that have not started (a cancel): a host that
    /// is away must not find them when it comes back. The sequence is known when this
    /// instance stored the order; otherwise the host's commands are looked through for the
    /// order's command id. An order the host already took is gone from its reach anyway (the
    /// stop order covers it).
    pub(super) async fn withdraw_work(&self, pending: &[HostRun]) {
        if pending.is_empty() {
            return;
        }
        let stream = match self.js.get_stream(HOST_COMMANDS_STREAM).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "work orders not withdrawn: commands stream unavailable");
                return;
            }
        };
        for h in pending {
            let Ok(host) = HostId::parse(&h.host_id) else { continue };
            let known = self
                .active()
                .get(&h.run_id)
                .and_then(|a| a.delivered.get(&h.host_id).copied())
                .filter(|(attempt, _)| *attempt == h.attempt)
                .map(|(_, seq)| seq);
            let seq = match known {
                Some(seq) => Some(seq),
                None => find_work_command(&stream, &self.subjects.host_command(&host), &h.run_id, h.attempt).await,
            };
            if let Some(seq) = seq {
                match stream.delete_message(seq).await {
                    Ok(_) => debug!(run_id = %h.run_id, host_id = %h.host_id, seq, "work order withdrawn"),
                    Err(e) => {
                        debug!(run_id = %h.run_id, host_id = %h.host_id, error = %e, "work order not withdrawn (taken or gone)")
                    }
                }
            }
        }
    }

    /// Reads a held run's host records afresh, keeps the newer ones and settles the run when
    /// every host ended.
    pub(super) async fn catch_up(self: &Arc<Self>, run_id: &str) {
        match self.store.hosts_with_revisions(run_id).await {
            Ok(hosts) => {
                if let Some(a) = self.active().get_mut(run_id) {
                    hosts.into_iter().for_each(|k| a.put_newer(k));
                }
                self.settle_if_ended(run_id);
            }
            Err(e) => debug!(run_id = %run_id, error = %e, "host records not read; the run's next check settles it"),
        }
    }

    /// Deletes work orders this instance stored for a run that was not accepted after all (its
    /// records could not be written). A host that took one meanwhile finds no record for its
    /// events; they are dropped.
    pub(super) async fn take_back(&self, stored: Vec<Stored>) {
        if stored.is_empty() {
            return;
        }
        match self.js.get_stream(HOST_COMMANDS_STREAM).await {
            Ok(stream) => {
                for ((host, _), seq) in stored {
                    if let Err(e) = stream.delete_message(seq).await {
                        debug!(host_id = %host, seq, error = %e, "work order of a refused run not taken back");
                    }
                }
            }
            Err(e) => warn!(error = %e, "work orders of a refused run not taken back: commands stream unavailable"),
        }
    }

    /// The work orders of `hosts` (their current attempts), each signed for its account, host,
    /// run id, attempt and deadline; unsigned when this hub has no signing key (hosts refuse
    /// them). Many orders are signed on a blocking thread (one signature costs tens of µs).
    pub(super) async fn orders(&self, run: &RunRecord, hosts: &[HostRun]) -> Vec<WorkOrder> {
        let now = now_ms();
        let orders: Vec<WorkOrder> = hosts
            .iter()
            .map(|h| WorkOrder {
                run_id: run.run_id.clone(),
                host_id: h.host_id.clone(),
                attempt: h.attempt,
                job: run.job.clone(),
                signature: String::new(),
                key_id: String::new(),
                timeout_ms: h.deadline_ms.saturating_sub(now.max(h.not_before_ms)).max(1),
                labels: run.labels.clone(),
                deadline_ms: h.deadline_ms,
            })
            .collect();
        let Some(signer) = self.signer.clone() else { return orders };
        let account = self.subjects.account().as_str().to_owned();
        if orders.len() <= INLINE_ORDERS {
            return sign_orders(&signer, &account, orders);
        }
        let count = orders.len();
        match tokio::task::spawn_blocking(move || sign_orders(&signer, &account, orders)).await {
            Ok(signed) => signed,
            Err(e) => {
                warn!(run_id = %run.run_id, orders = count, error = %e, "work orders not signed; they are sent again at the next check");
                Vec::new()
            }
        }
    }

    /// Updates one host record (compare-and-set against the remembered record when there is
    /// one) and notes the transition: the remembered record, the count change for the run
    /// record, an earlier check for a retry, adoption of a run this instance does not hold.
    pub(super) async fn update_host<F>(
        &self,
        run_id: &str,
        host: &HostId,
        f: F,
    ) -> Result<Option<HostChange>, RunStoreError>
    where
        F: FnMut(&mut HostRun) -> bool,
    {
        let known = self.active().get(run_id).and_then(|a| a.hosts.get(host.as_str()).cloned());
        let change = self.store.update_host(run_id, host, known, f).await?;
        if let Some(c) = &change {
            self.note(run_id, c);
        }
        Ok(change)
    }

    fn note(&self, run_id: &str, c: &HostChange) {
        let (before, after) = (&c.before, &c.after);
        if before.status != after.status {
            lock(&self.deltas).entry(run_id.to_owned()).or_default().moved(before.status, after.status);
        }
        let held = {
            let mut active = self.active();
            match active.get_mut(run_id) {
                Some(a) => {
                    a.put_newer((after.clone(), c.revision));
                    let retry = after.status == RunStatus::Pending
                        && (before.status != RunStatus::Pending || before.attempt != after.attempt);
                    if retry {
                        a.next_check_ms = a.next_check_ms.min(after.not_before_ms);
                        a.wake_ms = Some(a.wake_ms.map_or(after.not_before_ms, |w| w.min(after.not_before_ms)));
                    }
                    true
                }
                None => false,
            }
        };
        if !held && !after.status.is_terminal() {
            lock(&self.adopt).insert(run_id.to_owned());
        }
    }

    /// Writes the count changes noted for a run into its run record. A run whose counts say
    /// every host ended is only declared ended once its host records confirm it (from memory
    /// when this instance knows every host ended, else read from the store).
    async fn flush(&self, run_id: &str, delta: CountsDelta) -> Result<(), RunStoreError> {
        // This instance knows every host ended (terminal states never change): one write.
        let ended_here: Option<Vec<KnownHost>> =
            self.active().get(run_id).and_then(|a| a.all_ended().then(|| a.hosts.values().cloned().collect()));
        if let Some(hosts) = ended_here {
            self.settle_counted(run_id, &hosts).await?;
            return Ok(());
        }
        let mut ended = false;
        let run = self
            .store
            .update_run(run_id, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                let mut counts = r.counts;
                delta.apply(&mut counts);
                let status = counts.aggregate(r.hosts_total, r.cancel_requested);
                ended = status.is_terminal();
                let status = if ended { RunStatus::Running } else { status };
                let changed = r.counts != counts || r.status != status;
                r.counts = counts;
                r.status = status;
                changed
            })
            .await?;
        let Some(run) = run else {
            if judge_run_id(run_id, SystemTime::now()) == RunIdAge::Young {
                // A host reported while the run record was still being written (its order
                // went out beside the record writes): keep the counts for the next tick.
                lock(&self.deltas).entry(run_id.to_owned()).or_default().merge(delta);
            } else {
                self.active().remove(run_id);
            }
            return Ok(());
        };
        if run.status.is_terminal() {
            self.forget(run_id);
        } else if ended {
            let hosts = self.store.hosts_with_revisions(run_id).await?;
            self.settle_counted(run_id, &hosts).await?;
        }
        Ok(())
    }

    /// Settles a run at once, on a task, when this instance knows every host ended (one write
    /// against the remembered run record) rather than at the next tick, so run-record writes
    /// do not come in batches beside runs in flight. A failed write is retried by the run's
    /// next check.
    fn settle_if_ended(self: &Arc<Self>, run_id: &str) {
        let hosts: Option<Vec<KnownHost>> =
            self.active().get(run_id).and_then(|a| a.all_ended().then(|| a.hosts.values().cloned().collect()));
        let Some(hosts) = hosts else { return };
        let (core, run_id) = (self.clone(), run_id.to_owned());
        let span = trace::span(|| tracing::info_span!("run.settle", run_id = %run_id));
        let settle = async move {
            if let Err(e) = core.settle_counted(&run_id, &hosts).await {
                debug!(run_id = %run_id, error = %e, "ended run not settled; its next check retries");
            }
        };
        tokio::spawn(settle.instrument(span));
    }

    /// Stores the counts of `hosts` (every host record of the run) as the run's counts and
    /// status; ends the run when every host ended. Count changes noted here so far are
    /// included and dropped.
    pub(super) async fn settle_counted(
        &self,
        run_id: &str,
        hosts: &[KnownHost],
    ) -> Result<Option<RunRecord>, RunStoreError> {
        let mut counts = StatusCounts::default();
        for (h, _) in hosts {
            counts.add(h.status);
        }
        lock(&self.deltas).remove(run_id);
        let now = crate::now_rfc3339();
        let known = self.active().get(run_id).and_then(|a| a.record.clone());
        let updated = self
            .store
            .update_run_known(run_id, known, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                let status = counts.aggregate(r.hosts_total, r.cancel_requested);
                let changed = r.counts != counts || r.status != status;
                r.counts = counts;
                r.status = status;
                if status.is_terminal() {
                    r.finished_at = Some(now.clone());
                }
                changed
            })
            .await?;
        if let (Some(u), Some(a)) = (&updated, self.active().get_mut(run_id)) {
            a.record = Some(u.clone());
        }
        let run = updated.map(|u| u.0);
        match &run {
            Some(r) if r.status.is_terminal() => {
                if self.forget(run_id) {
                    info!(run_id = %run_id, status = %r.status, "run ended");
                }
            }
            Some(_) => {}
            None => {
                self.forget(run_id);
            }
        }
        Ok(run)
    }

    /// Drops what this instance holds of an ended run; whether it held it.
    fn forget(&self, run_id: &str) -> bool {
        lock(&self.deltas).remove(run_id);
        self.active().remove(run_id).is_some()
    }

    /// Applies the hosts' job events from the shared durable consumer, a chunk at a time:
    /// each host's events of a chunk in one update of its record.
    pub(super) async fn follow_events(
        self: &Arc<Self>,
        consumer: consumer::Consumer<consumer::pull::Config>,
    ) -> Result<(), EventsError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| EventsError::Consumer(e.to_string()))?;
        let mut chunks = messages.ready_chunks(2000);
        while let Some(chunk) = chunks.next().await {
            let (by_host, acks) = sort_events(chunk)?;
            let updates = futures::stream::iter(
                by_host
                    .into_iter()
                    .map(|((run_id, host), (evs, cx))| {
                        // While tracing is on, a host's events are applied in the job's trace.
                        let span = match cx {
                            Some(cx) => trace::follow(Some(&cx), || {
                                tracing::info_span!("run.events", otel.kind = "consumer", run_id = %run_id, host_id = %host)
                            }),
                            None => tracing::Span::none(),
                        };
                        self.apply_events(run_id, host, evs).instrument(span).boxed()
                    })
                    .collect::<Vec<_>>(),
            )
            .buffer_unordered(256)
            .filter_map(|unapplied| async move { unapplied })
            .collect::<HashMap<(String, String), Verdict>>();
            let unapplied = updates.await;
            acknowledge(&self.client, acks, &unapplied, &self.dropped_events).await;
        }
        Err(EventsError::Ended)
    }

    /// Applies one host's events of a chunk to its record; answers (run, host) and what to do
    /// with the events when they were not applied: offered again when they came before a
    /// young run's record exists, dropped when they name a run the hub never created.
    async fn apply_events(
        self: &Arc<Self>,
        run_id: String,
        host: String,
        evs: Vec<(RunEvent, u64)>,
    ) -> Option<((String, String), Verdict)> {
        let Ok(host) = HostId::parse(&host) else { return None };
        let young = match judge_run_id(&run_id, SystemTime::now()) {
            RunIdAge::NotOurs(reason) => return Some(((run_id, host.to_string()), Verdict::Drop(reason))),
            RunIdAge::Young => true,
            RunIdAge::Settled => false,
        };
        let now = crate::now_rfc3339();
        let ms = now_ms();
        let apply = |h: &mut HostRun| {
            let mut changed = false;
            for (ev, seq) in &evs {
                changed |= lifecycle::apply_event(h, ev, *seq, ms, &now);
            }
            changed
        };
        let mut r = self.update_host(&run_id, &host, apply).await;
        // A young run's record may be a write away (its orders went out
        // beside the record writes): look again a few times before the
        // events are offered again later.
        for _ in 0..RECORD_LOOKS {
            if !matches!(r, Ok(None)) || !young {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            r = self.update_host(&run_id, &host, apply).await;
        }
        match r {
            Ok(Some(c)) => {
                if c.after.status.is_terminal() {
                    self.settle_if_ended(&run_id);
                }
                None
            }
            Ok(None) if young => {
                // Its work order was published beside the records (see
                // `dispatch`): the record is still being written.
                debug!(run_id = %run_id, host_id = %host, "events before their host record; offered again");
                Some(((run_id, host.to_string()), Verdict::Again))
            }
            Ok(None) => Some(((run_id, host.to_string()), Verdict::Drop("no such run"))),
            Err(e) => {
                warn!(run_id = %run_id, host_id = %host, error = %e, "run events not applied");
                None
            }
        }
    }

    pub(super) async fn sweep(&self) {
        let adopt: Vec<String> = lock(&self.adopt).drain().collect();
        for run_id in adopt {
            if self.active().contains_key(&run_id) {
                continue;
            }
            match self.store.run(&run_id).await {
                Ok(Some(run)) if !run.status.is_terminal() => {
                    debug!(run_id = %run_id, "adopting a run dispatched by another instance");
                    if let Err(e) = self.hold(&run).await {
                        warn!(run_id = %run_id, error = %e, "run not adopted");
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(run_id = %run_id, error = %e, "run not adopted"),
            }
        }
        let deltas: Vec<(String, CountsDelta)> = lock(&self.deltas).drain().collect();
        // One run after the other: a burst of run-record writes every tick would delay the
        // round trips of runs in flight.
        for (run_id, delta) in deltas {
            if delta == CountsDelta::default() {
                continue;
            }
            if let Err(e) = self.flush(&run_id, delta).await {
                warn!(run_id = %run_id, error = %e, "run counts not written; retrying");
                lock(&self.deltas).entry(run_id).or_default().merge(delta);
            }
        }
        let now = now_ms();
        let due: Vec<String> =
            self.active().iter().filter(|(_, a)| a.next_check_ms <= now).map(|(id, _)| id.clone()).collect();
        for run_id in due {
            if let Err(e) = self.check(&run_id).await {
                warn!(run_id = %run_id, error = %e, "run check failed");
            }
        }
    }

    /// Deadlines, retries and re-deliveries of one run.
    async fn check(&self, run_id: &str) -> Result<(), RunStoreError> {
        let Some(run) = self.store.run(run_id).await? else {
            self.forget(run_id);
            return Ok(());
        };
        if run.status.is_terminal() {
            self.forget(run_id);
            return Ok(());
        }
        let now = now_ms();
        let known = {
            let mut active = self.active();
            let Some(a) = active.get_mut(run_id) else { return Ok(()) };
            a.cancel_requested |= run.cancel_requested;
            a.wake_ms = None;
            // A pending host whose work order is not stored yet may have been started through
            // another instance: read the records afresh before sending anything.
            let due = |h: &HostRun| {
                h.status == RunStatus::Pending
                    && now >= h.not_before_ms
                    && a.delivered.get(&h.host_id).is_none_or(|(n, _)| *n != h.attempt)
            };
            let fresh_enough = a.hosts.len() as u64 >= run.hosts_total
                && (run.cancel_requested || !a.hosts.values().any(|k| due(&k.0)));
            fresh_enough.then(|| a.hosts.values().map(|k| k.0.clone()).collect())
        };
        let hosts: Vec<HostRun> = match known {
            Some(h) => h,
            None => {
                let hosts = self.store.hosts_with_revisions(run_id).await?;
                if let Some(a) = self.active().get_mut(run_id) {
                    hosts.iter().for_each(|k| a.put_newer(k.clone()));
                }
                hosts.into_iter().map(|k| k.0).collect()
            }
        };
        let mut next = u64::MAX;
        let mut to_deliver: Vec<HostRun> = Vec::new();
        let mut open = 0usize;
        for h in hosts {
            if h.status.is_terminal() {
                continue;
            }
            let Ok(host) = HostId::parse(&h.host_id) else { continue };
            if now >= h.deadline_ms {
                let stamp = crate::now_rfc3339();
                if let Some(c) = self.update_host(run_id, &host, |x| lifecycle::expire(x, now, &stamp)).await? {
                    if c.before.status == RunStatus::Running && c.after.status != RunStatus::Running {
                        let order = StopOrder {
                            run_id: run_id.to_owned(),
                            host_id: h.host_id.clone(),
                            status: RunStatus::Timeout,
                            reason: "deadline passed".into(),
                        };
                        let (client, subject) = (self.client.clone(), self.subjects.run_stop(&host));
                        tokio::spawn(async move {
                            let _ = rpc::request::<_, StopAck>(&client, subject, &order, Duration::from_secs(2)).await;
                        });
                    }
                    if !c.after.status.is_terminal() {
                        open += 1;
                        next = next.min(c.after.not_before_ms).min(c.after.deadline_ms);
                    }
                }
                continue;
            }
            open += 1;
            next = next.min(h.deadline_ms);
            if h.status == RunStatus::Pending && !run.cancel_requested {
                if now < h.not_before_ms {
                    next = next.min(h.not_before_ms);
                    continue;
                }
                let stored = self.active().get(run_id).and_then(|a| a.delivered.get(&h.host_id).map(|d| d.0));
                if stored != Some(h.attempt) {
                    // Not stored yet (a failed publish, a new attempt, or a run picked up after
                    // a restart: publishing again is harmless, the stream and the host both
                    // drop duplicates).
                    to_deliver.push(h);
                    next = next.min(now + self.redeliver_after_ms);
                }
            }
        }
        if !to_deliver.is_empty() {
            debug!(run_id = %run_id, hosts = to_deliver.len(), "delivering work orders");
            let orders = self.orders(&run, &to_deliver).await;
            let delivered = deliver_all(self.js.clone(), self.subjects.clone(), orders).await;
            self.mark_delivered(run_id, delivered);
        }
        if open == 0 {
            // Every host ended as far as this instance knows: make sure the run record says so
            // (count changes of another instance may never come).
            let hosts = self.store.hosts_with_revisions(run_id).await?;
            self.settle_counted(run_id, &hosts).await?;
        }
        if let Some(a) = self.active().get_mut(run_id) {
            let next = if next == u64::MAX { now + self.redeliver_after_ms } else { next };
            a.next_check_ms = a.wake_ms.take().map_or(next, |w| w.min(next));
        }
        Ok(())
    }
}

/// Why the events consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The consumer's message stream could not be opened or failed.
    #[error("run events consumer failed: {0}")]
    Consumer(String),
    /// The consumer's message stream ended.
    #[error("run events stream ended")]
    Ended,
}

/// Job events of one chunk that change a host record, per (run, host), with their stream
/// sequences.
/// With each host's events, the trace context of the last one (only while tracing is on).
type HostEvents = BTreeMap<(String, String), (Vec<(RunEvent, u64)>, Option<trace::Context>)>;

/// Sorts a chunk of job events by (run, host), keeping those that change a host record (the
/// first, `start`, `last` and `artifact` events) and were published on the subject of the host
/// they name.
fn sort_events(
    chunk: Vec<Result<jetstream::Message, consumer::pull::MessagesError>>,
) -> Result<(HostEvents, Acks), EventsError> {
    let mut acks = Vec::with_capacity(chunk.len());
    let mut by_host: HostEvents = BTreeMap::new();
    for m in chunk {
        let m = m.map_err(|e| EventsError::Consumer(e.to_string()))?;
        let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        if let Ok(ev) = codec::decode::<RunEvent>(Encoding::MsgPack, &m.payload) {
            let matters = ev.seq == 1 || matches!(ev.kind, EventKind::Start | EventKind::Last | EventKind::Artifact);
            // A host may publish on its own event subject only: an event naming another
            // host is not that host's word.
            let own = run_event_host(m.subject.as_str()) == Some(ev.host_id.as_str());
            if matters && !own {
                warn!(subject = %m.subject, run_id = %ev.run_id, host_id = %ev.host_id, "run event names another host than its subject; ignored");
            }
            if matters && own {
                let key = (ev.run_id.clone(), ev.host_id.clone());
                let entry = by_host.entry(key.clone()).or_default();
                entry.0.push((ev, stream_seq));
                if let Some(cx) = trace::context_of(m.headers.as_ref()) {
                    entry.1 = Some(cx);
                }
                acks.push((Some(key), m));
                continue;
            }
        }
        acks.push((None, m));
    }
    Ok((by_host, acks))
}
