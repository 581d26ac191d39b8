//! The host registry: the record of each host lives in the KV bucket `steward_hosts` under
//! `<account>.<host>`. It is written on every change and refreshed at least every
//! `refresh_every` while a host is online, so 10,000 steady hosts cost a trickle of writes,
//! not one per heartbeat. On start the connector loads the account's records; hosts recorded
//! online get a fresh grace period instead of being declared offline at once.
//!
//! Writes and event publishes run on a writer task fed by a channel, so the actor never waits
//! on JetStream. An event is published after the registry write it describes; its message id
//! is made of what caused it (host, incarnation, heartbeat sequence, kind), so the transition
//! every instance judges alike is stored once, not once per instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use futures::StreamExt;
use ractor::ActorProcessingErr;
use steward_subjects::api::host::{HostEvent, HostRecord};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::subject::{host_registry_key, parse_registry_key};
use steward_subjects::{HostId, Subjects};
use tracing::warn;

use super::{Counters, Tracked, DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL};

/// What the writer task is asked to do.
pub(super) enum Write {
    Put(HostRecord),
    /// An event and what identifies it (its `Nats-Msg-Id` without the account).
    Event(HostEvent, String),
}

/// Loads the account's host records.
pub(super) async fn load(kv: &kv::Store, subjects: &Subjects) -> Result<HashMap<String, Tracked>, ActorProcessingErr> {
    let mut keys = kv.keys().await.map_err(|e| ActorProcessingErr::from(format!("cannot list host registry: {e}")))?;
    let mut hosts = HashMap::new();
    let now = Instant::now();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ActorProcessingErr::from(format!("cannot list host registry: {e}")))?;
        let Some(host) = parse_registry_key(subjects.account(), &key) else { continue };
        let Some(bytes) = kv.get(key.as_str()).await.map_err(|e| ActorProcessingErr::from(e.to_string()))? else {
            continue;
        };
        match codec::decode::<HostRecord>(Encoding::MsgPack, &bytes) {
            Ok(record) => {
                let interval = match record.interval_ms {
                    0 => DEFAULT_INTERVAL,
                    ms => Duration::from_millis(ms).clamp(MIN_INTERVAL, MAX_INTERVAL),
                };
                hosts.insert(
                    host.to_string(),
                    Tracked { record, last_seen: now, last_write: now, interval, last_seq: 0 },
                );
            }
            Err(e) => warn!(key = %key, error = %e, "unreadable host record skipped"),
        }
    }
    Ok(hosts)
}

/// Writes registry records (the last per host of a batch wins) and then the events describing
/// them, until the channel is closed and drained.
pub(super) async fn write_loop(
    kv: kv::Store,
    js: jetstream::Context,
    subjects: Subjects,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Write>,
    counters: Arc<Counters>,
) {
    const BATCH: usize = 1024;
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        // Last record per host wins; puts land before the events that describe them.
        let mut puts: BTreeMap<String, HostRecord> = BTreeMap::new();
        let mut events = Vec::new();
        for w in buf.drain(..) {
            match w {
                Write::Put(r) => {
                    puts.insert(r.host_id.clone(), r);
                }
                Write::Event(e, id) => events.push((e, id)),
            }
        }
        let writes = futures::stream::iter(puts.into_values())
            .map(|record| {
                let kv = kv.clone();
                let subjects = subjects.clone();
                async move {
                    let Ok(host) = HostId::parse(&record.host_id) else { return Err("bad host id".to_owned()) };
                    let key = host_registry_key(subjects.account(), &host);
                    let bytes = codec::encode(Encoding::MsgPack, &record).map_err(|e| e.to_string())?;
                    kv.put(key, bytes).await.map(|_| ()).map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for r in writes {
            match r {
                Ok(()) => counters.registry_writes.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(error = %e, "host registry write failed");
                    counters.registry_write_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        let mut acks = Vec::with_capacity(events.len());
        for (e, id) in events {
            let Ok(host) = HostId::parse(&e.host_id) else { continue };
            let Ok(payload) = codec::encode(Encoding::MsgPack, &e) else { continue };
            let mut headers = HeaderMap::new();
            let id = format!("host-event.{}.{id}", subjects.account());
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            match js.publish_with_headers(subjects.host_event(&host), headers, payload).await {
                Ok(ack) => acks.push(ack),
                Err(err) => warn!(host_id = %host, error = %err, "host event not published"),
            }
        }
        for ack in acks {
            match ack.await {
                Ok(_) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => warn!(error = %err, "host event not stored"),
            }
        }
    }
}
