//! Spec-store and KV I/O shared by the renderer and the config manager: scanning the latest
//! value of every key under a filter, loading the spec index, and pipelined spec writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::spec::ContentHash;
use steward_subjects::config::SpecTarget;
use steward_subjects::streams::JOBSPECS_BUCKET;
use steward_subjects::subject::{jobspec_account_filter, jobspec_key, kv_subject, parse_jobspec_key, JobSpecKey};
use steward_subjects::{AccountId, Token, TokenKind};

use super::render::{Change, Rendered, SpecIndex};
use crate::spec_signing::SignedBatch;

/// Header carrying a spec's content hash on its KV message (read back header-only on start).
pub const SPEC_HASH_HEADER: &str = "Steward-Spec-Hash";
/// Header carrying the id of the key a spec was signed with (read back header-only on start,
/// so specs signed by another key — a rotated one — are signed again).
pub const SPEC_KEY_HEADER: &str = "Steward-Spec-Key";
/// The KV operation header (`DEL` marks a tombstone).
pub use crate::kv::KV_OPERATION;
/// Writes in flight before the writer waits for acknowledgements.
pub const WRITE_WINDOW: usize = 1024;

/// A spec-store or KV failure.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct SpecStoreError {
    /// What was being done.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

fn err(what: &'static str) -> impl Fn(String) -> SpecStoreError {
    move |reason| SpecStoreError { what, reason }
}

/// One key's latest message (see [`crate::kv::KeyChange`]).
pub type Latest = crate::kv::KeyChange;

/// How long a scan waits for its next message before it fails.
const SCAN_IDLE: Duration = Duration::from_secs(30);

/// The latest message of every key of `store` matching `key_filter`, in stream order (see
/// [`crate::kv::scan`]). With `headers_only` the values are not transferred.
///
/// # Errors
/// [`SpecStoreError`] when the consumer cannot be created or fails.
pub async fn scan_latest(
    client: &async_nats::Client,
    store: &kv::Store,
    key_filter: &str,
    headers_only: bool,
) -> Result<Vec<Latest>, SpecStoreError> {
    crate::kv::scan(client, &store.stream, &store.name, key_filter, headers_only, SCAN_IDLE).await.map_err(|e| {
        let what = match e {
            crate::kv::KvReadError::Bucket { .. } | crate::kv::KvReadError::Consumer { .. } => "cannot scan keys",
            _ => "key scan failed",
        };
        SpecStoreError { what, reason: e.to_string() }
    })
}

/// Loads what the spec store holds for `account` (headers only: ids, targets, content hashes).
/// With `signed_by`, a spec not signed by that key id gets an unknown (zero) hash, so the next
/// diff rewrites, and so signs, it again.
///
/// # Errors
/// [`SpecStoreError`] when the scan fails.
pub async fn load_index(
    client: &async_nats::Client,
    specs: &kv::Store,
    account: &AccountId,
    signed_by: Option<&str>,
) -> Result<SpecIndex, SpecStoreError> {
    let latest = scan_latest(client, specs, &jobspec_account_filter(account), true).await?;
    let entries = latest
        .into_iter()
        .filter(|l| !l.deleted)
        .filter_map(|l| {
            let JobSpecKey { kind, target, spec: id } = parse_jobspec_key(account, &l.key)?;
            let header = |name: &str| l.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
            let current = signed_by.is_none_or(|k| header(SPEC_KEY_HEADER).as_deref() == Some(k));
            let hash = header(SPEC_HASH_HEADER)
                .filter(|_| current)
                .and_then(|v| v.parse::<ContentHash>().ok())
                .unwrap_or_default();
            Some((id, hash, SpecTarget { kind, id: target.to_owned() }))
        })
        .collect();
    Ok(SpecIndex::from_entries(entries))
}

/// Writes every change of a diff: puts for added and changed specs (MessagePack `JobSpec`,
/// content hash in a header, each with its signature cut from `batch` — see
/// [`super::render::sign_changes`] — or unsigned without one), delete markers (tombstones) for
/// removed ones. Up to
/// [`WRITE_WINDOW`] publishes are in flight; `written` counts acknowledged writes.
///
/// # Errors
/// [`SpecStoreError`] on the first refused or unacknowledged write (the caller reloads the index
/// from the store and renders again, so partial writes converge).
#[allow(clippy::too_many_arguments)] // one render's parts, each borrowed from the caller
pub async fn write_changes(
    js: &jetstream::Context,
    account: &AccountId,
    revision: u64,
    desired: &Rendered,
    stored: &SpecIndex,
    changes: &[Change],
    batch: Option<&SignedBatch>,
    written: &Arc<AtomicU64>,
) -> Result<(), SpecStoreError> {
    let mut leaf = 0usize;
    let tokens = |targets: &[SpecTarget]| -> Vec<Option<Token>> {
        targets.iter().map(|t| Token::parse(TokenKind::Name, &t.id).ok()).collect()
    };
    let desired_tokens = tokens(&desired.targets);
    let stored_tokens = tokens(&stored.targets);
    let mut inflight = FuturesUnordered::new();
    for c in changes {
        let (subject, headers, payload) = match *c {
            Change::Added(i) | Change::Changed(i) => {
                let d = &desired.specs[i];
                let target = &desired.targets[d.target as usize];
                let k = leaf;
                leaf += 1;
                let Some(token) = &desired_tokens[d.target as usize] else { continue };
                let mut spec =
                    desired.templates[d.template as usize].spec(account.as_str(), target.kind, &target.id, revision);
                spec.signature = batch.map(|b| b.signature(k));
                let payload =
                    codec::encode(Encoding::MsgPack, &spec).map_err(|e| err("cannot encode spec")(e.to_string()))?;
                let mut h = HeaderMap::new();
                h.insert(SPEC_HASH_HEADER, d.hash.to_string().as_str());
                if let Some(b) = batch {
                    h.insert(SPEC_KEY_HEADER, b.key_id());
                }
                steward_subjects::trace::inject(&mut h);
                (kv_subject(JOBSPECS_BUCKET, &jobspec_key(account, target.kind, token, &d.id)), h, payload)
            }
            Change::Removed(j) => {
                let s = &stored.specs[j];
                let target = &stored.targets[s.target as usize];
                let Some(token) = &stored_tokens[s.target as usize] else { continue };
                let mut h = HeaderMap::new();
                h.insert(KV_OPERATION, "DEL");
                (kv_subject(JOBSPECS_BUCKET, &jobspec_key(account, target.kind, token, &s.id)), h, Bytes::new())
            }
        };
        let ack = js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| err("cannot write spec")(e.to_string()))?;
        inflight.push(std::future::IntoFuture::into_future(ack));
        while inflight.len() >= WRITE_WINDOW {
            if let Some(r) = inflight.next().await {
                r.map_err(|e| err("spec write not acknowledged")(e.to_string()))?;
                written.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r.map_err(|e| err("spec write not acknowledged")(e.to_string()))?;
        written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
