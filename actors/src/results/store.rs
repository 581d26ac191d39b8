//! Writing accepted results to `STEWARD_RESULTS` as segments (see
//! [`steward_subjects::api::result`] for the stored form), behind the lease service's fence.
//!
//! [`store_host_results`] takes the fenced results of one host from one `result.submit`
//! request, in request order, and stores them as few messages as fit below
//! [`MAX_SEGMENT_BYTES`]. Each segment's `Nats-Msg-Id` is the host and its first result's
//! idempotency key ([`stored_msg_id`]: the host is the authenticated one, so ids never collide
//! across hosts).
//! When JetStream says a segment is a duplicate, the stored segment is read back (the ack names
//! its sequence): the results it holds are answered `duplicate`, the others are stored in a new
//! segment keyed by the first of them. A runtime re-sends from the same outbox head after a lost
//! reply, so a re-sent request always meets its earlier segment under the same key, and a
//! longer re-send (more results produced meanwhile) stores exactly the new ones.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use steward_subjects::api::result::{
    decode_stored, stored_msg_id, ResultRecord, StoredDecodeError, SubmitStatus, MAX_SEGMENT_BYTES, SEGMENT_HEADER,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::RESULTS_STREAM;
use steward_subjects::{HostId, Subjects};

use crate::lease::msgpack;

/// Why a segment could not be stored or read back (its results are answered `retry`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResultStoreError {
    /// JetStream did not take or confirm the segment.
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
    /// The stored segment a duplicate names could not be read.
    #[error("{0}")]
    ReadBack(String),
    /// The stored segment a duplicate names cannot be decoded.
    #[error(transparent)]
    Corrupt(#[from] StoredDecodeError),
}

/// Header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";

/// Most duplicate read-backs for one host's results of one request (each one consumes at least
/// one result, so this only bounds a misbehaving peer).
const MAX_READ_BACKS: usize = 64;

/// What happened to one result: its index in the request, status, stream sequence of the
/// segment holding it, and a reason when it must be retried.
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
    bytes: Bytes,
}

/// Stores `results` (index in the request, record) of `host` in order; returns one [`Stored`]
/// per result (in no particular order). Results that could not be encoded, or not be stored now,
/// come back as `Retry` with the reason; a key given twice is stored once.
pub(crate) async fn store_host_results(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    results: Vec<(usize, &ResultRecord)>,
) -> Vec<Stored> {
    let mut out = Vec::with_capacity(results.len());
    let mut todo: Vec<Item> = Vec::with_capacity(results.len());
    // A key repeated within the request is answered like its first occurrence.
    let mut first_of: HashMap<String, usize> = HashMap::with_capacity(results.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (index, r) in results {
        let key = r.idempotency_key();
        if let Some(&first) = first_of.get(&key) {
            repeats.push((index, first));
            continue;
        }
        match codec::encode(Encoding::MsgPack, r) {
            Ok(bytes) => {
                first_of.insert(key.clone(), index);
                todo.push(Item { index, key, bytes });
            }
            Err(e) => out.push(retry(index, format!("invalid: {e}"))),
        }
    }
    store_items(js, subjects, host, todo, &mut out).await;
    for (index, first) in repeats {
        let Some(f) = out.iter().find(|s| s.index == first).cloned() else { continue };
        let status = if f.status == SubmitStatus::Retry { SubmitStatus::Retry } else { SubmitStatus::Duplicate };
        out.push(Stored { index, status, ..f });
    }
    out
}

/// Stores `todo` in order as segments, pushing one [`Stored`] per item onto `out`.
async fn store_items(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    mut todo: Vec<Item>,
    out: &mut Vec<Stored>,
) {
    let subject = subjects.result_put(host);
    let mut read_backs = 0;
    while !todo.is_empty() {
        let cut = segment_len(&todo);
        let payload = segment_payload(&todo[..cut]);
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, stored_msg_id(host.as_str(), &todo[0].key).as_str());
        headers.insert(SEGMENT_HEADER, cut.to_string().as_str());
        let ack = match js.publish_with_headers(subject.clone(), headers, payload).await {
            Ok(f) => f.await.map_err(ResultStoreError::from),
            Err(e) => Err(ResultStoreError::from(e)),
        };
        let ack = match ack {
            Ok(a) => a,
            Err(e) => {
                let why = super::unavailable::unavailable_reason(&e);
                out.extend(todo.drain(..).map(|i| retry(i.index, why.clone())));
                break;
            }
        };
        if !ack.duplicate {
            out.extend(todo.drain(..cut).map(|i| Stored {
                index: i.index,
                status: SubmitStatus::Stored,
                stream_seq: ack.sequence,
                reason: String::new(),
            }));
            continue;
        }
        // A segment with this first key is stored: answer what it holds, store the rest.
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
        Item { index: i, key: r.idempotency_key(), bytes: codec::encode(Encoding::MsgPack, &r).unwrap() }
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
