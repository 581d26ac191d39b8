//! Run subjects and keys: the dispatcher's API, work delivery to hosts, job event data, and the
//! keys of the `steward_runs` bucket (built from validated tokens and generated ids only).
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.run.{dispatch,status,cancel,list}` | API callers | dispatcher micro service (queue group: any hub instance) |
//! | `steward.v1.<a>.host.command.<host>` | the dispatcher (a `run` command carrying the work order) | `STEWARD_HOST_COMMANDS` stream → the host's durable command consumer (edge agent) |
//! | `steward.v1.<a>.run.work.<host>` | the host's edge agent (request, on the host's own NATS) | that host's run worker (plain subscription: host-targeted) |
//! | `steward.v1.<a>.run.stop.<host>` | the dispatcher (request) | that host's run worker (plain subscription) |
//! | `steward.v1.<a>.run.event.<host>` | the host's run worker | `STEWARD_RUN_EVENTS` stream → dispatcher durable consumer |
//!
//! Work delivery is durable: each attempt's work order is a `run` host command
//! ([`run_work_command_id`], deduplicated by [`run_work_msg_id`], expiring at the attempt's
//! deadline); the edge agent reads it from its durable consumer while connected, hands it to its
//! run worker on `run.work.<host>` and acks once answered; the worker drops duplicate attempts.

use super::{noun, verb, AnyAccount, Subjects};
use crate::token::{AccountId, HostId};

/// Verbs only the run noun uses.
pub mod run_verb {
    /// Start a run.
    pub const DISPATCH: &str = "dispatch";
    /// Cancel a run.
    pub const CANCEL: &str = "cancel";
    /// List runs.
    pub const LIST: &str = "list";
    /// A work order to one host.
    pub const WORK: &str = "work";
    /// Stop a run on one host.
    pub const STOP: &str = "stop";
}

impl Subjects {
    /// API: start a run (queue group: any dispatcher instance answers).
    #[must_use]
    pub fn run_dispatch(&self) -> String {
        self.base(noun::RUN, run_verb::DISPATCH)
    }

    /// API: a run's status with current job event data (queue group).
    #[must_use]
    pub fn run_status(&self) -> String {
        self.base(noun::RUN, verb::STATUS)
    }

    /// API: cancel a run (queue group).
    #[must_use]
    pub fn run_cancel(&self) -> String {
        self.base(noun::RUN, run_verb::CANCEL)
    }

    /// API: list runs (queue group).
    #[must_use]
    pub fn run_list(&self) -> String {
        self.base(noun::RUN, run_verb::LIST)
    }

    /// Work orders for one host (plain subscription by that host's run worker only).
    #[must_use]
    pub fn run_work(&self, host: &HostId) -> String {
        self.targeted(noun::RUN, run_verb::WORK, host.as_str())
    }

    /// Stop orders for one host (plain subscription by that host's run worker only).
    #[must_use]
    pub fn run_stop(&self, host: &HostId) -> String {
        self.targeted(noun::RUN, run_verb::STOP, host.as_str())
    }

    /// Job event data published by one host for its runs.
    #[must_use]
    pub fn run_event(&self, host: &HostId) -> String {
        self.targeted(noun::RUN, verb::EVENT, host.as_str())
    }

    /// Job event data of every host of this account (the dispatcher's consumer filter).
    #[must_use]
    pub fn run_event_all(&self) -> String {
        self.targeted(noun::RUN, verb::EVENT, "*")
    }
}

impl AnyAccount {
    /// Job event data of every account (the run events stream's filter).
    #[must_use]
    pub fn run_events() -> String {
        Self::targeted(noun::RUN, verb::EVENT)
    }
}

/// The host token of a run event subject (`steward.v1.<a>.run.event.<host>`), without
/// validating the rest (the subject came from the stream's filter); `None` for another shape.
#[must_use]
pub fn run_event_host(subject: &str) -> Option<&str> {
    let (head, host) = subject.rsplit_once('.')?;
    head.ends_with(".run.event").then_some(host).filter(|h| !h.is_empty())
}

/// Key of a run record: `<account>.run.<run>`.
#[must_use]
pub fn run_record_key(account: &AccountId, run_id: &str) -> String {
    format!("{account}.run.{run_id}")
}

/// Key filter matching every run record of `account`.
#[must_use]
pub fn run_record_filter(account: &AccountId) -> String {
    format!("{account}.run.*")
}

/// Key of one host's run record: `<account>.host.<run>.<host>`.
#[must_use]
pub fn run_host_key(account: &AccountId, run_id: &str, host: &HostId) -> String {
    format!("{account}.host.{run_id}.{host}")
}

/// Key filter matching every host record of one run.
#[must_use]
pub fn run_host_filter(account: &AccountId, run_id: &str) -> String {
    format!("{account}.host.{run_id}.*")
}

/// Key filter matching every host record of every run of `account` (for watchers).
#[must_use]
pub fn run_host_filter_all(account: &AccountId) -> String {
    format!("{account}.host.>")
}

/// Key of an idempotency entry: `<account>.idem.<digest>` (the digest is hex).
#[must_use]
pub fn run_idempotency_key(account: &AccountId, digest_hex: &str) -> String {
    format!("{account}.idem.{digest_hex}")
}

/// `Nats-Msg-Id` of one job event, unique per (account, run, host, attempt, sequence), so a
/// resent batch is stored once within the dedupe window.
#[must_use]
pub fn run_event_msg_id(account: &AccountId, run_id: &str, host: &HostId, attempt: u32, seq: u64) -> String {
    format!("{account}.{run_id}.{host}.{attempt}.{seq}")
}

/// Command id of the durable host command that carries one attempt's work order (a name token:
/// unique per host, which the command subject names).
#[must_use]
pub fn run_work_command_id(run_id: &str, attempt: u32) -> String {
    format!("run-{run_id}-{attempt}")
}

/// `Nats-Msg-Id` of that command, unique per (run, host, attempt) in the whole commands stream,
/// so an order published again (a retried publish, a restarted or second hub instance) is stored
/// once within the stream's dedupe window.
#[must_use]
pub fn run_work_msg_id(run_id: &str, host: &HostId, attempt: u32) -> String {
    format!("run.{run_id}.{host}.{attempt}")
}

/// Object name of a large artifact in the artifacts store.
#[must_use]
pub fn run_artifact_name(account: &AccountId, run_id: &str, host: &HostId, attempt: u32, name: &str) -> String {
    format!("{account}/runs/{run_id}/{host}/{attempt}/{name}")
}

/// Name of the dispatcher's durable consumer on the run events stream for `account`.
#[must_use]
pub fn run_events_consumer(account: &AccountId) -> String {
    format!("dispatcher-{}-{account}", account.as_str().len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn run_subjects_and_keys() {
        let a = AccountId::parse("acme").unwrap();
        let s = Subjects::new(a.clone());
        let h = HostId::parse("web-01").unwrap();
        assert_eq!(s.run_dispatch(), "steward.v1.acme.run.dispatch");
        assert_eq!(s.run_status(), "steward.v1.acme.run.status");
        assert_eq!(s.run_work(&h), "steward.v1.acme.run.work.web-01");
        assert_eq!(s.run_stop(&h), "steward.v1.acme.run.stop.web-01");
        assert_eq!(s.run_event_all(), "steward.v1.acme.run.event.*");
        assert_eq!(run_event_host(&s.run_event(&h)), Some("web-01"));
        assert_eq!(run_event_host(&s.run_stop(&h)), None);
        assert_eq!(AnyAccount::run_events(), "steward.v1.*.run.event.>");
        assert_eq!(run_host_key(&a, "r1", &h), "acme.host.r1.web-01");
        assert_eq!(run_record_key(&a, "r1"), "acme.run.r1");
        assert_eq!(run_event_msg_id(&a, "r1", &h, 2, 7), "acme.r1.web-01.2.7");
        assert_eq!(run_work_command_id("r1", 2), "run-r1-2");
        assert_eq!(run_work_msg_id("r1", &h, 2), "run.r1.web-01.2");
    }
}
