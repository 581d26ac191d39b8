//! What a stored result is a result *of*: the spec catalog of one account, followed from the
//! `steward_jobspecs` bucket, answers "spec id → check" for readers of `STEWARD_RESULTS`
//! (telemetry history, alarm evaluation). A result names only its spec; the check is the spec's
//! attestation, with its assessment, interval and thresholds.
//!
//! Removed specs are kept (marked `removed`): results of a spec stored before its removal
//! still resolve. A result can reach a reader before the catalog saw its spec (rendered a
//! moment ago); [`SpecCatalog::resolve`] waits a bounded time for the follower to catch up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{JobSpec, TargetKind};
use steward_subjects::streams::JOBSPECS_BUCKET;
use steward_subjects::subject::{jobspec_account_filter, parse_jobspec_key};
use steward_subjects::AccountId;
use tokio::sync::Notify;
use tracing::warn;

use crate::ActorsError;

/// The check a spec runs, as readers of results need it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckInfo {
    /// The check's name: the spec's attestation id.
    pub check: String,
    /// The assessment it runs.
    pub assessment: String,
    /// The component it attests.
    pub component: String,
    /// The host it is bound to (`None` for a pool spec: its results are filed under the host of
    /// the runtime that ran it).
    pub host: Option<String>,
    /// The pool, for pool specs.
    pub pool: Option<String>,
    /// How often it runs, in ms.
    pub interval_ms: u64,
    /// Its executor kind.
    pub executor: String,
    /// Configuration revision it was rendered from.
    pub revision: u64,
    /// Whether the spec has been removed since.
    pub removed: bool,
}

impl CheckInfo {
    /// From a rendered spec.
    #[must_use]
    pub fn of(spec: &JobSpec) -> Self {
        let (host, pool) = match spec.target.kind {
            TargetKind::Host => (Some(spec.target.id.clone()), None),
            TargetKind::Pool => (None, Some(spec.target.id.clone())),
        };
        CheckInfo {
            check: spec.provenance.attestation.clone(),
            assessment: spec.provenance.assessment.clone(),
            component: spec.provenance.component.clone(),
            host,
            pool,
            interval_ms: spec.interval_ms,
            executor: spec.executor.kind().to_owned(),
            revision: spec.provenance.revision,
            removed: false,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    specs: RwLock<HashMap<String, Arc<CheckInfo>>>,
    /// Woken on every change the follower applies.
    changed: Notify,
    /// Whether the follower has delivered its first snapshot.
    ready: std::sync::atomic::AtomicBool,
}

/// The spec catalog of one account (cheap to clone; every clone sees the same map).
#[derive(Debug, Clone, Default)]
pub struct SpecCatalog {
    inner: Arc<Inner>,
}

impl SpecCatalog {
    /// An empty catalog (fill it with [`SpecCatalog::insert`], or use [`SpecCatalog::follow`]).
    #[must_use]
    pub fn new() -> Self {
        SpecCatalog::default()
    }

    /// Starts following the specs of `account`; the returned task keeps the catalog current
    /// until it is aborted (or the follower ends, which it logs). Returns once the snapshot of
    /// the bucket has been read.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the bucket cannot be read.
    pub async fn follow(
        client: &async_nats::Client,
        account: &AccountId,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(format!("KV_{JOBSPECS_BUCKET}"))
            .await
            .map_err(|e| ActorsError::Unavailable(format!("job-spec bucket: {e}")))?;
        let mut follower = crate::kv::follow(client, &stream, JOBSPECS_BUCKET, &jobspec_account_filter(account), false)
            .await
            .map_err(|e| ActorsError::Unavailable(e.to_string()))?;
        let catalog = SpecCatalog::new();
        let mut left = follower.snapshot_len();
        // The snapshot first, so that the catalog is complete when this returns.
        while left > 0 {
            let Some(change) = follower.next().await else { break };
            let change = change.map_err(|e| ActorsError::Unavailable(e.to_string()))?;
            left = change.pending;
            catalog.apply(account, &change);
        }
        catalog.inner.ready.store(true, std::sync::atomic::Ordering::Release);
        catalog.inner.changed.notify_waiters();
        let c = catalog.clone();
        let account = account.clone();
        let task = tokio::spawn(async move {
            while let Some(change) = follower.next().await {
                match change {
                    Ok(change) => c.apply(&account, &change),
                    Err(e) => warn!(error = %e, "spec catalog: a key could not be read"),
                }
            }
            warn!("spec catalog follower ended");
        });
        Ok((catalog, task))
    }

    fn apply(&self, account: &AccountId, change: &crate::kv::KeyChange) {
        let Some(key) = parse_jobspec_key(account, &change.key) else { return };
        let id = key.spec.to_string();
        {
            let mut specs = self.inner.specs.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if change.deleted {
                if let Some(info) = specs.get_mut(&id) {
                    let mut removed = (**info).clone();
                    removed.removed = true;
                    *info = Arc::new(removed);
                }
            } else {
                match codec::decode::<JobSpec>(Encoding::MsgPack, &change.value) {
                    Ok(spec) => {
                        specs.insert(id, Arc::new(CheckInfo::of(&spec)));
                    }
                    Err(e) => warn!(key = %change.key, error = %e, "spec catalog: undecodable spec"),
                }
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// Adds or replaces one spec (for tests and for readers that load specs themselves).
    pub fn insert(&self, spec_id: impl Into<String>, info: CheckInfo) {
        self.inner
            .specs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec_id.into(), Arc::new(info));
        self.inner.changed.notify_waiters();
    }

    /// The check of `spec_id`, if the catalog knows it now.
    #[must_use]
    pub fn get(&self, spec_id: &str) -> Option<Arc<CheckInfo>> {
        self.inner.specs.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(spec_id).cloned()
    }

    /// The check of `spec_id`, waiting up to `wait` for the follower to deliver it.
    pub async fn resolve(&self, spec_id: &str, wait: Duration) -> Option<Arc<CheckInfo>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inner.changed.notified();
            if let Some(info) = self.get(spec_id) {
                return Some(info);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(spec_id);
            }
        }
    }

    /// How many specs are known (removed ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.specs.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether no spec is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live (not removed) spec, id → check, for readers that list checks (staleness).
    #[must_use]
    pub fn live(&self) -> BTreeMap<String, Arc<CheckInfo>> {
        self.inner
            .specs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, i)| !i.removed)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
