//! The spec feed: the leader follows every job spec of its account in `steward_jobspecs` (an
//! ordered consumer, latest value per key) and queues each change to the loop as an input.

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::JobSpec;
use steward_subjects::streams::JOBSPECS_BUCKET;
use steward_subjects::subject::{jobspec_account_filter, parse_jobspec_key};
use steward_subjects::{trace, AccountId};
use tracing::warn;

use super::requests::{Input, Shared};
use super::state::SpecEntry;
use super::{LeaseError, LeaseMsg};
use crate::kv::{self, KvReadError};
use crate::tasks::TaskSet;

/// Starts following the specs of `account`: every change becomes an input on `tx`, `ready` gets
/// a message once every existing spec was sent, and the end of the feed becomes a step-down.
///
/// # Errors
/// [`LeaseError::Bucket`] when the bucket cannot be opened.
pub(super) async fn spawn_spec_feed(
    client: &async_nats::Client,
    js: &jetstream::Context,
    (account, shared): (&AccountId, &Arc<Shared>),
    tx: &tokio::sync::mpsc::UnboundedSender<Input>,
    ready: tokio::sync::mpsc::Sender<()>,
    tasks: &mut TaskSet<LeaseMsg>,
) -> Result<(), LeaseError> {
    let stream = js
        .get_stream(format!("KV_{JOBSPECS_BUCKET}"))
        .await
        .map_err(|e| LeaseError::Bucket { bucket: JOBSPECS_BUCKET, reason: e.to_string() })?;
    let (tx, client, account, shared) = (tx.clone(), client.clone(), account.clone(), shared.clone());
    let filter = jobspec_account_filter(&account);
    tasks.spawn_detached(async move {
        let followed = follow(&client, &stream, JOBSPECS_BUCKET, &filter, ready, |key, deleted, value, headers| {
            let Some(id) = parse_jobspec_key(&account, key).map(|k| k.spec.to_string()) else { return };
            if deleted {
                let _ = tx.send(Input::SpecRemoved(id));
                return;
            }
            match codec::decode_limited::<JobSpec>(Encoding::MsgPack, value, usize::MAX) {
                Ok(spec) => {
                    if let Some(cx) = trace::context_of(headers) {
                        *shared.spec_trace.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx);
                    }
                    let _ = tx.send(Input::SpecUpsert(id, SpecEntry::new(spec, value.clone())));
                }
                Err(e) => warn!(key, error = %e, "undecodable job spec skipped"),
            }
        })
        .await;
        let reason = followed.err().unwrap_or(LeaseError::WatchEnded { bucket: JOBSPECS_BUCKET });
        let _ = tx.send(Input::StepDown(reason));
    });
    Ok(())
}

/// Follows the latest value of every key of a KV bucket under `filter` ([`crate::kv::follow`]),
/// calling `apply(key, deleted, value, headers)` for each; sends on `ready` once the snapshot of existing
/// keys has been applied.
async fn follow<F>(
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    bucket: &'static str,
    filter: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    mut apply: F,
) -> Result<(), LeaseError>
where
    F: FnMut(&str, bool, &Bytes, Option<&async_nats::HeaderMap>),
{
    let failed = |e: KvReadError| LeaseError::Watch { bucket, reason: e.to_string() };
    let mut keys = kv::follow(client, stream, bucket, filter, false).await.map_err(failed)?;
    let mut snapshot = keys.snapshot_len();
    let mut ready = Some(ready);
    if snapshot == 0 {
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
    }
    while let Some(change) = keys.next().await {
        let c = match change {
            Ok(c) => c,
            Err(KvReadError::NoMetadata(_)) => continue,
            Err(e) => return Err(failed(e)),
        };
        apply(&c.key, c.deleted, &c.value, c.headers.as_ref());
        if ready.is_some() {
            snapshot = snapshot.saturating_sub(1);
            if snapshot == 0 || c.pending == 0 {
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
            }
        }
    }
    Ok(())
}
