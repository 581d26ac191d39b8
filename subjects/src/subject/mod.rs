//! The subject grammar: `steward.v1.<account>.<noun>.<verb>[.<target>]`.
//!
//! This module is the only place in the workspace that formats or parses a Steward subject.
//! Each subject has one documented constructor on [`Subjects`]; handlers parse what they receive
//! with [`ParsedSubject::parse`] and `match` on the noun and verb.

use std::fmt;

use crate::token::{AccountId, HostId, Token, TokenError, TokenKind};

mod config;
mod host;
mod lease;
mod run;

pub use config::{
    any_account_config_rejected, config_archive_key, config_revision_filter, config_revision_key, config_verb,
    jobspec_account_filter, jobspec_key, jobspec_target_filter, jobspec_target_prefix, kv_subject,
    playbook_object_name,
};
pub use host::{
    host_command_consumer, host_registry_filter, host_registry_key, host_replies_any_account, host_verb,
    HostPermissions,
};
pub use lease::{
    any_account_lease_fence, any_account_lease_journal, lease_account_filter, lease_leader_key, lease_session_filter,
    lease_session_key, lease_snapshot_key, lease_snapshot_object, lease_spec_key, lease_verb, parse_lease_key,
    result_host_of, result_output_object, LeaseKey,
};
pub use run::{
    run_artifact_name, run_event_msg_id, run_events_consumer, run_host_filter, run_host_filter_all, run_host_key,
    run_idempotency_key, run_record_filter, run_record_key, run_verb, run_work_command_id, run_work_msg_id,
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

    /// Health of any process serving this account (queue group: any instance may answer).
    #[must_use]
    pub fn health_status(&self) -> String {
        self.base(noun::HEALTH, verb::STATUS)
    }

    /// Health of one named instance (plain subscription: only that instance answers).
    #[must_use]
    pub fn health_status_of(&self, instance: &Token) -> String {
        self.targeted(noun::HEALTH, verb::STATUS, instance.as_str())
    }

    /// Configuration change notices.
    #[must_use]
    pub fn config_changed(&self) -> String {
        self.base(noun::CONFIG, verb::CHANGED)
    }

    /// Results published by one host.
    #[must_use]
    pub fn result_put(&self, host: &HostId) -> String {
        self.targeted(noun::RESULT, verb::PUT, host.as_str())
    }

    /// Job event data published by one host for its runs.
    #[must_use]
    pub fn run_event(&self, host: &HostId) -> String {
        self.targeted(noun::RUN, verb::EVENT, host.as_str())
    }
}

/// Stream filter subjects spanning every account (one stream serves all accounts of a NATS
/// account; tenant isolation is done by NATS accounts and permissions).
pub mod any_account {
    use super::{noun, verb, ROOT, VERSION};

    /// `steward.v1.*.<noun>.<verb>.>`
    #[must_use]
    pub fn targeted(noun: &str, verb: &str) -> String {
        format!("{ROOT}.{VERSION}.*.{noun}.{verb}.>")
    }

    /// `steward.v1.*.<noun>.<verb>`
    #[must_use]
    pub fn plain(noun: &str, verb: &str) -> String {
        format!("{ROOT}.{VERSION}.*.{noun}.{verb}")
    }

    /// Host registry events of every account.
    #[must_use]
    pub fn host_events() -> String {
        targeted(noun::HOST, verb::EVENT)
    }

    /// Host commands of every account.
    #[must_use]
    pub fn host_commands() -> String {
        targeted(noun::HOST, verb::COMMAND)
    }

    /// Config change notices of every account.
    #[must_use]
    pub fn config_changed() -> String {
        plain(noun::CONFIG, verb::CHANGED)
    }

    /// Results of every account.
    #[must_use]
    pub fn results() -> String {
        targeted(noun::RESULT, verb::PUT)
    }

    /// Job event data of every account.
    #[must_use]
    pub fn run_events() -> String {
        targeted(noun::RUN, verb::EVENT)
    }
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
