//! `telemetry`: stored results through the hub's result-derived components (alarm evaluation,
//! and telemetry history when the hub has it) at a fleet's pace: `telemetry.hosts` simulated
//! hosts × `telemetry.checks` checks, each reporting every `telemetry.interval_s` seconds
//! (10,000 × 10 every 10 s = 10,000 results/s), then the rate raised step by step
//! (`telemetry.steps`, results/s, comma-free list given as successive `--set telemetry.step_N`)
//! until the p99 from "result stored" to "alarm transition received" passes 1 s: the
//! saturation point.
//!
//! The results are stored the way the lease leader stores them (one segment per host and
//! round on `result.put.<host>.<runtime>`), so the measurement is what happens after storage;
//! the submit path in front of it is the `results` scenario. Every series' metric `v` flips
//! between breaching and not every `telemetry.flip_every` rounds (phases spread), and one rule
//! fires on `v > 0.5`: the scenario knows exactly which transitions must come, checks that each
//! came exactly once, and measures each one's latency from its segment's publish (the store
//! round trip included) to its arrival on the `alarm.event` subject (one clock).
//! Hub CPU per result comes from the hub process's CPU time over the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use steward_subjects::api::alarm::AlarmEvent;
use steward_subjects::api::config::{ApplyReply, ApplyRequest};
use steward_subjects::api::result::{ResultRecord, ResultSegment, ResultStatus, SEGMENT_HEADER};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, Provenance, SpecId, SpecTarget, TargetKind};
use steward_subjects::streams::{self, ALARM_EVENTS_STREAM, JOBSPECS_BUCKET, RESULTS_STREAM};
use steward_subjects::subject::{jobspec_key, kv_subject};
use steward_subjects::{rpc, AccountId, HostId, RuntimeId, Subjects, Token, TokenKind};

use super::unique;
use crate::env::HubProcess;
use crate::measure::Latency;
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "telemetry",
    about: "results through alarm evaluation (and history): result-to-transition p99 at 10k results/s, saturation rate, hub CPU per result, zero lost or repeated transitions",
    run: |ctx| run(ctx).boxed(),
};

const NAME: &str = "telemetry";
/// The p99 (result stored → transition) past which a step is saturated.
const SATURATED_P99: Duration = Duration::from_secs(1);
/// How long the scenario waits for the last transitions after a step.
const DRAIN: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
struct Sizes {
    hosts: u64,
    checks: u64,
    interval_s: u64,
    flip_every: u64,
    step_secs: u64,
}

impl Sizes {
    fn of(ctx: &Ctx) -> Self {
        Sizes {
            hosts: ctx.size("telemetry.hosts", 10_000, 200).max(1),
            checks: ctx.size("telemetry.checks", 10, 10).clamp(1, 100),
            interval_s: ctx.size("telemetry.interval_s", 10, 2).max(1),
            flip_every: ctx.size("telemetry.flip_every", 30, 3).max(1),
            step_secs: ctx.size("telemetry.step_secs", 60, 12).max(5),
        }
    }

    fn base_rate(&self) -> u64 {
        self.hosts * self.checks / self.interval_s
    }
}

/// Whether series (`host`, `check`) breaches in `round`: no series breaches in round 0, then
/// each starts at its own phase (spread over the first `2 × flip_every` rounds, so there is no
/// storm of first firings) and flips every `flip_every` rounds.
fn breaching(host: u64, check: u64, round: u64, flip_every: u64) -> bool {
    let phase = 1 + (host * 7 + check * 13) % (2 * flip_every);
    round >= phase && ((round - phase) / flip_every) % 2 == 0
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let sizes = Sizes::of(ctx);
    let account = AccountId::parse(&format!("{}-t-{}", ctx.options.account, unique()))?;
    let subjects = Subjects::new(account.clone());
    let setup = ctx.deployment.connect_in(account.as_str(), "telemetry-setup").await?;
    let js = jetstream::new(setup.clone());
    streams::ensure(&js, ctx.deployment.replicas()).await?;
    let hub = HubProcess::start(&ctx.deployment, account.as_str(), &["server"]).await?;
    let hub_pid = hub.pid().context("hub process has no pid")?;
    apply_rules(&setup, &subjects, sizes.checks).await?;
    let specs = write_specs(&js, &account, sizes).await?;
    // Let the evaluator take its lock, load the rules and see the specs.
    wait_for_evaluator(&setup, &subjects).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut steps: Vec<u64> = vec![sizes.base_rate()];
    for i in 1..=8 {
        if let Some(v) = ctx.options.overrides.get(&format!("telemetry.step_{i}")) {
            steps.push(*v);
        }
    }
    if steps.len() == 1 && !ctx.options.quick {
        steps.extend([15_000, 21_000, 28_000, 36_000]);
    }
    ctx.track_hub(hub_pid);
    let mut reports = Vec::new();
    let mut round0 = 0u64;
    let mut saturation = None;
    for (i, rate) in steps.iter().copied().enumerate() {
        let name = if i == 0 { format!("{NAME}.base") } else { format!("{NAME}.step_{rate}") };
        let (report, rounds, p99) = step(ctx, &setup, &subjects, &specs, sizes, rate, round0, &name).await?;
        round0 += rounds;
        let ok = p99.is_some_and(|p| p <= SATURATED_P99) && report.lost == 0 && report.duplicates == 0;
        reports.push(report);
        if ok {
            saturation = Some(rate);
        } else if i > 0 {
            break;
        }
    }
    ctx.untrack_hub(hub_pid);
    match query_day(ctx, &setup, &js, &account, &subjects).await {
        Ok(r) => reports.push(r),
        Err(e) => eprintln!("telemetry: the 24 h query measurement failed: {e:#}"),
    }
    if let Some(first) = reports.first_mut() {
        // The base rate against the raw JetStream publish ceiling of the same run: how much of
        // what this machine can store at all the fleet's results take.
        ctx.compare(first, "raw.js_publish_async").await?;
        let bytes = stream_bytes(&js).await;
        first.extra["saturation_results_per_sec"] = json!(saturation);
        first.extra["stream_bytes"] = json!(bytes);
    }
    drop(hub);
    cleanup(&js, &subjects, &account).await;
    Ok(reports)
}

async fn apply_rules(client: &async_nats::Client, subjects: &Subjects, checks: u64) -> anyhow::Result<()> {
    let attestations: Vec<_> =
        (0..checks).map(|c| json!({"id": format!("c{c}"), "assessment": "probe", "component": "nobody"})).collect();
    let doc = json!({
        "controls": [{"id": "k"}],
        "components": [{"id": "nobody", "selector": "loadtest-none=yes", "controls": ["k"]}],
        "assessments": [{"id": "probe", "executor": {"kind": "command", "argv": ["true"]}, "interval": "10s", "timeout": "5s"}],
        "attestations": attestations,
        "alarms": [{"id": "hot", "when": {"metric": "v", "op": "gt", "value": 0.5}}]
    });
    let req = ApplyRequest {
        document: doc.to_string(),
        label: "loadtest".into(),
        author: "loadtest".into(),
        if_revision: None,
    };
    let _: ApplyReply = rpc::request(client, subjects.config_apply(), &req, Duration::from_secs(60)).await?;
    Ok(())
}

/// Writes one host-bound spec per (host, check), as the renderer would; returns spec ids by
/// `[host][check]`.
async fn write_specs(js: &jetstream::Context, account: &AccountId, s: Sizes) -> anyhow::Result<Vec<Vec<String>>> {
    let progress = Progress::start(&format!("{NAME} specs"), s.hosts * s.checks);
    let mut out = Vec::new();
    let mut pending = FuturesUnordered::new();
    for h in 0..s.hosts {
        let host = Token::parse(TokenKind::Name, &format!("lt-h-{h}"))?;
        let mut row = Vec::new();
        for c in 0..s.checks {
            let check = format!("c{c}");
            let id = SpecId::derive(account.as_str(), &check, TargetKind::Host, host.as_str());
            let spec = JobSpec {
                id: id.to_string(),
                account: account.to_string(),
                target: SpecTarget { kind: TargetKind::Host, id: host.to_string() },
                executor: Executor::Command(CommandExecutor { argv: vec!["true".into()], ..Default::default() }),
                interval_ms: s.interval_s * 1000,
                timeout_ms: 5000,
                content_hash: format!("{:032x}", h * 1000 + c),
                provenance: Provenance {
                    revision: 1,
                    attestation: check.clone(),
                    assessment: "probe".into(),
                    component: "nobody".into(),
                    ..Default::default()
                },
                ..JobSpec::default()
            };
            let subject = kv_subject(JOBSPECS_BUCKET, &jobspec_key(account, TargetKind::Host, &host, &id));
            let ack =
                js.publish_with_headers(subject, HeaderMap::new(), codec::encode(Encoding::MsgPack, &spec)?).await?;
            pending.push(std::future::IntoFuture::into_future(ack));
            row.push(id.to_string());
            while pending.len() >= 1024 {
                if let Some(r) = pending.next().await {
                    r.context("spec write not acknowledged")?;
                    progress.add(1);
                }
            }
        }
        out.push(row);
    }
    while let Some(r) = pending.next().await {
        r.context("spec write not acknowledged")?;
        progress.add(1);
    }
    progress.finish();
    Ok(out)
}

async fn wait_for_evaluator(client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<()> {
    let req = steward_subjects::api::alarm::ListAlarmsRequest::default();
    steward_deploy::wait::eventually(Duration::from_secs(60), Duration::from_millis(200), || async {
        rpc::request::<_, steward_subjects::api::alarm::ListAlarmsReply>(
            client,
            subjects.alarm_request(steward_subjects::subject::alarm_verb::LIST),
            &req,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())
    })
    .await
    .context("the alarm service did not answer")?;
    Ok(())
}

/// When each segment was published, by `<host>:<round>`.
type Acked = Arc<Mutex<HashMap<String, Instant>>>;

/// What the listener saw: latencies, deliveries per (alarm, cause), transitions received.
type Received = Arc<Mutex<(Latency, HashMap<String, u64>, u64)>>;

/// One step at `rate` results/s for `step_secs`; returns the report, the rounds it sent and
/// the p99 of result-to-transition.
#[allow(clippy::too_many_arguments)]
async fn step(
    ctx: &Ctx,
    client: &async_nats::Client,
    subjects: &Subjects,
    specs: &[Vec<String>],
    s: Sizes,
    rate: u64,
    round0: u64,
    name: &str,
) -> anyhow::Result<(ScenarioReport, u64, Option<Duration>)> {
    let js = jetstream::new(client.clone());
    let acked: Acked = Arc::default();
    let received: Received = Arc::new(Mutex::new((Latency::new(), HashMap::new(), 0)));
    // Transitions arrive on the alarm's event subject as they are stored.
    let mut events = client.subscribe(subjects.alarm_events_all()).await?;
    let (a2, r2) = (acked.clone(), received.clone());
    let listener = tokio::spawn(async move {
        while let Some(msg) = events.next().await {
            let now = Instant::now();
            let Ok(ev) = codec::decode::<AlarmEvent>(Encoding::MsgPack, &msg.payload) else { continue };
            let Some(cause) = ev.cause else { continue };
            // The result's seq is its round + 1 (see below).
            let round = cause.key.rsplit(':').next().and_then(|q| q.parse::<u64>().ok()).unwrap_or(0).saturating_sub(1);
            let sent = a2.lock().ok().and_then(|m| m.get(&format!("{}:{round}", ev.alarm.host)).copied());
            let mut r = r2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(t) = sent {
                r.0.record(now.saturating_duration_since(t));
            }
            *r.1.entry(format!("{}:{}", ev.alarm.id, cause.key)).or_insert(0) += 1;
            r.2 += 1;
        }
    });
    let hosts = s.hosts;
    // Rounds at `rate`: one round = every host reporting every check once.
    let per_round = hosts * s.checks;
    let round_time = Duration::from_secs_f64(per_round as f64 / rate as f64);
    let rounds = (s.step_secs as f64 / round_time.as_secs_f64()).ceil().max(1.0) as u64;
    let progress = Progress::start(name, rounds * per_round);
    let m = ctx.begin();
    let mut expected = 0u64;
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    for k in 0..rounds {
        let round = round0 + k;
        // Spread the round's hosts evenly over its time.
        for h in 0..hosts {
            let due = start + round_time.mul_f64(k as f64 + h as f64 / hosts as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let host = format!("lt-h-{h}");
            let mut results = Vec::with_capacity(specs[0].len());
            for (c, spec) in specs[usize::try_from(h).unwrap_or(0)].iter().enumerate() {
                let c = c as u64;
                let now_b = breaching(h, c, round, s.flip_every);
                let before = round > 0 && breaching(h, c, round - 1, s.flip_every);
                if now_b != before {
                    expected += 1;
                }
                results.push(ResultRecord {
                    spec: spec.clone(),
                    epoch: 1,
                    seq: round + 1,
                    runtime: host.clone(),
                    host: host.clone(),
                    executor: "command".into(),
                    ended_at_ms: now_ms(),
                    status: ResultStatus::Pass,
                    metrics: [("v".to_owned(), if now_b { 1.0 } else { 0.0 })].into_iter().collect(),
                    ..ResultRecord::default()
                });
            }
            let n = results.len();
            let payload = codec::encode(Encoding::MsgPack, &ResultSegment { results })?;
            let mut headers = HeaderMap::new();
            headers.insert(SEGMENT_HEADER, n.to_string().as_str());
            let subject = subjects.result_put(&HostId::parse(&host)?, &RuntimeId::parse(&host)?);
            if let Ok(mut m) = acked.lock() {
                m.insert(format!("{host}:{round}"), Instant::now());
            }
            let ack = js.publish_with_headers(subject, headers, payload).await?;
            pending.push(async move {
                ack.await?;
                anyhow::Ok(())
            });
            while pending.len() >= 2048 {
                if let Some(r) = pending.next().await {
                    r?;
                }
            }
            progress.add(n as u64);
        }
        while let Some(r) = pending.next().await {
            r?;
        }
    }
    progress.finish();
    let sent = rounds * per_round;
    // Wait until the evaluator has taken every result in (its consumer has nothing pending or
    // unacknowledged) and the transitions stopped coming, or until DRAIN passes with no
    // progress at all.
    let mut last = (0, u64::MAX);
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = received.lock().map(|r| r.2).unwrap_or(0);
        let backlog = evaluator_backlog(&js, subjects).await;
        if got >= expected && backlog == 0 {
            break;
        }
        if (got, backlog) != last {
            idle_since = Instant::now();
            last = (got, backlog);
        } else if idle_since.elapsed() > DRAIN {
            break;
        }
    }
    let mut report = m.finish(
        name,
        &format!(
            "{hosts} hosts x {} checks at {rate} results/s for {rounds} rounds; one alarm rule on every check",
            s.checks
        ),
        sent,
        None,
    );
    listener.abort();
    let (latency, per_series, got) = {
        let r = received.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (r.0.clone(), r.1.clone(), r.2)
    };
    report.latency = (latency.count() > 0).then(|| latency.summary());
    report.duplicates = per_series.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    report.lost = expected.saturating_sub(per_series.len() as u64);
    report.ops_per_sec = sent as f64 / report.elapsed_secs;
    let cpu = report.hub.as_ref().map(|h| h.cpu_seconds);
    report.params =
        json!({"hosts": hosts, "checks": s.checks, "rate": rate, "rounds": rounds, "flip_every": s.flip_every});
    report.extra = json!({
        "transitions_expected": expected,
        "transitions_received": got,
        "hub_cpu_ms_per_result": cpu.map(|c| c * 1000.0 / sent as f64),
    });
    let p99 = report.latency.as_ref().map(|l| Duration::from_secs_f64(l.p99_us / 1e6));
    Ok((report, rounds, p99))
}

/// Results the hub's alarm evaluator has not acknowledged yet (pending + unacknowledged).
async fn evaluator_backlog(js: &jetstream::Context, subjects: &Subjects) -> u64 {
    let name = format!("alarms-{}", subjects.account());
    let Ok(stream) = js.get_stream_no_info(RESULTS_STREAM).await else { return u64::MAX };
    match stream.consumer_info(&name).await {
        Ok(info) => info.num_pending + info.num_ack_pending as u64,
        Err(_) => u64::MAX,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A day of one series (one result every 10 s, ended over the last 24 h, stored in order),
/// then `telemetry.queries` queries of the whole day at a 1-minute step: their latency.
async fn query_day(
    ctx: &Ctx,
    client: &async_nats::Client,
    js: &jetstream::Context,
    account: &AccountId,
    subjects: &Subjects,
) -> anyhow::Result<ScenarioReport> {
    use steward_subjects::api::telemetry::{TelemetryQuery, TelemetryReply};
    const DAY_MS: u64 = 24 * 3600 * 1000;
    const EVERY_MS: u64 = 10_000;
    let host = Token::parse(TokenKind::Name, "lt-day")?;
    let id = SpecId::derive(account.as_str(), "c0", TargetKind::Host, host.as_str());
    let spec = JobSpec {
        id: id.to_string(),
        account: account.to_string(),
        target: SpecTarget { kind: TargetKind::Host, id: host.to_string() },
        executor: Executor::Command(CommandExecutor { argv: vec!["true".into()], ..Default::default() }),
        interval_ms: EVERY_MS,
        timeout_ms: 5000,
        content_hash: format!("{:032x}", u64::MAX),
        provenance: Provenance {
            revision: 1,
            attestation: "c0".into(),
            assessment: "probe".into(),
            ..Default::default()
        },
        ..JobSpec::default()
    };
    let subject = kv_subject(JOBSPECS_BUCKET, &jobspec_key(account, TargetKind::Host, &host, &id));
    js.publish(subject, codec::encode(Encoding::MsgPack, &spec)?).await?.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = now_ms();
    let start = now - DAY_MS;
    let n = DAY_MS / EVERY_MS;
    let put = subjects.result_put(&HostId::parse(host.as_str())?, &RuntimeId::parse(host.as_str())?);
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        let t = start + i * EVERY_MS;
        let r = ResultRecord {
            spec: id.to_string(),
            epoch: 1,
            seq: i + 1,
            runtime: host.to_string(),
            host: host.to_string(),
            executor: "command".into(),
            started_at_ms: t,
            ended_at_ms: t,
            status: ResultStatus::Pass,
            metrics: [("v".to_owned(), (i % 100) as f64)].into_iter().collect(),
            ..ResultRecord::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(SEGMENT_HEADER, "1");
        let payload = codec::encode(Encoding::MsgPack, &ResultSegment { results: vec![r] })?;
        let ack = js.publish_with_headers(put.clone(), headers, payload).await?;
        pending.push(std::future::IntoFuture::into_future(ack));
        while pending.len() >= 1024 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let q = TelemetryQuery {
        host: host.to_string(),
        check: "c0".into(),
        metric: Some("v".into()),
        from_ms: start,
        to_ms: now + 60_000,
        step_ms: 60_000,
    };
    // The writer has the whole day once the query counts every point.
    steward_deploy::wait::eventually(Duration::from_secs(300), Duration::from_secs(1), || async {
        let r: TelemetryReply = rpc::request(client, subjects.telemetry_query(), &q, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let count: u64 = r.metrics.iter().flat_map(|m| m.points.iter()).map(|p| p.count).sum();
        if count >= n {
            Ok(())
        } else {
            Err(format!("{count} of {n} points in history"))
        }
    })
    .await
    .context("history did not take the day in")?;
    let queries = ctx.size("telemetry.queries", 200, 20);
    let mut latency = Latency::new();
    let m = ctx.begin();
    for _ in 0..queries {
        let t = Instant::now();
        let r: TelemetryReply = rpc::request(client, subjects.telemetry_query(), &q, Duration::from_secs(10)).await?;
        latency.record_since(t);
        anyhow::ensure!(r.metrics.first().is_some_and(|m| m.points.len() >= 1440), "a day at 1 min has 1440 steps");
    }
    let mut report = m.finish(
        &format!("{NAME}.query_24h"),
        "telemetry.query of one series over 24 h at a 1-minute step (1440 steps from 8640 points), one at a time",
        queries,
        Some(&latency),
    );
    report.params = json!({"points": n, "step_ms": 60_000, "queries": queries});
    Ok(report)
}

/// Bytes of the streams the derived state lives in.
async fn stream_bytes(js: &jetstream::Context) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut names = js.stream_names();
    while let Some(Ok(name)) = names.next().await {
        if name == ALARM_EVENTS_STREAM || name == RESULTS_STREAM || name.starts_with("STEWARD_TELEMETRY") {
            if let Ok(mut s) = js.get_stream(&name).await {
                if let Ok(info) = s.info().await {
                    out.insert(name.clone(), json!({"bytes": info.state.bytes, "messages": info.state.messages}));
                }
            }
        }
    }
    serde_json::Value::Object(out)
}

async fn cleanup(js: &jetstream::Context, subjects: &Subjects, account: &AccountId) {
    if let Ok(s) = js.get_stream(RESULTS_STREAM).await {
        let _ = s.purge().filter(subjects.result_put_all()).await;
    }
    if let Ok(s) = js.get_stream(ALARM_EVENTS_STREAM).await {
        let _ = s.purge().filter(subjects.alarm_events_all()).await;
    }
    let _ = super::lease::purge_account(js, account).await;
}
