//! Notifications: the notifier follows `STEWARD_ALARM_EVENTS` with its own durable consumer and,
//! for each transition that notifies (not silenced, not flapping), publishes it on
//! `alarm.notify.<severity>.<id>` (core NATS, MessagePack like every Steward payload: anyone may
//! subscribe), and, on a second durable consumer, POSTs it as JSON to each webhook, one
//! transition at a time so a webhook sees an alarm's transitions in order, retrying with
//! back-off (the message is negatively acknowledged with a growing delay, so retries survive a
//! hub restart). A webhook receives each transition at least once (a retry re-posts to every
//! webhook); the `Steward-Event-Id` header (`<alarm id>:<n>`) lets it drop repeats. A webhook
//! that stays down delays later webhook deliveries, never the NATS notifications.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use steward_subjects::api::alarm::AlarmEvent;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::ALARM_EVENTS_STREAM;
use steward_subjects::Subjects;
use tracing::{debug, warn};

use crate::metrics::NotificationLabels;

/// Deliveries of one transition before it is given up (it then shows in dead letters).
pub const MAX_DELIVER: i64 = 12;
/// Longest pause between two webhook attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Time one webhook request may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the notifier stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotifyError {
    /// A consumer could not be created or read, or the HTTP client could not be built.
    #[error("alarm notifier: {0}")]
    Setup(String),
    /// A consumer's message stream ended.
    #[error("alarm notifier: the {0} consumer ended")]
    Ended(&'static str),
}

fn setup(e: impl std::fmt::Display) -> NotifyError {
    NotifyError::Setup(e.to_string())
}

/// Name of the notifier's durable consumer for the NATS subject.
#[must_use]
pub fn notifier_consumer(account: &steward_subjects::AccountId) -> String {
    format!("alarm-notify-{account}")
}

/// Name of the notifier's durable consumer for webhooks.
#[must_use]
pub fn webhook_consumer(account: &steward_subjects::AccountId) -> String {
    format!("alarm-webhook-{account}")
}

/// The pause before attempt `delivered + 1`: 1 s, 2 s, 4 s, ... up to [`MAX_BACKOFF`].
#[must_use]
pub fn backoff(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

async fn consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    name: String,
    max_ack_pending: i64,
) -> Result<consumer::pull::Stream, NotifyError> {
    let stream = js.get_stream_no_info(ALARM_EVENTS_STREAM).await.map_err(setup)?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some("alarm notifications".into()),
                filter_subject: subjects.alarm_events_all(),
                // Transitions stored before the notifier first ran are history, not news.
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: WEBHOOK_TIMEOUT * 3,
                max_deliver: MAX_DELIVER,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(setup)?;
    consumer.messages().await.map_err(setup)
}

/// Runs the notifier until a consumer ends: the NATS subject (each notifying transition
/// published once, as it is stored) and, when webhooks are given, the webhooks (one transition
/// at a time, in order, each retried until every webhook took it or [`MAX_DELIVER`] attempts).
///
/// # Errors
/// A reason when a consumer cannot be created or read.
pub async fn run(js: jetstream::Context, subjects: Subjects, webhooks: Vec<String>) -> Result<(), NotifyError> {
    let nats = nats_loop(js.clone(), subjects.clone());
    if webhooks.is_empty() {
        return nats.await;
    }
    let hooks = webhook_loop(js, subjects, webhooks);
    tokio::select! {
        r = nats => r,
        r = hooks => r,
    }
}

async fn nats_loop(js: jetstream::Context, subjects: Subjects) -> Result<(), NotifyError> {
    let mut messages = consumer(&js, &subjects, notifier_consumer(subjects.account()), 1000).await?;
    let metrics = crate::metrics::global();
    while let Some(msg) = messages.next().await {
        let Ok(msg) = msg else { continue };
        if let Ok(ev) = codec::decode::<AlarmEvent>(Encoding::MsgPack, &msg.payload) {
            if ev.notify {
                let subject = subjects.alarm_notify(ev.alarm.severity.as_str(), &ev.alarm.id);
                let sent = js.client().publish(subject, msg.payload.clone()).await;
                let outcome = if sent.is_ok() { "sent" } else { "failed" };
                metrics.alarm_notifications.get_or_create(&NotificationLabels::of("nats", outcome)).inc();
            }
        }
        let _ = msg.ack().await;
    }
    Err(NotifyError::Ended("notify"))
}

async fn webhook_loop(js: jetstream::Context, subjects: Subjects, webhooks: Vec<String>) -> Result<(), NotifyError> {
    // One in flight: webhooks see an alarm's transitions in order.
    let mut messages = consumer(&js, &subjects, webhook_consumer(subjects.account()), 1).await?;
    let http = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build().map_err(setup)?;
    let metrics = crate::metrics::global();
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "alarm webhooks");
                continue;
            }
        };
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let Ok(ev) = codec::decode::<AlarmEvent>(Encoding::MsgPack, &msg.payload) else {
            let _ = msg.ack_with(AckKind::Term).await;
            continue;
        };
        if !ev.notify {
            let _ = msg.ack().await;
            continue;
        }
        let mut failed = None;
        for url in &webhooks {
            match post(&http, url, &ev).await {
                Ok(()) => {
                    metrics.alarm_notifications.get_or_create(&NotificationLabels::of("webhook", "sent")).inc();
                }
                Err(e) => {
                    metrics.alarm_notifications.get_or_create(&NotificationLabels::of("webhook", "failed")).inc();
                    failed = Some(format!("{url}: {e}"));
                }
            }
        }
        match failed {
            None => {
                let _ = msg.ack().await;
            }
            Some(why) => {
                let delay = backoff(delivered);
                warn!(alarm = ev.alarm.id, n = ev.n, attempt = delivered, retry_in = ?delay, error = why, "webhook failed");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
    Err(NotifyError::Ended("webhook"))
}

async fn post(http: &reqwest::Client, url: &str, ev: &AlarmEvent) -> Result<(), String> {
    let resp = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Steward-Event-Id", format!("{}:{}", ev.alarm.id, ev.n))
        .body(serde_json::to_vec(ev).map_err(|e| e.to_string())?)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(10), MAX_BACKOFF);
    }
}
