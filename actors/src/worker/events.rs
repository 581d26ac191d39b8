//! Job event streaming from the edge: events are numbered per (run, host, attempt), gathered
//! into batches and published to `STEWARD_RUN_EVENTS` with a `Nats-Msg-Id` per event, so a
//! batch resent after a reconnect is stored once and in order. A batch is published pipelined
//! and every acknowledgement awaited before the next batch starts; a failed batch is resent
//! whole (already stored events are dropped by the dedupe window).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use steward_subjects::api::run::{RunEvent, RUN_ID_HEADER};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::subject::run_event_msg_id;
use steward_subjects::{HostId, Subjects};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

/// Most events in one batch.
pub const MAX_BATCH: usize = 128;
/// How long the sink waits for more events before it publishes a partial batch.
pub const LINGER: Duration = Duration::from_millis(20);

/// A batch could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("job events not stored: {0}")]
pub struct PublishError(pub String);

/// Publishes `events` (all of one host) as one batch and waits for every acknowledgement.
/// Publishing the same batch again stores nothing new.
///
/// # Errors
/// [`PublishError`] when an event cannot be encoded, published or acknowledged.
pub async fn publish_batch(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    events: &[RunEvent],
    ack_timeout: Duration,
) -> Result<(), PublishError> {
    let subject = subjects.run_event(host);
    let mut acks = Vec::with_capacity(events.len());
    for ev in events {
        let payload = codec::encode(Encoding::MsgPack, ev).map_err(|e| PublishError(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers
            .insert("Nats-Msg-Id", run_event_msg_id(subjects.account(), &ev.run_id, host, ev.attempt, ev.seq).as_str());
        headers.insert(RUN_ID_HEADER, ev.run_id.as_str());
        steward_subjects::trace::inject(&mut headers);
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| PublishError(e.to_string()))?;
        acks.push(ack);
    }
    let all = futures::future::try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future));
    match tokio::time::timeout(ack_timeout, all).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PublishError(e.to_string())),
        Err(_) => Err(PublishError(format!("no acknowledgement within {ack_timeout:?}"))),
    }
}

/// Numbers a job's events and streams them in batches from a background task.
#[derive(Debug)]
pub struct EventSink {
    tx: mpsc::Sender<RunEvent>,
    task: tokio::task::JoinHandle<Result<u64, PublishError>>,
    run_id: String,
    host: HostId,
    attempt: u32,
    seq: u64,
}

impl EventSink {
    /// Starts the sink of one (run, host, attempt). Batches that fail are retried with back-off
    /// until `give_up_after` has passed since the failure began.
    #[must_use]
    pub fn start(
        js: jetstream::Context,
        subjects: Subjects,
        host: HostId,
        run_id: String,
        attempt: u32,
        give_up_after: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        // The events carry the job's trace context while tracing is on.
        let span = steward_subjects::trace::span(tracing::Span::current);
        let task = tokio::spawn(pump(js, subjects, host.clone(), rx, give_up_after).instrument(span));
        EventSink { tx, task, run_id, host, attempt, seq: 0 }
    }

    /// Numbers `ev`, stamps it with run, host, attempt and time, and queues it.
    pub async fn emit(&mut self, mut ev: RunEvent) {
        self.seq += 1;
        ev.seq = self.seq;
        ev.run_id.clone_from(&self.run_id);
        ev.host_id = self.host.to_string();
        ev.attempt = self.attempt;
        if ev.at.is_empty() {
            ev.at = crate::now_rfc3339();
        }
        if self.tx.send(ev).await.is_err() {
            debug!(run_id = %self.run_id, "event sink closed, event dropped");
        }
    }

    /// Sequence number of the last event queued.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Waits until every queued event is stored; returns how many were published.
    ///
    /// # Errors
    /// [`PublishError`] when a batch could not be stored before giving up.
    pub async fn finish(self) -> Result<u64, PublishError> {
        drop(self.tx);
        self.task.await.map_err(|e| PublishError(e.to_string()))?
    }
}

async fn pump(
    js: jetstream::Context,
    subjects: Subjects,
    host: HostId,
    mut rx: mpsc::Receiver<RunEvent>,
    give_up_after: Duration,
) -> Result<u64, PublishError> {
    let mut published = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => batch.push(ev),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match publish_batch(&js, &subjects, &host, &batch, Duration::from_secs(5)).await {
                Ok(()) => break,
                Err(e) if started.elapsed() < give_up_after => {
                    warn!(host_id = %host, error = %e, retry_ms = backoff.as_millis() as u64, "event batch not stored, resending");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        published += batch.len() as u64;
    }
    Ok(published)
}
