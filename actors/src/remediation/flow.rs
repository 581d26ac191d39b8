//! What the remediation service does with one alarm transition, one ended run, one approval.
//!
//! Every decision is a compare-and-set on the ledger first (so caps hold across hub instances),
//! then the side effects: the run dispatched with the remediation's idempotency key, the
//! transition noted on the alarm's timeline (once: the ledger remembers what was noted, and a
//! note identical to the timeline's last transition is not repeated), the re-check published.
//! A transition is acknowledged only after its decision and notes are stored, so a hub killed
//! half-way redoes the rest on redelivery without a second run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use steward_subjects::api::alarm::{AlarmEvent, AlarmRecord, TransitionKind};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::remediation::{
    remediation_id, remediation_run_key, RecheckNotice, Remediation, RemediationLedger, RemediationState,
};
use steward_subjects::api::run::{Job, RunRecord, RunRequest, RunStatus};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{duration, ConfigDocument, RemediationAction, RemediationRule};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::selector::Selector;
use steward_subjects::streams::HOSTS_BUCKET;
use steward_subjects::subject::host_registry_filter;
use steward_subjects::{ErrorCode, RuntimeId, Subjects};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::store::{held_reason, reserve, Guards, LedgerError, LedgerStore};
use crate::alarms::store::{AlarmStore, AlarmStoreError};
use crate::config_manager::playbooks::PlaybookStore;
use crate::dispatcher::client::DispatcherClient;
use crate::dispatcher::store::RunStore;
use crate::metrics::TransitionLabels;
use crate::now_ms;

/// How long a read configuration document is used before the head revision is read again.
const DOC_TTL: Duration = Duration::from_secs(1);
/// A remediation left `starting` this long (its dispatch failed or its hub died) is started
/// again by the sweep, with the same idempotency key.
const RESTART_AFTER_MS: u64 = 3000;
/// Who the remediation service's timeline entries are by.
const BY: &str = "remediation";

/// A failed remediation step (retried: the transition is offered again, or the sweep comes back).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The alarm store failed.
    #[error(transparent)]
    Alarms(#[from] AlarmStoreError),
    /// The configuration or run records could not be read.
    #[error("cannot read {what}: {reason}")]
    Read {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a remediation that passed its guards could not be dispatched (recorded as its outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotStarted {
    /// The rule names no action.
    #[error("the rule has no action")]
    NoAction,
    /// The playbook could not be stored for sending by reference.
    #[error("playbook {url}: {reason}")]
    Playbook {
        /// The playbook's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The rule's runner selector does not parse.
    #[error("bad runner selector: {0}")]
    BadRunner(String),
    /// No connected host matches the runner selector.
    #[error("no connected runner matches {0:?}")]
    NoRunner(String),
}

fn read_err(what: &'static str) -> impl FnOnce(String) -> FlowError {
    move |reason| FlowError::Read { what, reason }
}

/// Why an approval did not start a remediation.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// No such remediation.
    #[error("no remediation {0}")]
    NotFound(String),
    /// It is not held, or a guard other than approval still holds it.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// The remediation service's shared state.
pub struct Core {
    pub(super) client: async_nats::Client,
    pub(super) subjects: Subjects,
    js: jetstream::Context,
    alarms: AlarmStore,
    pub(super) ledger: LedgerStore,
    runs: RunStore,
    dispatcher: DispatcherClient,
    playbooks: PlaybookStore,
    config_kv: kv::Store,
    doc: Mutex<Option<(Instant, Option<Arc<ConfigDocument>>)>>,
}

impl Core {
    /// Opens the stores of the account of `subjects`.
    ///
    /// # Errors
    /// [`FlowError`] when a bucket cannot be opened.
    pub async fn open(client: async_nats::Client, subjects: Subjects) -> Result<Self, FlowError> {
        let js = jetstream::new(client.clone());
        let alarms = AlarmStore::open(&js, &subjects).await?;
        let ledger = LedgerStore::new(alarms.kv().clone(), subjects.account());
        let runs = RunStore::open(js.clone(), subjects.clone()).await.map_err(|e| read_err("runs")(e.to_string()))?;
        let config_kv = js
            .get_key_value(steward_subjects::streams::CONFIG_BUCKET)
            .await
            .map_err(|e| read_err("configuration")(e.to_string()))?;
        Ok(Core {
            dispatcher: DispatcherClient::new(client.clone(), subjects.clone()),
            playbooks: PlaybookStore::new(js.clone(), subjects.account().clone()),
            client,
            subjects,
            js,
            alarms,
            ledger,
            runs,
            config_kv,
            doc: Mutex::new(None),
        })
    }

    /// The current configuration document (read again at most every [`DOC_TTL`]).
    async fn document(&self) -> Result<Option<Arc<ConfigDocument>>, FlowError> {
        let mut cached = self.doc.lock().await;
        if let Some((at, doc)) = cached.as_ref() {
            if at.elapsed() < DOC_TTL {
                return Ok(doc.clone());
            }
        }
        let account = self.subjects.account();
        let head = crate::renderer::head_revision(&self.client, &self.config_kv, account)
            .await
            .map_err(|e| read_err("configuration")(e.to_string()))?;
        let doc = if head == 0 {
            None
        } else {
            let a = crate::renderer::read_archive(&self.config_kv, account, head)
                .await
                .map_err(|e| read_err("configuration")(e.to_string()))?;
            Some(Arc::new(a.document))
        };
        *cached = Some((Instant::now(), doc.clone()));
        Ok(doc)
    }

    /// The remediation rule `id` of the current document.
    async fn rule(&self, id: &str) -> Result<Option<RemediationRule>, FlowError> {
        Ok(self.document().await?.and_then(|d| d.remediations.iter().find(|r| r.id == id).cloned()))
    }

    /// Handles one stored alarm transition.
    ///
    /// # Errors
    /// [`FlowError`] when a step failed: the transition should be offered again.
    pub async fn on_event(&self, ev: &AlarmEvent) -> Result<(), FlowError> {
        match ev.kind {
            TransitionKind::Firing => {
                let Some(doc) = self.document().await? else { return Ok(()) };
                for rule in doc.remediations.iter().filter(|r| applies(r, &ev.alarm)) {
                    self.decide(ev, rule).await?;
                }
                Ok(())
            }
            TransitionKind::Resolved => {
                // Most alarms have no remediation rule: their resolves cost no ledger read.
                let Some(doc) = self.document().await? else { return Ok(()) };
                if !doc.remediations.iter().any(|r| r.alarm == ev.alarm.rule) {
                    return Ok(());
                }
                self.resolved(&ev.alarm).await
            }
            _ => Ok(()),
        }
    }

    /// Starts or holds the remediation of `rule` for the firing `ev`, once per firing.
    async fn decide(&self, ev: &AlarmEvent, rule: &RemediationRule) -> Result<(), FlowError> {
        let id = remediation_id(&rule.id, &ev.alarm.id, ev.n);
        let now = now_ms();
        let g = guards(rule);
        let template = Remediation {
            id: id.clone(),
            rule: rule.id.clone(),
            alarm: ev.alarm.id.clone(),
            host: ev.alarm.host.clone(),
            check: ev.alarm.check.clone(),
            spec: ev.cause.as_ref().map(|c| c.spec.clone()).unwrap_or_default(),
            firing_n: ev.n,
            created_ms: now,
            ..Remediation::default()
        };
        let r = self
            .ledger
            .update(|l| {
                if let Some(r) = l.remediations.get(&id) {
                    return (r.clone(), false);
                }
                let mut r = template.clone();
                match held_reason(l, &rule.id, &r.host, g, now, false) {
                    Some(reason) => r.reason = reason,
                    None => reserve(l, &mut r, now),
                }
                l.remediations.insert(id.clone(), r.clone());
                (r, true)
            })
            .await?;
        if r.state == RemediationState::Held && !r.noted.iter().any(|n| n == "held") {
            info!(remediation = %r.id, reason = %r.reason, "remediation held");
        }
        self.advance(r, Some(rule)).await
    }

    /// Takes `r` one step on: notes a hold, dispatches a start, notes a run.
    async fn advance(&self, r: Remediation, rule: Option<&RemediationRule>) -> Result<(), FlowError> {
        match r.state {
            RemediationState::Held => {
                let detail = format!("{}: {}", r.id, r.reason);
                self.note_once(&r, "held", TransitionKind::RemediationHeld, detail).await
            }
            RemediationState::Starting => match rule {
                Some(rule) => self.start(r, rule).await,
                None => self.not_started(&r, "its remediation rule was removed").await,
            },
            RemediationState::Running => {
                let mut detail = format!("{}: run {} on {}", r.id, r.run_id, r.target);
                if !r.approved_by.is_empty() {
                    detail.push_str(&format!(" (approved by {})", r.approved_by));
                }
                self.note_once(&r, "started", TransitionKind::RemediationStarted, detail).await
            }
            RemediationState::Finished => self.note_finished(&r).await,
            RemediationState::Unknown => Ok(()),
        }
    }

    /// Dispatches the run of a `starting` remediation.
    async fn start(&self, r: Remediation, rule: &RemediationRule) -> Result<(), FlowError> {
        let job = match self.job(rule).await {
            Ok(job) => job,
            Err(why) => return self.not_started(&r, &why.to_string()).await,
        };
        let target = match self.target(rule, &r).await? {
            Ok(t) => t,
            Err(why) => return self.not_started(&r, &why.to_string()).await,
        };
        let (_, _, alarm_rule) = steward_subjects::subject::parse_alarm_id(&r.alarm).unwrap_or(("", "", ""));
        let labels = [
            ("remediation", rule.id.as_str()),
            ("alarm-host", r.host.as_str()),
            ("alarm-check", r.check.as_str()),
            ("alarm-rule", alarm_rule),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("alarm-firing".to_owned(), r.firing_n.to_string())])
        .collect();
        let timeout_ms = duration::parse(&rule.timeout).map(crate::duration_ms).unwrap_or(300_000).max(1);
        let req = RunRequest {
            hosts: vec![target.clone()],
            job,
            labels,
            timeout_ms,
            idempotency_key: remediation_run_key(&r.id),
            ..RunRequest::default()
        };
        let accepted = match self.dispatcher.dispatch(&req).await {
            Ok(a) => a,
            Err(e) if e.kind() == RequestErrorKind::Remote(ErrorCode::Invalid) => {
                let why = e.remote().map_or_else(|| e.to_string(), |w| w.message.clone());
                return self.not_started(&r, &why).await;
            }
            Err(e) => {
                // Transient (no dispatcher yet, a timeout): the sweep starts it again with the
                // same idempotency key, so at most one run comes of it.
                warn!(remediation = %r.id, error = %e, "remediation run not dispatched yet");
                return Ok(());
            }
        };
        let now = now_ms();
        let started = self
            .ledger
            .update(|l| match l.remediations.get_mut(&r.id) {
                Some(x) if x.state == RemediationState::Starting => {
                    x.state = RemediationState::Running;
                    x.run_id.clone_from(&accepted.run_id);
                    x.target.clone_from(&target);
                    x.started_ms = now;
                    (Some(x.clone()), true)
                }
                Some(x) => (Some(x.clone()), false),
                None => (None, false),
            })
            .await?;
        info!(remediation = %r.id, run_id = %accepted.run_id, target = %target, existing = accepted.existing, "remediation started");
        match started {
            Some(x) => Box::pin(self.advance(x, Some(rule))).await,
            None => Ok(()),
        }
    }

    /// The job of `rule`'s action (a playbook is stored and sent by reference, signed).
    async fn job(&self, rule: &RemediationRule) -> Result<Job, NotStarted> {
        match &rule.action {
            Some(RemediationAction::Command { argv }) => Ok(Job::command(argv.clone())),
            Some(RemediationAction::Playbook { url }) => crate::enablement::store_playbook(&self.playbooks, url)
                .await
                .map(Job::playbook_by_ref)
                .map_err(|e| NotStarted::Playbook { url: url.clone(), reason: e.to_string() }),
            None => Err(NotStarted::NoAction),
        }
    }

    /// Where the run goes: the alarm's host, or one connected runner matching `rule.runner`
    /// (the same runner for the same alarm while the pool does not change).
    async fn target(&self, rule: &RemediationRule, r: &Remediation) -> Result<Result<String, NotStarted>, FlowError> {
        if rule.runner.trim().is_empty() {
            return Ok(Ok(r.host.clone()));
        }
        let selector = match Selector::parse(&rule.runner) {
            Ok(s) => s,
            Err(e) => return Ok(Err(NotStarted::BadRunner(e.to_string()))),
        };
        let records: Vec<(String, HostRecord)> = crate::dispatcher::store::read_latest(
            &self.js,
            HOSTS_BUCKET,
            &host_registry_filter(self.subjects.account()),
        )
        .await
        .map_err(|e| read_err("hosts")(e.to_string()))?;
        let mut pool: Vec<String> = records
            .into_iter()
            .filter(|(_, h)| h.online && selector.matches(&h.labels))
            .map(|(_, h)| h.host_id)
            .collect();
        pool.sort();
        if pool.is_empty() {
            return Ok(Err(NotStarted::NoRunner(rule.runner.clone())));
        }
        let pick = r.alarm.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let i = usize::try_from(pick % pool.len() as u64).unwrap_or(0);
        Ok(Ok(pool.swap_remove(i)))
    }

    /// Ends a remediation that could not be started (its slot is freed), and notes it.
    async fn not_started(&self, r: &Remediation, why: &str) -> Result<(), FlowError> {
        warn!(remediation = %r.id, reason = why, "remediation not started");
        let outcome = format!("not started: {why}");
        let done = self.finish_with(&r.id, RemediationState::Starting, &outcome).await?;
        match done {
            Some(x) => self.note_finished(&x).await,
            None => Ok(()),
        }
    }

    /// Moves `id` from `from` to finished with `outcome`; the remediation when this call did it.
    async fn finish_with(
        &self,
        id: &str,
        from: RemediationState,
        outcome: &str,
    ) -> Result<Option<Remediation>, FlowError> {
        let now = now_ms();
        Ok(self
            .ledger
            .update(|l| match l.remediations.get_mut(id) {
                Some(x) if x.state == from => {
                    x.state = RemediationState::Finished;
                    x.outcome = outcome.to_owned();
                    x.finished_ms = now;
                    (Some(x.clone()), true)
                }
                _ => (None, false),
            })
            .await?)
    }

    /// Notes a finished remediation on the timeline, then asks for the re-check of its spec.
    async fn note_finished(&self, r: &Remediation) -> Result<(), FlowError> {
        if r.noted.iter().any(|n| n == "finished") {
            return Ok(());
        }
        let detail = if r.run_id.is_empty() {
            format!("{}: {}", r.id, r.outcome)
        } else {
            format!("{}: run {} {}", r.id, r.run_id, r.outcome)
        };
        self.note_once(r, "finished", TransitionKind::RemediationFinished, detail).await?;
        if !r.run_id.is_empty() {
            self.recheck(r).await;
        }
        Ok(())
    }

    /// Asks the runtime holding the alarm's spec to run it now (core NATS: a runtime that is
    /// away runs it at its next interval anyway).
    async fn recheck(&self, r: &Remediation) {
        if r.spec.is_empty() {
            debug!(remediation = %r.id, "no spec to re-check (the firing named none)");
            return;
        }
        let Ok(runtime) = RuntimeId::parse(&r.host) else { return };
        let notice = RecheckNotice { spec: r.spec.clone(), reason: r.id.clone() };
        let Ok(bytes) = codec::encode(Encoding::MsgPack, &notice) else { return };
        match self.client.publish(self.subjects.jobspec_recheck(&runtime), bytes).await {
            Ok(()) => info!(remediation = %r.id, spec = %r.spec, runtime = %runtime, "re-check asked for"),
            Err(e) => warn!(remediation = %r.id, error = %e, "re-check not published"),
        }
    }

    /// Appends `kind` with `detail` to the alarm's timeline unless the ledger says `tag` was
    /// noted, then records that it was.
    async fn note_once(
        &self,
        r: &Remediation,
        tag: &'static str,
        kind: TransitionKind,
        detail: String,
    ) -> Result<(), FlowError> {
        if r.noted.iter().any(|n| n == tag) {
            return Ok(());
        }
        self.note(&r.alarm, kind, detail).await?;
        self.ledger
            .update(|l| match l.remediations.get_mut(&r.id) {
                Some(x) if !x.noted.iter().any(|n| n == tag) => {
                    x.noted.push(tag.to_owned());
                    ((), true)
                }
                _ => ((), false),
            })
            .await?;
        Ok(())
    }

    /// Appends one transition to `alarm_id`'s timeline (the alarm record carried over, its
    /// number one up), retrying when another writer came first. A transition equal to the
    /// timeline's last one (a note stored just before a crash) is not appended again.
    async fn note(&self, alarm_id: &str, kind: TransitionKind, detail: String) -> Result<(), FlowError> {
        for _ in 0..64 {
            let (seq, last) = self.alarms.last(alarm_id).await?;
            let Some(prev) = last else {
                warn!(alarm = alarm_id, "alarm has no timeline, remediation not noted");
                return Ok(());
            };
            if prev.kind == kind && prev.detail == detail {
                return Ok(());
            }
            let mut alarm = prev.alarm;
            alarm.n = prev.n + 1;
            let ev = AlarmEvent {
                kind,
                n: alarm.n,
                at_ms: now_ms(),
                notify: alarm.notifies(),
                alarm,
                cause: None,
                detail: detail.clone(),
                by: BY.to_owned(),
                seq: 0,
            };
            match self.alarms.append(&ev, seq).await {
                Ok(_) => {
                    // Counted with the evaluator's transitions (`steward_alarm_transitions{kind}`).
                    crate::metrics::global().alarm_transitions.get_or_create(&TransitionLabels::of(kind)).inc();
                    return Ok(());
                }
                Err(AlarmStoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AlarmStoreError::Conflict(alarm_id.to_owned()).into())
    }

    /// An alarm resolved: its finished remediations cleared it; its held ones are not needed.
    async fn resolved(&self, alarm: &AlarmRecord) -> Result<(), FlowError> {
        let now = now_ms();
        self.ledger
            .update(|l| {
                let mut changed = false;
                for r in l.remediations.values_mut().filter(|r| r.alarm == alarm.id) {
                    match r.state {
                        RemediationState::Finished if r.cleared.is_none() && !r.run_id.is_empty() => {
                            r.cleared = Some(true);
                            changed = true;
                        }
                        RemediationState::Held => {
                            r.state = RemediationState::Finished;
                            r.outcome = "not run: the alarm resolved".to_owned();
                            r.finished_ms = now;
                            changed = true;
                        }
                        _ => {}
                    }
                }
                ((), changed)
            })
            .await?;
        Ok(())
    }

    /// Ends remediations whose run ended, starts again those whose dispatch did not complete,
    /// and notes what a killed hub left un-noted.
    ///
    /// # Errors
    /// [`FlowError`] when the ledger or a run record cannot be read.
    pub async fn sweep(&self) -> Result<(), FlowError> {
        let (ledger, _) = self.ledger.read().await?;
        let now = now_ms();
        for r in ledger.remediations.values() {
            match r.state {
                RemediationState::Running => {
                    let run = self.runs.run(&r.run_id).await.map_err(|e| read_err("run")(e.to_string()))?;
                    match run {
                        Some(run) if run.status.is_terminal() => self.run_ended(r, &run).await?,
                        Some(_) => {}
                        None => {
                            if let Some(x) = self
                                .finish_with(&r.id, RemediationState::Running, "lost: its run record is gone")
                                .await?
                            {
                                self.note_finished(&x).await?;
                            }
                        }
                    }
                }
                RemediationState::Starting if now.saturating_sub(r.started_ms) > RESTART_AFTER_MS => {
                    let rule = self.rule(&r.rule).await?;
                    self.advance(r.clone(), rule.as_ref()).await?;
                }
                RemediationState::Finished
                    if !r.noted.iter().any(|n| n == "finished")
                        && now.saturating_sub(r.finished_ms) > RESTART_AFTER_MS =>
                {
                    self.note_finished(r).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A remediation's run ended: free its slot, note the outcome, ask for the re-check.
    async fn run_ended(&self, r: &Remediation, run: &RunRecord) -> Result<(), FlowError> {
        let mut outcome = run.status.as_str().to_owned();
        if run.status != RunStatus::Success {
            let hosts = self.runs.hosts(&run.run_id).await.map_err(|e| read_err("run hosts")(e.to_string()))?;
            if let Some(h) = hosts.first() {
                if !h.reason.is_empty() {
                    outcome = format!("{outcome}: {}", h.reason);
                }
                if let Some(code) = h.exit_code {
                    outcome = format!("{outcome} (exit {code})");
                }
            }
        }
        if let Some(x) = self.finish_with(&r.id, RemediationState::Running, &outcome).await? {
            info!(remediation = %x.id, run_id = %x.run_id, outcome = %outcome, "remediation finished");
            self.note_finished(&x).await?;
        }
        Ok(())
    }

    /// Starts a held remediation an operator approved, if the other guards allow it now.
    ///
    /// # Errors
    /// [`ApproveError`]: not found, not held, held by another guard, or a store failure.
    pub async fn approve(&self, id: &str, author: &str) -> Result<Remediation, ApproveError> {
        let found = self.ledger.read().await.map_err(FlowError::from)?.0.remediations.get(id).cloned();
        let Some(found) = found else { return Err(ApproveError::NotFound(id.to_owned())) };
        let Some(rule) = self.rule(&found.rule).await? else {
            return Err(ApproveError::Conflict(format!("remediation rule {} is no longer configured", found.rule)));
        };
        let g = guards(&rule);
        let now = now_ms();
        let decided = self
            .ledger
            .update(|l| {
                let Some(r) = l.remediations.get(id).cloned() else {
                    return (Err(ApproveError::NotFound(id.to_owned())), false);
                };
                if r.state != RemediationState::Held {
                    return (Err(ApproveError::Conflict(format!("remediation {id} is {}", r.state.as_str()))), false);
                }
                if let Some(reason) = held_reason(l, &r.rule, &r.host, g, now, true) {
                    return (Err(ApproveError::Conflict(format!("remediation {id} is still held: {reason}"))), false);
                }
                let mut r = r;
                reserve(l, &mut r, now);
                r.approved_by = author.to_owned();
                l.remediations.insert(r.id.clone(), r.clone());
                (Ok(r), true)
            })
            .await
            .map_err(FlowError::from)??;
        info!(remediation = %id, author, "remediation approved");
        self.start(decided, &rule).await?;
        let after = self.ledger.read().await.map_err(FlowError::from)?.0.remediations.get(id).cloned();
        Ok(after.unwrap_or_default())
    }

    /// The remediations matching `filter`, newest first.
    ///
    /// # Errors
    /// [`FlowError`] when the ledger cannot be read.
    pub async fn list(&self, filter: impl Fn(&Remediation) -> bool) -> Result<Vec<Remediation>, FlowError> {
        let (ledger, _): (RemediationLedger, u64) = self.ledger.read().await?;
        let mut out: Vec<Remediation> = ledger.remediations.into_values().filter(|r| filter(r)).collect();
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Whether `rule` answers `alarm` (its alarm rule, its check if given, its host selector).
fn applies(rule: &RemediationRule, alarm: &AlarmRecord) -> bool {
    rule.alarm == alarm.rule
        && (rule.check.is_empty() || rule.check == alarm.check)
        && Selector::parse(&rule.selector).is_ok_and(|s| s.matches(&alarm.labels))
}

/// The guards of `rule` (an unparsable cooldown, which validation refuses, counts as none).
fn guards(rule: &RemediationRule) -> Guards {
    Guards {
        cooldown_ms: duration::parse(&rule.cooldown).map(crate::duration_ms).unwrap_or(0),
        max_in_flight: rule.max_in_flight.max(1),
        max_per_hour: rule.max_per_hour.max(1),
        approval: rule.approval,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    fn alarm(rule: &str, check: &str, env: &str) -> AlarmRecord {
        AlarmRecord {
            id: format!("h.{check}.{rule}"),
            host: "h".into(),
            check: check.into(),
            rule: rule.into(),
            labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
            ..AlarmRecord::default()
        }
    }

    #[test]
    fn a_rule_answers_its_alarm_rule_check_and_hosts_only() {
        let rule = RemediationRule {
            id: "fix".into(),
            alarm: "full".into(),
            check: "disk".into(),
            selector: "env=prod".into(),
            ..RemediationRule::default()
        };
        assert!(applies(&rule, &alarm("full", "disk", "prod")));
        assert!(!applies(&rule, &alarm("other", "disk", "prod")), "another alarm rule");
        assert!(!applies(&rule, &alarm("full", "load", "prod")), "another check");
        assert!(!applies(&rule, &alarm("full", "disk", "dev")), "a host outside the selector");
        let any = RemediationRule { check: String::new(), selector: String::new(), ..rule };
        assert!(applies(&any, &alarm("full", "load", "dev")), "empty check and selector match all");
        let broken = RemediationRule { selector: "env in (".into(), ..any };
        assert!(!applies(&broken, &alarm("full", "load", "dev")), "a selector that does not parse matches nothing");
    }

    #[test]
    fn guards_come_from_the_rule() {
        let rule = RemediationRule {
            cooldown: "90s".into(),
            max_in_flight: 0,
            max_per_hour: 7,
            approval: true,
            ..RemediationRule::default()
        };
        let g = guards(&rule);
        assert_eq!(g, Guards { cooldown_ms: 90_000, max_in_flight: 1, max_per_hour: 7, approval: true });
    }
}
