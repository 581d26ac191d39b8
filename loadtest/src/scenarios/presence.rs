//! `presence`: simulated hosts heartbeating against one hub (`steward server`: connector and the
//! other hub roles). Measures, in steady state, the CPU of nats-server and of the hub process
//! and their memory per host; then cuts a batch of hosts off at once (they stop heartbeating
//! without the clean `leaving` heartbeat, as when a site's link drops) and measures how long
//! the connector takes to report each of them offline.
//!
//! Sizes (`--set` names): `presence.hosts`, `presence.interval_ms`, `presence.steady_secs`,
//! `presence.cut`, `presence.connections` (shared; one per host with `--conn-per-host`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use steward_deploy::wait::eventually;
use steward_subjects::api::host::{ConnectorStats, Heartbeat, HostEvent, HostEventKind, HostFacts};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::{AccountId, HostId, Subjects};

use crate::env::HubProcess;
use crate::measure::Latency;
use crate::procstat::rss_bytes;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "presence",
    about: "10,000 hosts heartbeating every 10 s against one hub: hub CPU and memory per host, time to detect 1,000 hosts going offline at once",
    run: |ctx| run(ctx).boxed(),
};

struct SimHost {
    subject: String,
    payload: Bytes,
    cut: AtomicBool,
}

fn heartbeat(i: u64, interval: Duration) -> Heartbeat {
    Heartbeat {
        host_id: format!("sim-{i:05}"),
        labels: BTreeMap::from([
            ("sim".to_owned(), "true".to_owned()),
            ("zone".to_owned(), format!("z{}", i % 8)),
            ("env".to_owned(), if i % 3 == 0 { "prod" } else { "dev" }.to_owned()),
        ]),
        agent_version: steward_subjects::STEWARD_VERSION.to_owned(),
        facts: HostFacts { hostname: format!("sim-{i:05}.example"), os: "linux".into(), arch: "x86_64".into() },
        workers: BTreeMap::from([("command".to_owned(), steward_subjects::STEWARD_VERSION.to_owned())]),
        available_workers: BTreeMap::from([
            ("command".to_owned(), steward_subjects::STEWARD_VERSION.to_owned()),
            ("playbook".to_owned(), steward_subjects::STEWARD_VERSION.to_owned()),
        ]),
        draining: false,
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        seq: 1,
        incarnation: 1,
        leaving: false,
    }
}

async fn stats(client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<ConnectorStats> {
    Ok(rpc::request(client, subjects.host_stats(), &(), Duration::from_secs(5)).await?)
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let hosts = ctx.size("presence.hosts", 10_000, 300);
    let sizes = Sizes {
        hosts,
        interval: Duration::from_millis(ctx.size("presence.interval_ms", 10_000, 1_000)),
        steady: Duration::from_secs(ctx.size("presence.steady_secs", 60, 5)),
        cut: ctx.size("presence.cut", 1_000, 50).min(hosts),
        connections: if ctx.options.conn_per_host {
            hosts
        } else {
            ctx.size("presence.connections", 20, 4).clamp(1, hosts.max(1))
        },
    };
    let account = AccountId::parse(&ctx.options.account).context("bad account")?;
    let subjects = Subjects::new(account.clone());

    let hub = HubProcess::start(&ctx.deployment, account.as_str(), &["server"]).await?;
    let hub_pid = hub.pid().context("hub process has no pid")?;
    ctx.track_hub(hub_pid);
    let result = measure(ctx, &subjects, sizes, hub_pid).await;
    ctx.untrack_hub(hub_pid);
    drop(hub);
    result
}

/// The sizes of a presence run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    hosts: u64,
    interval: Duration,
    /// Length of the steady-state window.
    steady: Duration,
    /// Hosts cut off at once.
    cut: u64,
    connections: u64,
}

/// The simulated fleet: its hosts, the tasks publishing their heartbeats, and their counters.
struct Fleet {
    hosts: Vec<Arc<SimHost>>,
    published: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Resident memory of the hub and of nats-server at one moment.
#[derive(Debug, Clone, Copy)]
struct Rss {
    hub: u64,
    nats: u64,
}

impl Rss {
    fn now(hub_pid: u32, nats_pids: &[u32]) -> Self {
        let rss = |pids: &[u32]| pids.iter().filter_map(|p| rss_bytes(*p)).sum::<u64>();
        Rss { hub: rss(&[hub_pid]), nats: rss(nats_pids) }
    }
}

/// Connector counters that grew during the steady window.
#[derive(Debug, Clone, Copy)]
struct SteadyCounts {
    heartbeats: u64,
    registry_writes: u64,
}

async fn measure(ctx: &Ctx, subjects: &Subjects, sizes: Sizes, hub_pid: u32) -> anyhow::Result<Vec<ScenarioReport>> {
    // Set-up: baseline figures, then the fleet heartbeating until every host is online.
    let observer = ctx.deployment.connect("presence-observer").await?;
    let before = stats(&observer, subjects).await.context("connector of the hub does not answer")?;
    let nats_pids = ctx.deployment.nats_pids();
    let rss0 = Rss::now(hub_pid, &nats_pids);
    let fleet = start_fleet(ctx, subjects, sizes).await?;
    let target_online = before.online + sizes.hosts;
    let ramp = wait_all_online(&observer, subjects, target_online, sizes.interval).await?;

    // Steady state.
    let (mut steady_report, counts) = measure_steady(ctx, &observer, subjects, &fleet, sizes.steady).await?;
    let rss1 = Rss::now(hub_pid, &nats_pids);
    let secs = steady_report.elapsed_secs.max(f64::EPSILON);
    let hub_cpu = steady_report.hub.map(|h| h.cpu_seconds / secs * 100.0);
    let nats_cpu = steady_report.nats.map(|h| h.cpu_seconds / secs * 100.0);
    let per_host = |after: u64, before: u64| (after.saturating_sub(before) as f64) / (sizes.hosts as f64);
    // Offered load is fixed (hosts / interval), so this ratio says how much of the raw core
    // publish ceiling the heartbeat load uses, not a capacity.
    ctx.compare(&mut steady_report, "raw.core_pub_sub").await?;
    steady_report.params = json!({
        "hosts": sizes.hosts, "interval_ms": sizes.interval.as_millis() as u64, "steady_secs": sizes.steady.as_secs(),
        "connections": sizes.connections,
    });
    steady_report.extra = json!({
        "ramp_secs": ramp.as_secs_f64(),
        "hub_cpu_percent_of_one_core": hub_cpu,
        "nats_cpu_percent_of_one_core": nats_cpu,
        "hub_rss_bytes_per_host": per_host(rss1.hub, rss0.hub),
        "nats_rss_bytes_per_host": per_host(rss1.nats, rss0.nats),
        "connector_heartbeats": counts.heartbeats,
        "registry_writes": counts.registry_writes,
        "target": "hub cpu under 25% of one core",
    });

    // Mass offline, then stop the fleet.
    let (offline_report, all_detected) =
        measure_mass_offline(ctx, &observer, subjects, &fleet.hosts, sizes, target_online).await?;
    fleet.stop.store(true, Ordering::Relaxed);
    for t in fleet.tasks {
        let _ = t.await;
    }
    let (detected, cut_n) = (offline_report.operations, sizes.cut);
    if detected < cut_n {
        bail!("only {detected} of {cut_n} cut hosts were reported offline within {:?}", all_detected);
    }
    Ok(vec![steady_report, offline_report])
}

/// Builds the simulated hosts and starts publishing their heartbeats, spread over
/// `sizes.connections` connections.
async fn start_fleet(ctx: &Ctx, subjects: &Subjects, sizes: Sizes) -> anyhow::Result<Fleet> {
    let (n, conns, interval) = (sizes.hosts, sizes.connections, sizes.interval);
    let mut hosts = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let hb = heartbeat(i, interval);
        let host = HostId::parse(&hb.host_id)?;
        hosts.push(Arc::new(SimHost {
            subject: subjects.host_heartbeat(&host),
            payload: codec::encode(Encoding::MsgPack, &hb)?,
            cut: AtomicBool::new(false),
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let per_conn = n.div_ceil(conns);
    for c in 0..conns {
        let group: Vec<Arc<SimHost>> =
            hosts.iter().skip((c * per_conn) as usize).take(per_conn as usize).cloned().collect();
        if group.is_empty() {
            continue;
        }
        let client = ctx.deployment.connect(&format!("presence-{c}")).await?;
        // Each connection spreads its hosts evenly over the interval, so the hub sees a
        // steady n / interval heartbeats per second, as from independent hosts.
        let tick = interval / u32::try_from(group.len()).unwrap_or(u32::MAX);
        tasks.push(tokio::spawn(heartbeat_loop(client, group, tick, published.clone(), errors.clone(), stop.clone())));
    }
    Ok(Fleet { hosts, published, errors, stop, tasks })
}

/// Publishes the heartbeats of `group` in turn, one every `tick`, skipping hosts that are cut,
/// until `stop`.
async fn heartbeat_loop(
    client: async_nats::Client,
    group: Vec<Arc<SimHost>>,
    tick: Duration,
    published: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut ticker = tokio::time::interval(tick.max(Duration::from_micros(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let h = &group[i % group.len()];
        i += 1;
        if h.cut.load(Ordering::Relaxed) {
            continue;
        }
        match client.publish(h.subject.clone(), h.payload.clone()).await {
            Ok(()) => published.fetch_add(1, Ordering::Relaxed),
            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
        };
    }
    let _ = client.flush().await;
}

/// Ramp: waits until the connector counts `target_online` hosts online; returns how long it took.
async fn wait_all_online(
    observer: &async_nats::Client,
    subjects: &Subjects,
    target_online: u64,
    interval: Duration,
) -> anyhow::Result<Duration> {
    let ramp_started = Instant::now();
    eventually(interval * 3 + Duration::from_secs(30), Duration::from_millis(250), || async {
        let s = stats(observer, subjects).await.map_err(|e| e.to_string())?;
        if s.online >= target_online {
            Ok(())
        } else {
            Err(format!("{} of {target_online} hosts online", s.online))
        }
    })
    .await
    .context("simulated hosts did not all come online")?;
    Ok(ramp_started.elapsed())
}

/// The steady-state window: heartbeats published and counted by the connector over `steady`.
async fn measure_steady(
    ctx: &Ctx,
    observer: &async_nats::Client,
    subjects: &Subjects,
    fleet: &Fleet,
    steady: Duration,
) -> anyhow::Result<(ScenarioReport, SteadyCounts)> {
    let m = ctx.begin();
    let start_count = fleet.published.load(Ordering::Relaxed);
    let s0 = stats(observer, subjects).await?;
    tokio::time::sleep(steady).await; // the measurement window itself, not a wait for a condition
    let sent = fleet.published.load(Ordering::Relaxed) - start_count;
    // Heartbeats published inside the window may still be on their way to the connector when
    // the window closes: wait (bounded) until it has counted at least as many as were sent, so
    // `lost` counts only heartbeats that never arrived.
    let s1 = match eventually(Duration::from_secs(10), Duration::from_millis(50), || async {
        let s = stats(observer, subjects).await.map_err(|e| e.to_string())?;
        if s.heartbeats - s0.heartbeats >= sent {
            Ok(s)
        } else {
            Err(format!("{} of {sent} heartbeats counted", s.heartbeats - s0.heartbeats))
        }
    })
    .await
    {
        Ok(s) => s,
        Err(_) => stats(observer, subjects).await?,
    };
    let mut report = m.finish(
        "presence.steady",
        "simulated hosts heartbeating against one hub: heartbeats per second, hub and nats-server CPU and memory",
        sent,
        None,
    );
    report.errors = fleet.errors.load(Ordering::Relaxed) + (s1.malformed - s0.malformed);
    report.lost = sent.saturating_sub(s1.heartbeats - s0.heartbeats);
    let counts = SteadyCounts {
        heartbeats: s1.heartbeats - s0.heartbeats,
        registry_writes: s1.registry_writes - s0.registry_writes,
    };
    Ok((report, counts))
}

/// Mass offline: cuts the first `sizes.cut` hosts at once and times each host's offline event.
/// Returns the report and the time until the last one was detected (or the deadline passed).
async fn measure_mass_offline(
    ctx: &Ctx,
    observer: &async_nats::Client,
    subjects: &Subjects,
    hosts: &[Arc<SimHost>],
    sizes: Sizes,
    target_online: u64,
) -> anyhow::Result<(ScenarioReport, Duration)> {
    let (n, cut_n, interval) = (sizes.hosts, sizes.cut, sizes.interval);
    let mut events = observer.subscribe(subjects.host_event_all()).await?;
    observer.flush().await?;
    let cut_ids: HashSet<String> = (0..cut_n).map(|i| format!("sim-{i:05}")).collect();
    let m = ctx.begin();
    let cut_at = Instant::now();
    for h in hosts.iter().take(cut_n as usize) {
        h.cut.store(true, Ordering::Relaxed);
    }
    let mut latency = Latency::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + interval * 3 + Duration::from_secs(10);
    while seen.len() < cut_ids.len() {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, events.next()).await else { break };
        let Ok(e) = codec::decode::<HostEvent>(Encoding::MsgPack, &msg.payload) else { continue };
        if e.kind == HostEventKind::Offline && cut_ids.contains(&e.host_id) && seen.insert(e.host_id) {
            latency.record(cut_at.elapsed());
        }
    }
    let all_detected = cut_at.elapsed();
    let detected = seen.len() as u64;
    let mut report = m.finish(
        "presence.mass_offline",
        "a batch of hosts stops heartbeating at once: time until the connector reports each offline",
        detected,
        Some(&latency),
    );
    report.lost = cut_n - detected;
    let after = stats(observer, subjects).await?;
    let wrongly_offline = (target_online - cut_n).saturating_sub(after.online);
    report.errors = wrongly_offline;
    report.params = json!({"hosts": n, "cut": cut_n, "interval_ms": interval.as_millis() as u64});
    report.extra = json!({
        "all_detected_secs": all_detected.as_secs_f64(),
        "bound_secs": (interval * 2).as_secs_f64(),
        "hosts_still_online": after.online,
        "other_hosts_wrongly_offline": wrongly_offline,
    });
    Ok((report, all_detected))
}
