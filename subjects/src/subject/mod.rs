//! The subject grammar: `steward.v1.<account>.<noun>.<verb>[.<target>]`, and the keys and
//! names derived from it.
//!
//! This module is the only place in the workspace that formats or parses a Steward subject or a
//! bucket key. [`Subjects`] builds the subjects of one account, [`AnyAccount`] the stream filters
//! spanning every account; handlers parse what they receive with [`ParsedSubject::parse`] or the
//! `parse_*` function next to the key's formatter.
//!
//! Layout: one file per noun, mirroring `crate::api`: [`health`], [`host`], [`config`],
//! [`jobspec`] (rendered specs), [`lease`] (leasing specs), [`result`], [`run`], [`alarm`] and
//! [`telemetry`]. Each holds
//! that noun's verbs, its `impl Subjects` and `impl AnyAccount` blocks, and its keys with their
//! parsers. This file holds the grammar itself and the key helpers every bucket shares.

use std::fmt;

use crate::token::{AccountId, Token, TokenError, TokenKind};

pub mod alarm;
pub mod config;
pub mod health;
pub mod host;
pub mod jobspec;
pub mod lease;
pub mod operator;
pub mod result;
pub mod run;
pub mod telemetry;

pub use alarm::{
    alarm_id, alarm_key, alarm_key_filter, alarm_leader_key, alarm_verb, parse_alarm_id, parse_alarm_key,
    remediation_consumer, remediation_ledger_key, silence_key, silence_key_filter,
};
pub use config::{
    config_archive_key, config_revision_filter, config_revision_key, config_verb, parse_revision_key,
    playbook_object_name,
};
pub use host::{host_registry_filter, host_registry_key, host_verb, parse_registry_key, HostPermissions};
pub use jobspec::{
    jobspec_account_filter, jobspec_key, jobspec_target_filter, jobspec_target_prefix, jobspec_verb, parse_jobspec_key,
    JobSpecKey,
};
pub use lease::{
    lease_account_filter, lease_leader_key, lease_session_filter, lease_session_key, lease_snapshot_key,
    lease_snapshot_object, lease_spec_key, lease_verb, parse_lease_key, Acting, ActingParser, IdentityEndpoint,
    LeaseKey,
};
pub use operator::OperatorRole;
pub use result::{result_host_of, result_output_msg_id, result_output_object, result_verb, OutputRef};
pub use run::{
    run_artifact_name, run_event_host, run_event_msg_id, run_events_consumer, run_host_filter, run_host_filter_all,
    run_host_key, run_idempotency_key, run_record_filter, run_record_key, run_verb, run_work_command_id,
    run_work_msg_id,
};
pub use telemetry::{
    telemetry_checkpoint_key, telemetry_part_msg_id, telemetry_point_msg_id, telemetry_verb, TelemetryLevel,
};

/// First token of every Steward subject.
pub const ROOT: &str = "steward";
/// Wire-contract version token.
pub const VERSION: &str = "v1";

/// The nouns of the grammar (fourth token).
pub mod noun {
    /// Per-process health.
    pub const HEALTH: &str = "health";
    /// Hosts: presence, registry, commands.
    pub const HOST: &str = "host";
    /// Configuration documents and revisions.
    pub const CONFIG: &str = "config";
    /// Rendered job specs and their leases.
    pub const JOBSPEC: &str = "jobspec";
    /// Assessment results.
    pub const RESULT: &str = "result";
    /// Dispatched runs.
    pub const RUN: &str = "run";
    /// Check values as history (raw points, rollups) and their queries.
    pub const TELEMETRY: &str = "telemetry";
}

/// The verbs of the grammar (fifth token).
pub mod verb {
    /// Ask for a status.
    pub const STATUS: &str = "status";
    /// Heartbeat / presence announcement.
    pub const HEARTBEAT: &str = "heartbeat";
    /// An event (stream-backed).
    pub const EVENT: &str = "event";
    /// A command to a target.
    pub const COMMAND: &str = "command";
    /// A change notice.
    pub const CHANGED: &str = "changed";
    /// Store an item.
    pub const PUT: &str = "put";
}

/// A subject that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject does not start with `steward.v1.`.
    #[error("not a steward v1 subject: {0:?}")]
    Foreign(String),
    /// Too few or too many tokens.
    #[error("subject {subject:?} has {tokens} tokens, expected 5 or 6")]
    Shape {
        /// The subject received.
        subject: String,
        /// Its token count.
        tokens: usize,
    },
    /// One token is not a valid token.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Builds the subjects of one account.
///
/// ```
/// use steward_subjects::{subject::Subjects, token::{AccountId, HostId}};
/// let s = Subjects::new(AccountId::parse("acme").unwrap());
/// assert_eq!(s.health_status(), "steward.v1.acme.health.status");
/// let h = HostId::parse("web-01").unwrap();
/// assert_eq!(s.host_heartbeat(&h), "steward.v1.acme.host.heartbeat.web-01");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subjects {
    account: AccountId,
}

impl Subjects {
    /// Subjects for `account`.
    #[must_use]
    pub fn new(account: AccountId) -> Self {
        Subjects { account }
    }

    /// The account these subjects belong to.
    #[must_use]
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    fn base(&self, noun: &str, verb: &str) -> String {
        format!("{ROOT}.{VERSION}.{}.{noun}.{verb}", self.account)
    }

    fn targeted(&self, noun: &str, verb: &str, target: &str) -> String {
        format!("{ROOT}.{VERSION}.{}.{noun}.{verb}.{target}", self.account)
    }

    /// Everything of this account: `steward.v1.<account>.>` (for permissions and taps).
    #[must_use]
    pub fn all(&self) -> String {
        format!("{ROOT}.{VERSION}.{}.>", self.account)
    }
}

/// Stream filter subjects spanning every account: one stream serves all accounts of a NATS
/// account, and tenants are kept apart by NATS accounts and permissions. Each noun's file adds
/// its filters in an `impl AnyAccount` block.
#[derive(Debug, Clone, Copy)]
pub struct AnyAccount;

impl AnyAccount {
    /// `steward.v1.*.<noun>.<verb>.>`
    fn targeted(noun: &str, verb: &str) -> String {
        format!("{ROOT}.{VERSION}.*.{noun}.{verb}.>")
    }

    /// `steward.v1.*.<noun>.<verb>`
    fn plain(noun: &str, verb: &str) -> String {
        format!("{ROOT}.{VERSION}.*.{noun}.{verb}")
    }
}

/// The stream subject under which a KV `key` of `bucket` is stored: `$KV.<bucket>.<key>`
/// (the renderer publishes spec writes there directly to pipeline them and attach headers).
#[must_use]
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// The key a KV stream `subject` of `bucket` stores (the inverse of [`kv_subject`]); `None` for
/// a subject of another bucket or with an empty key.
#[must_use]
pub fn parse_kv_subject<'a>(bucket: &str, subject: &'a str) -> Option<&'a str> {
    let key = subject.strip_prefix("$KV.")?.strip_prefix(bucket)?.strip_prefix('.')?;
    (!key.is_empty()).then_some(key)
}

/// The account a Steward subject (`steward.v1.<account>...`) belongs to; `None` for any other
/// subject.
#[must_use]
pub fn account_of(subject: &str) -> Option<AccountId> {
    let mut tokens = subject.split('.');
    if tokens.next() != Some(ROOT) || tokens.next() != Some(VERSION) {
        return None;
    }
    AccountId::parse(tokens.next()?).ok()
}

/// The part of a bucket `key` after `<account>.`; `None` for a key of another account.
fn account_rest<'a>(account: &AccountId, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(account.as_str())?.strip_prefix('.')
}

/// A received Steward subject split into its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSubject<'a> {
    /// The account token.
    pub account: AccountId,
    /// The noun token.
    pub noun: &'a str,
    /// The verb token.
    pub verb: &'a str,
    /// The optional target token.
    pub target: Option<Token>,
}

impl<'a> ParsedSubject<'a> {
    /// Splits and validates a subject.
    ///
    /// # Errors
    /// [`SubjectError`] when the subject is not of the grammar or a token is invalid.
    pub fn parse(subject: &'a str) -> Result<Self, SubjectError> {
        let tokens: Vec<&'a str> = subject.split('.').collect();
        if tokens.len() < 2 || tokens[0] != ROOT || tokens[1] != VERSION {
            return Err(SubjectError::Foreign(subject.to_owned()));
        }
        if !(5..=6).contains(&tokens.len()) {
            return Err(SubjectError::Shape { subject: subject.to_owned(), tokens: tokens.len() });
        }
        let account = AccountId::parse(tokens[2])?;
        let target = match tokens.get(5) {
            Some(t) => Some(Token::parse(TokenKind::Name, t)?),
            None => None,
        };
        Ok(ParsedSubject { account, noun: tokens[3], verb: tokens[4], target })
    }
}

impl fmt::Display for ParsedSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ROOT}.{VERSION}.{}.{}.{}", self.account, self.noun, self.verb)?;
        if let Some(t) = &self.target {
            write!(f, ".{t}")?;
        }
        Ok(())
    }
}

/// Prefix used for the micro-service group names of Steward services.
pub const SERVICE_PREFIX: &str = "steward";

/// Name of the micro service a component registers (`steward-<component>`).
#[must_use]
pub fn service_name(component: &str) -> String {
    format!("{SERVICE_PREFIX}-{component}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kv_subjects_round_trip() {
        let s = kv_subject("steward_jobspecs", "acme.host.web.00ff");
        assert_eq!(s, "$KV.steward_jobspecs.acme.host.web.00ff");
        assert_eq!(parse_kv_subject("steward_jobspecs", &s), Some("acme.host.web.00ff"));
        assert_eq!(parse_kv_subject("steward_jobspec", &s), None);
        assert_eq!(parse_kv_subject("steward_jobspecs", "$KV.steward_jobspecs."), None);
        assert_eq!(parse_kv_subject("steward_jobspecs", "steward.v1.acme.host.status"), None);
        let a = AccountId::parse("acme").unwrap();
        assert_eq!(account_rest(&a, "acme.x.y"), Some("x.y"));
        assert_eq!(account_rest(&a, "acme2.x.y"), None);
    }

    #[test]
    fn the_account_of_a_subject() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        assert_eq!(account_of(&s.run_dispatch()).map(|a| a.to_string()), Some("acme".to_owned()));
        assert_eq!(account_of("$JS.API.INFO"), None);
        assert_eq!(account_of("steward.v2.acme.x"), None);
        assert_eq!(account_of("steward.v1"), None);
        assert_eq!(account_of("steward.v1.a*b.x"), None);
    }
}
