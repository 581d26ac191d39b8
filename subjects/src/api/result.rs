//! Assessment results: the record a runtime produces for each run of a spec, and the
//! `result.submit` endpoint that fences them by epoch and stores each once on the
//! `STEWARD_RESULTS` stream (`Nats-Msg-Id` = `<spec>:<epoch>:<seq>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// The check ran and passed.
    Pass,
    /// The check ran and failed (non-zero exit, wrong status, body mismatch, threshold).
    Fail,
    /// The check could not run (spawn failure, connection refused, bad parameters).
    #[default]
    Error,
    /// The check did not finish within its timeout.
    Timeout,
    /// A status this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ResultStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Pass => "pass",
            ResultStatus::Fail => "fail",
            ResultStatus::Error => "error",
            ResultStatus::Timeout => "timeout",
            ResultStatus::Unknown => "unknown",
        }
    }
}

/// Largest output kept inline in a result record, in bytes (longer output is cut, and stored
/// whole in the artifacts object store when the runtime can reach it).
pub const MAX_INLINE_OUTPUT: usize = 4096;

/// Largest output a runtime keeps of one run (stdout then stderr) and stores whole in the
/// artifacts object store when it is longer than [`MAX_INLINE_OUTPUT`], in bytes.
pub const MAX_STORED_OUTPUT: usize = 1024 * 1024;

/// Largest number of results one `result.submit` request may carry.
pub const MAX_SUBMIT_BATCH: usize = 1000;

/// One run of one spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultRecord {
    /// Spec id.
    pub spec: String,
    /// Lease epoch the run was made under.
    pub epoch: u64,
    /// Sequence number of the run within (spec, epoch), from 1.
    pub seq: u64,
    /// Runtime that ran it.
    pub runtime: String,
    /// Host the runtime runs on (the runtime id for standalone runtimes).
    pub host: String,
    /// Content hash of the spec that was run.
    pub content_hash: String,
    /// Executor kind (`command`, `http`, `tcp`, `ssh`).
    pub executor: String,
    /// Start, ms since the Unix epoch (runtime clock).
    pub started_at_ms: u64,
    /// End, ms since the Unix epoch (runtime clock).
    pub ended_at_ms: u64,
    /// Outcome.
    pub status: ResultStatus,
    /// Error class when `status` is `error` (`spawn`, `connect`, `auth`, `tls`, ...).
    pub error_kind: String,
    /// One-line summary (`exit 1`, `status 503, expected 200`, ...).
    pub message: String,
    /// Process exit code (command and ssh).
    pub exit_code: Option<i32>,
    /// Metrics, name → value (`latency_ms`, values parsed from JSON output, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Output (stdout then stderr for processes, the body for http), cut at
    /// [`MAX_INLINE_OUTPUT`] bytes.
    pub output: String,
    /// Whether `output` was cut.
    pub output_truncated: bool,
    /// Name of the full output (up to [`MAX_STORED_OUTPUT`] bytes) in the artifacts object
    /// store, when it was longer than [`MAX_INLINE_OUTPUT`]; the runtime uploads it before it
    /// submits the result.
    pub output_ref: Option<String>,
}

impl ResultRecord {
    /// The idempotency key: `<spec>:<epoch>:<seq>` (the `Nats-Msg-Id` on the results stream).
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.spec, self.epoch, self.seq)
    }
}

/// `result.submit`: store these results (each fenced by its epoch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitRequest {
    /// The results, in the order they were produced (at most [`MAX_SUBMIT_BATCH`]).
    pub results: Vec<ResultRecord>,
}

/// What happened to one submitted result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitStatus {
    /// Stored now.
    Stored,
    /// Already stored earlier (same idempotency key): nothing written.
    Duplicate,
    /// Refused: stale epoch or not the holder (`conflict`), or malformed (`invalid`).
    Refused,
    /// Could not be stored right now; send it again.
    #[default]
    Retry,
}

/// Outcome of one submitted result, in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitOutcome {
    /// The result's idempotency key.
    pub key: String,
    /// What happened.
    pub status: SubmitStatus,
    /// Stream sequence of the stored copy (stored and duplicate).
    pub stream_seq: u64,
    /// Why it was refused or must be retried.
    pub reason: String,
}

/// Reply to `result.submit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitReply {
    /// One outcome per submitted result, in the same order.
    pub outcomes: Vec<SubmitOutcome>,
}
