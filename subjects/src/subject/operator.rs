//! What a person's CLI identity may do, by role: an admin may do everything of the account (as
//! a service may), a viewer only the queries of `steward hosts`, `host ID` (status, outcome),
//! `plan`, `get`, `history`, `diff`, `jobspecs` (list, explain, leases), `runs`, `run-status`,
//! `leases`, `metrics` (telemetry history), `results` (its ordered consumer on the results stream and the artifacts object
//! store for `--full-output`), `health` (micro-service discovery), `alarms`, `alarm ID`,
//! `silence list` and `remediations`, and may subscribe to alarm notifications: no apply,
//! rollback, run, cancel, host commands, worker installs, acknowledgements, silences,
//! remediation approvals, or credential changes.

use super::{HostPermissions, Subjects};
use crate::streams::{
    ARTIFACTS_STORE, DEAD_LETTERS_STREAM, HOST_COMMANDS_STREAM, OUTPUTS_STREAM, RESULTS_STREAM, RUN_EVENTS_STREAM,
};

/// The role of an operator identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorRole {
    /// Everything the CLI can do.
    Admin,
    /// Queries only.
    Viewer,
}

impl OperatorRole {
    /// The role's name (`admin`, `viewer`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::Viewer => "viewer",
        }
    }

    /// Parses `admin` or `viewer`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(OperatorRole::Admin),
            "viewer" => Some(OperatorRole::Viewer),
            _ => None,
        }
    }
}

impl Subjects {
    /// The read endpoints a viewer may request (each answered by a micro service).
    #[must_use]
    pub fn read_endpoints(&self) -> Vec<String> {
        let mut out = vec![
            self.host_status(),
            self.host_list(),
            self.host_outcome(),
            self.host_stats(),
            self.config_plan(),
            self.config_get(),
            self.config_history(),
            self.config_diff(),
            self.jobspec_list(),
            self.jobspec_explain(),
            self.jobspec_status(),
            self.jobspec_leases(),
            self.run_status(),
            self.run_list(),
            self.health_status(),
            self.health_status_all(),
            self.telemetry_query(),
            self.telemetry_series(),
        ];
        out.extend(super::alarm::ALARM_VIEWER_VERBS.iter().map(|v| self.alarm_request(v)));
        out
    }

    /// What an operator identity of `role` may publish and subscribe to (see the module docs).
    #[must_use]
    pub fn operator_permissions(&self, role: OperatorRole) -> HostPermissions {
        if role == OperatorRole::Admin {
            return self.service_permissions();
        }
        let mut publish = self.read_endpoints();
        publish.extend(["$SRV.PING".to_owned(), "$SRV.PING.>".to_owned(), "$SRV.STATS.>".to_owned()]);
        publish.extend(["$SRV.INFO.>".to_owned(), "$JS.API.INFO".to_owned()]);
        let objects = format!("OBJ_{ARTIFACTS_STORE}");
        for stream in [RESULTS_STREAM, objects.as_str()] {
            publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
            publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
            publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
            publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.*"));
        }
        publish.push(format!("$JS.API.STREAM.MSG.GET.{objects}"));
        publish.push(format!("$JS.API.DIRECT.GET.{objects}"));
        publish.push(format!("$JS.API.DIRECT.GET.{objects}.>"));
        // `steward dead-letters`: the dead-letter stream, and the dead messages by sequence
        // (direct gets only: reading, never consuming or deleting).
        publish.push(format!("$JS.API.STREAM.INFO.{DEAD_LETTERS_STREAM}"));
        // `steward results --full-output`: a full output by its sequence.
        for stream in [DEAD_LETTERS_STREAM, RUN_EVENTS_STREAM, HOST_COMMANDS_STREAM, RESULTS_STREAM, OUTPUTS_STREAM] {
            publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
        }
        publish.push("$JS.FC.>".to_owned());
        // Viewers may watch alarm notifications as they happen.
        HostPermissions { publish, subscribe: vec!["_INBOX.>".to_owned(), self.alarm_notify_all()] }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::AccountId;

    #[test]
    fn viewer_reads_but_never_writes() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        let v = s.operator_permissions(OperatorRole::Viewer);
        for write in [
            s.config_apply(),
            s.config_rollback(),
            s.config_store_playbook(),
            s.run_dispatch(),
            s.run_cancel(),
            s.host_send(),
            s.host_ensure_worker(),
            s.alarm_request(super::super::alarm::alarm_verb::ACK),
            s.alarm_request(super::super::alarm::alarm_verb::SILENCE_ADD),
            s.alarm_request(super::super::alarm::alarm_verb::SILENCE_EXPIRE),
            s.alarm_request(super::super::alarm::alarm_verb::APPROVE),
        ] {
            assert!(!v.publish.contains(&write), "{write}");
        }
        assert!(!v.publish.iter().any(|p| p.contains('>') && p.starts_with("steward.")), "{:?}", v.publish);
        assert!(!v
            .publish
            .iter()
            .any(|p| p.starts_with("$KV.") || p.contains("STREAM.CREATE") || p.contains(".PURGE")));
        assert!(v.publish.contains(&s.host_list()) && v.publish.contains(&s.run_status()));
        assert!(v.publish.contains(&s.alarm_request(super::super::alarm::alarm_verb::LIST)));
        assert_eq!(v.subscribe, vec!["_INBOX.>".to_owned(), "steward.v1.acme.alarm.notify.>".to_owned()]);
        assert!(v.publish.contains(&s.telemetry_query()) && v.publish.contains(&s.telemetry_series()));
        assert_eq!(s.operator_permissions(OperatorRole::Admin), s.service_permissions());
        assert_eq!(OperatorRole::parse("viewer"), Some(OperatorRole::Viewer));
        assert_eq!(OperatorRole::parse("root"), None);
    }
}
