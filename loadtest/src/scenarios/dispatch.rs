//! `dispatch`: the dispatcher of a real `steward server` process against simulated hosts.
//!
//! - `dispatch.round_trip`: one trivial command on one host, serially: from the `run.dispatch`
//!   request until the host's run record shows `success` (dispatch → work order → host reply →
//!   `last` event stored → dispatcher consumer → compare-and-set of the host record), p50/p99.
//! - `dispatch.fanout`: one run to many simulated hosts: from the request until every host's
//!   record is `success`, and until the run record's aggregate says so.
//!
//! Work orders travel as the real ones do, as durable `run` host commands on
//! `STEWARD_HOST_COMMANDS`. The simulated fleet is one connection with one pull consumer on the
//! commands of every host; each work order is answered at once with a `last` event published to
//! `STEWARD_RUN_EVENTS` exactly as an edge does (with `Nats-Msg-Id`), then acknowledged.
//! Simulated hosts do not check signatures (the hub runs without a signing key here). Compared
//! with the raw request/reply ceiling of the same run.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use steward_subjects::api::host::{CommandAction, HostCommand};
use steward_subjects::api::run::{
    EventKind, HostRun, Job, RunAccepted, RunEvent, RunRecord, RunRequest, RunStatus, RunStatusRequest, RunView,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::streams::{HOST_COMMANDS_STREAM, RUNS_BUCKET};
use steward_subjects::subject::{run_event_msg_id, run_host_filter_all};
use steward_subjects::{AccountId, HostId, Subjects};

use crate::env::HubProcess;
use crate::measure::Latency;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "dispatch",
    about: "dispatcher: trivial command round trip on one host (p50/p99); one run fanned out to 10,000 simulated hosts",
    run: |ctx| run(ctx).boxed(),
};

/// When the simulated fleet received the work order of each run (first attempt), for the
/// round trip's breakdown.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// The host of the round-trip runs.
const ROUND_TRIP_HOST: &str = "sim-rt";

async fn sim_fleet(
    client: async_nats::Client,
    subjects: Subjects,
    arrivals: Arrivals,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let js = jetstream::new(client.clone());
    // One consumer reads the commands of every simulated host (a real host has its own durable
    // consumer, configured like this one but filtered to its subject).
    let config = consumer::pull::Config {
        filter_subject: subjects.host_command_all(),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 100_000,
        inactive_threshold: Duration::from_secs(120),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = js.create_consumer_on_stream(config, HOST_COMMANDS_STREAM).await?;
    let mut commands = consumer
        .stream()
        .max_messages_per_batch(1_000)
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(10))
        .messages()
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(m)) = commands.next().await {
            let Ok(cmd) = codec::decode::<HostCommand>(Encoding::MsgPack, &m.payload) else {
                let _ = m.ack_with(jetstream::AckKind::Term).await;
                continue;
            };
            let Some(order) = cmd.work.filter(|_| cmd.action == CommandAction::Run) else {
                let _ = m.ack().await;
                continue;
            };
            if order.host_id == ROUND_TRIP_HOST {
                let now = Instant::now();
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(order.run_id.clone())
                    .or_insert(now);
            }
            let Ok(host) = HostId::parse(&order.host_id) else { continue };
            let ev = RunEvent {
                run_id: order.run_id.clone(),
                host_id: order.host_id.clone(),
                attempt: order.attempt,
                seq: 1,
                kind: EventKind::Last,
                status: Some(RunStatus::Success),
                exit_code: Some(0),
                reason: "exit 0".into(),
                ..RunEvent::default()
            };
            let Ok(payload) = codec::encode(Encoding::MsgPack, &ev) else { continue };
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                run_event_msg_id(subjects.account(), &order.run_id, &host, order.attempt, 1).as_str(),
            );
            // Acknowledgements are not awaited one by one: the fleet pipelines like many hosts.
            let _ = js.publish_with_headers(subjects.run_event(&host), headers, payload).await;
            let _ = m.ack().await;
        }
    }))
}

/// The next terminal host record from the watch (counted per run in `done`).
async fn next_done(
    watch: &mut jetstream::kv::Watch,
    done: &mut HashMap<String, u64>,
) -> anyhow::Result<Option<HostRun>> {
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        if let Ok(h) = codec::decode::<HostRun>(Encoding::MsgPack, &entry.value) {
            if h.status.is_terminal() {
                *done.entry(h.run_id.clone()).or_insert(0) += 1;
                return Ok(Some(h));
            }
        }
    }
    Ok(None)
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    // Set-up: a hub, the simulated fleet, and a watch on the host run records.
    let account = AccountId::parse(&ctx.options.account)?;
    let subjects = Subjects::new(account.clone());
    let hub = HubProcess::start(&ctx.deployment, account.as_str(), &["server"]).await?;
    if let Some(pid) = hub.pid() {
        ctx.track_hub(pid);
    }
    let fleet_conn = ctx.deployment.connect("dispatch-fleet").await?;
    let arrivals = Arrivals::default();
    let fleet = sim_fleet(fleet_conn, subjects.clone(), arrivals.clone()).await?;
    let client = ctx.deployment.connect("dispatch-client").await?;
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(RUNS_BUCKET).await.context("runs bucket missing: is the hub up?")?;
    let mut records = Records { watch: kv.watch(run_host_filter_all(&account)).await?, done: HashMap::new() };
    let mut out = Vec::new();

    let mut r = round_trip(ctx, &client, &subjects, &mut records, &arrivals).await?;
    ctx.compare(&mut r, "raw.request_reply_serial").await?;
    out.push(r);

    let mut r = fanout(ctx, &client, &subjects, &mut records).await?;
    ctx.compare(&mut r, "raw.request_reply_concurrent").await?;
    out.push(r);

    out.push(flooded(ctx, &client, &subjects, &mut records).await?);

    fleet.abort();
    if let Some(pid) = hub.pid() {
        ctx.untrack_hub(pid);
    }
    drop(hub);
    Ok(out)
}

/// The watch on host run records and the terminal ones seen so far, per run.
struct Records {
    watch: jetstream::kv::Watch,
    done: HashMap<String, u64>,
}

impl Records {
    /// Terminal host records seen for `run_id`.
    fn done(&self, run_id: &str) -> u64 {
        self.done.get(run_id).copied().unwrap_or(0)
    }
}

/// Dispatches `req` (one host) and waits until its host record is terminal; whether it
/// succeeded. The request → reply time goes into `to_reply`.
async fn one_run(
    client: &async_nats::Client,
    subjects: &Subjects,
    records: &mut Records,
    req: &RunRequest,
    to_reply: &mut Latency,
) -> anyhow::Result<(RunAccepted, bool)> {
    let started = Instant::now();
    let accepted: RunAccepted = rpc::request(client, subjects.run_dispatch(), req, Duration::from_secs(10)).await?;
    to_reply.record_since(started);
    loop {
        if records.done(&accepted.run_id) >= 1 {
            return Ok((accepted, true));
        }
        match tokio::time::timeout(Duration::from_secs(30), next_done(&mut records.watch, &mut records.done)).await {
            Ok(Ok(Some(h))) if h.run_id == accepted.run_id && h.status != RunStatus::Success => {
                return Ok((accepted, false));
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("host record watch ended"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("run {} not recorded within 30 s", accepted.run_id),
        }
    }
}

/// The host that floods the events stream with events of runs the hub never created.
const FLOOD_HOST: &str = "sim-flood";

/// Publishes `count` job events of runs the hub never made (UUIDv7 ids dated a day ahead) as
/// host [`FLOOD_HOST`], waiting until the stream stored them all.
async fn flood(js: &jetstream::Context, subjects: &Subjects, count: u64) -> anyhow::Result<()> {
    let host = HostId::parse(FLOOD_HOST)?;
    let ahead = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let since = ahead.duration_since(std::time::UNIX_EPOCH)?;
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..count {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        let run_id = uuid::Uuid::new_v7(ts).simple().to_string();
        let ev = RunEvent {
            run_id: run_id.clone(),
            host_id: FLOOD_HOST.into(),
            attempt: 1,
            seq: 1,
            kind: EventKind::Last,
            ..RunEvent::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", run_event_msg_id(subjects.account(), &run_id, &host, 1, 1).as_str());
        let payload = codec::encode(Encoding::MsgPack, &ev)?;
        let ack = js.publish_with_headers(subjects.run_event(&host), headers, payload).await?;
        acks.push(ack.into_future());
        if acks.len() >= 4_096 || i + 1 == count {
            while let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    Ok(())
}

/// Another host's run right after a flood of bogus events landed ahead of its events on the
/// shared events stream: how much later than unflooded its record is written.
async fn flooded(
    ctx: &Ctx,
    client: &async_nats::Client,
    subjects: &Subjects,
    records: &mut Records,
) -> anyhow::Result<ScenarioReport> {
    let count = ctx.size("dispatch.flood", 100_000, 5_000);
    let rounds = ctx.size("dispatch.flood_rounds", 3, 1);
    let js = jetstream::new(client.clone());
    let req = RunRequest {
        hosts: vec![ROUND_TRIP_HOST.into()],
        job: Job::command(["true"]),
        timeout_ms: 30_000,
        ..RunRequest::default()
    };
    let (mut quiet, mut loud, mut replies) = (Latency::new(), Latency::new(), Latency::new());
    let mut failed = 0;
    let m = ctx.begin();
    for _ in 0..rounds {
        for _ in 0..20 {
            let started = Instant::now();
            failed += u64::from(!one_run(client, subjects, records, &req, &mut replies).await?.1);
            quiet.record_since(started);
        }
        flood(&js, subjects, count).await?;
        let started = Instant::now();
        failed += u64::from(!one_run(client, subjects, records, &req, &mut replies).await?.1);
        loud.record_since(started);
    }
    let mut r = m.finish(
        "dispatch.flooded",
        "another host's run right after one host published bogus run events: request until its record says success",
        rounds,
        Some(&loud),
    );
    r.errors = failed;
    let (q, l) = (quiet.summary(), loud.summary());
    r.params = json!({ "bogus_events_per_round": count, "rounds": rounds, "target_delay_ms": 1000 });
    r.extra = json!({
        "unflooded": q,
        "flooded": l,
        "delay_p50_ms": (l.p50_us - q.p50_us) / 1e3,
    });
    Ok(r)
}

/// Round trip on one host, serially, with the breakdown of where the time goes.
async fn round_trip(
    ctx: &Ctx,
    client: &async_nats::Client,
    subjects: &Subjects,
    records: &mut Records,
    arrivals: &Arrivals,
) -> anyhow::Result<ScenarioReport> {
    let n = ctx.size("dispatch.round_trip", 2_000, 200);
    let req = RunRequest {
        hosts: vec![ROUND_TRIP_HOST.into()],
        job: Job::command(["true"]),
        timeout_ms: 30_000,
        ..RunRequest::default()
    };
    let mut latency = Latency::new();
    // Where the time goes: request → reply, request → work order at the host, work order at
    // the host → host record recorded.
    let (mut to_reply, mut to_work, mut work_to_record) = (Latency::new(), Latency::new(), Latency::new());
    let mut failed = 0u64;
    let m = ctx.begin();
    for _ in 0..n {
        let started = Instant::now();
        let (accepted, ok) = one_run(client, subjects, records, &req, &mut to_reply).await?;
        failed += u64::from(!ok);
        let finished = Instant::now();
        latency.record(finished - started);
        let arrived = arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&accepted.run_id);
        if let Some(at) = arrived {
            to_work.record(at.saturating_duration_since(started));
            work_to_record.record(finished.saturating_duration_since(at));
        }
    }
    let mut r = m.finish(
        "dispatch.round_trip",
        "one trivial command on one simulated host, serial: request until the host's run record says success",
        n,
        Some(&latency),
    );
    r.errors = failed;
    r.params = json!({
        "runs": n,
        "target_p99_ms": 2.0,
        "breakdown": {
            "request_to_reply": to_reply.summary(),
            "request_to_work_at_host": to_work.summary(),
            "work_at_host_to_recorded": work_to_record.summary(),
        },
    });
    Ok(r)
}

/// One run fanned out to many hosts: until every host record is terminal, then until the run
/// record's aggregate is.
async fn fanout(
    ctx: &Ctx,
    client: &async_nats::Client,
    subjects: &Subjects,
    records: &mut Records,
) -> anyhow::Result<ScenarioReport> {
    let hosts = ctx.size("dispatch.fanout", 10_000, 1_000);
    let req = RunRequest {
        hosts: (0..hosts).map(|i| format!("sim-{i:05}")).collect(),
        job: Job::command(["true"]),
        timeout_ms: 60_000,
        ..RunRequest::default()
    };
    let m = ctx.begin();
    let started = Instant::now();
    let accepted: RunAccepted = rpc::request(client, subjects.run_dispatch(), &req, Duration::from_secs(60)).await?;
    let accepted_after = started.elapsed();
    while records.done(&accepted.run_id) < hosts {
        match tokio::time::timeout(Duration::from_secs(30), next_done(&mut records.watch, &mut records.done)).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("host record watch ended"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("fan-out stalled: {} of {hosts} host runs recorded", records.done(&accepted.run_id)),
        }
    }
    let all_recorded = started.elapsed();
    let status_req = RunStatusRequest { run_id: accepted.run_id.clone(), host_limit: 1, ..RunStatusRequest::default() };
    let run: RunRecord = loop {
        let view: RunView = rpc::request(client, subjects.run_status(), &status_req, Duration::from_secs(10)).await?;
        if view.run.status.is_terminal() || started.elapsed() > Duration::from_secs(60) {
            break view.run;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let aggregate = started.elapsed();
    let mut r = m.finish(
        "dispatch.fanout",
        "one run to many simulated hosts: request until every host's run record says success",
        hosts,
        None,
    );
    r.errors = hosts.saturating_sub(run.counts.success);
    r.params = json!({
        "hosts": hosts,
        "target_all_recorded_ms": 2000,
        "accepted_ms": accepted_after.as_secs_f64() * 1e3,
        "all_recorded_ms": all_recorded.as_secs_f64() * 1e3,
        "aggregate_success_ms": aggregate.as_secs_f64() * 1e3,
        "aggregate_status": run.status.as_str(),
    });
    Ok(r)
}
