//! Reading a KV bucket's keys through its stream, the one place that does it: [`follow`]
//! delivers the latest message of every key under a filter (the snapshot, in stream order),
//! then every later change, and [`scan`] stops after the snapshot. Both use an ordered push
//! consumer (`LastPerSubject`, instant replay), so a lost message makes the client recreate
//! the consumer rather than skip. Each message is a [`KeyChange`]: a put, or a delete or purge
//! marker (`KV-Operation: DEL | PURGE`), with its revision (stream sequence); with
//! `headers_only` the values are not transferred.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream::Stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use steward_subjects::subject::{kv_subject, parse_kv_subject};

/// The KV operation header (`DEL` or `PURGE` mark a removed key; absent on a put).
pub const KV_OPERATION: &str = "KV-Operation";

/// Why a key scan or follow failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvReadError {
    /// The bucket's stream could not be found.
    #[error("bucket {bucket} unavailable: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// The ordered consumer could not be created or subscribed to.
    #[error("cannot read keys of {bucket}: {reason}")]
    Consumer {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// The consumer failed while delivering.
    #[error("reading keys failed: {0}")]
    Read(String),
    /// A delivered message carried no JetStream metadata (no revision).
    #[error("a key message carried no jetstream metadata: {0}")]
    NoMetadata(String),
    /// No message came within the scan's idle limit while the snapshot was not complete.
    #[error("no key message within {0:?}")]
    TimedOut(Duration),
}

/// One key's message: a put or a delete/purge marker.
#[derive(Debug, Clone)]
pub struct KeyChange {
    /// The KV key (the subject without `$KV.<bucket>.`).
    pub key: String,
    /// Stream sequence (the KV revision).
    pub revision: u64,
    /// `true` for a delete or purge marker.
    pub deleted: bool,
    /// Messages the consumer still had to deliver after this one when it was sent (0 once the
    /// snapshot is complete and nothing newer is waiting).
    pub pending: u64,
    /// Headers.
    pub headers: Option<HeaderMap>,
    /// Payload (empty for markers and when read headers-only).
    pub value: Bytes,
}

/// The keys of a bucket under a filter: the snapshot, then every change (see [`follow`]).
pub struct KeyFollower {
    messages: consumer::push::Ordered,
    bucket: String,
    snapshot: u64,
}

impl std::fmt::Debug for KeyFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFollower").field("bucket", &self.bucket).field("snapshot", &self.snapshot).finish()
    }
}

/// Follows every key of `bucket` (whose stream is `stream`) matching `key_filter` (KV key
/// wildcards): first the latest message of each key, then every later change.
/// [`KeyFollower::snapshot_len`] says how many messages the snapshot had when the consumer was
/// created.
///
/// # Errors
/// [`KvReadError::Consumer`] when the consumer cannot be created or subscribed to.
pub async fn follow(
    client: &async_nats::Client,
    stream: &Stream,
    bucket: &str,
    key_filter: &str,
    headers_only: bool,
) -> Result<KeyFollower, KvReadError> {
    let consumer = ordered_consumer(client, stream, bucket, key_filter, headers_only).await?;
    KeyFollower::subscribe(consumer, bucket).await
}

type OrderedConsumer = consumer::Consumer<consumer::push::OrderedConfig>;

async fn ordered_consumer(
    client: &async_nats::Client,
    stream: &Stream,
    bucket: &str,
    key_filter: &str,
    headers_only: bool,
) -> Result<OrderedConsumer, KvReadError> {
    stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: kv_subject(bucket, key_filter),
            headers_only,
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| KvReadError::Consumer { bucket: bucket.to_owned(), reason: e.to_string() })
}

impl KeyFollower {
    async fn subscribe(consumer: OrderedConsumer, bucket: &str) -> Result<Self, KvReadError> {
        let snapshot = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| KvReadError::Consumer { bucket: bucket.to_owned(), reason: e.to_string() })?;
        Ok(KeyFollower { messages, bucket: bucket.to_owned(), snapshot })
    }

    /// Messages in the snapshot when the consumer was created (0: the filter matched no key).
    #[must_use]
    pub fn snapshot_len(&self) -> u64 {
        self.snapshot
    }

    /// The next message; `None` when the consumer ended. A [`KvReadError::NoMetadata`] leaves
    /// the follower usable; other errors end it.
    pub async fn next(&mut self) -> Option<Result<KeyChange, KvReadError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(KvReadError::Read(e.to_string()))),
        };
        let (revision, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Some(Err(KvReadError::NoMetadata(e.to_string()))),
        };
        let key = parse_kv_subject(&self.bucket, msg.subject.as_str()).unwrap_or_default().to_owned();
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        let m = msg.message;
        Some(Ok(KeyChange { key, revision, deleted, pending, headers: m.headers, value: m.payload }))
    }
}

/// The latest message of every key of `bucket` matching `key_filter`, in stream order
/// (markers of removed keys included, `deleted` set). Fails when no message comes within
/// `idle` before the snapshot is complete.
///
/// # Errors
/// [`KvReadError`] when the consumer cannot be created, fails, or stalls.
pub async fn scan(
    client: &async_nats::Client,
    stream: &Stream,
    bucket: &str,
    key_filter: &str,
    headers_only: bool,
    idle: Duration,
) -> Result<Vec<KeyChange>, KvReadError> {
    let consumer = ordered_consumer(client, stream, bucket, key_filter, headers_only).await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
    if pending == 0 {
        // Nothing to read: no subscription needed.
        return Ok(out);
    }
    let mut keys = KeyFollower::subscribe(consumer, bucket).await?;
    while pending > 0 {
        let change = match tokio::time::timeout(idle, keys.next()).await {
            Ok(Some(c)) => c?,
            Ok(None) => break,
            Err(_) => return Err(KvReadError::TimedOut(idle)),
        };
        pending = change.pending;
        out.push(change);
    }
    Ok(out)
}
