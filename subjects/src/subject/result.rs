//! Result subjects: submission through the lease fence, and the stored results stream.
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.result.submit.<host>.<runtime>` | runtimes, as themselves (request) | the account's lease leader (queue group on `result.submit.*.*`), which takes the caller from the subject and checks each result's epoch |
//! | `steward.v1.<a>.result.put.<host>.<runtime>` | the lease leader, after the epoch check | `STEWARD_RESULTS` stream |
//! | `steward.v1.<a>.result.output.<host>` | runtimes, their own host's full outputs (JetStream publish) | `STEWARD_OUTPUTS` stream |
//!
//! Full outputs too large for a result are stored one message each in `STEWARD_OUTPUTS`; the
//! result names it by stream sequence ([`OutputRef::Stream`], `out:<seq>`). Older results name
//! an object of the artifacts object store ([`result_output_object`], [`OutputRef::Object`]).

use super::{noun, verb, AnyAccount, Subjects, ROOT, VERSION};
use crate::token::{AccountId, HostId, RuntimeId};

/// Verbs only the result noun uses (storing is the shared [`verb::PUT`]).
pub mod result_verb {
    /// Submit results.
    pub const SUBMIT: &str = "submit";
    /// Store a full output.
    pub const OUTPUT: &str = "output";
}

impl Subjects {
    /// Stored results of one runtime on one host (`result.put.<host>.<runtime>`): the last
    /// message here carries that runtime's stored watermark.
    #[must_use]
    pub fn result_put(&self, host: &HostId, runtime: &RuntimeId) -> String {
        self.targeted(noun::RESULT, verb::PUT, &format!("{host}.{runtime}"))
    }

    /// Stream filter of every stored result of one host (`result.put.<host>.*`).
    #[must_use]
    pub fn result_put_host(&self, host: &HostId) -> String {
        self.targeted(noun::RESULT, verb::PUT, &format!("{host}.*"))
    }

    /// Stream filter of every stored result of this account (`result.put.>`).
    #[must_use]
    pub fn result_put_all(&self) -> String {
        self.targeted(noun::RESULT, verb::PUT, ">")
    }

    /// Full outputs of one host's results (`result.output.<host>`), published by that host's
    /// runtime only.
    #[must_use]
    pub fn result_output(&self, host: &HostId) -> String {
        self.targeted(noun::RESULT, result_verb::OUTPUT, host.as_str())
    }

    /// The host whose full outputs `subject` carries, when it is this account's
    /// `result.output.<host>`.
    #[must_use]
    pub fn parse_result_output(&self, subject: &str) -> Option<HostId> {
        let prefix = self.targeted(noun::RESULT, result_verb::OUTPUT, "");
        HostId::parse(subject.strip_prefix(&prefix)?).ok()
    }
}

impl AnyAccount {
    /// Stored results of every account (the results stream's filter).
    #[must_use]
    pub fn results() -> String {
        Self::targeted(noun::RESULT, verb::PUT)
    }

    /// Full outputs of every account and host (the outputs stream's filter).
    #[must_use]
    pub fn result_outputs() -> String {
        format!("{ROOT}.{VERSION}.*.{}.{}.*", noun::RESULT, result_verb::OUTPUT)
    }
}

/// Where a result's full output is stored (the result's `output_ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRef {
    /// Message `<seq>` of the outputs stream: `out:<seq>`.
    Stream(u64),
    /// An object of the artifacts object store (results stored by older runtimes).
    Object(String),
}

impl OutputRef {
    /// The prefix of a stream reference.
    pub const STREAM_PREFIX: &'static str = "out:";

    /// Parses an `output_ref`: `out:<seq>` (positive) or an object name
    /// (`results/<account>/<spec>/<epoch>/<seq>`); anything else is `None`.
    #[must_use]
    pub fn parse(s: &str) -> Option<OutputRef> {
        if let Some(seq) = s.strip_prefix(Self::STREAM_PREFIX) {
            let seq: u64 = seq.parse().ok().filter(|n| *n > 0)?;
            return (seq.to_string() == s[Self::STREAM_PREFIX.len()..]).then_some(OutputRef::Stream(seq));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["results", account, spec, epoch, seq]
                if AccountId::parse(account).is_ok()
                    && !spec.is_empty()
                    && epoch.parse::<u64>().is_ok()
                    && seq.parse::<u64>().is_ok() =>
            {
                Some(OutputRef::Object(s.to_owned()))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputRef::Stream(seq) => write!(f, "{}{seq}", Self::STREAM_PREFIX),
            OutputRef::Object(name) => f.write_str(name),
        }
    }
}

/// `Nats-Msg-Id` of a result's full output in the outputs stream: `<host>.<spec>:<epoch>:<seq>`
/// (a resend is dropped as a duplicate; the host part keeps hosts' ids apart).
#[must_use]
pub fn result_output_msg_id(host: &str, spec: &str, epoch: u64, seq: u64) -> String {
    format!("{host}.{spec}:{epoch}:{seq}")
}

/// Name of a result's full output in the artifacts object store:
/// `results/<account>/<spec>/<epoch>/<seq>`.
#[must_use]
pub fn result_output_object(account: &AccountId, spec: &str, epoch: u64, seq: u64) -> String {
    format!("results/{account}/{spec}/{epoch}/{seq}")
}

/// The host token a standalone runtime's results are filed under (its runtime id).
#[must_use]
pub fn result_host_of(host: Option<&HostId>, runtime: &RuntimeId) -> String {
    host.map_or_else(|| runtime.to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn result_subjects() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        let h = HostId::parse("web-01").unwrap();
        let r = RuntimeId::parse("rt-1").unwrap();
        assert_eq!(s.result_put(&h, &r), "steward.v1.acme.result.put.web-01.rt-1");
        assert_eq!(s.result_put_host(&h), "steward.v1.acme.result.put.web-01.*");
        assert_eq!(s.result_put_all(), "steward.v1.acme.result.put.>");
        assert_eq!(AnyAccount::results(), "steward.v1.*.result.put.>");
        assert_eq!(result_host_of(None, &r), "rt-1");
        assert_eq!(result_host_of(Some(&h), &r), "web-01");
        assert_eq!(s.result_output(&h), "steward.v1.acme.result.output.web-01");
        assert_eq!(AnyAccount::result_outputs(), "steward.v1.*.result.output.*");
        assert_eq!(result_output_msg_id("web-01", "chk", 3, 7), "web-01.chk:3:7");
    }

    #[test]
    fn result_output_subjects_parse_back_to_their_host() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        let h = HostId::parse("web-01").unwrap();
        assert_eq!(s.parse_result_output(&s.result_output(&h)), Some(h.clone()));
        for bad in [
            "steward.v1.other.result.output.web-01",
            "steward.v1.acme.result.put.web-01",
            "steward.v1.acme.result.output.",
            "steward.v1.acme.result.output.a.b",
            "steward.v1.acme.result.output.*",
        ] {
            assert_eq!(s.parse_result_output(bad), None, "{bad}");
        }
    }

    #[test]
    fn output_refs_parse_and_print() {
        assert_eq!(OutputRef::parse("out:42"), Some(OutputRef::Stream(42)));
        assert_eq!(OutputRef::Stream(42).to_string(), "out:42");
        let obj = result_output_object(&AccountId::parse("acme").unwrap(), "chk", 3, 7);
        assert_eq!(OutputRef::parse(&obj), Some(OutputRef::Object(obj.clone())));
        assert_eq!(OutputRef::Object(obj.clone()).to_string(), obj);
        for bad in ["out:", "out:0", "out:-1", "out:+4", "out:007", "out:x", "web-01.chk:3:7", "results/acme/chk/3", ""]
        {
            assert_eq!(OutputRef::parse(bad), None, "{bad}");
        }
    }
}
