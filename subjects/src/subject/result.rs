//! Result subjects: submission through the lease fence, and the stored results stream.
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.result.submit.<host>.<runtime>` | runtimes, as themselves (request) | the account's lease leader (queue group on `result.submit.*.*`), which takes the caller from the subject and checks each result's epoch |
//! | `steward.v1.<a>.result.put.<host>` | the lease leader, after the epoch check | `STEWARD_RESULTS` stream |
//!
//! Full outputs too large for a result travel in the artifacts object store under
//! [`result_output_object`].

use super::{noun, verb, AnyAccount, Subjects};
use crate::token::{AccountId, HostId, RuntimeId};

/// Verbs only the result noun uses (storing is the shared [`verb::PUT`]).
pub mod result_verb {
    /// Submit results.
    pub const SUBMIT: &str = "submit";
}

impl Subjects {
    /// Stored results of one host (`result.put.<host>`).
    #[must_use]
    pub fn result_put(&self, host: &HostId) -> String {
        self.targeted(noun::RESULT, verb::PUT, host.as_str())
    }

    /// Stream filter of every stored result of this account (`result.put.*`).
    #[must_use]
    pub fn result_put_all(&self) -> String {
        self.targeted(noun::RESULT, verb::PUT, "*")
    }
}

impl AnyAccount {
    /// Stored results of every account (the results stream's filter).
    #[must_use]
    pub fn results() -> String {
        Self::targeted(noun::RESULT, verb::PUT)
    }
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
        assert_eq!(s.result_put(&h), "steward.v1.acme.result.put.web-01");
        assert_eq!(s.result_put_all(), "steward.v1.acme.result.put.*");
        assert_eq!(AnyAccount::results(), "steward.v1.*.result.put.>");
        let r = RuntimeId::parse("rt-1").unwrap();
        assert_eq!(result_host_of(None, &r), "rt-1");
        assert_eq!(result_host_of(Some(&h), &r), "web-01");
    }
}
