//! Remediations: what a remediation rule did for one firing of one alarm (started a run, or
//! held it with a reason), the ledger of guards kept in `steward_alarms` under
//! [`crate::subject::remediation_ledger_key`], and the request/reply types of `alarm.approve`
//! and `alarm.remediations`.
//!
//! One remediation exists per (alarm, firing transition, remediation rule): its id is
//! `<rule>@<alarm id>#<n>`, and the run it starts carries the idempotency key
//! `remediation:<id>`, so a redelivered firing never starts a second run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a remediation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemediationState {
    /// A guard held it (the reason says which); `alarm.approve` may start it.
    #[default]
    Held,
    /// Its slot is taken and its run is being dispatched.
    Starting,
    /// Its run is in flight.
    Running,
    /// Its run ended (or it was never run: the outcome says why).
    Finished,
    /// A state this peer does not know.
    #[serde(other)]
    Unknown,
}

impl RemediationState {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RemediationState::Held => "held",
            RemediationState::Starting => "starting",
            RemediationState::Running => "running",
            RemediationState::Finished => "finished",
            RemediationState::Unknown => "unknown",
        }
    }

    /// Whether it takes one of its rule's in-flight slots.
    #[must_use]
    pub fn in_flight(self) -> bool {
        matches!(self, RemediationState::Starting | RemediationState::Running)
    }
}

/// The id of the remediation of `rule` for the firing transition `n` of `alarm_id`.
#[must_use]
pub fn remediation_id(rule: &str, alarm_id: &str, n: u64) -> String {
    format!("{rule}@{alarm_id}#{n}")
}

/// The idempotency key of the run of remediation `id`.
#[must_use]
pub fn remediation_run_key(id: &str) -> String {
    format!("remediation:{id}")
}

/// One remediation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Remediation {
    /// `<rule>@<alarm id>#<n>`.
    pub id: String,
    /// The remediation rule.
    pub rule: String,
    /// The alarm it answers.
    pub alarm: String,
    /// The alarm's host.
    pub host: String,
    /// The alarm's check.
    pub check: String,
    /// The spec whose result fired the alarm (re-run once the remediation ended).
    pub spec: String,
    /// Number of the firing transition it answers.
    pub firing_n: u64,
    /// Where it is.
    pub state: RemediationState,
    /// Why it is held (`cooldown until …`, `5/5 in flight`, `hourly cap 20 reached`,
    /// `waiting for approval`).
    pub reason: String,
    /// The host its run goes to (the alarm's host or a runner).
    pub target: String,
    /// The run, once dispatched.
    pub run_id: String,
    /// How it ended (`success`, `failure: …`, `not started: …`).
    pub outcome: String,
    /// Who approved it, if an operator did.
    pub approved_by: String,
    /// When it was decided, ms since the Unix epoch.
    pub created_ms: u64,
    /// When its run was started, ms since the Unix epoch (0: not started).
    pub started_ms: u64,
    /// When it finished, ms since the Unix epoch (0: not finished).
    pub finished_ms: u64,
    /// Whether the alarm resolved after it finished (`None`: not known yet).
    pub cleared: Option<bool>,
    /// Transitions of it noted on the alarm's timeline (`held`, `started`, `finished`).
    pub noted: Vec<String>,
}

/// The remediation ledger of an account: every recent remediation and the state of the guards,
/// one value written with compare-and-set, so hub instances never exceed a cap between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemediationLedger {
    /// Remediations by id (finished ones pruned oldest first past a bound).
    pub remediations: BTreeMap<String, Remediation>,
    /// Last start per `<rule>/<host>`, ms since the Unix epoch (the cooldown).
    pub last_start: BTreeMap<String, u64>,
    /// Starts per rule within the last hour, ms since the Unix epoch (the hourly cap).
    pub starts: BTreeMap<String, Vec<u64>>,
}

/// `alarm.approve`: start a held remediation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApproveRequest {
    /// The remediation id.
    pub id: String,
    /// Who approves.
    pub author: String,
}

/// Reply of `alarm.approve`: the remediation after the approval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApproveReply {
    /// The remediation.
    pub remediation: Remediation,
}

/// `alarm.remediations`: remediations, optionally filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListRemediationsRequest {
    /// `held`, `starting`, `running`, `finished` or empty (all).
    pub state: String,
    /// Only those of this alarm.
    pub alarm: String,
    /// Only those of this rule.
    pub rule: String,
}

/// Reply of `alarm.remediations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListRemediationsReply {
    /// The remediations, newest first.
    pub remediations: Vec<Remediation>,
}

/// `jobspec.recheck.<runtime>`: run a held spec now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecheckNotice {
    /// The spec.
    pub spec: String,
    /// Why (the remediation id).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_and_states() {
        let id = remediation_id("restart", "web-01.disk.disk-full", 3);
        assert_eq!(id, "restart@web-01.disk.disk-full#3");
        assert_eq!(remediation_run_key(&id), "remediation:restart@web-01.disk.disk-full#3");
        assert!(RemediationState::Running.in_flight() && RemediationState::Starting.in_flight());
        assert!(!RemediationState::Held.in_flight() && !RemediationState::Finished.in_flight());
        let bytes = rmp_serde::to_vec_named(&RemediationState::Finished).unwrap();
        assert_eq!(rmp_serde::from_slice::<RemediationState>(&bytes).unwrap(), RemediationState::Finished);
    }
}
