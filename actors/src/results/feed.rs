//! Reading `STEWARD_RESULTS` as it grows, for the components that derive state from results
//! (telemetry history, alarm evaluation): one durable pull consumer per reader, explicit acks,
//! so a reader that is killed resumes after the last message it acknowledged.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use steward_subjects::api::result::{decode_stored, ResultRecord};
use steward_subjects::streams::RESULTS_STREAM;
use steward_subjects::Subjects;

use crate::ActorsError;

/// How long a delivered message may stay unacknowledged before it is delivered again.
pub const FEED_ACK_WAIT: Duration = Duration::from_secs(30);

/// Creates (or binds to) the durable consumer `name` over the stored results of one account;
/// a new consumer starts at `start`, an existing one where it stopped.
///
/// # Errors
/// [`ActorsError::Unavailable`] when the stream or consumer cannot be reached.
pub async fn durable(
    js: &jetstream::Context,
    subjects: &Subjects,
    name: &str,
    start: consumer::DeliverPolicy,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, ActorsError> {
    let stream = js
        .get_stream_no_info(RESULTS_STREAM)
        .await
        .map_err(|e| ActorsError::Unavailable(format!("results stream: {e}")))?;
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                description: Some("derived from stored results".to_owned()),
                filter_subject: subjects.result_put_all(),
                deliver_policy: start,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: FEED_ACK_WAIT,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ActorsError::Unavailable(format!("results consumer {name}: {e}")))
}

/// One stored message of `STEWARD_RESULTS`, decoded.
#[derive(Debug)]
pub struct StoredBatch {
    /// Its stream sequence.
    pub stream_seq: u64,
    /// When the stream stored it, ms since the Unix epoch (hub clock).
    pub stored_ms: u64,
    /// The results it holds, in order.
    pub results: Vec<ResultRecord>,
}

/// Decodes one delivered message; `Err` names why it cannot be read (a corrupt message is
/// skipped by readers, never retried forever).
///
/// # Errors
/// A reason when the message has no JetStream metadata or does not decode.
pub fn decode(msg: &jetstream::Message) -> Result<StoredBatch, String> {
    let info = msg.info().map_err(|e| format!("no jetstream metadata: {e}"))?;
    let stored_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let stream_seq = info.stream_sequence;
    let results = decode_stored(msg.headers.as_ref(), &msg.payload).map_err(|e| e.to_string())?;
    Ok(StoredBatch { stream_seq, stored_ms, results })
}
