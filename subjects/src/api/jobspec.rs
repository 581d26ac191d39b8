//! Rendered job specs: the requests and replies of the renderer's `jobspec.{list,explain,status}`
//! endpoints. (Leasing specs to runtimes is [`super::lease`].)

use serde::{Deserialize, Serialize};

use crate::config::{JobSpec, TargetKind};

/// List job specs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpecListRequest {
    /// Only this kind of target (`host` or `pool`); required with `target`.
    pub kind: Option<TargetKind>,
    /// Only this target (host id or pool id).
    pub target: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: u32,
    /// Page cursor: only keys after this one.
    pub after: Option<String>,
}

/// A page of job specs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpecListReply {
    /// The specs, in key order.
    pub specs: Vec<JobSpec>,
    /// Cursor of the next page.
    pub next_after: Option<String>,
    /// Specs of the account (or target) in all pages.
    pub total: u64,
}

/// Explain one job spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExplainRequest {
    /// Spec id (32 hex digits).
    pub id: String,
}

/// A spec and why it exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExplainReply {
    /// Its key in the spec store.
    pub key: String,
    /// The spec.
    pub spec: JobSpec,
    /// Why it exists, one sentence per line.
    pub why: Vec<String>,
}

/// Ask the renderer what it is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderStatusRequest {}

/// The renderer's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderStatus {
    /// Revision of the last completed render (0 = none).
    pub rendered_revision: u64,
    /// Revision being rendered now, if any.
    pub rendering_revision: Option<u64>,
    /// Writes planned by the render in progress (or the last one).
    pub total: u64,
    /// Writes done so far.
    pub written: u64,
    /// Specs in the store after the last completed render.
    pub specs: u64,
    /// Hosts known.
    pub hosts: u64,
    /// Last completed render's diff counts.
    pub added: u64,
    /// Changed specs of the last completed render.
    pub changed: u64,
    /// Removed specs of the last completed render.
    pub removed: u64,
    /// Last render failure, if the last render failed.
    pub last_error: Option<String>,
}
