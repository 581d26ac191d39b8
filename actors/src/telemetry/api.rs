//! The telemetry micro service `steward-telemetry`: `telemetry.query` (one series at a step)
//! and `telemetry.series` (the series of a host). Both subscribe in the service's queue group,
//! so any hub answers (they read the streams, not the writer's memory); each request is served
//! on its own task.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;
use ractor::ActorProcessingErr;
use steward_subjects::api::telemetry::{SeriesRequest, TelemetryQuery};
use steward_subjects::streams::TelemetryRetention;
use steward_subjects::{rpc, Subjects};

use super::{query, TelemetryArgs, TelemetryMsg};
use crate::tasks::TaskSet;

struct ServeCtx {
    js: jetstream::Context,
    subjects: Subjects,
    retention: TelemetryRetention,
}

/// Registers the service and serves its endpoints on tasks of `tasks`.
pub(super) async fn start_service(
    args: &TelemetryArgs,
    tasks: &mut TaskSet<TelemetryMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let fail = |e: String| ActorProcessingErr::from(format!("telemetry service: {e}"));
    let description = "steward telemetry: query a series, list the series of a host";
    let service = crate::start_account_service(&args.client, args.subjects.account(), "telemetry", description)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut query_ep = service
        .endpoint_builder()
        .name("query")
        .add(args.subjects.telemetry_query())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut series_ep = service
        .endpoint_builder()
        .name("series")
        .add(args.subjects.telemetry_series())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let ctx = Arc::new(ServeCtx {
        js: jetstream::new(args.client.clone()),
        subjects: args.subjects.clone(),
        retention: args.config.retention,
    });
    let c = ctx.clone();
    tasks.spawn("query endpoint", async move {
        while let Some(req) = query_ep.next().await {
            let c = c.clone();
            tokio::spawn(async move {
                let _ = rpc::serve(&req, |q: TelemetryQuery| async move {
                    query::run(&c.js, &c.subjects, &c.retention, &q).await
                })
                .await;
            });
        }
    });
    tasks.spawn("series endpoint", async move {
        while let Some(req) = series_ep.next().await {
            let c = ctx.clone();
            tokio::spawn(async move {
                let _ = rpc::serve(
                    &req,
                    |r: SeriesRequest| async move { query::series(&c.js, &c.subjects, &r.host).await },
                )
                .await;
            });
        }
    });
    Ok(service)
}
