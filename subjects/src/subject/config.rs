//! Configuration subjects and keys: the config manager's endpoints and events, the revision
//! keys of the `steward_config` bucket, and stored playbooks.
//!
//! Endpoints (NATS micro, queue group: any hub instance may answer):
//! `steward.v1.<account>.config.{apply,plan,get,history,diff,rollback,playbook,store_playbook}`.
//! Events (stream `STEWARD_CONFIG_EVENTS`): `config.changed`, `config.rejected`.
//!
//! Keys of the `steward_config` bucket: `<account>.rev.<N>` (revision metadata, the commit
//! point, created once) and `<account>.doc.<N>` (the state archive).

use super::{account_rest, noun, verb, AnyAccount, Subjects};
use crate::token::AccountId;

/// Verbs of the configuration endpoints and events.
pub mod config_verb {
    /// Apply a document.
    pub const APPLY: &str = "apply";
    /// Dry-run a document.
    pub const PLAN: &str = "plan";
    /// Read a revision.
    pub const GET: &str = "get";
    /// List revisions.
    pub const HISTORY: &str = "history";
    /// Compare two revisions.
    pub const DIFF: &str = "diff";
    /// Re-apply an old revision.
    pub const ROLLBACK: &str = "rollback";
    /// Read a stored playbook by its content reference (hosts call this).
    pub const PLAYBOOK: &str = "playbook";
    /// Store a playbook and get its content reference.
    pub const STORE_PLAYBOOK: &str = "store_playbook";
    /// A candidate from a config source was refused (event).
    pub const REJECTED: &str = "rejected";
}

impl Subjects {
    /// `config.apply`: validate and store a new revision.
    #[must_use]
    pub fn config_apply(&self) -> String {
        self.base(noun::CONFIG, config_verb::APPLY)
    }

    /// `config.plan`: validation plus the job-spec diff, nothing stored.
    #[must_use]
    pub fn config_plan(&self) -> String {
        self.base(noun::CONFIG, config_verb::PLAN)
    }

    /// `config.get`: the current or a given revision.
    #[must_use]
    pub fn config_get(&self) -> String {
        self.base(noun::CONFIG, config_verb::GET)
    }

    /// `config.history`: revisions, filtered and paged.
    #[must_use]
    pub fn config_history(&self) -> String {
        self.base(noun::CONFIG, config_verb::HISTORY)
    }

    /// `config.diff`: document and job-spec diff between two revisions.
    #[must_use]
    pub fn config_diff(&self) -> String {
        self.base(noun::CONFIG, config_verb::DIFF)
    }

    /// `config.rollback`: re-apply an old revision as a new one.
    #[must_use]
    pub fn config_rollback(&self) -> String {
        self.base(noun::CONFIG, config_verb::ROLLBACK)
    }

    /// `config.playbook`: a stored playbook by its content reference (`sha256:<hex>`). Hosts
    /// request it to fetch the playbook a signed work order names.
    #[must_use]
    pub fn config_playbook(&self) -> String {
        self.base(noun::CONFIG, config_verb::PLAYBOOK)
    }

    /// `config.store_playbook`: store a playbook content-addressed; the reply is its reference.
    #[must_use]
    pub fn config_store_playbook(&self) -> String {
        self.base(noun::CONFIG, config_verb::STORE_PLAYBOOK)
    }

    /// Configuration change notices (`config.changed`).
    #[must_use]
    pub fn config_changed(&self) -> String {
        self.base(noun::CONFIG, verb::CHANGED)
    }

    /// `config.rejected` events: a polled candidate failed validation.
    #[must_use]
    pub fn config_rejected(&self) -> String {
        self.base(noun::CONFIG, config_verb::REJECTED)
    }
}

impl AnyAccount {
    /// Config change notices of every account (stream filter).
    #[must_use]
    pub fn config_changed() -> String {
        Self::plain(noun::CONFIG, verb::CHANGED)
    }

    /// `config.rejected` of every account (stream filter).
    #[must_use]
    pub fn config_rejected() -> String {
        Self::plain(noun::CONFIG, config_verb::REJECTED)
    }
}

/// Key of revision `n`'s metadata in the config bucket: `<account>.rev.<n>`.
#[must_use]
pub fn config_revision_key(account: &AccountId, n: u64) -> String {
    format!("{account}.rev.{n}")
}

/// Key filter of every revision's metadata of `account`: `<account>.rev.*`.
#[must_use]
pub fn config_revision_filter(account: &AccountId) -> String {
    format!("{account}.rev.*")
}

/// The revision number a key of the config bucket names, when it is a revision-metadata key of
/// `account` (`<account>.rev.<n>`).
#[must_use]
pub fn parse_revision_key(account: &AccountId, key: &str) -> Option<u64> {
    account_rest(account, key)?.strip_prefix("rev.")?.parse().ok()
}

/// Key of revision `n`'s state archive (the document): `<account>.doc.<n>`.
#[must_use]
pub fn config_archive_key(account: &AccountId, n: u64) -> String {
    format!("{account}.doc.{n}")
}

/// Object name of a stored playbook in the artifacts object store, by the lower-case hex
/// SHA-256 of its content: `<account>/playbooks/sha256/<hex>`.
#[must_use]
pub fn playbook_object_name(account: &AccountId, sha256_hex: &str) -> String {
    format!("{account}/playbooks/sha256/{sha256_hex}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_subjects_and_keys() {
        let a = AccountId::parse("acme").unwrap();
        let s = Subjects::new(a.clone());
        assert_eq!(s.config_apply(), "steward.v1.acme.config.apply");
        assert_eq!(s.config_changed(), "steward.v1.acme.config.changed");
        assert_eq!(AnyAccount::config_changed(), "steward.v1.*.config.changed");
        assert_eq!(AnyAccount::config_rejected(), "steward.v1.*.config.rejected");
        assert_eq!(parse_revision_key(&a, &config_revision_key(&a, 42)), Some(42));
        assert_eq!(parse_revision_key(&a, &config_archive_key(&a, 42)), None);
        assert_eq!(parse_revision_key(&a, "acme.rev.x"), None);
        assert_eq!(parse_revision_key(&AccountId::parse("acme2").unwrap(), "acme.rev.1"), None);
    }
}
