//! `raw`: the ceiling of this machine, measured with plain async-nats in the same run as the
//! Steward scenarios — core publish/subscribe, request/reply (serial and concurrent), JetStream
//! async and sync publish, work-queue pull consume with ack, KV put and compare-and-set.
//!
//! These use their own `loadtest.raw.*` subjects and throw-away streams and buckets, not
//! Steward's, and delete them afterwards.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde_json::json;

use super::unique;
use crate::measure::{share, Latency};
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "raw",
    about: "plain async-nats ceiling: core pub/sub, request/reply, JetStream publish and consume, KV",
    run: |ctx| run(ctx).boxed(),
};

/// Names of the raw measurements, in run order.
pub const MEASUREMENTS: &[&str] = &[
    "raw.core_pub_sub",
    "raw.request_reply_serial",
    "raw.request_reply_concurrent",
    "raw.js_publish_async",
    "raw.js_publish_sync",
    "raw.js_pull_consume_ack",
    "raw.kv_put",
    "raw.kv_cas",
];

const PAYLOAD_SIZE: usize = 128;

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD_SIZE])
}

/// Spawns `workers` tasks, worker `w` doing its [`share`] of `n` operations as `worker(w, count)`
/// builds them, and merges the latencies they return.
async fn run_workers<F, Fut>(n: u64, workers: u64, worker: F) -> anyhow::Result<Latency>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Latency> + Send + 'static,
{
    let mut tasks = Vec::new();
    for w in 0..workers {
        tasks.push(tokio::spawn(worker(w, share(n, workers, w))));
    }
    let mut lat = Latency::new();
    for t in tasks {
        lat.merge(&t.await?);
    }
    Ok(lat)
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let mut out = Vec::new();
    for name in MEASUREMENTS {
        let r = measure_named(ctx, name).await?;
        ctx.record_ceiling(&r).await;
        out.push(r);
    }
    Ok(out)
}

/// Runs one raw measurement by name.
///
/// # Errors
/// Unknown names, or failures talking to NATS.
pub async fn measure_named(ctx: &Ctx, name: &str) -> anyhow::Result<ScenarioReport> {
    match name {
        "raw.core_pub_sub" => core_pub_sub(ctx).await,
        "raw.request_reply_serial" => request_reply(ctx, false).await,
        "raw.request_reply_concurrent" => request_reply(ctx, true).await,
        "raw.js_publish_async" => js_publish(ctx, true).await,
        "raw.js_publish_sync" => js_publish(ctx, false).await,
        "raw.js_pull_consume_ack" => js_pull_consume(ctx).await,
        "raw.kv_put" => kv_ops(ctx, false).await,
        "raw.kv_cas" => kv_ops(ctx, true).await,
        other => bail!("unknown raw measurement {other:?}; known: {}", MEASUREMENTS.join(", ")),
    }
}

async fn core_pub_sub(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let n = ctx.size("raw.core_pub_sub", 1_000_000, 20_000);
    let publisher = ctx.deployment.connect("raw-pub").await?;
    let subscriber = ctx.deployment.connect("raw-sub").await?;
    let subject = format!("loadtest.raw.pubsub.{}", unique());
    let mut sub = subscriber.subscribe(subject.clone()).await?;
    subscriber.flush().await?;
    let progress = Progress::start("raw.core_pub_sub", n);
    let m = ctx.begin();
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        // Core NATS drops only for a slow consumer; a pause is not a loss, so the count ends
        // only after a long silence (a starved machine can pause the subscriber for seconds).
        while got < n {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        got
    });
    let p = payload();
    for i in 0..n {
        publisher.publish(subject.clone(), p.clone()).await?;
        if i % 4096 == 0 {
            progress.add(4096);
        }
    }
    publisher.flush().await?;
    let got = counter.await?;
    progress.finish();
    let mut r = m.finish("raw.core_pub_sub", "core publish to one subscriber, 128-byte messages", got, None);
    r.lost = n.saturating_sub(got);
    r.params = json!({"messages": n, "payload_bytes": PAYLOAD_SIZE});
    Ok(r)
}

async fn request_reply(ctx: &Ctx, concurrent: bool) -> anyhow::Result<ScenarioReport> {
    let name = if concurrent { "raw.request_reply_concurrent" } else { "raw.request_reply_serial" };
    let n = if concurrent { ctx.size(name, 200_000, 5_000) } else { ctx.size(name, 20_000, 1_000) };
    let workers: u64 = if concurrent { 32 } else { 1 };
    let server = ctx.deployment.connect("raw-responder").await?;
    let client = ctx.deployment.connect("raw-requester").await?;
    let subject = format!("loadtest.raw.rr.{}", unique());
    let mut sub = server.subscribe(subject.clone()).await?;
    server.flush().await?;
    let responder = tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    let _ = server.publish(reply, msg.payload).await;
                }
            }
        }
    });
    let progress = Progress::start(name, n);
    let errors = Arc::new(AtomicU64::new(0));
    let m = ctx.begin();
    let lat = run_workers(n, workers, |_, count| {
        let (client, subject, errors, progress) = (client.clone(), subject.clone(), errors.clone(), progress.clone());
        async move {
            let mut lat = Latency::new();
            let p = payload();
            for _ in 0..count {
                let t = Instant::now();
                match client.request(subject.clone(), p.clone()).await {
                    Ok(_) => lat.record_since(t),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress.add(1);
            }
            lat
        }
    })
    .await?;
    progress.finish();
    responder.abort();
    let desc = if concurrent {
        "request/reply, 32 concurrent requesters on one connection, one responder"
    } else {
        "request/reply, one request at a time"
    };
    let mut r = m.finish(name, desc, lat.count(), Some(&lat));
    r.errors = errors.load(Ordering::Relaxed);
    r.params = json!({"requests": n, "concurrency": workers, "payload_bytes": PAYLOAD_SIZE});
    Ok(r)
}

async fn temp_stream(
    js: &jetstream::Context,
    ctx: &Ctx,
    retention: stream::RetentionPolicy,
) -> anyhow::Result<(String, String)> {
    let id = unique();
    let name = format!("LOADTEST_RAW_{id}");
    let subject = format!("loadtest.raw.js.{id}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        retention,
        storage: stream::StorageType::File,
        num_replicas: ctx.deployment.replicas().count(),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create stream {name}"))?;
    Ok((name, subject))
}

/// Publishes `n` messages with up to `window` acks outstanding; returns (acked, failed).
async fn publish_pipelined(
    js: &jetstream::Context,
    subject: &str,
    n: u64,
    window: usize,
    progress: &Progress,
) -> anyhow::Result<(u64, u64)> {
    let p = payload();
    let mut pending = FuturesUnordered::new();
    let (mut acked, mut failed) = (0u64, 0u64);
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
        let ack = js.publish_with_headers(subject.to_owned(), headers, p.clone()).await?;
        pending.push(std::future::IntoFuture::into_future(ack));
        while pending.len() >= window {
            if let Some(r) = pending.next().await {
                if r.is_ok() {
                    acked += 1
                } else {
                    failed += 1
                }
                progress.add(1);
            }
        }
    }
    while let Some(r) = pending.next().await {
        if r.is_ok() {
            acked += 1
        } else {
            failed += 1
        }
        progress.add(1);
    }
    Ok((acked, failed))
}

async fn js_publish(ctx: &Ctx, pipelined: bool) -> anyhow::Result<ScenarioReport> {
    let name = if pipelined { "raw.js_publish_async" } else { "raw.js_publish_sync" };
    let n = if pipelined { ctx.size(name, 300_000, 10_000) } else { ctx.size(name, 20_000, 1_000) };
    let client = ctx.deployment.connect("raw-js").await?;
    let js = jetstream::new(client);
    let (stream_name, subject) = temp_stream(&js, ctx, stream::RetentionPolicy::Limits).await?;
    let progress = Progress::start(name, n);
    let m = ctx.begin();
    let mut lat = Latency::new();
    let (acked, failed) = if pipelined {
        publish_pipelined(&js, &subject, n, 1024, &progress).await?
    } else {
        let p = payload();
        let (mut acked, mut failed) = (0, 0);
        for i in 0..n {
            let t = Instant::now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
            match js.publish_with_headers(subject.clone(), headers, p.clone()).await {
                Ok(f) => match f.await {
                    Ok(_) => {
                        acked += 1;
                        lat.record_since(t);
                    }
                    Err(_) => failed += 1,
                },
                Err(_) => failed += 1,
            }
            progress.add(1);
        }
        (acked, failed)
    };
    progress.finish();
    let mut r = m.finish(
        name,
        if pipelined {
            "JetStream publish with up to 1024 acks outstanding, file storage, dedupe ids"
        } else {
            "JetStream publish, waiting for each ack, file storage, dedupe ids"
        },
        acked,
        if pipelined { None } else { Some(&lat) },
    );
    let stored = js.get_stream(&stream_name).await?.info().await?.state.messages;
    r.errors = failed;
    r.lost = acked.saturating_sub(stored);
    r.duplicates = stored.saturating_sub(n);
    r.params = json!({"messages": n, "payload_bytes": PAYLOAD_SIZE, "window": if pipelined { 1024 } else { 1 }});
    js.delete_stream(&stream_name).await?;
    Ok(r)
}

async fn js_pull_consume(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let name = "raw.js_pull_consume_ack";
    let n = ctx.size(name, 300_000, 10_000);
    let client = ctx.deployment.connect("raw-consume").await?;
    let js = jetstream::new(client);
    let (stream_name, subject) = temp_stream(&js, ctx, stream::RetentionPolicy::WorkQueue).await?;
    let fill = Progress::start("raw.js_pull_consume_ack fill", n);
    let (acked, _) = publish_pipelined(&js, &subject, n, 1024, &fill).await?;
    fill.finish();
    let stream = js.get_stream(&stream_name).await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let progress = Progress::start(name, n);
    let m = ctx.begin();
    let mut messages = consumer.stream().max_messages_per_batch(1000).messages().await?;
    let mut seen = std::collections::HashSet::with_capacity(usize::try_from(n).unwrap_or(0));
    let (mut got, mut dup, mut errors) = (0u64, 0u64, 0u64);
    while got < acked {
        let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(_))) => {
                errors += 1;
                continue;
            }
            _ => break,
        };
        let seq = msg.info().map(|i| i.stream_sequence).map_err(|e| anyhow!("bad message info: {e}"))?;
        if !seen.insert(seq) {
            dup += 1;
        }
        if msg.ack().await.is_err() {
            errors += 1;
        }
        got += 1;
        progress.add(1);
    }
    progress.finish();
    let mut r = m.finish(name, "work-queue pull consumer, batches of 1000, explicit ack per message", got, None);
    r.lost = acked.saturating_sub(seen.len() as u64);
    r.duplicates = dup;
    r.errors = errors;
    r.params = json!({"messages": n, "batch": 1000});
    drop(messages);
    js.delete_stream(&stream_name).await?;
    Ok(r)
}

async fn kv_ops(ctx: &Ctx, cas: bool) -> anyhow::Result<ScenarioReport> {
    let name = if cas { "raw.kv_cas" } else { "raw.kv_put" };
    let n = ctx.size(name, 100_000, 4_000);
    let workers = 32u64;
    let client = ctx.deployment.connect("raw-kv").await?;
    let js = jetstream::new(client);
    let bucket = format!("loadtest_raw_{}", unique());
    let store = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            num_replicas: ctx.deployment.replicas().count(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let progress = Progress::start(name, n);
    let errors = Arc::new(AtomicU64::new(0));
    let m = ctx.begin();
    let lat = run_workers(n, workers, |w, count| {
        let (store, errors, progress) = (store.clone(), errors.clone(), progress.clone());
        async move {
            let mut lat = Latency::new();
            let key = format!("k{w}");
            let mut revision = 0u64;
            for i in 0..count {
                let t = Instant::now();
                let value: Bytes = format!("{i}").into();
                let r = if cas {
                    if revision == 0 {
                        store.create(&key, value).await.map_err(|e| e.to_string())
                    } else {
                        store.update(&key, value, revision).await.map_err(|e| e.to_string())
                    }
                } else {
                    store.put(&key, value).await.map_err(|e| e.to_string())
                };
                match r {
                    Ok(rev) => {
                        revision = rev;
                        lat.record_since(t);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress.add(1);
            }
            lat
        }
    })
    .await?;
    progress.finish();
    let desc = if cas {
        "KV compare-and-set (update at the last revision), 32 writers each on its own key"
    } else {
        "KV put, 32 concurrent writers"
    };
    let mut r = m.finish(name, desc, lat.count(), Some(&lat));
    r.errors = errors.load(Ordering::Relaxed);
    r.params = json!({"operations": n, "concurrency": workers});
    js.delete_key_value(&bucket).await?;
    Ok(r)
}
