//! Durability of the lease leader's state: the lease journal (stream `STEWARD_LEASE_JOURNAL`,
//! subject `steward.v1.<account>.jobspec.journal`) and its snapshots.
//!
//! - [`raise_fence`] is a new leader's first write: one message on `jobspec.fence` expecting the
//!   fence's last sequence (so two candidates cannot both raise it). [`send`] writes each group
//!   commit expecting the fence where this leader raised it: once a newer leader raised it, every
//!   append of an older one is refused ([`JournalError::Fenced`]), however many are in flight.
//! - [`append`] writes one entry expecting the *journal's* last sequence (the takeover entry,
//!   which also refuses a takeover whose replay missed an entry); [`replay`] reads the entries
//!   after a sequence, up to the last one present when it starts.
//! - [`write_snapshot`] stores the state at a sequence, then moves the pointer (compare-and-set,
//!   never backwards), then purges the journal *below* it, then deletes the previous snapshot:
//!   a crash between any two steps leaves a complete snapshot and every entry after it (an
//!   orphan object at worst). [`load_snapshot`] follows the pointer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use steward_subjects::api::lease::{LeaseJournalEntry, LeaseSnapshot, SnapshotPointer};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{self, ObjectReadError, ARTIFACTS_STORE, LEASES_BUCKET, LEASE_JOURNAL_STREAM};
use steward_subjects::subject::{lease_snapshot_key, lease_snapshot_object};
use steward_subjects::AccountId;

/// Header JetStream checks for compare-and-set on a subject.
pub const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// A failed journal operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The journal's last entry is not the one expected: another leader appended.
    #[error("journal append fenced: the last entry is not sequence {0}")]
    Fenced(u64),
    /// JetStream did not take or did not confirm the operation (its outcome is unknown).
    #[error("lease journal unavailable: {0}")]
    Unavailable(String),
    /// A stored entry or snapshot cannot be decoded.
    #[error("lease journal corrupt: {0}")]
    Corrupt(String),
}

/// Header naming the subject whose last sequence [`EXPECTED_LAST_SUBJECT_SEQ`] checks.
pub const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// A raised fence: journal appends are accepted while the fence subject's last sequence is
/// still `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The fence subject (`jobspec.fence` of the account).
    pub subject: String,
    /// The sequence of this leader's fence message.
    pub seq: u64,
}

/// Raises the fence on `subject` for a new leader: one message (`note`, e.g. the instance)
/// expecting the fence's current last sequence. Reading that sequence and confirming the write
/// each take at most `timeout`: a read sent while the journal has no stream leader (a node
/// lost, an election under way) is never answered, and waiting for it longer only delays the
/// next attempt once a leader is elected.
///
/// # Errors
/// [`JournalError::Fenced`] when another candidate raised it meanwhile; `Unavailable`.
pub async fn raise_fence(
    js: &jetstream::Context,
    subject: &str,
    note: &str,
    timeout: Duration,
) -> Result<Fence, JournalError> {
    let last = tokio::time::timeout(timeout, last_sequence(js, subject))
        .await
        .map_err(|_| JournalError::Unavailable(format!("the fence was not read within {timeout:?}")))??;
    let mut h = HeaderMap::new();
    h.insert(EXPECTED_LAST_SUBJECT_SEQ, last.to_string().as_str());
    let ack = js
        .publish_with_headers(subject.to_owned(), h, bytes::Bytes::copy_from_slice(note.as_bytes()))
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let seq = confirm(ack, last, timeout).await?;
    Ok(Fence { subject: subject.to_owned(), seq })
}

/// Hands `entry` for `subject` to the connection, to be stored only while `fence` stands, and
/// answers the future of its confirmation (the entry is on its way when this returns, so the
/// caller can send more before the first is confirmed).
///
/// # Errors
/// `Corrupt` when the entry cannot be encoded, `Unavailable` when the connection refuses it.
/// The future fails with [`JournalError::Fenced`] when a newer fence was raised, `Unavailable`
/// when the store is not confirmed within `timeout`.
pub async fn send(
    js: &jetstream::Context,
    subject: &str,
    fence: &Fence,
    entry: &LeaseJournalEntry,
    timeout: Duration,
) -> Result<impl std::future::Future<Output = Result<u64, JournalError>> + Send + 'static, JournalError> {
    let payload = codec::encode(Encoding::MsgPack, entry).map_err(|e| JournalError::Corrupt(e.to_string()))?;
    let mut h = HeaderMap::new();
    h.insert(EXPECTED_LAST_SUBJECT_SEQ, fence.seq.to_string().as_str());
    h.insert(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, fence.subject.as_str());
    let ack = js
        .publish_with_headers(subject.to_owned(), h, payload)
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?;
    Ok(confirm(ack, fence.seq, timeout))
}

/// Waits for a store's acknowledgement; a wrong last sequence means fenced.
async fn confirm(
    ack: jetstream::context::PublishAckFuture,
    expected: u64,
    timeout: Duration,
) -> Result<u64, JournalError> {
    match tokio::time::timeout(timeout, ack).await {
        Err(_) => Err(JournalError::Unavailable(format!("append not confirmed within {timeout:?}"))),
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Err(JournalError::Fenced(expected)),
        Ok(Err(e)) => Err(JournalError::Unavailable(e.to_string())),
    }
}

/// Appends `entry` on `subject`, expecting `expected` to be the subject's last sequence (0: no
/// entry yet). Returns the new entry's sequence.
///
/// # Errors
/// [`JournalError::Fenced`] when another writer appended since; `Unavailable` when the append
/// was not confirmed within `timeout` (it may or may not be stored).
pub async fn append(
    js: &jetstream::Context,
    subject: &str,
    expected: u64,
    entry: &LeaseJournalEntry,
    timeout: Duration,
) -> Result<u64, JournalError> {
    let payload = codec::encode(Encoding::MsgPack, entry).map_err(|e| JournalError::Corrupt(e.to_string()))?;
    let mut h = HeaderMap::new();
    h.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
    let ack = js
        .publish_with_headers(subject.to_owned(), h, payload)
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?;
    confirm(ack, expected, timeout).await
}

/// The sequence of the last entry on `subject` (0 when there is none).
///
/// # Errors
/// `Unavailable` when the stream cannot be read.
pub async fn last_sequence(js: &jetstream::Context, subject: &str) -> Result<u64, JournalError> {
    let stream = js.get_stream(LEASE_JOURNAL_STREAM).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(m.sequence),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(JournalError::Unavailable(e.to_string())),
    }
}

/// When the last entry on `subject` was stored (ms since the Unix epoch, the server's clock), or
/// `None` when there is none.
///
/// # Errors
/// `Unavailable` when the stream cannot be read.
pub async fn last_write_ms(js: &jetstream::Context, subject: &str) -> Result<Option<u64>, JournalError> {
    let stream = js.get_stream(LEASE_JOURNAL_STREAM).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok()),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(JournalError::Unavailable(e.to_string())),
    }
}

/// Calls `apply(sequence, entry)` for every entry on `subject` after `after_seq`, in order, up
/// to the last one present when called. Returns that last sequence (`after_seq` when none).
///
/// # Errors
/// `Unavailable` when the stream cannot be read, `Corrupt` for an undecodable entry.
pub async fn replay<F>(
    js: &jetstream::Context,
    subject: &str,
    after_seq: u64,
    mut apply: F,
) -> Result<u64, JournalError>
where
    F: FnMut(u64, LeaseJournalEntry),
{
    let last = last_sequence(js, subject).await?;
    if last <= after_seq {
        return Ok(after_seq.max(last));
    }
    let stream = js.get_stream(LEASE_JOURNAL_STREAM).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after_seq + 1 },
            ..Default::default()
        })
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let mut at = after_seq;
    while at < last {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let msg = match next {
            Err(_) => return Err(JournalError::Unavailable(format!("journal replay stalled after {at}"))),
            Ok(None) => return Err(JournalError::Unavailable(format!("journal replay ended at {at} of {last}"))),
            Ok(Some(m)) => m.map_err(|e| JournalError::Unavailable(e.to_string()))?,
        };
        let seq = msg.info().map_err(|e| JournalError::Unavailable(e.to_string()))?.stream_sequence;
        let entry: LeaseJournalEntry = codec::decode_limited(Encoding::MsgPack, &msg.payload, usize::MAX)
            .map_err(|e| JournalError::Corrupt(format!("entry {seq}: {e}")))?;
        apply(seq, entry);
        at = seq;
    }
    Ok(at)
}

/// The snapshot pointer of `account` and its revision (0 when there is none).
///
/// # Errors
/// `Unavailable` or `Corrupt`.
pub async fn read_pointer(
    js: &jetstream::Context,
    account: &AccountId,
) -> Result<(Option<SnapshotPointer>, u64), JournalError> {
    let kv = js.get_key_value(LEASES_BUCKET).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let entry = kv.entry(lease_snapshot_key(account)).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    match entry {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            let p: SnapshotPointer = codec::decode_limited(Encoding::MsgPack, &e.value, usize::MAX)
                .map_err(|e| JournalError::Corrupt(format!("snapshot pointer: {e}")))?;
            Ok((Some(p), e.revision))
        }
        Some(e) => Ok((None, e.revision)),
        None => Ok((None, 0)),
    }
}

/// Loads the latest snapshot of `account` (`None` when there is none yet) and the pointer's
/// revision.
///
/// A leader writing a newer snapshot meanwhile deletes the object the pointer named when it was
/// read; the pointer is then read again and the newer object loaded (a few times at most).
///
/// # Errors
/// `Unavailable` when the pointer or object cannot be read, `Corrupt` when it cannot be decoded.
pub async fn load_snapshot(
    js: &jetstream::Context,
    account: &AccountId,
) -> Result<(Option<LeaseSnapshot>, u64), JournalError> {
    /// How many times a pointer that moved under the read is followed again.
    const POINTER_MOVES: usize = 8;
    let (mut pointer, mut revision) = read_pointer(js, account).await?;
    if pointer.is_none() {
        // No snapshot yet: nothing to read, and the store is not needed.
        return Ok((None, revision));
    }
    let store = js.get_object_store(ARTIFACTS_STORE).await.map_err(|e| JournalError::Unavailable(e.to_string()))?;
    let mut moves = 0;
    loop {
        let Some(p) = pointer else { return Ok((None, revision)) };
        match read_snapshot_object(&store, &p).await {
            Ok(snap) => return Ok((Some(snap), revision)),
            Err(JournalError::Unavailable(e)) => {
                let (now, now_revision) = read_pointer(js, account).await?;
                if now_revision == revision || moves == POINTER_MOVES {
                    return Err(JournalError::Unavailable(e));
                }
                moves += 1;
                (pointer, revision) = (now, now_revision);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads and checks the snapshot object `pointer` names.
async fn read_snapshot_object(
    store: &jetstream::object_store::ObjectStore,
    pointer: &SnapshotPointer,
) -> Result<LeaseSnapshot, JournalError> {
    let bytes = streams::read_object(store, &pointer.object, usize::MAX).await.map_err(|e| match e {
        ObjectReadError::TooLarge { .. } => JournalError::Corrupt(format!("snapshot: {e}")),
        e => JournalError::Unavailable(format!("snapshot: {e}")),
    })?;
    let snap: LeaseSnapshot = codec::decode_limited(Encoding::MsgPack, &bytes, usize::MAX)
        .map_err(|e| JournalError::Corrupt(format!("snapshot {}: {e}", pointer.object)))?;
    if snap.through_seq != pointer.through_seq {
        return Err(JournalError::Corrupt(format!(
            "snapshot {} holds sequence {}, its pointer says {}",
            pointer.object, snap.through_seq, pointer.through_seq
        )));
    }
    Ok(snap)
}

/// Stores `encoded` (an encoded [`LeaseSnapshot`] at `through_seq`), moves the pointer to it,
/// purges the journal below `through_seq` and deletes the previous snapshot object.
/// `still_leader` is asked before the pointer moves and before the purge.
///
/// # Errors
/// The step that failed; earlier steps stay (safe: see the module docs).
pub async fn write_snapshot<F>(
    js: &jetstream::Context,
    account: &AccountId,
    subject: &str,
    through_seq: u64,
    encoded: Vec<u8>,
    still_leader: F,
) -> Result<(), JournalError>
where
    F: Fn() -> bool,
{
    let unavailable = |e: String| JournalError::Unavailable(e);
    let store = js.get_object_store(ARTIFACTS_STORE).await.map_err(|e| unavailable(e.to_string()))?;
    let object = lease_snapshot_object(account, through_seq);
    store.put(object.as_str(), &mut encoded.as_slice()).await.map_err(|e| unavailable(e.to_string()))?;
    let (old, revision) = read_pointer(js, account).await?;
    if old.as_ref().is_some_and(|p| p.through_seq >= through_seq) || !still_leader() {
        // A newer snapshot exists (or leadership moved): this one is not needed.
        let _ = store.delete(object.as_str()).await;
        return Ok(());
    }
    let pointer = SnapshotPointer { object: object.clone(), through_seq };
    let payload = codec::encode(Encoding::MsgPack, &pointer).map_err(|e| JournalError::Corrupt(e.to_string()))?;
    let kv = js.get_key_value(LEASES_BUCKET).await.map_err(|e| unavailable(e.to_string()))?;
    let key = lease_snapshot_key(account);
    if revision == 0 {
        kv.create(&key, payload).await.map_err(|e| unavailable(e.to_string()))?;
    } else {
        kv.update(&key, payload, revision).await.map_err(|e| unavailable(e.to_string()))?;
    }
    if !still_leader() {
        return Ok(());
    }
    let stream = js.get_stream(LEASE_JOURNAL_STREAM).await.map_err(|e| unavailable(e.to_string()))?;
    stream.purge().filter(subject).sequence(through_seq).await.map_err(|e| unavailable(e.to_string()))?;
    if let Some(old) = old.filter(|o| o.object != object) {
        let _ = store.delete(old.object.as_str()).await;
    }
    Ok(())
}
