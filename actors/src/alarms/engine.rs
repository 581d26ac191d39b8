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
use futures::StreamExt;
use steward_subjects::api::alarm::{AlarmEvent, AlarmRecord, Cause, Silence, TransitionKind};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::result::ResultRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::selector::Selector;
use steward_subjects::streams::{CONFIG_BUCKET, HOSTS_BUCKET};
use steward_subjects::subject::{alarm_id, host_registry_filter, parse_registry_key};
use steward_subjects::{AccountId, Subjects};
use tracing::{debug, info, warn};

use super::eval::{self, RuleSet, Step, Track};
use super::store::{AlarmStore, AlarmStoreError};
use crate::now_ms;
use crate::results::catalog::SpecCatalog;

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
    metrics: &'static crate::metrics::Metrics,
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
            metrics: crate::metrics::global(),
        };
        engine.reload_rules().await;
        Ok(engine)
    }

    /// Re-reads the rules when a newer configuration revision exists.
    pub(super) async fn reload_rules(&mut self) {
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
    pub(super) async fn on_batch(&mut self, stream_seq: u64, stored_ms: u64, results: &[ResultRecord]) {
        for (index, r) in results.iter().enumerate() {
            // A result's position: its message's sequence and its index in the segment.
            let pos = (stream_seq << 16) | (index as u64 & 0xffff);
            let Some(info) = self.check_of(&r.spec).await else { continue };
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
                self.apply_result(i, &id, &track, r, (stream_seq, pos), &labels).await;
            }
        }
        self.metrics.alarm_results_evaluated.inc_by(results.len() as u64);
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
    ) {
        for _ in 0..MAX_CONFLICTS {
            let (seq, current) = match self.alarms.get(id) {
                Some((s, a)) => (*s, Some(a.clone())),
                None => (0, None),
            };
            if current.as_ref().is_some_and(|a| a.result_seq >= pos) {
                return;
            }
            let rule = &self.rules.rules[rule_index];
            let now = now_ms();
            let (next, steps) = eval::on_result(rule, track, current.as_ref(), r, now);
            if steps.is_empty() {
                return;
            }
            let Some(mut next) = next else { return };
            let (host, check, _) = steward_subjects::subject::parse_alarm_id(id).unwrap_or_default();
            next.id = id.to_owned();
            next.host = host.to_owned();
            next.check = check.to_owned();
            next.rule = rule.id.clone();
            next.labels = labels.clone();
            next.result_seq = pos;
            let cause = Cause {
                result_seq: stream_seq,
                spec: r.spec.clone(),
                key: r.idempotency_key(),
                status: Some(r.status),
                metrics: r.metrics.clone(),
                ended_at_ms: r.ended_at_ms,
                message: r.message.clone(),
            };
            match self.store_steps(seq, next, steps, Some(cause)).await {
                Ok(()) => return,
                Err(AlarmStoreError::Conflict(_)) => self.refresh(id).await,
                Err(e) => {
                    warn!(alarm = id, error = %e, "alarm transition not stored; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.refresh(id).await;
                }
            }
        }
        warn!(alarm = id, "alarm transition gave up after repeated conflicts");
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
        mut next: AlarmRecord,
        steps: Vec<Step>,
        cause: Option<Cause>,
    ) -> Result<(), AlarmStoreError> {
        let now = now_ms();
        next.silenced_by = self.silences.values().filter(|s| covers(s, &next, now)).map(|s| s.id.clone()).collect();
        next.silenced_by.sort();
        let base = next.n;
        let mut resolved = false;
        for (k, step) in steps.into_iter().enumerate() {
            let mut alarm = next.clone();
            alarm.n = base + 1 + k as u64;
            let notify = match step.kind {
                TransitionKind::Firing | TransitionKind::Resolved => alarm.notifies(),
                TransitionKind::FlappingStarted | TransitionKind::FlappingEnded => alarm.silenced_by.is_empty(),
                _ => false,
            };
            resolved |=
                step.kind == TransitionKind::Resolved || (step.kind == TransitionKind::FlappingEnded && !alarm.firing);
            let ev = AlarmEvent {
                kind: step.kind,
                n: alarm.n,
                at_ms: now,
                alarm: alarm.clone(),
                cause: cause.clone(),
                notify,
                detail: step.detail,
                by: "evaluator".into(),
                seq: 0,
            };
            seq = self.store.append(&ev, seq).await?;
            self.metrics.alarm_transitions.get_or_create(&crate::metrics::TransitionLabels::of(ev.kind)).inc();
            self.alarms.insert(alarm.id.clone(), (seq, alarm.clone()));
            next = alarm;
        }
        if resolved {
            self.expire_on_resolve(&next).await;
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

/// Runs the evaluator until `shutdown` or until leadership is lost.
pub(super) async fn evaluate(
    js: &jetstream::Context,
    subjects: &Subjects,
    engine: &mut Engine,
    guard: &crate::lease::leader::LeaderGuard,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let consumer = crate::results::feed::durable(
        js,
        subjects,
        &feed_consumer(subjects.account()),
        consumer::DeliverPolicy::New,
        MAX_ACK_PENDING,
    )
    .await
    .map_err(|e| e.to_string())?;
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
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        debug!(error = %e, "alarm feed");
                        continue;
                    }
                    None => return Err("alarm feed ended".into()),
                };
                match crate::results::feed::decode(&msg) {
                    Ok(batch) => engine.on_batch(batch.stream_seq, batch.stored_ms, &batch.results).await,
                    Err(e) => warn!(error = %e, "undecodable stored result message: not evaluated"),
                }
                if let Err(e) = msg.ack().await {
                    debug!(error = %e, "alarm feed ack");
                }
            }
        }
    }
}
