//! The alarm evaluator: one per account at a time (a leader lock in `steward_leases`), it reads
//! every stored result through its durable feed consumer, names the result's check with the
//! spec catalog, runs the rules that apply to the host's labels, and appends the transitions.
//!
//! Exactly once: a result message is acknowledged only after every transition it caused is
//! stored, so a killed evaluator's successor sees it again; every alarm remembers the stream
//! sequence of the last result it took into account (`result_seq`), so the successor skips what
//! was already applied; and every transition is appended with the alarm's expected last
//! subject sequence, so a transition stored just before the kill (but not yet in the
//! successor's view) makes the append fail, and the evaluator reads the alarm back instead of
//! storing the transition a second time.
//!
//! What is kept only in memory: the per-track windows (last 21 outcomes, start of the current
//! breach run) and when each check last reported. A new leader starts them empty: "N of M"
//! and flap detection count from its first result, and a check that never reports again goes
//! stale `stale_after` intervals after the leader started.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use steward_subjects::api::alarm::{AlarmEvent, AlarmRecord, Cause, Silence, TransitionKind};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::result::ResultRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::selector::Selector;
use steward_subjects::streams::{CONFIG_BUCKET, HOSTS_BUCKET};
use steward_subjects::subject::{alarm_id, host_registry_filter, parse_registry_key};
use steward_subjects::{AccountId, Subjects};
use tracing::{debug, info, warn, Instrument};

use super::eval::{self, RuleSet, Step, Track};
use super::store::{AlarmStore, AlarmStoreError};
use crate::now_ms;
use crate::results::catalog::SpecCatalog;
use crate::results::feed::StoredBatch;

/// Name of the evaluator's durable consumer of `STEWARD_RESULTS`.
#[must_use]
pub fn feed_consumer(account: &AccountId) -> String {
    format!("alarms-{account}")
}

/// Results delivered and not yet acknowledged, at most.
const MAX_ACK_PENDING: i64 = 20_000;
/// How long a result waits for the catalog to learn its spec.
const CATALOG_WAIT: Duration = Duration::from_secs(2);
/// How long an unknown spec is not waited for again.
const UNKNOWN_SPEC_TTL: Duration = Duration::from_secs(30);
/// How often staleness and silence expiry are checked, and the rules re-read.
const TICK: Duration = Duration::from_secs(1);
/// Least time between two reads of the rules asked for by results of a newer revision.
const RULES_REREAD: Duration = Duration::from_millis(100);
/// Attempts to store one transition that keeps meeting concurrent writers.
const MAX_CONFLICTS: usize = 8;

/// Host labels of the account, followed from the host registry.
#[derive(Debug, Clone, Default)]
pub struct HostLabels {
    map: Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>,
}

impl HostLabels {
    /// Follows the host registry of `account`.
    ///
    /// # Errors
    /// A reason when the registry cannot be read.
    pub async fn follow(
        client: &async_nats::Client,
        account: &AccountId,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        let js = jetstream::new(client.clone());
        let stream = js.get_stream(format!("KV_{HOSTS_BUCKET}")).await.map_err(|e| e.to_string())?;
        let mut follower = crate::kv::follow(client, &stream, HOSTS_BUCKET, &host_registry_filter(account), false)
            .await
            .map_err(|e| e.to_string())?;
        let labels = HostLabels::default();
        let mut left = follower.snapshot_len();
        while left > 0 {
            let Some(change) = follower.next().await else { break };
            let change = change.map_err(|e| e.to_string())?;
            left = change.pending;
            labels.apply(account, &change);
        }
        let l = labels.clone();
        let account = account.clone();
        let task = tokio::spawn(async move {
            while let Some(change) = follower.next().await {
                if let Ok(change) = change {
                    l.apply(&account, &change);
                }
            }
        });
        Ok((labels, task))
    }

    fn apply(&self, account: &AccountId, change: &crate::kv::KeyChange) {
        let Some(host) = parse_registry_key(account, &change.key) else { return };
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if change.deleted {
            map.remove(host.as_str());
        } else if let Ok(r) = codec::decode::<HostRecord>(Encoding::MsgPack, &change.value) {
            map.insert(host.to_string(), r.labels);
        }
    }

    /// The labels of `host` (empty when unknown).
    #[must_use]
    pub fn of(&self, host: &str) -> BTreeMap<String, String> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(host).cloned().unwrap_or_default()
    }
}

/// Whether `silence` covers `alarm` at `now`.
#[must_use]
pub fn covers(silence: &Silence, alarm: &AlarmRecord, now: u64) -> bool {
    silence.active(now)
        && (silence.host.is_empty() || silence.host == alarm.host)
        && (silence.check.is_empty() || silence.check == alarm.check)
        && (silence.rule.is_empty() || silence.rule == alarm.rule)
        && (silence.selector.is_empty() || Selector::parse(&silence.selector).is_ok_and(|s| s.matches(&alarm.labels)))
}

/// When a check last reported, and its interval.
#[derive(Debug, Clone, Copy)]
struct Seen {
    last_ms: u64,
    interval_ms: u64,
}

/// The evaluator's state during one leadership term.
pub(super) struct Engine {
    client: async_nats::Client,
    store: AlarmStore,
    catalog: SpecCatalog,
    hosts: HostLabels,
    rules: RuleSet,
    /// (host, check, rule) → window.
    tracks: HashMap<(String, String, String), Track>,
    /// (host, check) → last report.
    seen: HashMap<(String, String), Seen>,
    /// alarm id → (last transition's sequence, alarm after it).
    alarms: HashMap<String, (u64, AlarmRecord)>,
    silences: HashMap<String, Silence>,
    unknown: HashMap<String, tokio::time::Instant>,
    started_ms: u64,
    /// When the rules were last read.
    rules_read_at: tokio::time::Instant,
    metrics: &'static crate::metrics::Metrics,
    /// Alarms to write to the bucket (its mirror of the stream), off the hot path.
    mirror: tokio::sync::mpsc::UnboundedSender<AlarmRecord>,
    _mirror_task: AbortOnDrop,
}

/// The cause a transition records: the result and the stored message holding it.
fn cause_of(r: &ResultRecord, stream_seq: u64) -> Cause {
    Cause {
        result_seq: stream_seq,
        spec: r.spec.clone(),
        key: r.idempotency_key(),
        status: Some(r.status),
        metrics: r.metrics.clone(),
        ended_at_ms: r.ended_at_ms,
        message: r.message.clone(),
    }
}

/// Aborts a task when dropped (the mirror writer ends with its engine).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Transitions decided for one stored message, by alarm.
#[derive(Default)]
struct Plan {
    alarms: Vec<Planned>,
    index: HashMap<String, usize>,
}

impl Plan {
    fn entry(&mut self, id: &str, seq_before: u64) -> &mut Planned {
        let i = match self.index.get(id) {
            Some(i) => *i,
            None => {
                self.alarms.push(Planned { id: id.to_owned(), seq_before, events: Vec::new(), decisions: Vec::new() });
                self.index.insert(id.to_owned(), self.alarms.len() - 1);
                self.alarms.len() - 1
            }
        };
        &mut self.alarms[i]
    }
}

/// One alarm's planned transitions.
struct Planned {
    id: String,
    /// The alarm's stream sequence before this message.
    seq_before: u64,
    events: Vec<AlarmEvent>,
    /// What was decided, to decide again after a conflict.
    decisions: Vec<Decision>,
}

/// One (result, rule) decision of a message.
#[derive(Clone)]
struct Decision {
    rule: usize,
    /// Which of the messages decided together.
    batch: usize,
    result: usize,
    track: Track,
    pos: u64,
    labels: BTreeMap<String, String>,
}

/// Stored messages decided together at most.
const MAX_BATCH_MESSAGES: usize = 256;

/// Alarms whose transitions are appended at once (each alarm's in order).
const APPEND_CONCURRENCY: usize = 256;

/// Writes alarm records to the bucket, newest per alarm, a batch at a time.
async fn mirror(store: AlarmStore, mut rx: tokio::sync::mpsc::UnboundedReceiver<AlarmRecord>) {
    while let Some(first) = rx.recv().await {
        let mut latest: HashMap<String, AlarmRecord> = HashMap::new();
        latest.insert(first.id.clone(), first);
        while let Ok(more) = rx.try_recv() {
            match latest.get(&more.id) {
                Some(have) if have.n >= more.n => {}
                _ => {
                    latest.insert(more.id.clone(), more);
                }
            }
        }
        futures::stream::iter(latest.into_values())
            .for_each_concurrent(64, |a| {
                let store = store.clone();
                async move {
                    if let Err(e) = store.record(&a).await {
                        debug!(alarm = a.id, error = %e, "alarm record not mirrored to the bucket");
                    }
                }
            })
            .await;
    }
}

impl Engine {
    /// Loads alarms, silences and rules.
    pub(super) async fn load(
        client: &async_nats::Client,
        subjects: &Subjects,
        catalog: SpecCatalog,
        hosts: HostLabels,
    ) -> Result<Self, AlarmStoreError> {
        let js = jetstream::new(client.clone());
        let store = AlarmStore::open(&js, subjects).await?;
        let alarms =
            store.all(client).await?.into_iter().map(|(seq, ev)| (ev.alarm.id.clone(), (seq, ev.alarm))).collect();
        let silences = store.silences(client).await?.into_iter().map(|s| (s.id.clone(), s)).collect();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mirror_task = AbortOnDrop(tokio::spawn(mirror(store.clone(), rx)));
        let mut engine = Engine {
            client: client.clone(),
            store,
            catalog,
            hosts,
            rules: RuleSet::default(),
            tracks: HashMap::new(),
            seen: HashMap::new(),
            alarms,
            silences,
            unknown: HashMap::new(),
            started_ms: now_ms(),
            rules_read_at: tokio::time::Instant::now(),
            metrics: crate::metrics::global(),
            mirror: tx,
            _mirror_task: mirror_task,
        };
        engine.reload_rules().await;
        Ok(engine)
    }

    /// Re-reads the rules when a newer configuration revision exists.
    pub(super) async fn reload_rules(&mut self) {
        self.rules_read_at = tokio::time::Instant::now();
        let js = jetstream::new(self.client.clone());
        let Ok(config_kv) = js.get_key_value(CONFIG_BUCKET).await else { return };
        let account = self.store.subjects().account().clone();
        let head = match crate::renderer::head_revision(&self.client, &config_kv, &account).await {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "alarm rules: cannot read the head revision");
                return;
            }
        };
        if head == 0 || head == self.rules.revision {
            return;
        }
        match crate::renderer::read_archive(&config_kv, &account, head).await {
            Ok(archive) => {
                self.rules = RuleSet::of(head, &archive.document);
                info!(revision = head, rules = self.rules.rules.len(), "alarm rules loaded");
            }
            Err(e) => warn!(error = %e, revision = head, "alarm rules: cannot read the revision"),
        }
    }

    /// Applies one stored result message; returns when every transition it caused is stored.
    ///
    /// # Errors
    /// When a transition cannot be stored (JetStream unavailable): the message must not be
    /// acknowledged, and this term ends so the next one starts again from it.
    pub(super) async fn on_batches(&mut self, batches: &[StoredBatch]) -> Result<(), String> {
        let mut plan = Plan::default();
        for (b, batch) in batches.iter().enumerate() {
            self.plan_batch(b, batch, &mut plan).await;
        }
        self.store_plan(plan, batches).await?;
        let n: usize = batches.iter().map(|b| b.results.len()).sum();
        self.metrics.alarm_results_evaluated.inc_by(n as u64);
        Ok(())
    }

    /// Decides every (result, rule) of one stored message into `plan`.
    async fn plan_batch(&mut self, b: usize, batch: &StoredBatch, plan: &mut Plan) {
        let (stream_seq, stored_ms) = (batch.stream_seq, batch.stored_ms);
        for (index, r) in batch.results.iter().enumerate() {
            // A result's position: its message's sequence and its index in the segment.
            let pos = (stream_seq << 16) | (index as u64 & 0xffff);
            let Some(info) = self.check_of(&r.spec).await else { continue };
            if info.revision > self.rules.revision && self.rules_read_at.elapsed() > RULES_REREAD {
                // A spec of a revision newer than the rules: its rules are newer too (the
                // archive is stored before its specs are rendered). Judge it by them, not by
                // the rules of the last tick.
                self.reload_rules().await;
            }
            let host = r.host.clone();
            let check = info.check.clone();
            self.seen.insert((host.clone(), check.clone()), Seen { last_ms: stored_ms, interval_ms: info.interval_ms });
            if self.rules.rules.is_empty() {
                continue;
            }
            let labels = self.hosts.of(&host);
            for i in 0..self.rules.rules.len() {
                if !self.rules.rules[i].applies(&check, &labels) {
                    continue;
                }
                let rule_id = self.rules.rules[i].id.clone();
                let key = (host.clone(), check.clone(), rule_id.clone());
                let track = self.tracks.entry(key).or_default();
                if track.result_seq >= pos {
                    continue;
                }
                if let Some(when) = &self.rules.rules[i].when {
                    if let Some(b) = when.holds(r) {
                        track.push(b, r.ended_at_ms, pos);
                    }
                }
                let track = *track;
                let id = alarm_id(&host, &check, &rule_id);
                let decision = Decision { rule: i, batch: b, result: index, track, pos, labels: labels.clone() };
                self.decide(&id, decision, r, stream_seq, plan);
            }
        }
    }

    /// Decides one (result, rule) against the alarm as this batch has left it so far, and
    /// adds its transitions to `plan` (the in-memory alarm moves on at once; its stream
    /// sequence only once stored).
    fn decide(&mut self, id: &str, d: Decision, r: &ResultRecord, stream_seq: u64, plan: &mut Plan) {
        let current = self.alarms.get(id).cloned();
        if current.as_ref().is_some_and(|(_, a)| a.result_seq >= d.pos) {
            return;
        }
        let rule = &self.rules.rules[d.rule];
        let now = now_ms();
        let (next, steps) = eval::on_result(rule, &d.track, current.as_ref().map(|(_, a)| a), r, now);
        let entry = plan.entry(id, current.as_ref().map_or(0, |(s, _)| *s));
        entry.decisions.push(d.clone());
        if steps.is_empty() {
            return;
        }
        let Some(mut next) = next else { return };
        let (host, check, _) = steward_subjects::subject::parse_alarm_id(id).unwrap_or_default();
        next.id = id.to_owned();
        next.host = host.to_owned();
        next.check = check.to_owned();
        next.rule = rule.id.clone();
        next.labels = d.labels;
        next.result_seq = d.pos;
        let events = self.events(next, steps, Some(cause_of(r, stream_seq)), now);
        if let Some(last) = events.last() {
            let seq = current.as_ref().map_or(0, |(s, _)| *s);
            self.alarms.insert(id.to_owned(), (seq, last.alarm.clone()));
        }
        entry.events.extend(events);
    }

    /// Stores the planned transitions: alarms concurrently, each alarm's in order. An alarm
    /// whose append meets a concurrent writer is read back and decided again, result by
    /// result.
    async fn store_plan(&mut self, plan: Plan, batches: &[StoredBatch]) -> Result<(), String> {
        let store = self.store.clone();
        let jobs: Vec<(String, u64, Vec<AlarmEvent>)> = plan
            .alarms
            .iter()
            .filter(|a| !a.events.is_empty())
            .map(|a| (a.id.clone(), a.seq_before, a.events.clone()))
            .collect();
        let outcomes: Vec<(String, Result<u64, AlarmStoreError>, Vec<AlarmEvent>)> = futures::stream::iter(jobs)
            .map(|(id, mut seq, events)| {
                let store = store.clone();
                async move {
                    for ev in &events {
                        match store.append(ev, seq).await {
                            Ok(s) => seq = s,
                            Err(e) => return (id, Err(e), events),
                        }
                    }
                    (id, Ok(seq), events)
                }
            })
            .buffer_unordered(APPEND_CONCURRENCY)
            .collect()
            .await;
        let mut redo = Vec::new();
        for (id, outcome, events) in outcomes {
            match outcome {
                Ok(seq) => {
                    for ev in &events {
                        self.metrics
                            .alarm_transitions
                            .get_or_create(&crate::metrics::TransitionLabels::of(ev.kind))
                            .inc();
                    }
                    if let Some(entry) = self.alarms.get_mut(&id) {
                        entry.0 = seq;
                    }
                    if let Some(last) = events.last() {
                        let _ = self.mirror.send(last.alarm.clone());
                        let resolved = events.iter().any(|e| {
                            e.kind == TransitionKind::Resolved
                                || (e.kind == TransitionKind::FlappingEnded && !e.alarm.firing)
                        });
                        if resolved {
                            self.expire_on_resolve(&last.alarm).await;
                        }
                    }
                }
                Err(AlarmStoreError::Conflict(_)) => redo.push(id),
                Err(e) => {
                    self.refresh(&id).await;
                    return Err(format!("alarm {id}: transition not stored: {e}"));
                }
            }
        }
        for id in redo {
            self.refresh(&id).await;
            let decisions = plan.alarms.iter().find(|a| a.id == id).map(|a| a.decisions.clone()).unwrap_or_default();
            for d in decisions {
                let batch = &batches[d.batch];
                let r = &batch.results[d.result];
                self.apply_result(d.rule, &id, &d.track, r, (batch.stream_seq, d.pos), &d.labels).await?;
            }
        }
        Ok(())
    }

    /// The events of `steps`, numbered after `next.n`, each carrying the alarm after it.
    fn events(&self, mut next: AlarmRecord, steps: Vec<Step>, cause: Option<Cause>, now: u64) -> Vec<AlarmEvent> {
        next.silenced_by = self.silences.values().filter(|s| covers(s, &next, now)).map(|s| s.id.clone()).collect();
        next.silenced_by.sort();
        let base = next.n;
        let mut out = Vec::with_capacity(steps.len());
        for (k, step) in steps.into_iter().enumerate() {
            let mut alarm = next.clone();
            alarm.n = base + 1 + k as u64;
            let notify = match step.kind {
                TransitionKind::Firing | TransitionKind::Resolved => alarm.notifies(),
                TransitionKind::FlappingStarted | TransitionKind::FlappingEnded => alarm.silenced_by.is_empty(),
                _ => false,
            };
            out.push(AlarmEvent {
                kind: step.kind,
                n: alarm.n,
                at_ms: now,
                alarm,
                cause: cause.clone(),
                notify,
                detail: step.detail,
                by: "evaluator".into(),
                seq: 0,
            });
        }
        out
    }

    async fn check_of(&mut self, spec: &str) -> Option<Arc<crate::results::catalog::CheckInfo>> {
        if let Some(i) = self.catalog.get(spec) {
            return Some(i);
        }
        if self.unknown.get(spec).is_some_and(|t| t.elapsed() < UNKNOWN_SPEC_TTL) {
            return None;
        }
        let found = self.catalog.resolve(spec, CATALOG_WAIT).await;
        if found.is_none() {
            debug!(spec, "result of a spec the catalog does not know: not evaluated");
            self.unknown.insert(spec.to_owned(), tokio::time::Instant::now());
        }
        found
    }

    /// Decides and stores the transitions of one (result, rule), re-deciding after a conflict.
    async fn apply_result(
        &mut self,
        rule_index: usize,
        id: &str,
        track: &Track,
        r: &ResultRecord,
        (stream_seq, pos): (u64, u64),
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let mut failures = 0;
        for _ in 0..MAX_CONFLICTS {
            let (seq, current) = match self.alarms.get(id) {
                Some((s, a)) => (*s, Some(a.clone())),
                None => (0, None),
            };
            if current.as_ref().is_some_and(|a| a.result_seq >= pos) {
                return Ok(());
            }
            let rule = &self.rules.rules[rule_index];
            let now = now_ms();
            let (next, steps) = eval::on_result(rule, track, current.as_ref(), r, now);
            if steps.is_empty() {
                return Ok(());
            }
            let Some(mut next) = next else { return Ok(()) };
            let (host, check, _) = steward_subjects::subject::parse_alarm_id(id).unwrap_or_default();
            next.id = id.to_owned();
            next.host = host.to_owned();
            next.check = check.to_owned();
            next.rule = rule.id.clone();
            next.labels = labels.clone();
            next.result_seq = pos;
            match self.store_steps(seq, next, steps, Some(cause_of(r, stream_seq))).await {
                Ok(()) => return Ok(()),
                Err(AlarmStoreError::Conflict(_)) => self.refresh(id).await,
                Err(e) => {
                    failures += 1;
                    if failures >= 3 {
                        return Err(format!("alarm {id}: transition not stored: {e}"));
                    }
                    warn!(alarm = id, error = %e, "alarm transition not stored; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                    self.refresh(id).await;
                }
            }
        }
        Err(format!("alarm {id}: transition not stored after {MAX_CONFLICTS} concurrent changes"))
    }

    /// Re-reads an alarm from its subject after a conflict.
    async fn refresh(&mut self, id: &str) {
        match self.store.last(id).await {
            Ok((seq, Some(ev))) => {
                self.alarms.insert(id.to_owned(), (seq, ev.alarm));
            }
            Ok((_, None)) => {
                self.alarms.remove(id);
            }
            Err(e) => warn!(alarm = id, error = %e, "cannot read the alarm back"),
        }
    }

    /// Stores `steps` in order (each numbered, each carrying `next` as the alarm after it).
    async fn store_steps(
        &mut self,
        mut seq: u64,
        next: AlarmRecord,
        steps: Vec<Step>,
        cause: Option<Cause>,
    ) -> Result<(), AlarmStoreError> {
        let events = self.events(next, steps, cause, now_ms());
        let mut resolved = false;
        for ev in events {
            seq = self.store.append(&ev, seq).await?;
            self.metrics.alarm_transitions.get_or_create(&crate::metrics::TransitionLabels::of(ev.kind)).inc();
            resolved |=
                ev.kind == TransitionKind::Resolved || (ev.kind == TransitionKind::FlappingEnded && !ev.alarm.firing);
            self.alarms.insert(ev.alarm.id.clone(), (seq, ev.alarm.clone()));
            let _ = self.mirror.send(ev.alarm.clone());
            if resolved {
                self.expire_on_resolve(&ev.alarm).await;
                resolved = false;
            }
        }
        Ok(())
    }

    /// Ends the silences covering `alarm` that end when it resolves.
    async fn expire_on_resolve(&mut self, alarm: &AlarmRecord) {
        let now = now_ms();
        let ending: Vec<Silence> = self
            .silences
            .values()
            .filter(|s| s.expire_on_resolve && alarm.silenced_by.contains(&s.id) && s.active(now))
            .cloned()
            .collect();
        for mut s in ending {
            s.ended = Some(format!("alarm {} resolved", alarm.id));
            if let Err(e) = self.store.put_silence(&s).await {
                warn!(silence = s.id, error = %e, "cannot end the silence on resolve");
                continue;
            }
            self.silences.insert(s.id.clone(), s);
        }
        self.resilence().await;
    }

    /// Staleness, silence expiry and rule reloads; run every [`TICK`].
    pub(super) async fn tick(&mut self) {
        self.reload_rules().await;
        let now = now_ms();
        // Every live host-bound check is watched from the leader's start, reported or not.
        for info in self.catalog.live().values() {
            if let Some(host) = &info.host {
                self.seen
                    .entry((host.clone(), info.check.clone()))
                    .or_insert(Seen { last_ms: self.started_ms, interval_ms: info.interval_ms });
            }
        }
        let mut due = Vec::new();
        for (i, rule) in self.rules.rules.iter().enumerate() {
            if rule.stale_after.is_none() {
                continue;
            }
            for ((host, check), seen) in &self.seen {
                let labels = self.hosts.of(host);
                if !rule.applies(check, &labels) {
                    continue;
                }
                let id = alarm_id(host, check, &rule.id);
                let current = self.alarms.get(&id).map(|(_, a)| a);
                if let Some(mut next) = eval::on_tick(rule, current, seen.last_ms, seen.interval_ms, now) {
                    next.id = id.clone();
                    next.host = host.clone();
                    next.check = check.clone();
                    next.rule = rule.id.clone();
                    next.labels = labels;
                    due.push((i, id, next));
                }
            }
        }
        for (_, id, next) in due {
            let seq = self.alarms.get(&id).map_or(0, |(s, _)| *s);
            let step = Step { kind: TransitionKind::Firing, detail: "stale".into() };
            if let Err(e) = self.store_steps(seq, next, vec![step], None).await {
                debug!(alarm = id, error = %e, "stale transition not stored; re-reading");
                self.refresh(&id).await;
            }
        }
        self.reload_silences().await;
    }

    /// Re-reads the silences and stores `silenced` / `unsilenced` for the firing alarms whose
    /// coverage changed.
    async fn reload_silences(&mut self) {
        match self.store.silences(&self.client).await {
            Ok(list) => self.silences = list.into_iter().map(|s| (s.id.clone(), s)).collect(),
            Err(e) => {
                debug!(error = %e, "cannot read silences");
                return;
            }
        }
        self.resilence().await;
    }

    async fn resilence(&mut self) {
        let now = now_ms();
        let mut changes = Vec::new();
        for (id, (seq, a)) in &self.alarms {
            if !a.firing {
                continue;
            }
            let mut by: Vec<String> =
                self.silences.values().filter(|s| covers(s, a, now)).map(|s| s.id.clone()).collect();
            by.sort();
            if by != a.silenced_by {
                let kind = if by.is_empty() { TransitionKind::Unsilenced } else { TransitionKind::Silenced };
                let detail = if by.is_empty() { a.silenced_by.join(",") } else { by.join(",") };
                changes.push((id.clone(), *seq, a.clone(), kind, by, detail));
            }
        }
        for (id, seq, a, kind, by, detail) in changes {
            let mut alarm = a;
            alarm.silenced_by = by;
            alarm.n += 1;
            let ev = AlarmEvent {
                kind,
                n: alarm.n,
                at_ms: now,
                alarm: alarm.clone(),
                cause: None,
                // An alarm still firing when its silence ends is announced again.
                notify: kind == TransitionKind::Unsilenced && alarm.notifies(),
                detail,
                by: "evaluator".into(),
                seq: 0,
            };
            match self.store.append(&ev, seq).await {
                Ok(s) => {
                    self.metrics.alarm_transitions.get_or_create(&crate::metrics::TransitionLabels::of(kind)).inc();
                    let _ = self.mirror.send(alarm.clone());
                    self.alarms.insert(id, (s, alarm));
                }
                Err(e) => {
                    debug!(alarm = id, error = %e, "silence transition not stored; re-reading");
                    self.refresh(&id).await;
                }
            }
        }
    }

    /// Number of alarms known.
    pub(super) fn alarm_count(&self) -> (usize, usize) {
        (self.alarms.len(), self.alarms.values().filter(|(_, a)| a.firing).count())
    }
}

/// Where this term's consumer starts. A previous term's consumer is deleted and made again
/// just after its acknowledged floor: what the previous leader was delivered and never
/// acknowledged would otherwise come back only after the ack wait, behind newer results, and a
/// paused predecessor's pull requests would keep taking messages away from this term. Results
/// already applied come back too and are skipped by their position.
async fn resume_point(js: &jetstream::Context, name: &str) -> Result<consumer::DeliverPolicy, String> {
    let stream = js.get_stream_no_info(steward_subjects::streams::RESULTS_STREAM).await.map_err(|e| e.to_string())?;
    let info = match stream.consumer_info(name).await {
        Ok(info) => info,
        Err(e)
            if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound)
                || e.to_string().contains("consumer not found") =>
        {
            return Ok(consumer::DeliverPolicy::New)
        }
        Err(e) => return Err(format!("alarm feed consumer: {e}")),
    };
    let floor = info.ack_floor.stream_sequence;
    stream.delete_consumer(name).await.map_err(|e| format!("alarm feed consumer: {e}"))?;
    info!(after = floor, pending = info.num_ack_pending, "alarm evaluator resumes after the acknowledged floor");
    Ok(if floor > 0 {
        consumer::DeliverPolicy::ByStartSequence { start_sequence: floor + 1 }
    } else {
        // Nothing acknowledged yet: everything since the consumer was made.
        consumer::DeliverPolicy::ByStartTime { start_time: info.created }
    })
}

/// Runs the evaluator until `shutdown` or until leadership is lost.
pub(super) async fn evaluate(
    js: &jetstream::Context,
    subjects: &Subjects,
    engine: &mut Engine,
    guard: &crate::lease::leader::LeaderGuard,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let name = feed_consumer(subjects.account());
    let start = resume_point(js, &name).await?;
    let consumer =
        crate::results::feed::durable(js, subjects, &name, start, MAX_ACK_PENDING).await.map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !guard.is_valid() {
            return Err("alarm leadership lost".into());
        }
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tick.tick() => {
                engine.tick().await;
                let (all, firing) = engine.alarm_count();
                engine.metrics.alarms_known.set(i64::try_from(all).unwrap_or(i64::MAX));
                engine.metrics.alarms_firing.set(i64::try_from(firing).unwrap_or(i64::MAX));
            }
            msg = messages.next() => {
                let first = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        debug!(error = %e, "alarm feed");
                        continue;
                    }
                    None => return Err("alarm feed ended".into()),
                };
                // Every message already here is decided together, and their transitions stored
                // in one round of concurrent appends: a stored message's wait for JetStream is
                // shared instead of paid one message at a time.
                let mut msgs = vec![first];
                while msgs.len() < MAX_BATCH_MESSAGES {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(m))) => msgs.push(m),
                        _ => break,
                    }
                }
                let mut batches = Vec::with_capacity(msgs.len());
                for m in &msgs {
                    match crate::results::feed::decode(m) {
                        Ok(b) => batches.push(b),
                        Err(e) => warn!(error = %e, "undecodable stored result message: not evaluated"),
                    }
                }
                // A traced result's transitions join its trace (the append writes the current
                // context into each transition's headers): the first traced message's.
                let traced = msgs.iter().find(|m| steward_subjects::trace::context_of(m.headers.as_ref()).is_some());
                let span = steward_subjects::trace::hop(traced.and_then(|m| m.headers.as_ref()), || {
                    tracing::info_span!("alarm.evaluate", otel.name = "alarm.evaluate", messages = msgs.len())
                });
                engine.on_batches(&batches).instrument(span).await?;
                for m in msgs {
                    if let Err(e) = m.ack().await {
                        debug!(error = %e, "alarm feed ack");
                    }
                }
            }
        }
    }
}
