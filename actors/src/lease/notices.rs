//! Change notices to runtimes, batched: what changed, was removed or was taken from each
//! runtime goes out on `jobspec.notice.<runtime>` every [`NOTICE_FLUSH`], and a hint that specs
//! are free on `jobspec.available`. Notices are hints (a runtime's `mine` is authoritative), so
//! one that cannot be sent is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use steward_subjects::api::lease::{AvailableNotice, ChangeNotice};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::token::RuntimeId;
use steward_subjects::trace;
use tracing::debug;

use super::requests::Shared;

/// Publishes a notice, with the trace context of `span` when it is traced.
async fn publish(
    hub: &Shared,
    subject: String,
    span: &tracing::Span,
    payload: bytes::Bytes,
) -> Result<(), async_nats::PublishError> {
    if span.is_none() {
        return hub.client.publish(subject, payload).await;
    }
    let mut headers = async_nats::HeaderMap::new();
    trace::inject_span(span, &mut headers);
    hub.client.publish_with_headers(subject, headers, payload).await
}

/// How often pending notices are flushed.
const NOTICE_FLUSH: Duration = Duration::from_millis(50);

/// A notice to send: (runtime, spec) for the per-runtime ones.
pub(super) enum NoticeEvent {
    Changed(String, String),
    Removed(String, String),
    Revoked(String, String),
    Available,
}

/// Sends the events of `rx` as notices until the channel closes.
pub(super) async fn notices(hub: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<NoticeEvent>) {
    let mut pending: BTreeMap<String, ChangeNotice> = BTreeMap::new();
    let mut available = false;
    let mut tick = tokio::time::interval(NOTICE_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = rx.recv() => {
                let Some(e) = e else { return };
                let (runtime, spec, which) = match e {
                    NoticeEvent::Available => { available = true; continue; }
                    NoticeEvent::Changed(r, s) => (r, s, 0),
                    NoticeEvent::Removed(r, s) => (r, s, 1),
                    NoticeEvent::Revoked(r, s) => (r, s, 2),
                };
                let n = pending.entry(runtime.clone()).or_insert_with(|| ChangeNotice { runtime, ..ChangeNotice::default() });
                match which {
                    0 => n.changed.push(spec),
                    1 => n.removed.push(spec),
                    _ => n.revoked.push(spec),
                }
            }
            _ = tick.tick() => {
                if pending.is_empty() && !available {
                    continue;
                }
                // While tracing is on, the notices continue the trace of the latest spec change.
                let cx = if trace::enabled() {
                    hub.spec_trace.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
                } else {
                    None
                };
                let span = trace::follow(cx.as_ref(), || tracing::info_span!("jobspec.notice", otel.kind = "producer"));
                for (runtime, notice) in std::mem::take(&mut pending) {
                    let Ok(rt) = RuntimeId::parse(&runtime) else { continue };
                    if let Ok(payload) = codec::encode(Encoding::MsgPack, &notice) {
                        if let Err(e) = publish(&hub, hub.subjects.jobspec_notice(&rt), &span, payload).await {
                            debug!(runtime = %rt, error = %e, "notice not sent");
                        }
                    }
                }
                if std::mem::take(&mut available) {
                    let unassigned = hub.view().free_estimate();
                    if unassigned > 0 {
                        if let Ok(payload) = codec::encode(Encoding::MsgPack, &AvailableNotice { unassigned }) {
                            let _ = publish(&hub, hub.subjects.jobspec_available(), &span, payload).await;
                        }
                    }
                }
            }
        }
    }
}
