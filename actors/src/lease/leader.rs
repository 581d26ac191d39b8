//! The lease leader lock of an account: `<account>.leader` in `steward_leases`, a
//! [`LeaderRecord`] {instance, generation, expires_at_ms}.
//!
//! [`LeaderLock::try_acquire`] creates the key (compare-and-set create) or takes it over with a
//! compare-and-set update once the record has expired (or names this very instance, which only
//! happens after it stepped down and dropped its state). The leader refreshes it every third of
//! its TTL ([`LeaderLock::refresh`]). [`LeaderGuard::is_valid`] turns false a third of the TTL
//! *before* the last written expiry (measured from before that write was sent), so a leader that
//! cannot refresh stops answering well before a candidate may take over; the lease journal's
//! expected-sequence fencing covers what clocks cannot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use steward_subjects::api::lease::LeaderRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::LEASES_BUCKET;
use steward_subjects::subject::lease_leader_key;
use steward_subjects::AccountId;

use crate::{duration_ms, now_ms};

/// A failed operation on the leader lock.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaderError {
    /// The bucket could not be read or written.
    #[error("{0}")]
    Store(String),
    /// The stored record cannot be decoded.
    #[error("leader record: {0}")]
    Record(String),
    /// A refresh found another revision: another instance took the lock.
    #[error("leader lock refresh refused: {0}")]
    Refused(String),
    /// A refresh was not confirmed in time.
    #[error("leader lock refresh timed out")]
    TimedOut,
}

/// Whether this instance may still act as leader (cheap to clone and ask).
#[derive(Debug, Clone, Default)]
pub struct LeaderGuard {
    valid_until_ms: Arc<AtomicU64>,
}

impl LeaderGuard {
    /// True while the lock is certainly held (by this process's clock, with a margin).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        now_ms() < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Ends leadership at once (stepping down).
    pub fn revoke(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
    }
}

/// A held leader lock.
#[derive(Debug)]
pub struct LeaderLock {
    kv: kv::Store,
    key: String,
    record: LeaderRecord,
    revision: u64,
    ttl: Duration,
    guard: LeaderGuard,
}

impl LeaderLock {
    /// Takes the lock of `account` for `instance` when it is free or expired; `Ok(None)` while
    /// another live instance holds it.
    ///
    /// # Errors
    /// [`LeaderError::Store`] when the bucket cannot be read or written (a lost race is
    /// `Ok(None)`), [`LeaderError::Record`] when the stored record cannot be decoded.
    pub async fn try_acquire(
        js: &jetstream::Context,
        account: &AccountId,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<LeaderLock>, LeaderError> {
        Self::try_acquire_key(js, lease_leader_key(account), instance, ttl).await
    }

    /// As [`Self::try_acquire`], for the lock kept under `key` of `steward_leases` (other
    /// single-writer roles of an account, such as the alarm evaluator, use their own key).
    ///
    /// # Errors
    /// As [`Self::try_acquire`].
    pub async fn try_acquire_key(
        js: &jetstream::Context,
        key: String,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<LeaderLock>, LeaderError> {
        let kv = js.get_key_value(LEASES_BUCKET).await.map_err(|e| LeaderError::Store(e.to_string()))?;
        let current = kv.entry(&key).await.map_err(|e| LeaderError::Store(e.to_string()))?;
        let sent_at = now_ms();
        let (generation, revision) = match &current {
            Some(e) if e.operation == kv::Operation::Put => {
                let old: LeaderRecord = codec::decode_limited(Encoding::MsgPack, &e.value, usize::MAX)
                    .map_err(|e| LeaderError::Record(e.to_string()))?;
                if old.expires_at_ms > sent_at && old.instance != instance {
                    return Ok(None);
                }
                (old.generation + 1, e.revision)
            }
            Some(e) => (1, e.revision),
            None => (1, 0),
        };
        let record =
            LeaderRecord { instance: instance.to_owned(), generation, expires_at_ms: sent_at + duration_ms(ttl) };
        let payload = codec::encode(Encoding::MsgPack, &record).map_err(|e| LeaderError::Store(e.to_string()))?;
        let written = if revision == 0 {
            kv.create(&key, payload).await.ok()
        } else {
            kv.update(&key, payload, revision).await.ok()
        };
        let Some(revision) = written else { return Ok(None) };
        let guard = LeaderGuard::default();
        guard.valid_until_ms.store(sent_at + duration_ms(ttl) - duration_ms(ttl) / 3, Ordering::Release);
        Ok(Some(LeaderLock { kv, key, record, revision, ttl, guard }))
    }

    /// The guard of this lock.
    #[must_use]
    pub fn guard(&self) -> LeaderGuard {
        self.guard.clone()
    }

    /// Generation of this leadership.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.record.generation
    }

    /// Pushes the expiry forward.
    ///
    /// # Errors
    /// [`LeaderError::Refused`] or [`LeaderError::TimedOut`]: leadership is lost (the guard is
    /// revoked); [`LeaderError::Store`] when the record cannot be encoded.
    pub async fn refresh(&mut self) -> Result<(), LeaderError> {
        let sent_at = now_ms();
        let record = LeaderRecord { expires_at_ms: sent_at + duration_ms(self.ttl), ..self.record.clone() };
        let payload = codec::encode(Encoding::MsgPack, &record).map_err(|e| LeaderError::Store(e.to_string()))?;
        match tokio::time::timeout(self.ttl / 3, self.kv.update(&self.key, payload, self.revision)).await {
            Ok(Ok(revision)) => {
                self.revision = revision;
                self.record = record;
                self.guard
                    .valid_until_ms
                    .store(sent_at + duration_ms(self.ttl) - duration_ms(self.ttl) / 3, Ordering::Release);
                Ok(())
            }
            Ok(Err(e)) => {
                self.guard.revoke();
                Err(LeaderError::Refused(e.to_string()))
            }
            Err(_) => {
                self.guard.revoke();
                Err(LeaderError::TimedOut)
            }
        }
    }

    /// Gives the lock up (best effort) so a standby takes over without waiting for the expiry.
    pub async fn release(self) {
        self.guard.revoke();
        let record = LeaderRecord { expires_at_ms: 0, ..self.record };
        if let Ok(payload) = codec::encode(Encoding::MsgPack, &record) {
            let _ = self.kv.update(&self.key, payload, self.revision).await;
        }
    }
}
