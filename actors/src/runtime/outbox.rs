//! Result delivery. Every run's result goes into the outbox first (its sequence number is
//! assigned there); a drain task then submits the outbox head in order and removes what the hub
//! stored, found duplicate or refused. While the hub is unreachable results wait, and they are
//! sent in order after reconnection; the hub stores each once (`<spec>:<epoch>:<seq>`, and the
//! outbox's incarnation and each result's outbox position, for outages longer than the dedupe
//! window).
//!
//! A result whose whole output is longer than its inline head has that output beside it in
//! the outbox. The drain stores it as one message of `STEWARD_OUTPUTS` on the host's own
//! `result.output.<host>` (message id `<host>.<spec>:<epoch>:<seq>`, so a resend is a duplicate),
//! cut to the server's max payload when larger, and the result then names it (`out:<seq>`);
//! when storing keeps failing while the hub answers, the result is sent without the reference
//! after a few attempts rather than blocking the outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream;
use ractor::ActorRef;
use steward_storage::runtime::{Pending, RuntimeStore};
use steward_subjects::api::lease::LeasesRequest;
use steward_subjects::api::result::{ResultRecord, SubmitRequest, SubmitStatus, MAX_STORED_OUTPUT};
use steward_subjects::streams::OUTPUTS_STREAM;
use steward_subjects::subject::{result_host_of, result_output_msg_id, OutputRef};
use steward_subjects::{HostId, RuntimeId, Subjects};
use tracing::{debug, warn};

use super::{RuntimeMsg, RuntimeState};
use crate::lease::client::{is_unreachable, LeaseClient};

/// Results submitted per request when draining the outbox.
const DRAIN_BATCH: usize = 256;
/// Rough bound on the encoded size of one submit request (well under NATS' 1 MiB payload).
const DRAIN_BYTES: usize = 512 * 1024;
/// Room left in a message for its headers when a full output is cut to the server's max payload.
const HEADER_ROOM: usize = 2048;
/// Longest one full-output upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Failed uploads of one output, while the hub answers, before its result is sent without it.
const UPLOAD_ATTEMPTS: u32 = 5;

/// What a drain task needs.
pub(super) struct DrainCtx {
    store: Arc<RuntimeStore>,
    lease: LeaseClient,
    js: jetstream::Context,
    runtime: String,
    /// The identity results are submitted as.
    identity: (Option<HostId>, RuntimeId),
    subjects: Subjects,
    upload_failures: Arc<std::sync::Mutex<HashMap<u64, u32>>>,
}

pub(super) fn drain_ctx(state: &RuntimeState) -> DrainCtx {
    DrainCtx {
        store: state.store.clone(),
        lease: state.lease.clone(),
        js: state.js.clone(),
        runtime: state.args.runtime.to_string(),
        identity: (state.args.host.clone(), state.args.runtime.clone()),
        subjects: state.args.subjects.clone(),
        upload_failures: state.upload_failures.clone(),
    }
}

pub(super) fn start_drain(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    if state.draining {
        state.drain_again = true;
        return;
    }
    state.draining = true;
    state.drain_again = false;
    let (ctx, me) = (drain_ctx(state), myself.clone());
    // A drain after a traced first run submits its result in that run's trace.
    let traced = state.drain_trace.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let span = match traced {
        Some(cx) => steward_subjects::trace::follow(Some(&cx), || tracing::info_span!("results.drain")),
        None => tracing::Span::none(),
    };
    let drained = async move {
        let (online, delivered, refused) = drain(ctx).await;
        let _ = me.cast(RuntimeMsg::DrainDone { online, delivered, refused });
    };
    tokio::spawn(tracing::Instrument::instrument(drained, span));
}

/// Rough encoded size of a result in a submit request.
fn approx_size(r: &ResultRecord) -> usize {
    512 + r.output.len() + r.message.len() + r.metrics.keys().map(|k| k.len() + 16).sum::<usize>()
}

/// Why a full output could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The outbox could not be read or written.
    #[error("outbox: {0}")]
    Store(#[from] steward_storage::Error),
    /// The blocking outbox task failed.
    #[error("outbox task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The results' host is not a valid subject token.
    #[error("no output subject: {0}")]
    Host(#[from] steward_subjects::TokenError),
    /// The server refused the message or did not acknowledge it.
    #[error("cannot store the output: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    /// Another stream than the outputs stream acknowledged it.
    #[error("output stored by stream {0}, not {OUTPUTS_STREAM}")]
    WrongStream(String),
    /// Storing took longer than `UPLOAD_TIMEOUT`.
    #[error("upload timed out")]
    TimedOut,
}

/// The most bytes of a full output one message can carry on a server with `max_payload`.
fn output_room(max_payload: usize) -> usize {
    MAX_STORED_OUTPUT.min(max_payload.saturating_sub(HEADER_ROOM))
}

/// Stores the full output kept with outbox result `id` in the outputs stream, unless `record`
/// already names a stored one, and returns the record as it is to be sent (naming the
/// output, or noting why it does not).
async fn upload_output(ctx: &DrainCtx, id: u64, record: &ResultRecord) -> Result<Option<ResultRecord>, UploadError> {
    if matches!(record.output_ref.as_deref().and_then(OutputRef::parse), Some(OutputRef::Stream(_))) {
        return Ok(None);
    }
    let s = ctx.store.clone();
    let Some(mut bytes) = tokio::task::spawn_blocking(move || s.output(id)).await?? else {
        let s = ctx.store.clone();
        return Ok(tokio::task::spawn_blocking(move || s.forget_output(id, "full output lost from the outbox")).await??);
    };
    let host = result_host_of(ctx.identity.0.as_ref(), &ctx.identity.1);
    let subject = ctx.subjects.result_output(&HostId::parse(&host)?);
    let (total, room) = (bytes.len(), output_room(ctx.js.client().server_info().max_payload));
    let note = (total > room).then(|| {
        bytes.truncate(room);
        format!("full output cut to {room} of {total} bytes (the server's max payload)")
    });
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, result_output_msg_id(&host, &record.spec, record.epoch, record.seq).as_str());
    let publish = async { ctx.js.publish_with_headers(subject, headers, bytes.into()).await?.await };
    let ack = tokio::time::timeout(UPLOAD_TIMEOUT, publish).await.map_err(|_| UploadError::TimedOut)??;
    if ack.stream != OUTPUTS_STREAM {
        return Err(UploadError::WrongStream(ack.stream));
    }
    let (s, output_ref) = (ctx.store.clone(), OutputRef::Stream(ack.sequence).to_string());
    Ok(tokio::task::spawn_blocking(move || s.output_stored(id, &output_ref, note.as_deref())).await??)
}

/// Whether the hub answers at all (told apart from the outputs stream refusing).
async fn hub_answers(ctx: &DrainCtx) -> bool {
    let req = LeasesRequest { runtime: Some(ctx.runtime.clone()), unassigned: false, limit: 1, ..Default::default() };
    ctx.lease.leases(&req).await.is_ok()
}

/// The prefix of the outbox head that fits one submit request, each full output stored first.
struct Ready {
    results: Vec<Pending>,
    /// An output could not be uploaded: stop after what is ready.
    stalled: bool,
    /// Whether the hub answered meanwhile (the outputs stream alone may be refusing).
    reachable: bool,
}

async fn ready_prefix(ctx: &DrainCtx, pending: Vec<Pending>) -> Ready {
    let runtime = ctx.runtime.as_str();
    let mut out = Ready { results: Vec::with_capacity(pending.len()), stalled: false, reachable: true };
    let mut bytes = 0usize;
    for mut p in pending {
        let size = approx_size(&p.record);
        if !out.results.is_empty() && bytes + size > DRAIN_BYTES {
            break;
        }
        if p.record.output_ref.is_some() {
            let name = p.record.idempotency_key();
            match upload_output(ctx, p.id, &p.record).await {
                Ok(Some(r)) => p.record = r,
                Ok(None) => {}
                Err(e) => {
                    out.stalled = true;
                    if !hub_answers(ctx).await {
                        out.reachable = false;
                        break;
                    }
                    let attempts = {
                        let mut f = ctx.upload_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let n = f.entry(p.id).or_insert(0);
                        *n += 1;
                        *n
                    };
                    warn!(runtime, result = %name, attempts, error = %e, "full output not stored");
                    if attempts < UPLOAD_ATTEMPTS {
                        break;
                    }
                    // Give up on the output rather than block every later result.
                    let s = ctx.store.clone();
                    let note = format!("full output not stored: {e}");
                    match tokio::task::spawn_blocking(move || s.forget_output(p.id, &note)).await {
                        Ok(Ok(Some(r))) => {
                            out.stalled = false;
                            p.record = r;
                        }
                        _ => break,
                    }
                }
            }
        }
        bytes += size;
        out.results.push(p);
    }
    out
}

/// Submits the outbox head in order until it is empty or the hub cannot be reached; returns
/// (reachable, delivered, refused). Full outputs are uploaded before their results are sent.
pub(super) async fn drain(ctx: DrainCtx) -> (bool, u64, u64) {
    let runtime = ctx.runtime.as_str();
    let (mut delivered, mut refused) = (0u64, 0u64);
    loop {
        let s = ctx.store.clone();
        let pending = match tokio::task::spawn_blocking(move || s.pending(DRAIN_BATCH)).await {
            Ok(Ok(p)) => p,
            _ => return (true, delivered, refused),
        };
        if pending.is_empty() {
            return (true, delivered, refused);
        }
        let Ready { results: ready, stalled, reachable } = ready_prefix(&ctx, pending).await;
        if ready.is_empty() {
            return (reachable, delivered, refused);
        }
        let ids: Vec<u64> = ready.iter().map(|p| p.id).collect();
        let req = SubmitRequest {
            results: ready.into_iter().map(|p| p.record).collect(),
            incarnation: ctx.store.incarnation().to_owned(),
        };
        let reply = match ctx.lease.submit(ctx.identity.0.as_ref(), &ctx.identity.1, &req).await {
            Ok(r) => r,
            Err(e) => {
                if !is_unreachable(&e) {
                    warn!(runtime, error = %e, "results refused as a whole");
                }
                return (false, delivered, refused);
            }
        };
        let mut done = Vec::with_capacity(ids.len());
        let mut retry = false;
        for (id, o) in ids.iter().zip(&reply.outcomes) {
            match o.status {
                SubmitStatus::Stored | SubmitStatus::Duplicate => {
                    delivered += 1;
                    done.push(*id);
                }
                SubmitStatus::Refused => {
                    refused += 1;
                    debug!(runtime, key = %o.key, reason = %o.reason, "result refused");
                    done.push(*id);
                }
                SubmitStatus::Retry => retry = true,
            }
        }
        {
            let mut f = ctx.upload_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in &done {
                f.remove(id);
            }
        }
        let s = ctx.store.clone();
        if !matches!(tokio::task::spawn_blocking(move || s.ack(&done)).await, Ok(Ok(()))) {
            return (true, delivered, refused);
        }
        if stalled {
            return (reachable, delivered, refused);
        }
        if retry || reply.outcomes.len() < ids.len() {
            return (true, delivered, refused);
        }
    }
}
