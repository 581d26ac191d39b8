//! Alarms: the alarm record kept in `steward_alarms`, the transitions stored on each alarm's
//! subject of `STEWARD_ALARM_EVENTS` (its timeline), silences, acknowledgements and the
//! request/reply types of the alarm endpoints.
//!
//! An alarm exists per (host, check, rule) once the rule first fires for that check on that
//! host; it stays (resolved) afterwards so its timeline can be read and a new firing continues
//! its numbering. Every transition carries the alarm as it is *after* the transition and its
//! number `n` (1, 2, ... per alarm): the last message on an alarm's subject is its current
//! state, which is how a writer that lost a race, or a hub that was killed between storing a
//! transition and updating the bucket, catches up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::result::ResultStatus;

/// How bad an alarm is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs attention.
    #[default]
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What happened to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The rule's condition held (for its duration or count), or the check went stale.
    Firing,
    /// The clear condition held (or a result came for a stale check).
    Resolved,
    /// The state changed too often over the last results: notifications pause.
    FlappingStarted,
    /// The state settled: the current state is notified.
    FlappingEnded,
    /// An operator acknowledged the alarm.
    Acknowledged,
    /// A silence started to cover the alarm.
    Silenced,
    /// No silence covers the alarm any more.
    Unsilenced,
    /// A remediation run was started for the alarm.
    RemediationStarted,
    /// A remediation was held by a guard (cooldown, in flight, hourly cap, approval).
    RemediationHeld,
    /// A remediation run ended (its outcome in the detail).
    RemediationFinished,
    /// A newer peer's transition this peer does not know.
    #[serde(other)]
    Other,
}

impl TransitionKind {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Firing => "firing",
            TransitionKind::Resolved => "resolved",
            TransitionKind::FlappingStarted => "flapping_started",
            TransitionKind::FlappingEnded => "flapping_ended",
            TransitionKind::Acknowledged => "acknowledged",
            TransitionKind::Silenced => "silenced",
            TransitionKind::Unsilenced => "unsilenced",
            TransitionKind::RemediationStarted => "remediation_started",
            TransitionKind::RemediationHeld => "remediation_held",
            TransitionKind::RemediationFinished => "remediation_finished",
            TransitionKind::Other => "other",
        }
    }
}

/// An acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ack {
    /// Who acknowledged.
    pub author: String,
    /// Why.
    pub comment: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One alarm: a rule firing (or having fired) for one check on one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlarmRecord {
    /// `<host>.<check>.<rule>`.
    pub id: String,
    /// The host.
    pub host: String,
    /// The check (attestation id).
    pub check: String,
    /// The alarm rule.
    pub rule: String,
    /// Severity (the rule's).
    pub severity: Severity,
    /// Whether it fires now.
    pub firing: bool,
    /// Why it fires or last fired: `breach` or `stale`.
    pub reason: String,
    /// Whether it is flapping (notifications paused).
    pub flapping: bool,
    /// When it last started firing or resolved, ms since the Unix epoch.
    pub since_ms: u64,
    /// The rule's metric value in the result that caused the last firing or resolve.
    pub value: Option<f64>,
    /// One line: what the last transition found.
    pub message: String,
    /// The acknowledgement of the current firing (cleared when it resolves).
    pub ack: Option<Ack>,
    /// Ids of the silences covering it now.
    pub silenced_by: Vec<String>,
    /// The host's labels when the alarm last changed.
    pub labels: BTreeMap<String, String>,
    /// Number of the last transition (1, 2, ...).
    pub n: u64,
    /// Position of the last stored result this alarm has taken into account: the stream
    /// sequence of its message × 65,536 + its index in that segment.
    pub result_seq: u64,
}

impl AlarmRecord {
    /// Whether notifications of this alarm go out now (not silenced, not flapping).
    #[must_use]
    pub fn notifies(&self) -> bool {
        self.silenced_by.is_empty() && !self.flapping
    }

    /// `firing`, `firing (acked)`, `ok`, with `silenced` and `flapping` marks.
    #[must_use]
    pub fn state_label(&self) -> String {
        let mut s = String::from(if self.firing { "firing" } else { "ok" });
        if self.firing && self.ack.is_some() {
            s.push_str(",acked");
        }
        if !self.silenced_by.is_empty() {
            s.push_str(",silenced");
        }
        if self.flapping {
            s.push_str(",flapping");
        }
        s
    }
}

/// The result that caused a transition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cause {
    /// Stream sequence of the stored message holding it.
    pub result_seq: u64,
    /// Spec id.
    pub spec: String,
    /// Idempotency key of the result.
    pub key: String,
    /// Its status.
    pub status: Option<ResultStatus>,
    /// Its metrics.
    pub metrics: BTreeMap<String, f64>,
    /// When it ended, ms since the Unix epoch (runtime clock).
    pub ended_at_ms: u64,
    /// Its one-line message.
    pub message: String,
}

/// One transition of one alarm, stored on the alarm's subject of `STEWARD_ALARM_EVENTS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlarmEvent {
    /// What happened.
    pub kind: TransitionKind,
    /// The transition's number within its alarm (equals `alarm.n`).
    pub n: u64,
    /// When, ms since the Unix epoch (hub clock).
    pub at_ms: u64,
    /// The alarm after the transition.
    pub alarm: AlarmRecord,
    /// The result that caused it, for result-driven transitions.
    pub cause: Option<Cause>,
    /// Whether it is notified (not silenced, not flapping, or a flapping start/end).
    pub notify: bool,
    /// Details: percent state change, silence id, run id, held reason, remediation outcome.
    pub detail: String,
    /// Who made it (`evaluator`, an operator's name, `remediation`).
    pub by: String,
    /// Stream sequence of this event (filled in when read back; not stored).
    #[serde(skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Default for AlarmEvent {
    fn default() -> Self {
        AlarmEvent {
            kind: TransitionKind::Other,
            n: 0,
            at_ms: 0,
            alarm: AlarmRecord::default(),
            cause: None,
            notify: false,
            detail: String::new(),
            by: String::new(),
            seq: 0,
        }
    }
}

/// A silence: notifications of the alarms it matches stop until it expires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Silence {
    /// Id (assigned by the hub).
    pub id: String,
    /// Host label selector (empty = every host).
    pub selector: String,
    /// Only this check (empty = every check).
    pub check: String,
    /// Only this rule (empty = every rule).
    pub rule: String,
    /// Only this host (empty = every host the selector matches).
    pub host: String,
    /// When it starts, ms since the Unix epoch.
    pub starts_ms: u64,
    /// When it ends, ms since the Unix epoch.
    pub expires_ms: u64,
    /// End it as soon as an alarm it covers resolves.
    pub expire_on_resolve: bool,
    /// Who added it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// Set when it was ended early (expired by an operator or on resolve): when and why.
    pub ended: Option<String>,
}

impl Silence {
    /// Whether it is in force at `now_ms`.
    #[must_use]
    pub fn active(&self, now_ms: u64) -> bool {
        self.ended.is_none() && self.starts_ms <= now_ms && now_ms < self.expires_ms
    }
}

/// `alarm.list`: alarms, optionally filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListAlarmsRequest {
    /// `firing`, `ok` or empty (all).
    pub state: String,
    /// Host label selector (matched against the labels the alarm recorded).
    pub selector: String,
    /// Only this host.
    pub host: String,
}

/// Reply of `alarm.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListAlarmsReply {
    /// The alarms, by id.
    pub alarms: Vec<AlarmRecord>,
}

/// `alarm.get`: one alarm with its timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetAlarmRequest {
    /// The alarm id.
    pub id: String,
    /// Most transitions returned, the latest ones (0 = 100).
    pub limit: usize,
}

/// Reply of `alarm.get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetAlarmReply {
    /// The alarm now.
    pub alarm: AlarmRecord,
    /// Its transitions, oldest first.
    pub timeline: Vec<AlarmEvent>,
}

/// `alarm.ack`: acknowledge a firing alarm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AckRequest {
    /// The alarm id.
    pub id: String,
    /// Who acknowledges.
    pub author: String,
    /// Why.
    pub comment: String,
}

/// `alarm.silence-add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AddSilenceRequest {
    /// What to silence (the id is assigned; `starts_ms` 0 = now).
    pub silence: Silence,
}

/// `alarm.silence-list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListSilencesRequest {
    /// Include silences that have ended.
    pub all: bool,
}

/// Reply of `alarm.silence-list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListSilencesReply {
    /// The silences.
    pub silences: Vec<Silence>,
}

/// `alarm.silence-expire`: end a silence now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExpireSilenceRequest {
    /// The silence id.
    pub id: String,
    /// Who ends it.
    pub author: String,
}
