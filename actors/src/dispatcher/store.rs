//! The run store: run records, per-host run records and idempotency keys in the `steward_runs`
//! KV bucket, every update a compare-and-set on the key's revision (so two hub instances never
//! overwrite each other; a writer that remembers a record's revision skips the read), plus
//! consistent reads of many keys at once ([`crate::kv::scan`]: last value per key) and reads
//! of a run's job events.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_subjects::api::run::{HostRun, RunEvent, RunRecord};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{RUNS_BUCKET, RUN_EVENTS_STREAM};
use steward_subjects::subject::{
    run_host_filter, run_host_key, run_idempotency_key, run_record_filter, run_record_key,
};
use steward_subjects::{AccountId, HostId, Subjects};

/// Compare-and-set attempts before an update gives up.
const CAS_TRIES: usize = 16;

/// How long a scan of many keys waits for its next message before it fails.
const SCAN_IDLE: Duration = Duration::from_secs(10);

/// Errors of the run store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunStoreError {
    /// JetStream refused or failed.
    #[error("run store: {0}")]
    Backend(String),
    /// A stored value does not decode.
    #[error("run store value {key} is malformed: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Too many concurrent writers.
    #[error("run store key {0} kept changing; update abandoned")]
    Contended(String),
}

fn backend(e: impl std::fmt::Display) -> RunStoreError {
    RunStoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, RunStoreError> {
    codec::encode(Encoding::MsgPack, v).map_err(backend)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RunStoreError> {
    codec::decode_limited(Encoding::MsgPack, bytes, usize::MAX)
        .map_err(|e| RunStoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

/// Reads the latest value of every key of `bucket` matching `filter` (KV key wildcards), in one
/// pass of an ordered consumer; deleted keys are left out.
///
/// # Errors
/// [`RunStoreError`] when the stream cannot be read or a value does not decode.
pub async fn read_latest<T: DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<(String, T)>, RunStoreError> {
    Ok(read_latest_revisions(js, bucket, filter).await?.into_iter().map(|(k, v, _)| (k, v)).collect())
}

/// [`read_latest`] with each value's revision (its stream sequence), for compare-and-set
/// without another read.
///
/// # Errors
/// [`RunStoreError`] when the stream cannot be read or a value does not decode.
pub async fn read_latest_revisions<T: DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<(String, T, u64)>, RunStoreError> {
    let stream = js.get_stream(format!("KV_{bucket}")).await.map_err(backend)?;
    let latest = crate::kv::scan(&js.client(), &stream, bucket, filter, false, SCAN_IDLE).await.map_err(backend)?;
    let mut out = Vec::with_capacity(latest.len());
    for k in latest.into_iter().filter(|k| !k.deleted) {
        let value = decode(&k.key, &k.value)?;
        out.push((k.key, value, k.revision));
    }
    Ok(out)
}

/// One host record as stored: the value and its revision.
pub type KnownHost = (HostRun, u64);

/// A host record changed (or found unchanged) by [`RunStore::update_host`].
#[derive(Debug, Clone)]
pub struct HostChange {
    /// The record before the update.
    pub before: HostRun,
    /// The record after it (equal to `before` when nothing changed).
    pub after: HostRun,
    /// Revision of `after`.
    pub revision: u64,
}

/// The run store of one account.
#[derive(Debug, Clone)]
pub struct RunStore {
    js: jetstream::Context,
    kv: kv::Store,
    subjects: Subjects,
    /// Counts runs entering each state (on the writes that move them).
    metrics: crate::metrics::AccountMetrics,
}

impl RunStore {
    /// Opens the `steward_runs` bucket (it must have been ensured).
    ///
    /// # Errors
    /// [`RunStoreError::Backend`] when the bucket does not exist.
    pub async fn open(js: jetstream::Context, subjects: Subjects) -> Result<Self, RunStoreError> {
        let kv = js.get_key_value(RUNS_BUCKET).await.map_err(backend)?;
        let metrics = crate::metrics::global().account(subjects.account());
        Ok(RunStore { js, kv, subjects, metrics })
    }

    fn account(&self) -> &AccountId {
        self.subjects.account()
    }

    /// Creates a run record; `false` when it exists already.
    ///
    /// # Errors
    /// [`RunStoreError::Backend`].
    pub async fn create_run(&self, run: &RunRecord) -> Result<bool, RunStoreError> {
        Ok(self.create_run_revision(run).await?.is_some())
    }

    /// Like [`RunStore::create_run`], answering the new record's revision (`None` when the run
    /// exists already).
    ///
    /// # Errors
    /// [`RunStoreError::Backend`].
    pub async fn create_run_revision(&self, run: &RunRecord) -> Result<Option<u64>, RunStoreError> {
        let created = self.create_revision(&run_record_key(self.account(), &run.run_id), run).await?;
        if created.is_some() {
            self.metrics.run_entered(run.status);
        }
        Ok(created)
    }

    /// Counts the run entering its new state when a write moved it.
    fn count_move(&self, before: &RunRecord, after: &RunRecord) {
        if before.status != after.status {
            self.metrics.run_entered(after.status);
        }
    }

    async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool, RunStoreError> {
        Ok(self.create_revision(key, v).await?.is_some())
    }

    async fn create_revision<T: Serialize>(&self, key: &str, v: &T) -> Result<Option<u64>, RunStoreError> {
        match self.kv.create(key, encode(v)?).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Deletes a run record that was never used (lost an idempotency race).
    ///
    /// # Errors
    /// [`RunStoreError::Backend`].
    pub async fn delete_run(&self, run_id: &str) -> Result<(), RunStoreError> {
        self.kv.purge(run_record_key(self.account(), run_id)).await.map_err(backend)
    }

    /// Binds an idempotency digest to `run_id`; returns the run id it was bound to before, if
    /// any.
    ///
    /// # Errors
    /// [`RunStoreError::Backend`].
    pub async fn claim_idempotency(&self, digest: &str, run_id: &str) -> Result<Option<String>, RunStoreError> {
        let key = run_idempotency_key(self.account(), digest);
        if self.create(&key, &run_id.to_owned()).await? {
            return Ok(None);
        }
        self.lookup_idempotency(digest).await
    }

    /// The run an idempotency digest is bound to.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn lookup_idempotency(&self, digest: &str) -> Result<Option<String>, RunStoreError> {
        let key = run_idempotency_key(self.account(), digest);
        match self.kv.get(&key).await.map_err(backend)? {
            Some(b) => Ok(Some(decode(&key, &b)?)),
            None => Ok(None),
        }
    }

    /// A run record.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, RunStoreError> {
        let key = run_record_key(self.account(), run_id);
        match self.kv.get(&key).await.map_err(backend)? {
            Some(b) => Ok(Some(decode(&key, &b)?)),
            None => Ok(None),
        }
    }

    /// Every run record of the account.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn runs(&self) -> Result<Vec<RunRecord>, RunStoreError> {
        Ok(read_latest(&self.js, RUNS_BUCKET, &run_record_filter(self.account()))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Creates the host records of a new run, many writes in flight at once; returns each
    /// record's revision, in the order given.
    ///
    /// # Errors
    /// The first [`RunStoreError`]; [`RunStoreError::Backend`] when a record exists already.
    pub async fn create_hosts(&self, hosts: &[HostRun]) -> Result<Vec<u64>, RunStoreError> {
        let account = self.account().clone();
        let results: Vec<Result<u64, RunStoreError>> = futures::stream::iter(
            hosts
                .iter()
                .map(|h| {
                    let account = account.clone();
                    async move {
                        let host = HostId::parse(&h.host_id).map_err(backend)?;
                        let key = run_host_key(&account, &h.run_id, &host);
                        self.kv.create(&key, encode(h)?).await.map_err(|e| backend(format!("{key}: {e}")))
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffered(1024)
        .collect()
        .await;
        results.into_iter().collect()
    }

    /// Every host record of a run, in host id order.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn hosts(&self, run_id: &str) -> Result<Vec<HostRun>, RunStoreError> {
        let mut v: Vec<HostRun> = read_latest(&self.js, RUNS_BUCKET, &run_host_filter(self.account(), run_id))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        v.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(v)
    }

    /// Every host record of a run with its revision, in host id order.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn hosts_with_revisions(&self, run_id: &str) -> Result<Vec<KnownHost>, RunStoreError> {
        let mut v: Vec<KnownHost> =
            read_latest_revisions(&self.js, RUNS_BUCKET, &run_host_filter(self.account(), run_id))
                .await?
                .into_iter()
                .map(|(_, v, rev)| (v, rev))
                .collect();
        v.sort_by(|a, b| a.0.host_id.cmp(&b.0.host_id));
        Ok(v)
    }

    /// Applies `f` to a run record with compare-and-set; `f` returns whether it changed
    /// anything. Returns the record after the update (`None` when the run does not exist).
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn update_run<F>(&self, run_id: &str, f: F) -> Result<Option<RunRecord>, RunStoreError>
    where
        F: FnMut(&mut RunRecord) -> bool,
    {
        let updated = self.update_known(&run_record_key(self.account(), run_id), None, f).await?;
        Ok(updated.map(|(before, after, _)| {
            self.count_move(&before, &after);
            after
        }))
    }

    /// Like [`RunStore::update_run`], writing without a read first when `known` (a record and
    /// its revision remembered from an earlier write) is still current; answers the record
    /// after the update and its revision.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn update_run_known<F>(
        &self,
        run_id: &str,
        known: Option<(RunRecord, u64)>,
        f: F,
    ) -> Result<Option<(RunRecord, u64)>, RunStoreError>
    where
        F: FnMut(&mut RunRecord) -> bool,
    {
        Ok(self.update_known(&run_record_key(self.account(), run_id), known, f).await?.map(|(before, after, rev)| {
            self.count_move(&before, &after);
            (after, rev)
        }))
    }

    /// Applies `f` to one host record with compare-and-set. With `known` (a record and its
    /// revision remembered from an earlier write) the first attempt writes without reading;
    /// when the record changed meanwhile (another writer, another hub) it is read again and `f`
    /// applied to the fresh value; `f` finding nothing to change on the remembered value is
    /// also checked against a fresh read. `None` when the record does not exist.
    ///
    /// # Errors
    /// [`RunStoreError`].
    pub async fn update_host<F>(
        &self,
        run_id: &str,
        host: &HostId,
        known: Option<KnownHost>,
        f: F,
    ) -> Result<Option<HostChange>, RunStoreError>
    where
        F: FnMut(&mut HostRun) -> bool,
    {
        Ok(self
            .update_known(&run_host_key(self.account(), run_id, host), known, f)
            .await?
            .map(|(before, after, revision)| HostChange { before, after, revision }))
    }

    async fn update_known<T, F>(
        &self,
        key: &str,
        mut known: Option<(T, u64)>,
        mut f: F,
    ) -> Result<Option<(T, T, u64)>, RunStoreError>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: FnMut(&mut T) -> bool,
    {
        for _ in 0..CAS_TRIES {
            let remembered = known.is_some();
            let (before, revision) = match known.take() {
                Some(k) => k,
                None => {
                    let Some(entry) = self.kv.entry(key).await.map_err(backend)? else {
                        return Ok(None);
                    };
                    if entry.operation != kv::Operation::Put {
                        return Ok(None);
                    }
                    (decode(key, &entry.value)?, entry.revision)
                }
            };
            let mut value = before.clone();
            if !f(&mut value) {
                if remembered {
                    // "Nothing to do" judged on a remembered value may be stale (another
                    // writer moved the record on, e.g. to the next attempt): judge it afresh.
                    continue;
                }
                return Ok(Some((before, value, revision)));
            }
            match self.kv.update(key, encode(&value)?, revision).await {
                Ok(rev) => return Ok(Some((before, value, rev))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(backend(e)),
            }
        }
        Err(RunStoreError::Contended(key.to_owned()))
    }

    /// The job events of one host's attempt, from stream sequence `from_stream_seq` on, with
    /// sequence numbers above `after_seq`, at most `max`; stops at the attempt's `last` event.
    ///
    /// # Errors
    /// [`RunStoreError::Backend`].
    pub async fn events(
        &self,
        host: &HostId,
        run_id: &str,
        attempt: u32,
        from_stream_seq: u64,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<RunEvent>, RunStoreError> {
        let mut out = Vec::new();
        if from_stream_seq == 0 || max == 0 {
            return Ok(out);
        }
        let stream = self.js.get_stream(RUN_EVENTS_STREAM).await.map_err(backend)?;
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subjects.run_event(host),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from_stream_seq },
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        if consumer.info().await.map_err(backend)?.num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            let m = m.map_err(backend)?;
            let left = m.info().map_err(backend)?.pending;
            if let Ok(ev) = codec::decode::<RunEvent>(Encoding::MsgPack, &m.payload) {
                if ev.run_id == run_id && ev.attempt == attempt {
                    let last = ev.kind == steward_subjects::api::run::EventKind::Last;
                    if ev.seq > after_seq {
                        out.push(ev);
                    }
                    if last || out.len() >= max {
                        break;
                    }
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok(out)
    }
}
