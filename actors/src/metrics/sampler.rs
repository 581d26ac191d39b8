//! The hub's consumer-lag sampler: every few seconds, while the families are served, the
//! pending counts of the account's hub durable consumers (the renderer's `config.changed`
//! consumer, the dispatcher's run-events consumer and the telemetry writer's results consumer)
//! are read from JetStream.

use std::time::Duration;

use async_nats::jetstream;
use steward_subjects::streams::{CONFIG_EVENTS_STREAM, RESULTS_STREAM, RUN_EVENTS_STREAM};
use steward_subjects::subject::run_events_consumer;
use steward_subjects::AccountId;
use tracing::debug;

use super::Metrics;

/// How often the consumers are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples the hub durable consumers of `account` into `metrics` every [`SAMPLE_EVERY`] while
/// `metrics` is served; never returns (abort its task to stop it). A consumer that does not
/// exist yet (its component is starting) is skipped until it does.
pub async fn sample_consumers(js: jetstream::Context, account: AccountId, metrics: &'static Metrics) {
    let consumers = [
        (CONFIG_EVENTS_STREAM, crate::renderer::config_events_consumer(&account)),
        (RUN_EVENTS_STREAM, run_events_consumer(&account)),
        (RESULTS_STREAM, crate::telemetry::writer::telemetry_consumer(&account)),
    ];
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !metrics.serving() {
            continue;
        }
        for (stream, consumer) in &consumers {
            match consumer_info(&js, stream, consumer).await {
                Ok(info) => {
                    metrics.consumer_lag(&account, stream, consumer, info.num_pending, info.num_ack_pending as u64);
                }
                Err(e) => debug!(account = %account, stream, consumer, error = %e, "consumer not sampled"),
            }
        }
    }
}

async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<jetstream::consumer::Info, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    Ok(stream.consumer_info(consumer).await?)
}
