//! Writing accepted results to `STEWARD_RESULTS` as segments (see
//! [`steward_subjects::api::result`] for the stored form), behind the lease service's fence.
//!
//! [`store_host_results`] takes the fenced results of one runtime from one `result.submit`
//! request, in request order, and stores them as few messages as fit below
//! [`MAX_SEGMENT_BYTES`] on that runtime's own `result.put.<host>.<runtime>`.
//!
//! Exactly once, for any outage length. A runtime that numbers its results (an outbox
//! incarnation and each result's outbox position, increasing) has a *stored watermark*: the
//! [`OUTBOX_HEADER`] of the last segment on its subject, read back from the stream on first use
//! and kept in [`Watermarks`] while this process leads. A result at or below the watermark of
//! its own incarnation is answered `duplicate` without touching the stream, whether its first
//! copy was stored a second or a month ago. Each segment is published with
//! `Nats-Expected-Last-Subject-Sequence` set to the watermark's stream sequence, so a write that
//! raced another (a re-sent request still in flight, a deposed leader) is refused by JetStream
//! and the watermark read again rather than a result stored twice. This holds because the hub
//! stores a request's results as a prefix (after the first result that must be retried, every
//! later one is retried too) and a runtime re-sends its outbox in order.
//!
//! Within JetStream's dedupe window a second guard stands: each segment's `Nats-Msg-Id` is the
//! host and its first result's idempotency key ([`stored_msg_id`]). When JetStream says a
//! segment is a duplicate (results of runtimes that do not number them), the stored segment is
//! read back (the ack names its sequence): the results it holds are answered `duplicate`, the
//! others are stored in a new segment keyed by the first of them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use steward_subjects::api::result::{
    decode_stored, outbox_mark, parse_outbox_mark, stored_msg_id, ResultRecord, StoredDecodeError, SubmitStatus,
    MAX_SEGMENT_BYTES, OUTBOX_HEADER, SEGMENT_HEADER,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::RESULTS_STREAM;
use steward_subjects::{HostId, RuntimeId, Subjects};

use crate::lease::msgpack;

/// Why a segment could not be stored or read back (its results are answered `retry`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResultStoreError {
    /// JetStream did not take or confirm the segment.
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
    /// The stored segment a duplicate names, or a runtime's watermark, could not be read.
    #[error("{0}")]
    ReadBack(String),
    /// The stored segment a duplicate names cannot be decoded.
    #[error(transparent)]
    Corrupt(#[from] StoredDecodeError),
}

/// Header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";

/// Most duplicate read-backs and refused (raced) writes for one runtime's results of one
/// request (each read-back consumes at least one result; races need a concurrent writer, so
/// this only bounds a misbehaving peer or a flapping leadership).
const MAX_READ_BACKS: usize = 64;

/// What happened to one result: its index in the request, status, stream sequence of the
/// segment holding it (0 when it is known stored only by its runtime's watermark), and a reason
/// when it must be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub index: usize,
    pub status: SubmitStatus,
    pub stream_seq: u64,
    pub reason: String,
}

/// One accepted result, encoded once.
struct Item {
    index: usize,
    key: String,
    /// Its outbox position (0: not numbered).
    outbox: u64,
    bytes: Bytes,
}

/// The last stored segment of one runtime: its stream sequence (0: nothing stored) and the
/// outbox position of its last result, with the outbox it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mark {
    subject_seq: u64,
    outbox: Option<(String, u64)>,
}

impl Mark {
    /// Whether the result at `outbox` in `incarnation` is stored already.
    fn covers(&self, incarnation: &str, outbox: u64) -> bool {
        outbox != 0
            && !incarnation.is_empty()
            && self.outbox.as_ref().is_some_and(|(inc, pos)| inc == incarnation && outbox <= *pos)
    }
}

/// Stored watermarks of the runtimes this process has stored results for, by subject: read
/// from the stream on first use, then kept current by this process's own writes (a write
/// refused for a wrong last sequence, or whose outcome is unknown, drops the entry).
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    marks: Mutex<HashMap<String, Mark>>,
}

impl Watermarks {
    fn cached(&self, subject: &str) -> Option<Mark> {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(subject).cloned()
    }

    fn set(&self, subject: &str, mark: Mark) {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(subject.to_owned(), mark);
    }

    fn forget(&self, subject: &str) {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(subject);
    }

    /// The watermark of `subject`, from the cache or the stream's last message on it.
    async fn get(&self, js: &jetstream::Context, subject: &str) -> Result<Mark, ResultStoreError> {
        if let Some(m) = self.cached(subject) {
            return Ok(m);
        }
        let stream =
            js.get_stream_no_info(RESULTS_STREAM).await.map_err(|e| ResultStoreError::ReadBack(e.to_string()))?;
        let mark = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => Mark {
                subject_seq: msg.sequence,
                outbox: msg
                    .headers
                    .get(OUTBOX_HEADER)
                    .and_then(|v| parse_outbox_mark(v.as_str()))
                    .map(|(inc, pos)| (inc.to_owned(), pos)),
            },
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Mark::default(),
            Err(e) => return Err(ResultStoreError::ReadBack(format!("cannot read the stored watermark: {e}"))),
        };
        self.set(subject, mark.clone());
        Ok(mark)
    }
}

/// Stores `results` (index in the request, record) of `runtime` on `host` in order; returns one
/// [`Stored`] per result (in no particular order). `incarnation` is the runtime's outbox (empty
/// when it does not number its results). Results that could not be encoded, or not be stored
/// now, come back as `Retry` with the reason — and so does every result after them, so that
/// what is stored is always a prefix; a key given twice is stored once.
pub(crate) async fn store_host_results(
    js: &jetstream::Context,
    subjects: &Subjects,
    marks: &Watermarks,
    (host, runtime, incarnation): (&HostId, &RuntimeId, &str),
    results: Vec<(usize, &ResultRecord)>,
) -> Vec<Stored> {
    let mut out = Vec::with_capacity(results.len());
    let mut todo: Vec<Item> = Vec::with_capacity(results.len());
    // A key repeated within the request is answered like its first occurrence.
    let mut first_of: HashMap<String, usize> = HashMap::with_capacity(results.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut failed: Option<String> = None;
    for (index, r) in results {
        if let Some(why) = &failed {
            out.push(retry(index, why.clone()));
            continue;
        }
        let key = r.idempotency_key();
        if let Some(&first) = first_of.get(&key) {
            repeats.push((index, first));
            continue;
        }
        match codec::encode(Encoding::MsgPack, r) {
            Ok(bytes) => {
                first_of.insert(key.clone(), index);
                todo.push(Item { index, key, outbox: r.outbox, bytes });
            }
            Err(e) => {
                out.push(retry(index, format!("invalid: {e}")));
                failed = Some(format!("unavailable: an earlier result could not be stored ({e})"));
            }
        }
    }
    let subject = subjects.result_put(host, runtime);
    store_items(js, marks, (&subject, host, incarnation), todo, &mut out).await;
    for (index, first) in repeats {
        let Some(f) = out.iter().find(|s| s.index == first).cloned() else { continue };
        let status = if f.status == SubmitStatus::Retry { SubmitStatus::Retry } else { SubmitStatus::Duplicate };
        out.push(Stored { index, status, ..f });
    }
    out
}

/// Stores `todo` in order as segments on `subject`, pushing one [`Stored`] per item onto `out`.
async fn store_items(
    js: &jetstream::Context,
    marks: &Watermarks,
    (subject, host, incarnation): (&str, &HostId, &str),
    mut todo: Vec<Item>,
    out: &mut Vec<Stored>,
) {
    let mut read_backs = 0;
    while !todo.is_empty() {
        let mark = match marks.get(js, subject).await {
            Ok(m) => m,
            Err(e) => {
                out.extend(todo.drain(..).map(|i| retry(i.index, format!("unavailable: {e}"))));
                break;
            }
        };
        // Everything at or below the watermark is stored already, however long ago.
        todo.retain(|i| {
            if mark.covers(incarnation, i.outbox) {
                out.push(Stored {
                    index: i.index,
                    status: SubmitStatus::Duplicate,
                    stream_seq: 0,
                    reason: String::new(),
                });
                false
            } else {
                true
            }
        });
        if todo.is_empty() {
            break;
        }
        let cut = segment_len(&todo);
        let payload = segment_payload(&todo[..cut]);
        let last = &todo[cut - 1];
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, stored_msg_id(host.as_str(), &todo[0].key).as_str());
        headers.insert(SEGMENT_HEADER, cut.to_string().as_str());
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, mark.subject_seq.to_string().as_str());
        let written = (!incarnation.is_empty() && last.outbox != 0).then(|| (incarnation.to_owned(), last.outbox));
        if let Some((inc, pos)) = &written {
            headers.insert(OUTBOX_HEADER, outbox_mark(inc, *pos).as_str());
        }
        steward_subjects::trace::inject(&mut headers);
        let ack = match js.publish_with_headers(subject.to_owned(), headers, payload).await {
            Ok(f) => f.await.map_err(ResultStoreError::from),
            Err(e) => Err(ResultStoreError::from(e)),
        };
        let ack = match ack {
            Ok(a) => a,
            Err(ResultStoreError::Publish(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another write landed on this runtime's subject since the watermark was read:
                // read it again and answer what it covers.
                marks.forget(subject);
                read_backs += 1;
                if read_backs > MAX_READ_BACKS {
                    let why = "unavailable: too many concurrent writes for this runtime; send again".to_owned();
                    out.extend(todo.drain(..).map(|i| retry(i.index, why.clone())));
                    break;
                }
                continue;
            }
            Err(e) => {
                // The write may have landed without its ack reaching here.
                marks.forget(subject);
                let why = super::unavailable::unavailable_reason(&e);
                out.extend(todo.drain(..).map(|i| retry(i.index, why.clone())));
                break;
            }
        };
        if !ack.duplicate {
            marks.set(subject, Mark { subject_seq: ack.sequence, outbox: written });
            out.extend(todo.drain(..cut).map(|i| Stored {
                index: i.index,
                status: SubmitStatus::Stored,
                stream_seq: ack.sequence,
                reason: String::new(),
            }));
            continue;
        }
        // A segment with this first key is stored: answer what it holds, store the rest.
        marks.forget(subject);
        read_backs += 1;
        let held = match stored_keys(js, ack.sequence).await {
            Ok(keys) if read_backs <= MAX_READ_BACKS => keys,
            Ok(_) => {
                let why = "unavailable: too many overlapping segments; send again".to_owned();
                out.extend(todo.drain(..).map(|i| retry(i.index, why.clone())));
                break;
            }
            Err(e) => {
                out.extend(todo.drain(..).map(|i| retry(i.index, format!("unavailable: {e}"))));
                break;
            }
        };
        let before = todo.len();
        let mut rest = Vec::with_capacity(todo.len());
        for (n, i) in todo.drain(..).enumerate() {
            // The first key is the segment's id: JetStream holds it whatever the read says.
            if n < cut && (n == 0 || held.contains(&i.key)) {
                out.push(Stored {
                    index: i.index,
                    status: SubmitStatus::Duplicate,
                    stream_seq: ack.sequence,
                    reason: String::new(),
                });
            } else {
                rest.push(i);
            }
        }
        debug_assert!(rest.len() < before);
        todo = rest;
    }
}

fn retry(index: usize, reason: String) -> Stored {
    Stored { index, status: SubmitStatus::Retry, stream_seq: 0, reason }
}

/// How many items from the head form the next segment (at least one).
fn segment_len(items: &[Item]) -> usize {
    let mut size = 0;
    for (n, i) in items.iter().enumerate() {
        size += i.bytes.len();
        if n > 0 && size > MAX_SEGMENT_BYTES {
            return n;
        }
    }
    items.len()
}

/// A [`steward_subjects::api::result::ResultSegment`] in MessagePack with named fields (as
/// `rmp_serde::to_vec_named` writes it), from the results encoded once.
fn segment_payload(items: &[Item]) -> Bytes {
    let mut b = Vec::with_capacity(16 + items.iter().map(|i| i.bytes.len()).sum::<usize>());
    msgpack::map(&mut b, 1);
    msgpack::str(&mut b, "results");
    msgpack::array(&mut b, items.len());
    for i in items {
        b.extend_from_slice(&i.bytes);
    }
    Bytes::from(b)
}

/// The idempotency keys of the results stored at `seq`.
async fn stored_keys(js: &jetstream::Context, seq: u64) -> Result<HashSet<String>, ResultStoreError> {
    let stream = js.get_stream(RESULTS_STREAM).await.map_err(|e| ResultStoreError::ReadBack(e.to_string()))?;
    let msg = stream.get_raw_message(seq).await.map_err(|e| ResultStoreError::ReadBack(e.to_string()))?;
    let results = decode_stored(Some(&msg.headers), &msg.payload)?;
    Ok(results.iter().map(ResultRecord::idempotency_key).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_subjects::api::result::ResultSegment;

    fn item(i: usize, size: usize) -> Item {
        let r =
            ResultRecord { spec: format!("s{i}"), epoch: 1, seq: 1, output: "x".repeat(size), ..Default::default() };
        Item { index: i, key: r.idempotency_key(), outbox: 0, bytes: codec::encode(Encoding::MsgPack, &r).unwrap() }
    }

    #[test]
    fn hand_written_segment_decodes_like_the_serde_one() {
        for n in [0usize, 1, 15, 16, 300] {
            let items: Vec<Item> = (0..n).map(|i| item(i, 3)).collect();
            let payload = segment_payload(&items);
            let mut h = HeaderMap::new();
            h.insert(SEGMENT_HEADER, n.to_string().as_str());
            let got = decode_stored(Some(&h), &payload).unwrap();
            let want: Vec<ResultRecord> =
                items.iter().map(|i| codec::decode(Encoding::MsgPack, &i.bytes).unwrap()).collect();
            assert_eq!(got, want);
            let serde = codec::encode(Encoding::MsgPack, &ResultSegment { results: want.clone() }).unwrap();
            assert_eq!(payload, serde, "{n} results");
            // Byte for byte as rmp_serde writes the real type: a field added to
            // `ResultSegment` and not to `segment_payload` fails here.
            assert_eq!(payload.to_vec(), rmp_serde::to_vec_named(&ResultSegment { results: want }).unwrap());
        }
    }

    #[test]
    fn segments_are_cut_below_the_size_bound_and_never_empty() {
        let items: Vec<Item> = (0..10).map(|i| item(i, 200 * 1024)).collect();
        let n = segment_len(&items);
        assert!(n >= 1 && n < items.len());
        assert!(items[..n].iter().map(|i| i.bytes.len()).sum::<usize>() <= MAX_SEGMENT_BYTES);
        let huge = vec![item(0, MAX_SEGMENT_BYTES + 10)];
        assert_eq!(segment_len(&huge), 1);
    }
}
