//! Configuration manager: request, reply and event types of the `config.*` endpoints and events
//! (its typed client is `steward_actors::config_manager::client::ConfigClient`).

use serde::{Deserialize, Serialize};

use crate::config::diff::DocumentChange;
use crate::config::{ConfigDocument, SpecTarget};
use crate::envelope::ErrorDetail;

/// Counts of a document's sections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DocumentSummary {
    /// Services.
    pub services: u32,
    /// Controls.
    pub controls: u32,
    /// Components.
    pub components: u32,
    /// Assessments.
    pub assessments: u32,
    /// Attestations.
    pub attestations: u32,
    /// Pools.
    pub pools: u32,
}

impl DocumentSummary {
    /// The counts of `doc`.
    #[must_use]
    pub fn of(doc: &ConfigDocument) -> Self {
        let n = |l: usize| u32::try_from(l).unwrap_or(u32::MAX);
        DocumentSummary {
            services: n(doc.services.len()),
            controls: n(doc.controls.len()),
            components: n(doc.components.len()),
            assessments: n(doc.assessments.len()),
            attestations: n(doc.attestations.len()),
            pools: n(doc.pools.len()),
        }
    }
}

/// Metadata of one immutable revision (a state archive's header).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RevisionMeta {
    /// Revision number (1, 2, ...).
    pub revision: u64,
    /// The revision it replaced.
    pub parent: Option<u64>,
    /// Hex SHA-256 of the canonical document.
    pub hash: String,
    /// Who applied it.
    pub author: String,
    /// Free label (`source` for revisions taken from a polled source).
    pub label: String,
    /// How it came in: `api`, `source`, `rollback`.
    pub origin: String,
    /// When it was stored, RFC 3339.
    pub created_at: String,
    /// The revision it re-applies, for rollbacks.
    pub rollback_of: Option<u64>,
    /// Section counts.
    pub summary: DocumentSummary,
}

/// A revision's full state archive: metadata and document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateArchive {
    /// Metadata.
    pub meta: RevisionMeta,
    /// The document.
    pub document: ConfigDocument,
}

/// Job-spec changes of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetDiff {
    /// The host or pool.
    pub target: SpecTarget,
    /// Specs added.
    pub added: u64,
    /// Specs changed.
    pub changed: u64,
    /// Specs removed.
    pub removed: u64,
}

/// Job-spec diff between two renderings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecDiff {
    /// Specs added.
    pub added: u64,
    /// Specs whose content changed.
    pub changed: u64,
    /// Specs removed.
    pub removed: u64,
    /// Specs left as they are.
    pub unchanged: u64,
    /// Per-target breakdown (targets with a change only, in target order).
    pub targets: Vec<TargetDiff>,
    /// Targets left out of `targets` because the list was capped.
    pub targets_omitted: u64,
}

/// Apply a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplyRequest {
    /// The document as JSON text (so problems are reported with pointers into it).
    pub document: String,
    /// Label of the new revision.
    pub label: String,
    /// Author (user name, `source`, ...).
    pub author: String,
    /// Only apply if the current revision is this one (0 = no revision yet).
    pub if_revision: Option<u64>,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplyReply {
    /// The current revision after the apply (the new one, or the unchanged one on a no-op).
    pub revision: RevisionMeta,
    /// `true` when the document equals the current revision and nothing was stored.
    pub noop: bool,
    /// Job-spec diff between the previous and the new revision against the current hosts.
    pub jobspecs: SpecDiff,
}

/// Dry-run a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanRequest {
    /// The document as JSON text.
    pub document: String,
}

/// What an apply of the document would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanReply {
    /// Current revision (0 = none yet).
    pub current_revision: u64,
    /// Hash of the candidate document.
    pub hash: String,
    /// `true` when the candidate equals the current revision.
    pub noop: bool,
    /// Document changes against the current revision.
    pub document: Vec<DocumentChange>,
    /// Job-spec changes, per target.
    pub jobspecs: SpecDiff,
}

/// Read a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetRequest {
    /// The revision; `None` = the current one.
    pub revision: Option<u64>,
}

/// Prefix of a playbook content reference.
pub const PLAYBOOK_REF_PREFIX: &str = "sha256:";

/// A playbook kept by the config manager, named by the SHA-256 of its bytes:
/// `sha256:<64 lower-case hex digits>`. A signed work order carrying a reference pins the exact
/// bytes: a host fetches them and runs them only if they hash to the reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaybookRef {
    hex: String,
}

impl PlaybookRef {
    /// The reference of `content`.
    #[must_use]
    pub fn of(content: &[u8]) -> Self {
        use sha2::Digest;
        PlaybookRef { hex: crate::config::spec::hex(&sha2::Sha256::digest(content)) }
    }

    /// Parses `sha256:<hex>`.
    ///
    /// # Errors
    /// An `invalid` [`WireError`](crate::envelope::WireError) saying what a reference looks like.
    pub fn parse(s: &str) -> Result<Self, crate::envelope::WireError> {
        let hex = s.strip_prefix(PLAYBOOK_REF_PREFIX).unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(crate::envelope::WireError::invalid(format!(
                "playbook reference {s:?} is not of the form sha256:<64 lower-case hex digits>"
            )));
        }
        Ok(PlaybookRef { hex: hex.to_owned() })
    }

    /// The lower-case hex digest.
    #[must_use]
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Whether `content` hashes to this reference.
    #[must_use]
    pub fn matches(&self, content: &[u8]) -> bool {
        PlaybookRef::of(content) == *self
    }
}

impl std::fmt::Display for PlaybookRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PLAYBOOK_REF_PREFIX}{}", self.hex)
    }
}

/// Read a stored playbook (`config.playbook`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookGetRequest {
    /// `sha256:<hex>`.
    pub reference: String,
}

/// A stored playbook as the store holds it. The config manager does not vouch for the bytes:
/// whoever runs them checks them against the reference they were given (hosts do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookReply {
    /// The reference asked for.
    pub reference: String,
    /// The stored content.
    pub content: String,
}

/// Store a playbook (`config.store_playbook`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookStoreRequest {
    /// Playbook YAML (at most `MAX_PLAYBOOK_BYTES`).
    pub content: String,
}

/// Where a playbook was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookStored {
    /// `sha256:<hex>` of the content.
    pub reference: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether the same bytes were stored already (nothing written).
    pub existed: bool,
}

/// List revisions, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    /// Only revisions created at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only revisions created before this time (RFC 3339).
    pub until: Option<String>,
    /// Only revisions with this label.
    pub label: Option<String>,
    /// Only revisions by this author.
    pub author: Option<String>,
    /// Page size (default 20, at most 1000).
    pub limit: u32,
    /// Page cursor: only revisions older than this one (from `next_before`).
    pub before: Option<u64>,
}

/// One page of history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryReply {
    /// Matching revisions, newest first.
    pub revisions: Vec<RevisionMeta>,
    /// Cursor of the next page, when there is one.
    pub next_before: Option<u64>,
    /// Matching revisions in all pages.
    pub total: u64,
}

/// Compare two revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffRequest {
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
}

/// Differences between two revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffReply {
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
    /// Document changes.
    pub document: Vec<DocumentChange>,
    /// Job-spec changes against the current hosts.
    pub jobspecs: SpecDiff,
}

/// Re-apply an old revision as a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RollbackRequest {
    /// The revision to bring back.
    pub revision: u64,
    /// Author.
    pub author: String,
    /// Label (default `rollback`).
    pub label: String,
    /// Only roll back if the current revision is this one.
    pub if_revision: Option<u64>,
}

/// `config.changed` event: a new revision is current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigChanged {
    /// Account.
    pub account: String,
    /// The new revision's metadata.
    pub revision: RevisionMeta,
}

/// `config.rejected` event: a candidate from a polled source failed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigRejected {
    /// Account.
    pub account: String,
    /// The source URL.
    pub source: String,
    /// Hash of the candidate bytes.
    pub hash: String,
    /// Every problem found.
    pub errors: Vec<ErrorDetail>,
    /// When, RFC 3339.
    pub at: String,
}

// The renderer's job-spec types moved to `api::jobspec`; re-exported until callers import them
// from there.
pub use super::jobspec::{
    ExplainReply, ExplainRequest, JobSpecListReply, JobSpecListRequest, RenderStatus, RenderStatusRequest,
};
