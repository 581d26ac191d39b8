//! Assessment results: the record a runtime produces for each run of a spec, and the
//! `result.submit` endpoint that fences them by epoch and stores each once on the
//! `STEWARD_RESULTS` stream.
//!
//! # Stored form: segments
//! The hub stores the accepted results of one request and one host as a [`ResultSegment`]: one
//! stream message on `result.put.<host>.<runtime>` carrying the header [`SEGMENT_HEADER`] (its result
//! count) and `Nats-Msg-Id` = `<host>.` and the idempotency key (`<spec>:<epoch>:<seq>`) of its
//! first result ([`stored_msg_id`]), so message ids of different hosts never collide.
//! One message per segment instead of one per result is what lets ingestion run faster than the
//! stream's per-message ceiling. Exactly once holds because a runtime re-sends from the same
//! outbox head after a lost reply: the re-sent segment has the same first key, JetStream reports
//! it duplicate, and the hub reads the stored segment back to tell which results it already
//! holds and stores only the rest (under the key of the first of them). Beyond the dedupe window
//! (an edge cut off for an hour), exactly once rests on the runtime's outbox numbering instead:
//! each segment is stored on the runtime's own `result.put.<host>.<runtime>` with its outbox
//! watermark ([`OUTBOX_HEADER`]) and `Nats-Expected-Last-Subject-Sequence`, so the hub reads the
//! last stored position back from the stream and answers anything at or below it `duplicate`.
//! Readers decode messages
//! with [`decode_stored`], which also reads single-result messages of older hubs (no header).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// The check ran and passed.
    Pass,
    /// The check ran and found a problem short of failure: a monitoring plugin's exit 1
    /// (WARNING), or a metric past a threshold's `warn` limit.
    Warn,
    /// The check ran and failed (non-zero exit, wrong status, body mismatch, threshold).
    Fail,
    /// The check could not run (spawn failure, connection refused, bad parameters).
    #[default]
    Error,
    /// The check did not finish within its timeout.
    Timeout,
    /// The check could not tell the state (a monitoring plugin's exit 3, UNKNOWN, or an exit
    /// code outside the convention), or a status this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ResultStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Pass => "pass",
            ResultStatus::Warn => "warn",
            ResultStatus::Fail => "fail",
            ResultStatus::Error => "error",
            ResultStatus::Timeout => "timeout",
            ResultStatus::Unknown => "unknown",
        }
    }
}

/// Largest output kept inline in a result record, in bytes (longer output is cut, and stored
/// whole in the outputs stream when the runtime can reach it).
pub const MAX_INLINE_OUTPUT: usize = 4096;

/// Largest output a runtime keeps of one run (stdout then stderr) and stores whole in the
/// outputs stream when it is longer than [`MAX_INLINE_OUTPUT`] (cut further to the server's
/// max payload), in bytes.
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
    /// Runtime that ran it: the runtime of the `result.submit.<host>.<runtime>` subject it was
    /// submitted on (empty is filled in by the hub, another is refused `forbidden`).
    pub runtime: String,
    /// Host the runtime runs on (the runtime id for standalone runtimes): the host of the submit
    /// subject, checked and filled in like `runtime`; results are stored under it.
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
    /// Metrics, name → value (`latency_ms`, values parsed from JSON output or a plugin's
    /// performance data, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Units of the metrics that have one, name → unit of measure as the plugin gave it (`s`,
    /// `ms`, `%`, `B`, `KB`, `MB`, `c`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub units: BTreeMap<String, String>,
    /// Output (stdout then stderr for processes, the body for http), cut at
    /// [`MAX_INLINE_OUTPUT`] bytes.
    pub output: String,
    /// Whether `output` was cut.
    pub output_truncated: bool,
    /// Where the full output (up to [`MAX_STORED_OUTPUT`] bytes) is stored, when it was longer
    /// than [`MAX_INLINE_OUTPUT`]: `out:<seq>`, a message of the outputs stream on the result's
    /// own host's `result.output.<host>` (checked by the hub's fence), or, in results of older
    /// runtimes, an object name of the artifacts object store
    /// ([`OutputRef`](crate::subject::OutputRef)). The runtime stores it before it submits the
    /// result.
    pub output_ref: Option<String>,
    /// Position of this result in its runtime's outbox: increasing in submission order and
    /// never reused by one outbox ([`SubmitRequest::incarnation`]); 0 from runtimes that do
    /// not number their results. The hub's stored watermark is made of it.
    pub outbox: u64,
}

impl ResultRecord {
    /// The idempotency key: `<spec>:<epoch>:<seq>` (a segment's `Nats-Msg-Id` is its host and its
    /// first result's key, [`stored_msg_id`]).
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.spec, self.epoch, self.seq)
    }
}

/// The `Nats-Msg-Id` of a stored segment whose first result has idempotency key `key`, filed
/// under `host`: `<host>.<key>`. The host is the authenticated one (the submit subject's), so
/// no host can take another host's message ids.
#[must_use]
pub fn stored_msg_id(host: &str, key: &str) -> String {
    format!("{host}.{key}")
}

/// `result.submit`: store these results (each fenced by its epoch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitRequest {
    /// The results, in the order they were produced (at most [`MAX_SUBMIT_BATCH`]).
    pub results: Vec<ResultRecord>,
    /// The runtime's outbox: a random id made when its local store was created. With it, each
    /// result's [`ResultRecord::outbox`] position lets the hub answer a result at or below the
    /// runtime's stored watermark `duplicate` however long after the first copy it comes (the
    /// JetStream dedupe window no longer bounds the outage a runtime may survive). Empty from
    /// runtimes that do not number their results: those rely on the dedupe window.
    pub incarnation: String,
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

/// Header on a stored segment: how many results it holds. A message without it is one
/// [`ResultRecord`] (as older hubs stored them).
pub const SEGMENT_HEADER: &str = "Steward-Results";

/// Header on a stored segment of a runtime that numbers its results: `<incarnation> <outbox>`,
/// the outbox and the position of the segment's last result ([`outbox_mark`]). The last segment
/// on a runtime's `result.put.<host>.<runtime>` is that runtime's stored watermark.
pub const OUTBOX_HEADER: &str = "Steward-Outbox";

/// The [`OUTBOX_HEADER`] value for a segment whose last result is at `outbox` in `incarnation`.
#[must_use]
pub fn outbox_mark(incarnation: &str, outbox: u64) -> String {
    format!("{incarnation} {outbox}")
}

/// Reads an [`OUTBOX_HEADER`] value: (incarnation, outbox position); `None` when malformed.
#[must_use]
pub fn parse_outbox_mark(value: &str) -> Option<(&str, u64)> {
    let (incarnation, outbox) = value.split_once(' ')?;
    if incarnation.is_empty() {
        return None;
    }
    Some((incarnation, outbox.parse().ok()?))
}

/// Segments are cut at about this encoded size (well below the server's 1 MiB payload limit).
pub const MAX_SEGMENT_BYTES: usize = 512 * 1024;

/// Results of one host stored as one message on the results stream, in production order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultSegment {
    /// The results.
    pub results: Vec<ResultRecord>,
}

/// Why a stored results message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("stored results message not readable: {0}")]
pub struct StoredDecodeError(String);

/// Decodes a message of the results stream: a segment when it carries [`SEGMENT_HEADER`], one
/// result otherwise.
///
/// # Errors
/// [`StoredDecodeError`] when the payload is not valid MessagePack of the expected shape.
///
/// ```
/// use steward_subjects::api::result::{decode_stored, ResultRecord, ResultSegment, SEGMENT_HEADER};
/// let seg = ResultSegment { results: vec![ResultRecord { spec: "s".into(), epoch: 1, seq: 1, ..Default::default() }] };
/// let payload = rmp_serde::to_vec_named(&seg).unwrap();
/// let mut headers = async_nats::HeaderMap::new();
/// headers.insert(SEGMENT_HEADER, "1");
/// assert_eq!(decode_stored(Some(&headers), &payload).unwrap(), seg.results);
/// ```
pub fn decode_stored(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Vec<ResultRecord>, StoredDecodeError> {
    let segment = headers.is_some_and(|h| h.get(SEGMENT_HEADER).is_some());
    if segment {
        rmp_serde::from_slice::<ResultSegment>(payload).map(|s| s.results).map_err(|e| StoredDecodeError(e.to_string()))
    } else {
        rmp_serde::from_slice::<ResultRecord>(payload).map(|r| vec![r]).map_err(|e| StoredDecodeError(e.to_string()))
    }
}

/// Reply to `result.submit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitReply {
    /// One outcome per submitted result, in the same order.
    pub outcomes: Vec<SubmitOutcome>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn outbox_marks_read_back_and_malformed_ones_are_none() {
        assert_eq!(parse_outbox_mark(&outbox_mark("a1b2", 42)), Some(("a1b2", 42)));
        for bad in ["", "a1b2", " 42", "a1b2 x", "a1b2 -1", "a1b2 18446744073709551616"] {
            assert_eq!(parse_outbox_mark(bad), None, "{bad:?}");
        }
    }
}
