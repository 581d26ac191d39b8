//! Work orders as durable host commands: each attempt's order is a `run` command on the
//! host's command subject (`Nats-Msg-Id` per run, host and attempt, so the stream stores it
//! once; expiring at the attempt's deadline). Publishes are pipelined; the stream's
//! acknowledgements say which orders are stored (and at which sequence, so a cancel can
//! delete an order not taken yet).

use async_nats::jetstream;
use futures::StreamExt;
use steward_subjects::api::host::{CommandAction, HostCommand, COMMAND_ID_HEADER};
use steward_subjects::api::run::WorkOrder;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::subject::{run_work_command_id, run_work_msg_id};
use steward_subjects::{HostId, Subjects};
use tracing::{debug, warn};

/// Work orders of at most this many hosts are published before the caller's answer, from the
/// request's own task (one task hop less on a small run's round trip); larger runs publish on
/// a task of their own after the answer.
pub(super) const INLINE_ORDERS: usize = 16;

/// One work order as its `run` host command: the (host, attempt) it delivers, subject, headers
/// (`Nats-Msg-Id` per run, host and attempt) and payload; it expires at the attempt's deadline.
fn work_command(
    subjects: &Subjects,
    o: WorkOrder,
    now: time::OffsetDateTime,
) -> Option<((String, u32), String, async_nats::HeaderMap, bytes::Bytes)> {
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let host = HostId::parse(&o.host_id).ok()?;
    let key = (o.host_id.clone(), o.attempt);
    let command_id = run_work_command_id(&o.run_id, o.attempt);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, run_work_msg_id(&o.run_id, &host, o.attempt).as_str());
    headers.insert(COMMAND_ID_HEADER, command_id.as_str());
    steward_subjects::trace::inject(&mut headers);
    let expires = now + time::Duration::milliseconds(i64::try_from(o.timeout_ms).unwrap_or(i64::MAX / 2));
    let cmd = HostCommand {
        command_id,
        host_id: o.host_id.clone(),
        action: CommandAction::Run,
        worker: String::new(),
        issued_at: fmt(now),
        expires_at: Some(fmt(expires)),
        work: Some(o),
    };
    match codec::encode(Encoding::MsgPack, &cmd) {
        Ok(payload) => Some((key, subjects.host_command(&host), headers, payload)),
        Err(e) => {
            warn!(host_id = %key.0, error = %e, "work order not encoded");
            None
        }
    }
}

/// A work order the commands stream stored: (host, attempt) and its stream sequence.
pub(super) type Stored = ((String, u32), u64);

/// Waits for the commands stream's acknowledgement of one published work order (a duplicate's
/// acknowledgement carries the sequence of the copy stored first).
async fn stored(
    key: (String, u32),
    published: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
) -> Option<Stored> {
    let result = match published {
        Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(seq) => Some((key, seq)),
        Err(e) => {
            debug!(host_id = %key.0, error = %e, "work order not stored");
            None
        }
    }
}

/// The stream sequence of the work order of (run, attempt) among one host's commands, if it
/// is still stored.
pub(super) async fn find_work_command(
    stream: &jetstream::stream::Stream,
    subject: &str,
    run_id: &str,
    attempt: u32,
) -> Option<u64> {
    let want = run_work_command_id(run_id, attempt);
    let mut next = 1;
    // A host's commands of the stream's retention (a few per run at most).
    loop {
        let msg = stream.direct_get_next_for_subject(subject, Some(next)).await.ok()?;
        let id = msg.headers.get(COMMAND_ID_HEADER).map(|v| v.as_str().to_owned());
        if id.as_deref() == Some(want.as_str()) {
            return Some(msg.sequence);
        }
        next = msg.sequence + 1;
    }
}

/// Publishes a few work orders at once without waiting for the stream; the returned future
/// waits for the acknowledgements and answers the orders stored.
pub(super) async fn publish_few(
    js: &jetstream::Context,
    subjects: &Subjects,
    orders: Vec<WorkOrder>,
) -> impl std::future::Future<Output = Vec<Stored>> + Send + 'static {
    let now = time::OffsetDateTime::now_utc();
    let mut pending = Vec::with_capacity(orders.len());
    for o in orders {
        if let Some((key, subject, headers, payload)) = work_command(subjects, o, now) {
            pending.push((key, js.publish_with_headers(subject, headers, payload).await));
        }
    }
    async move {
        let mut out = Vec::with_capacity(pending.len());
        for (key, published) in pending {
            out.extend(stored(key, published).await);
        }
        out
    }
}

/// Stores work orders as `run` host commands (durable delivery through the host's command
/// consumer), many publishes in flight; returns the (host, attempt) pairs whose order the
/// commands stream acknowledged, with the stream sequences. An order is stored once per (run, host, attempt) within
/// the stream's dedupe window, however often it is published.
pub(super) async fn deliver_all(js: jetstream::Context, subjects: Subjects, orders: Vec<WorkOrder>) -> Vec<Stored> {
    let now = time::OffsetDateTime::now_utc();
    // Within the client's limit of unacknowledged publishes (5,000).
    futures::stream::iter(orders.into_iter().filter_map(|o| work_command(&subjects, o, now)).map(
        |(key, subject, headers, payload)| {
            let js = js.clone();
            async move { stored(key, js.publish_with_headers(subject, headers, payload).await).await }
        },
    ))
    .buffer_unordered(2048)
    .filter_map(|x| async move { x })
    .collect()
    .await
}
