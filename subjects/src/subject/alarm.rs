//! Alarm subjects: transitions on a durable stream, notifications any client can subscribe to,
//! and the alarm endpoints.
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.alarm.event.<host>.<check>.<rule>` | the alarm evaluator and the alarm endpoints (ack), each with the alarm's expected last sequence | `STEWARD_ALARM_EVENTS` stream (the alarm's timeline) |
//! | `steward.v1.<a>.alarm.notify.<severity>.<host>.<check>.<rule>` | the notifier, for transitions that notify (not silenced, not flapping) | anyone: pagers, chat bridges, `nats sub` |
//! | `steward.v1.<a>.alarm.<verb>` (`list`, `get`, `ack`, `silence-add`, `silence-list`, `silence-expire`, `approve`) | operators | any hub (queue group) |
//!
//! Alarms are kept in `steward_alarms` as `<account>.alarm.<host>.<check>.<rule>` and silences
//! as `<account>.silence.<id>`. An alarm's id is `<host>.<check>.<rule>` (each a token).

use super::{account_rest, AnyAccount, Subjects, ROOT, VERSION};
use crate::token::AccountId;

/// The alarm noun.
pub const ALARM: &str = "alarm";

/// Verbs of the alarm noun.
pub mod alarm_verb {
    /// A transition (stream-backed).
    pub const EVENT: &str = "event";
    /// A notification (core NATS).
    pub const NOTIFY: &str = "notify";
    /// List alarms.
    pub const LIST: &str = "list";
    /// One alarm and its timeline.
    pub const GET: &str = "get";
    /// Acknowledge an alarm.
    pub const ACK: &str = "ack";
    /// Add a silence.
    pub const SILENCE_ADD: &str = "silence-add";
    /// List silences.
    pub const SILENCE_LIST: &str = "silence-list";
    /// Expire a silence now.
    pub const SILENCE_EXPIRE: &str = "silence-expire";
    /// Approve a held remediation.
    pub const APPROVE: &str = "approve";
    /// List remediations.
    pub const REMEDIATIONS: &str = "remediations";
}

/// The request verbs of the alarm endpoints (for permissions and the service).
pub const ALARM_REQUEST_VERBS: [&str; 8] = [
    alarm_verb::LIST,
    alarm_verb::GET,
    alarm_verb::ACK,
    alarm_verb::SILENCE_ADD,
    alarm_verb::SILENCE_LIST,
    alarm_verb::SILENCE_EXPIRE,
    alarm_verb::APPROVE,
    alarm_verb::REMEDIATIONS,
];

/// The alarm verbs a viewer may call (reads only).
pub const ALARM_VIEWER_VERBS: [&str; 4] =
    [alarm_verb::LIST, alarm_verb::GET, alarm_verb::SILENCE_LIST, alarm_verb::REMEDIATIONS];

impl Subjects {
    /// An alarm endpoint (`alarm.<verb>`).
    #[must_use]
    pub fn alarm_request(&self, verb: &str) -> String {
        self.base(ALARM, verb)
    }

    /// Transitions of one alarm (`alarm.event.<id>`, id = `<host>.<check>.<rule>`).
    #[must_use]
    pub fn alarm_event(&self, alarm_id: &str) -> String {
        self.targeted(ALARM, alarm_verb::EVENT, alarm_id)
    }

    /// Transitions of every alarm of this account (`alarm.event.>`).
    #[must_use]
    pub fn alarm_events_all(&self) -> String {
        self.targeted(ALARM, alarm_verb::EVENT, ">")
    }

    /// A notification of one alarm (`alarm.notify.<severity>.<id>`).
    #[must_use]
    pub fn alarm_notify(&self, severity: &str, alarm_id: &str) -> String {
        self.targeted(ALARM, alarm_verb::NOTIFY, &format!("{severity}.{alarm_id}"))
    }

    /// Every notification of this account (`alarm.notify.>`).
    #[must_use]
    pub fn alarm_notify_all(&self) -> String {
        self.targeted(ALARM, alarm_verb::NOTIFY, ">")
    }

    /// The alarm id an `alarm.event.<id>` subject of this account names.
    #[must_use]
    pub fn parse_alarm_event<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let prefix = self.targeted(ALARM, alarm_verb::EVENT, "");
        subject.strip_prefix(prefix.as_str()).filter(|id| !id.is_empty())
    }
}

impl AnyAccount {
    /// Alarm transitions of every account (the alarm events stream's filter).
    #[must_use]
    pub fn alarm_events() -> String {
        Self::targeted(ALARM, alarm_verb::EVENT)
    }
}

/// An alarm's id: `<host>.<check>.<rule>`.
#[must_use]
pub fn alarm_id(host: &str, check: &str, rule: &str) -> String {
    format!("{host}.{check}.{rule}")
}

/// Splits an alarm id into host, check and rule; `None` when it does not have three
/// non-empty parts.
#[must_use]
pub fn parse_alarm_id(id: &str) -> Option<(&str, &str, &str)> {
    let mut parts = id.split('.');
    let (h, c, r) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !h.is_empty() && !c.is_empty() && !r.is_empty()).then_some((h, c, r))
}

/// Key of an alarm in `steward_alarms`: `<account>.alarm.<id>`.
#[must_use]
pub fn alarm_key(account: &AccountId, alarm_id: &str) -> String {
    format!("{account}.alarm.{alarm_id}")
}

/// Key filter of every alarm of `account`.
#[must_use]
pub fn alarm_key_filter(account: &AccountId) -> String {
    format!("{account}.alarm.>")
}

/// The alarm id of an alarm key of `account`.
#[must_use]
pub fn parse_alarm_key<'a>(account: &AccountId, key: &'a str) -> Option<&'a str> {
    account_rest(account, key)?.strip_prefix("alarm.")
}

/// Key of a silence in `steward_alarms`: `<account>.silence.<id>`.
#[must_use]
pub fn silence_key(account: &AccountId, silence_id: &str) -> String {
    format!("{account}.silence.{silence_id}")
}

/// Key filter of every silence of `account`.
#[must_use]
pub fn silence_key_filter(account: &AccountId) -> String {
    format!("{account}.silence.*")
}

/// Key of the remediation ledger of `account` in `steward_alarms` (runs in flight and started
/// per rule, written with compare-and-set).
#[must_use]
pub fn remediation_ledger_key(account: &AccountId) -> String {
    format!("{account}.remediation.ledger")
}

/// Name of the remediation service's durable consumer of `account`'s alarm transitions (shared
/// by every hub instance).
#[must_use]
pub fn remediation_consumer(account: &AccountId) -> String {
    format!("remediation-{}-{account}", account.as_str().len())
}

/// Key of the alarm evaluator's leader lock of `account` in `steward_leases`.
#[must_use]
pub fn alarm_leader_key(account: &AccountId) -> String {
    format!("{account}.alarms-leader")
}

/// `ROOT.VERSION` prefix check for alarm subjects (used by tests).
#[must_use]
pub fn is_alarm_subject(subject: &str) -> bool {
    subject.starts_with(&format!("{ROOT}.{VERSION}.")) && subject.split('.').nth(3) == Some(ALARM)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn alarm_subjects_and_keys() {
        let a = AccountId::parse("acme").unwrap();
        let s = Subjects::new(a.clone());
        let id = alarm_id("web-01", "disk", "disk-full");
        assert_eq!(s.alarm_event(&id), "steward.v1.acme.alarm.event.web-01.disk.disk-full");
        assert_eq!(s.parse_alarm_event(&s.alarm_event(&id)), Some(id.as_str()));
        assert_eq!(s.alarm_notify("critical", &id), "steward.v1.acme.alarm.notify.critical.web-01.disk.disk-full");
        assert_eq!(s.alarm_request(alarm_verb::ACK), "steward.v1.acme.alarm.ack");
        assert_eq!(parse_alarm_id(&id), Some(("web-01", "disk", "disk-full")));
        assert_eq!(parse_alarm_id("a.b"), None);
        assert_eq!(parse_alarm_id("a..c"), None);
        assert_eq!(parse_alarm_key(&a, &alarm_key(&a, &id)), Some(id.as_str()));
        assert!(is_alarm_subject(&s.alarm_event(&id)));
        assert_eq!(AnyAccount::alarm_events(), "steward.v1.*.alarm.event.>");
    }
}
