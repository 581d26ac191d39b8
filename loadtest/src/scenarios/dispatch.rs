//! `dispatch`: the dispatcher of a real `steward server` process against simulated hosts.
//!
//! - `dispatch.round_trip`: one trivial command on one host, serially: from the `run.dispatch`
//!   request until the host's run record shows `success` (dispatch → work order → host reply →
//!   `last` event stored → dispatcher consumer → compare-and-set of the host record), p50/p99.
//! - `dispatch.fanout`: one run to 10,000 simulated hosts: from the request until every host's
//!   record is `success`, and until the run record's aggregate says so.
//!
//! The simulated fleet is one connection subscribed to every host's work subject; each work
//! order is acknowledged and answered at once with a `last` event published to
//! `STEWARD_RUN_EVENTS` exactly as an edge does (with `Nats-Msg-Id`). Simulated hosts do not
//! check signatures (the hub runs without a signing key here). Compared with the raw
//! request/reply ceiling of the same run.

use std::collections::HashMap;
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
    WorkAck, WorkOrder,
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
    let mut work = client.subscribe(subjects.run_work_all()).await?;
    client.flush().await?;
    let js = jetstream::new(client.clone());
    Ok(tokio::spawn(async move {
        while let Some(m) = work.next().await {
            let Some(reply) = m.reply.clone() else { continue };
            let Ok(order) = codec::decode::<WorkOrder>(Encoding::MsgPack, &m.payload) else { continue };
            if order.host_id == ROUND_TRIP_HOST {
                let now = Instant::now();
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(order.run_id.clone())
                    .or_insert(now);
            }
            let ack = rpc::encode_reply(Encoding::MsgPack, Ok(WorkAck { accepted: true, ..WorkAck::default() }));
            let _ = client.publish_with_headers(reply, Encoding::MsgPack.headers(), ack).await;
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
    let mut watch = kv.watch(run_host_filter_all(&account)).await?;
    // Terminal host records seen, per run.
    let mut done: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::new();

    // Round trip on one host.
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
        let accepted: RunAccepted =
            rpc::request(&client, subjects.run_dispatch(), &req, Duration::from_secs(10)).await?;
        to_reply.record_since(started);
        loop {
            if done.get(&accepted.run_id).copied().unwrap_or(0) >= 1 {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), next_done(&mut watch, &mut done)).await {
                Ok(Ok(Some(h))) if h.run_id == accepted.run_id && h.status != RunStatus::Success => {
                    failed += 1;
                    break;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => bail!("host record watch ended"),
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("run {} not recorded within 10 s", accepted.run_id),
            }
        }
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
    ctx.compare(&mut r, "raw.request_reply_serial").await?;
    out.push(r);

    // Fan-out to many hosts.
    let hosts = ctx.size("dispatch.fanout", 10_000, 1_000);
    let req = RunRequest {
        hosts: (0..hosts).map(|i| format!("sim-{i:05}")).collect(),
        job: Job::command(["true"]),
        timeout_ms: 60_000,
        ..RunRequest::default()
    };
    let m = ctx.begin();
    let started = Instant::now();
    let accepted: RunAccepted = rpc::request(&client, subjects.run_dispatch(), &req, Duration::from_secs(60)).await?;
    let accepted_after = started.elapsed();
    while done.get(&accepted.run_id).copied().unwrap_or(0) < hosts {
        match tokio::time::timeout(Duration::from_secs(30), next_done(&mut watch, &mut done)).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("host record watch ended"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!(
                "fan-out stalled: {} of {hosts} host runs recorded",
                done.get(&accepted.run_id).copied().unwrap_or(0)
            ),
        }
    }
    let all_recorded = started.elapsed();
    let status_req = RunStatusRequest { run_id: accepted.run_id.clone(), host_limit: 1, ..RunStatusRequest::default() };
    let run: RunRecord = loop {
        let view: RunView = rpc::request(&client, subjects.run_status(), &status_req, Duration::from_secs(10)).await?;
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
    ctx.compare(&mut r, "raw.request_reply_concurrent").await?;
    out.push(r);

    out.push(command_path(ctx, &client, &subjects).await?);

    fleet.abort();
    if let Some(pid) = hub.pid() {
        ctx.untrack_hub(pid);
    }
    drop(hub);
    Ok(out)
}

/// `dispatch.command_path`: what delivering work orders as the connector's durable host
/// commands would cost (the dispatcher does not use it; the figures are the reason, see the
/// dispatcher's module docs). One host's durable consumer configured like an edge's: a command
/// published to `STEWARD_HOST_COMMANDS` (acknowledged by the stream) until the consumer holds
/// it, and until the host's double acknowledgement returns, serially, p50/p99; plus the time
/// to create durable consumers for many hosts (the simulated fleet would need one per host).
async fn command_path(ctx: &Ctx, client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<ScenarioReport> {
    let js = jetstream::new(client.clone());
    let host = HostId::parse("sim-cmd")?;
    let consumer_config = |host: &HostId| consumer::pull::Config {
        durable_name: Some(subjects.host_command_consumer(host)),
        filter_subject: subjects.host_command(host),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        inactive_threshold: Duration::from_secs(600),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer =
        js.create_consumer_on_stream(consumer_config(&host), HOST_COMMANDS_STREAM).await?;
    let mut messages =
        consumer.stream().heartbeat(Duration::from_secs(2)).expires(Duration::from_secs(10)).messages().await?;
    let n = ctx.size("dispatch.command_path", 1_000, 100);
    let (mut received, mut acked) = (Latency::new(), Latency::new());
    let m = ctx.begin();
    for i in 0..n {
        let cmd = HostCommand {
            command_id: format!("probe{i}"),
            host_id: host.to_string(),
            action: CommandAction::Ping,
            ..HostCommand::default()
        };
        let payload = codec::encode(Encoding::MsgPack, &cmd)?;
        let started = Instant::now();
        js.publish(subjects.host_command(&host), payload).await?.await?;
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("command not delivered within 10 s")?
            .context("command consumer ended")?
            .map_err(|e| anyhow::anyhow!("command consumer: {e}"))?;
        received.record_since(started);
        msg.double_ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        acked.record_since(started);
    }
    drop(messages);
    let mut r = m.finish(
        "dispatch.command_path",
        "probe: a host command published to the commands stream until one host's durable consumer holds it (latency) and until its double ack returns",
        n,
        Some(&received),
    );
    let _ = js.delete_consumer_from_stream(subjects.host_command_consumer(&host), HOST_COMMANDS_STREAM).await;

    // Durable consumers for a fleet, as the simulated hosts would need them.
    let fleet = ctx.size("dispatch.command_path_consumers", 1_000, 100);
    let started = Instant::now();
    let hosts: Vec<HostId> = (0..fleet).filter_map(|i| HostId::parse(&format!("sim-c{i:05}")).ok()).collect();
    let creates: Vec<_> = hosts
        .iter()
        .map(|h| {
            let js = js.clone();
            let config = consumer_config(h);
            async move {
                js.create_consumer_on_stream(config, HOST_COMMANDS_STREAM).await.map(|_: consumer::PullConsumer| ())
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(creates)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let created = started.elapsed();
    let deletes: Vec<_> = hosts
        .iter()
        .map(|h| {
            let js = js.clone();
            let name = subjects.host_command_consumer(h);
            async move {
                let _ = js.delete_consumer_from_stream(name, HOST_COMMANDS_STREAM).await;
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(deletes).buffer_unordered(64).collect::<Vec<()>>().await;
    r.params = json!({
        "commands": n,
        "until_double_ack": acked.summary(),
        "consumers_created": fleet,
        "consumers_created_ms": created.as_secs_f64() * 1e3,
    });
    ctx.compare(&mut r, "raw.request_reply_serial").await?;
    Ok(r)
}
