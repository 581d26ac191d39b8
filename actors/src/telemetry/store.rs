//! The telemetry writer's JetStream I/O: the checkpoint (compare-and-set, also the writer lock),
//! publishing a batch with its `Nats-Msg-Id`s (every message confirmed, failures sent again with
//! the same id), and reading a filtered range of a stream back.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use steward_subjects::api::telemetry::TelemetryCheckpoint;
use steward_subjects::codec::{self, Encoding};

/// A failed telemetry store operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// JetStream could not be read or written.
    #[error("{what}: {reason}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The server's or client's reason.
        reason: String,
    },
    /// Another instance wrote the checkpoint: this one no longer writes.
    #[error("telemetry writer lock lost: {0}")]
    LockLost(String),
}

fn io(what: &'static str) -> impl Fn(String) -> StoreError {
    move |reason| StoreError::Io { what, reason }
}

/// How often a failed publish is sent again before the batch fails.
const PUBLISH_ATTEMPTS: u32 = 5;
/// Most messages asked for in one pull while reading a range.
const READ_BATCH: u64 = 5000;
/// How long a read of a stream range waits for its next message before it gives up.
const READ_IDLE: Duration = Duration::from_secs(5);

/// The stored checkpoint and its revision (0 when there is none).
///
/// # Errors
/// [`StoreError::Io`] when the bucket cannot be read or the record decoded.
pub async fn load_checkpoint(kv: &kv::Store, key: &str) -> Result<(TelemetryCheckpoint, u64), StoreError> {
    match kv.entry(key).await.map_err(|e| io("read telemetry checkpoint")(e.to_string()))? {
        Some(e) if e.operation == kv::Operation::Put => {
            let cp = codec::decode_limited(Encoding::MsgPack, &e.value, usize::MAX)
                .map_err(|e| io("decode telemetry checkpoint")(e.to_string()))?;
            Ok((cp, e.revision))
        }
        Some(e) => Ok((TelemetryCheckpoint::default(), e.revision)),
        None => Ok((TelemetryCheckpoint::default(), 0)),
    }
}

/// Writes `cp` over revision `revision` (creating the key when `revision` is 0); answers the new
/// revision.
///
/// # Errors
/// [`StoreError::LockLost`] when the key moved on (another writer), [`StoreError::Io`] otherwise.
pub async fn write_checkpoint(
    kv: &kv::Store,
    key: &str,
    cp: &TelemetryCheckpoint,
    revision: u64,
) -> Result<u64, StoreError> {
    let payload = codec::encode(Encoding::MsgPack, cp).map_err(|e| io("encode telemetry checkpoint")(e.to_string()))?;
    let r = if revision == 0 {
        kv.create(key, payload).await.map_err(|e| e.to_string())
    } else {
        kv.update(key, payload, revision).await.map_err(|e| e.to_string())
    };
    r.map_err(|e| {
        if e.contains("wrong last sequence") || e.contains("key exists") || e.contains("already exists") {
            StoreError::LockLost(e)
        } else {
            io("write telemetry checkpoint")(e)
        }
    })
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Messages in flight at once while publishing (well below the client's limit of unconfirmed
/// publishes, whose permits are held until each confirmation is read).
const PUBLISH_WINDOW: usize = 512;

/// Publishes every message (pipelined, [`PUBLISH_WINDOW`] at a time) and answers each one's
/// stream sequence, in order; a message whose publish fails is sent again with the same id (the
/// stream drops a copy it already holds).
///
/// # Errors
/// [`StoreError::Io`] when a message still fails after [`PUBLISH_ATTEMPTS`] tries.
pub async fn publish_all(js: &jetstream::Context, batch: &[Outgoing]) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::with_capacity(batch.len());
    for window in batch.chunks(PUBLISH_WINDOW) {
        let mut futures = Vec::with_capacity(window.len());
        for m in window {
            futures.push(js.publish_with_headers(m.subject.clone(), msg_headers(m), m.payload.clone()).await);
        }
        for (m, f) in window.iter().zip(futures) {
            let mut outcome = match f {
                Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut attempt = 1;
            while let Err(e) = &outcome {
                if attempt >= PUBLISH_ATTEMPTS {
                    return Err(io("publish telemetry")(format!("{}: {e}", m.subject)));
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
                outcome = match js.publish_with_headers(m.subject.clone(), msg_headers(m), m.payload.clone()).await {
                    Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
            }
            seqs.push(outcome.unwrap_or_default());
        }
    }
    Ok(seqs)
}

fn msg_headers(m: &Outgoing) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", m.msg_id.as_str());
    h
}

/// The last sequence of `stream` (0 when empty).
///
/// # Errors
/// [`StoreError::Io`] when the stream cannot be read.
pub async fn last_seq(js: &jetstream::Context, stream: &str) -> Result<u64, StoreError> {
    let mut s = js.get_stream(stream).await.map_err(|e| io("telemetry stream")(e.to_string()))?;
    let info = s.info().await.map_err(|e| io("telemetry stream info")(e.to_string()))?;
    Ok(info.state.last_sequence)
}

/// One stored message read back.
#[derive(Debug)]
pub struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id`, if it has one.
    pub msg_id: Option<String>,
    /// Its payload.
    pub payload: Bytes,
}

/// Reads every message of `stream` matching `filter` from `start` on (as stored when the read
/// begins), calling `visit` on each in order; answers how many were read.
///
/// # Errors
/// [`StoreError::Io`] when the stream cannot be read, or stops answering mid-read.
pub async fn read_range(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: consumer::DeliverPolicy,
    mut visit: impl FnMut(Stored) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let s = js.get_stream_no_info(stream).await.map_err(|e| io("telemetry stream")(e.to_string()))?;
    let c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: start,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| io("telemetry read consumer")(e.to_string()))?;
    let total = c.cached_info().num_pending;
    let mut read = 0;
    if total > 0 {
        let mut messages = c
            .stream()
            .max_messages_per_batch(usize::try_from(total.min(READ_BATCH)).unwrap_or(1000))
            .messages()
            .await
            .map_err(|e| io("telemetry read")(e.to_string()))?;
        while read < total {
            let next = tokio::time::timeout(READ_IDLE, messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(io("telemetry read")(e.to_string())),
                Ok(None) | Err(_) => {
                    return Err(io("telemetry read")(format!("{stream} stopped after {read} of {total}")))
                }
            };
            let seq = msg.info().map(|i| i.stream_sequence).map_err(|e| io("telemetry read")(e.to_string()))?;
            let msg_id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
            read += 1;
            visit(Stored { seq, subject: msg.subject.to_string(), msg_id, payload: msg.payload.clone() })?;
        }
    }
    // Deleted on the side (it would go by itself after its inactive threshold).
    let name = c.cached_info().name.clone();
    tokio::spawn(async move {
        let _ = s.delete_consumer(&name).await;
    });
    Ok(read)
}
