//! The spec feed: the leader follows every job spec of its account in `steward_jobspecs` (an
//! ordered consumer, latest value per key) and queues each change to the loop as an input.

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::JobSpec;
use steward_subjects::streams::JOBSPECS_BUCKET;
use steward_subjects::subject::{jobspec_account_filter, kv_subject};
use steward_subjects::AccountId;
use tracing::warn;

use super::requests::Input;
use super::state::SpecEntry;
use super::{LeaseError, Tasks};

/// KV operation header (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// Starts following the specs of `account`: every change becomes an input on `tx`, `ready` gets
/// a message once every existing spec was sent, and the end of the feed becomes a step-down.
///
/// # Errors
/// [`LeaseError::Bucket`] when the bucket cannot be opened.
pub(super) async fn spawn_spec_feed(
    client: &async_nats::Client,
    js: &jetstream::Context,
    account: &AccountId,
    tx: &tokio::sync::mpsc::UnboundedSender<Input>,
    ready: tokio::sync::mpsc::Sender<()>,
    tasks: &mut Tasks,
) -> Result<(), LeaseError> {
    let stream = js
        .get_stream(format!("KV_{JOBSPECS_BUCKET}"))
        .await
        .map_err(|e| LeaseError::Bucket { bucket: JOBSPECS_BUCKET, reason: e.to_string() })?;
    let (tx, client) = (tx.clone(), client.clone());
    let filter = jobspec_account_filter(account);
    tasks.0.push(tokio::spawn(async move {
        let followed = follow(&client, &stream, JOBSPECS_BUCKET, &filter, ready, |key, _rev, deleted, value| {
            let Some(id) = key.rsplit('.').next().map(str::to_owned) else { return };
            if deleted {
                let _ = tx.send(Input::SpecRemoved(id));
                return;
            }
            match codec::decode_limited::<JobSpec>(Encoding::MsgPack, value, usize::MAX) {
                Ok(spec) => {
                    let _ = tx.send(Input::SpecUpsert(id, SpecEntry::new(spec, Bytes::copy_from_slice(value))));
                }
                Err(e) => warn!(key, error = %e, "undecodable job spec skipped"),
            }
        })
        .await;
        let reason = followed.err().unwrap_or(LeaseError::WatchEnded { bucket: JOBSPECS_BUCKET });
        let _ = tx.send(Input::StepDown(reason));
    }));
    Ok(())
}

/// Follows the latest value of every key of a KV bucket under `filter` with an ordered
/// consumer, calling `apply(key, revision, deleted, value)` for each; sends on `ready` once the
/// snapshot of existing keys has been applied.
async fn follow<F>(
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    bucket: &'static str,
    filter: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    mut apply: F,
) -> Result<(), LeaseError>
where
    F: FnMut(&str, u64, bool, &[u8]),
{
    let failed = |e: String| LeaseError::Watch { bucket, reason: e };
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: kv_subject(bucket, filter),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut snapshot = consumer.cached_info().num_pending;
    let mut ready = Some(ready);
    if snapshot == 0 {
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
    }
    let prefix = kv_subject(bucket, "");
    let mut messages = consumer.messages().await.map_err(|e| failed(e.to_string()))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| failed(e.to_string()))?;
        let Ok(info) = msg.info() else { continue };
        let revision = info.stream_sequence;
        let key = msg.subject.as_str().strip_prefix(prefix.as_str()).unwrap_or_default().to_owned();
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        apply(&key, revision, deleted, &msg.payload);
        if ready.is_some() {
            snapshot = snapshot.saturating_sub(1);
            if snapshot == 0 || info.pending == 0 {
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
            }
        }
    }
    Ok(())
}
