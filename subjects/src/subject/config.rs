//! Subjects and keys of the configuration manager and the job-spec renderer.
//!
//! Endpoints (NATS micro, queue group: any hub instance may answer):
//! `steward.v1.<account>.config.{apply,plan,get,history,diff,rollback,playbook,store_playbook}` and
//! `steward.v1.<account>.jobspec.{list,explain,status}`. Events (stream
//! `STEWARD_CONFIG_EVENTS`): `config.changed`, `config.rejected`.
//!
//! Keys: the `steward_config` bucket holds `<account>.rev.<N>` (revision metadata, the commit
//! point, created once) and `<account>.doc.<N>` (the state archive); the `steward_jobspecs`
//! bucket holds `<account>.<host|pool>.<target>.<spec>`, so one target's specs are a key-filtered
//! list or watch (`<account>.host.<host>.*`) and never need a scan of every spec.

use super::{noun, Subjects, ROOT, VERSION};
use crate::config::spec::{SpecId, TargetKind};
use crate::token::{AccountId, Token};

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
    /// List job specs.
    pub const LIST: &str = "list";
    /// Explain one job spec.
    pub const EXPLAIN: &str = "explain";
    /// Renderer progress.
    pub const STATUS: &str = "status";
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

    /// `config.rejected` events: a polled candidate failed validation.
    #[must_use]
    pub fn config_rejected(&self) -> String {
        self.base(noun::CONFIG, config_verb::REJECTED)
    }

    /// `jobspec.list`: specs of the account, optionally of one target.
    #[must_use]
    pub fn jobspec_list(&self) -> String {
        self.base(noun::JOBSPEC, config_verb::LIST)
    }

    /// `jobspec.explain`: one spec and why it exists.
    #[must_use]
    pub fn jobspec_explain(&self) -> String {
        self.base(noun::JOBSPEC, config_verb::EXPLAIN)
    }

    /// `jobspec.status`: what the renderer last rendered and how far its writes are.
    #[must_use]
    pub fn jobspec_status(&self) -> String {
        self.base(noun::JOBSPEC, config_verb::STATUS)
    }
}

/// `config.rejected` of every account (stream filter).
#[must_use]
pub fn any_account_config_rejected() -> String {
    format!("{ROOT}.{VERSION}.*.{}.{}", noun::CONFIG, config_verb::REJECTED)
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

/// Key of a job spec: `<account>.<host|pool>.<target>.<spec>`.
#[must_use]
pub fn jobspec_key(account: &AccountId, kind: TargetKind, target: &Token, spec: &SpecId) -> String {
    format!("{account}.{}.{target}.{spec}", kind.as_str())
}

/// The key prefix of one target's specs: `<account>.<host|pool>.<target>` (append `.<spec>`
/// for a key or `.*` for a filter).
#[must_use]
pub fn jobspec_target_prefix(account: &AccountId, kind: TargetKind, target: &Token) -> String {
    format!("{account}.{}.{target}", kind.as_str())
}

/// Key filter of one target's specs: `<account>.<host|pool>.<target>.*`.
#[must_use]
pub fn jobspec_target_filter(account: &AccountId, kind: TargetKind, target: &Token) -> String {
    format!("{account}.{}.{target}.*", kind.as_str())
}

/// Key filter of every spec of `account`: `<account>.>`.
#[must_use]
pub fn jobspec_account_filter(account: &AccountId) -> String {
    format!("{account}.>")
}

/// The stream subject under which a KV `key` of `bucket` is stored: `$KV.<bucket>.<key>`
/// (the renderer publishes spec writes there directly to pipeline them and attach headers).
#[must_use]
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}
