//! Fault scenario `overload`: ten times the presence load, and a hub that stops reading for a
//! while.
//!
//! The `presence` scenario's full size is 10,000 hosts heartbeating every 10 s (1,000
//! heartbeats/s). Here simulated hosts send ten times that rate (full: 10,000 hosts every 1 s)
//! to one hub (`steward server`, a real process). Two slow consumers, as a deployment meets
//! them:
//! - the hub process is frozen (SIGSTOP, then SIGCONT after `overload.pause_ms`): a VM paused
//!   or live-migrated, a host swapping, a process starved of CPU. Its connection stays open,
//!   so nats-server buffers the heartbeats meanwhile and delivers them on resume;
//! - a monitoring client subscribed to every heartbeat that never reads its socket (a hung
//!   dashboard): nats-server must cut it off as a slow consumer without the hub noticing.
//!
//! During the freeze a batch of hosts (`overload.cut`) stops heartbeating for good (the
//! control: they must still be reported offline). Every other host keeps heartbeating all
//! along, so every `offline` event for one of them is a host wrongly marked offline. The hub's
//! resident memory is sampled all run long ([`crate::procstat`]).
//!
//! Report: `acked` = heartbeats published, `stored` = heartbeats the connector counted, `lost`
//! = their difference; `recovery` = from SIGCONT until the connector has counted every
//! heartbeat published before it; wrongly-offline hosts, cut hosts detected, hub warnings and
//! memory (baseline, peak, end) in `extra`.
//!
//! Sizes (`--set`): `overload.hosts`, `overload.interval_ms`, `overload.connections`,
//! `overload.steady_secs`, `overload.pause_ms`, `overload.after_secs`, `overload.cut`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use serde_json::json;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::{ConnectorStats, Heartbeat, HostEvent, HostEventKind, HostFacts};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::{AccountId, HostId, Subjects};
use tokio::io::AsyncWriteExt as _;

use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};
use crate::procstat::rss_bytes;

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: "overload",
    about: "10x the presence load, the hub frozen (SIGSTOP) past the offline bound and a client that never reads: no host wrongly offline, hub memory bounded",
    run: |ctx| run(ctx).boxed(),
};

/// The sizes of a run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    hosts: u64,
    interval: Duration,
    connections: u64,
    steady: Duration,
    pause: Duration,
    after: Duration,
    cut: u64,
}

impl Sizes {
    fn of(ctx: &FaultCtx) -> Self {
        let hosts = ctx.size("overload.hosts", 10_000, 2_000).max(1);
        Sizes {
            hosts,
            interval: Duration::from_millis(ctx.size("overload.interval_ms", 1_000, 1_000).max(50)),
            connections: ctx.size("overload.connections", 20, 4).clamp(1, hosts),
            steady: Duration::from_secs(ctx.size("overload.steady_secs", 30, 5)),
            pause: Duration::from_millis(ctx.size("overload.pause_ms", 5_000, 3_000)),
            after: Duration::from_secs(ctx.size("overload.after_secs", 30, 10)),
            cut: ctx.size("overload.cut", 100, 20).min(hosts),
        }
    }
}

fn host_id(i: u64) -> String {
    format!("ovl-{i:06}")
}

fn heartbeat(i: u64, interval: Duration) -> Heartbeat {
    Heartbeat {
        host_id: host_id(i),
        labels: BTreeMap::from([("sim".to_owned(), "true".to_owned()), ("zone".to_owned(), format!("z{}", i % 8))]),
        agent_version: steward_subjects::STEWARD_VERSION.to_owned(),
        facts: HostFacts { hostname: format!("{}.example", host_id(i)), os: "linux".into(), arch: "x86_64".into() },
        workers: BTreeMap::from([("command".to_owned(), steward_subjects::STEWARD_VERSION.to_owned())]),
        available_workers: BTreeMap::from([("command".to_owned(), steward_subjects::STEWARD_VERSION.to_owned())]),
        draining: false,
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        seq: 1,
        incarnation: 1,
        leaving: false,
    }
}

struct SimHost {
    subject: String,
    payload: Bytes,
    cut: AtomicBool,
    /// When its last heartbeat was handed to the client (µs since the run started; 0: never).
    last_us: AtomicU64,
    /// Longest time between two of its heartbeats (µs): a host the harness itself could not
    /// keep on time (CPU starvation, a stalled connection) really was silent that long.
    max_gap_us: AtomicU64,
}

/// Publishes the heartbeats of `group` in turn, one every `tick`, skipping cut hosts.
async fn heartbeat_loop(
    client: async_nats::Client,
    group: Vec<Arc<SimHost>>,
    tick: Duration,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    base: Instant,
) {
    let mut ticker = tokio::time::interval(tick.max(Duration::from_micros(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let h = &group[i % group.len()];
        i += 1;
        if h.cut.load(Ordering::Relaxed) {
            continue;
        }
        if client.publish(h.subject.clone(), h.payload.clone()).await.is_ok() {
            published.fetch_add(1, Ordering::Relaxed);
            let now = u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX);
            let last = h.last_us.swap(now, Ordering::Relaxed);
            if last > 0 {
                h.max_gap_us.fetch_max(now.saturating_sub(last), Ordering::Relaxed);
            }
        }
    }
    let _ = client.flush().await;
}

async fn stats(client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<ConnectorStats> {
    Ok(rpc::request(client, subjects.host_stats(), &(), Duration::from_secs(5)).await?)
}

/// A client that subscribes to every heartbeat and never reads its socket. Answers the
/// socket, to be kept open until the end.
async fn stuck_subscriber(port: u16, subject: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"stuck-dashboard\"}}\r\nSUB {subject} 1\r\nPING\r\n"
    );
    sock.write_all(hello.as_bytes()).await?;
    Ok(sock)
}

/// RSS samples of one process: (seconds since start, bytes).
type Samples = Arc<Mutex<Vec<(f64, u64)>>>;

fn sample_rss(pid: u32, started: Instant, samples: Samples) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if let Some(rss) = rss_bytes(pid) {
                if let Ok(mut s) = samples.lock() {
                    s.push((started.elapsed().as_secs_f64(), rss));
                }
            }
        }
    })
}

#[allow(clippy::too_many_lines)]
async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let sizes = Sizes::of(ctx);
    let dir = ctx.dir.clone();
    std::fs::create_dir_all(&dir)?;
    if ctx.auth {
        eprintln!("overload: runs in open mode (the presence load, not authentication, is what is measured)");
    }
    let nats =
        NatsServer::single(ServerOptions { data_dir: Some(dir.join("nats")), ..ServerOptions::named("overload") })
            .await
            .context("cannot start nats-server")?;
    let url = nats.client_url();
    let connect = |name: &str| {
        async_nats::ConnectOptions::new()
            .name(name)
            .client_capacity(65_536)
            .subscription_capacity(1 << 20)
            .connect(url.clone())
    };
    let observer = connect("overload-observer").await?;
    let subjects = Subjects::new(AccountId::parse(AccountId::DEFAULT)?);
    let mut hub = StewardProc::start("hub", &dir, &["--nats".into(), url.clone(), "server".into()], &[])?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || async {
        stats(&observer, &subjects).await.map_err(|e| e.to_string())
    })
    .await
    .context("the hub's connector did not answer")?;
    let hub_pid = hub.pid().context("the hub has no pid")?;
    let started = Instant::now();
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = sample_rss(hub_pid, started, samples.clone());

    // Offline events, all run long.
    let mut events = observer.subscribe(subjects.host_event_all()).await?;
    observer.flush().await?;
    let offline: Arc<Mutex<Vec<(String, f64)>>> = Arc::new(Mutex::new(Vec::new()));
    let events_task = {
        let offline = offline.clone();
        tokio::spawn(async move {
            while let Some(msg) = events.next().await {
                let Ok(e) = codec::decode::<HostEvent>(Encoding::MsgPack, &msg.payload) else { continue };
                if e.kind == HostEventKind::Offline {
                    if let Ok(mut o) = offline.lock() {
                        o.push((e.host_id, started.elapsed().as_secs_f64()));
                    }
                }
            }
        })
    };

    // The fleet.
    let mut hosts = Vec::new();
    for i in 0..sizes.hosts {
        let hb = heartbeat(i, sizes.interval);
        hosts.push(Arc::new(SimHost {
            subject: subjects.host_heartbeat(&HostId::parse(&hb.host_id)?),
            payload: codec::encode(Encoding::MsgPack, &hb)?,
            cut: AtomicBool::new(false),
            last_us: AtomicU64::new(0),
            max_gap_us: AtomicU64::new(0),
        }));
    }
    let s0 = stats(&observer, &subjects).await?;
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let per_conn = sizes.hosts.div_ceil(sizes.connections);
    for c in 0..sizes.connections {
        let group: Vec<Arc<SimHost>> =
            hosts.iter().skip((c * per_conn) as usize).take(per_conn as usize).cloned().collect();
        if group.is_empty() {
            continue;
        }
        let client = connect(&format!("overload-fleet-{c}")).await?;
        let tick = sizes.interval / u32::try_from(group.len()).unwrap_or(u32::MAX);
        tasks.push(tokio::spawn(heartbeat_loop(client, group, tick, published.clone(), stop.clone(), started)));
    }
    eventually(sizes.interval * 3 + Duration::from_secs(60), Duration::from_millis(250), || async {
        let s = stats(&observer, &subjects).await.map_err(|e| e.to_string())?;
        if s.online >= sizes.hosts {
            Ok(())
        } else {
            Err(format!("{} of {} hosts online", s.online, sizes.hosts))
        }
    })
    .await
    .context("the simulated hosts did not all come online")?;
    let ramp_secs = started.elapsed().as_secs_f64();
    let stuck = stuck_subscriber(nats.port(), &subjects.host_heartbeat_all()).await?;
    let stuck_at = started.elapsed().as_secs_f64();
    let baseline_rss = rss_bytes(hub_pid).unwrap_or(0);

    // Steady state at 10x, then the freeze.
    tokio::time::sleep(sizes.steady).await; // the steady window itself
    let offline_before_pause = offline.lock().map(|o| o.len()).unwrap_or(0);
    let published_at_pause = published.load(Ordering::Relaxed);
    hub.pause()?;
    let paused_at = started.elapsed().as_secs_f64();
    for h in hosts.iter().take(sizes.cut as usize) {
        h.cut.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(sizes.pause).await; // the freeze itself
    let published_at_resume = published.load(Ordering::Relaxed);
    hub.resume()?;
    let resumed = Instant::now();
    let resumed_at = started.elapsed().as_secs_f64();
    let caught_up = eventually(Duration::from_secs(120), Duration::from_millis(100), || async {
        let s = stats(&observer, &subjects).await.map_err(|e| e.to_string())?;
        let counted = s.heartbeats - s0.heartbeats;
        if counted >= published_at_resume {
            Ok(())
        } else {
            Err(format!("{counted} of {published_at_resume} heartbeats counted"))
        }
    })
    .await;
    let recovery_ms = caught_up.is_ok().then(|| resumed.elapsed().as_secs_f64() * 1000.0);
    let after_left = sizes.after.saturating_sub(resumed.elapsed());
    tokio::time::sleep(after_left).await; // the window after the freeze

    // Stop the fleet (offline events from here on are the fleet's end, not the fault's); let
    // the connector count what is on its way.
    let online_before_stop = stats(&observer, &subjects).await?.online;
    let fleet_stopped_at = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let sent = published.load(Ordering::Relaxed);
    let s1 = eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let s = stats(&observer, &subjects).await.map_err(|e| e.to_string())?;
        if s.heartbeats - s0.heartbeats >= sent {
            Ok(s)
        } else {
            Err(format!("{} of {sent} counted", s.heartbeats - s0.heartbeats))
        }
    })
    .await;
    let s1 = match s1 {
        Ok(s) => s,
        Err(_) => stats(&observer, &subjects).await?,
    };
    let end_rss = rss_bytes(hub_pid).unwrap_or(0);
    sampler.abort();
    drop(stuck);
    let hub_exited = hub.exited()?.map(|s| s.to_string());
    hub.stop(Duration::from_secs(5)).await;
    events_task.abort();

    // Verdict.
    let cut_ids: HashSet<String> = (0..sizes.cut).map(host_id).collect();
    let mut offline = std::mem::take(&mut *offline.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    offline.retain(|(_, at)| *at < fleet_stopped_at);
    // Hosts the harness itself left silent past the offline bound at some point (it shares the
    // machine's two cores): an offline event for one of them is not the hub's error.
    let bound_us = u64::try_from((sizes.interval.saturating_mul(3) / 2).as_micros()).unwrap_or(u64::MAX);
    let late: HashSet<String> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.max_gap_us.load(Ordering::Relaxed) > bound_us)
        .map(|(i, _)| host_id(i as u64))
        .filter(|h| !cut_ids.contains(h))
        .collect();
    let worst_gap_ms =
        hosts.iter().skip(sizes.cut as usize).map(|h| h.max_gap_us.load(Ordering::Relaxed)).max().unwrap_or(0) as f64
            / 1000.0;
    let late_offline: HashSet<&str> =
        offline.iter().filter(|(h, _)| late.contains(h)).map(|(h, _)| h.as_str()).collect();
    let mut wrongly: Vec<(String, f64)> =
        offline.iter().filter(|(h, _)| !cut_ids.contains(h) && !late.contains(h)).cloned().collect();
    wrongly.sort_by(|a, b| a.1.total_cmp(&b.1));
    let wrongly_hosts: HashSet<&str> = wrongly.iter().map(|(h, _)| h.as_str()).collect();
    let detected: HashSet<&str> =
        offline.iter().filter(|(h, _)| cut_ids.contains(h)).map(|(h, _)| h.as_str()).collect();
    let counted = s1.heartbeats - s0.heartbeats;
    let mut history: Vec<Event> = (0..sent).map(|i| Event::ItemAcked { key: format!("hb/{i}") }).collect();
    history.extend((0..counted.min(sent)).map(|i| Event::ItemStored { key: format!("hb/{i}") }));
    let mut check = checker::check(&history);
    check.examples.truncate(3);
    let hub_log = std::fs::read_to_string(hub.log_path()).unwrap_or_default();
    let warnings: Vec<&str> = hub_log.lines().filter(|l| l.contains("WARN")).collect();
    let lag_warnings: Vec<&str> = warnings
        .iter()
        .copied()
        .filter(|l| l.contains("stalled") || l.contains("behind") || l.contains("keep up"))
        .collect();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let peak = samples.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let still_online_expected = sizes.hosts - sizes.cut;
    let report = FaultReport {
        name: "overload".into(),
        fault: format!(
            "hub SIGSTOPped {:.1} s ({:.1}x the offline bound) with {} hosts cut meanwhile; a subscriber that never reads",
            sizes.pause.as_secs_f64(),
            sizes.pause.as_secs_f64() / (sizes.interval.as_secs_f64() * 1.5),
            sizes.cut
        ),
        load: format!(
            "{} hosts heartbeating every {} ms ({:.0}/s, 10x presence's 1,000/s) over {} connections",
            sizes.hosts,
            sizes.interval.as_millis(),
            sizes.hosts as f64 / sizes.interval.as_secs_f64(),
            sizes.connections
        ),
        load_during_fault_per_sec: (published_at_resume - published_at_pause) as f64
            / (resumed_at - paused_at).max(f64::EPSILON),
        acked: sent,
        stored: counted,
        check,
        recovery_ms,
        extra: json!({
            "recovery": "from SIGCONT until the connector counted every heartbeat published before it",
            "wrongly_offline_hosts": wrongly_hosts.len(),
            "hosts_the_harness_left_silent_past_the_bound": late.len(),
            "of_those_reported_offline": late_offline.len(),
            "harness_worst_heartbeat_gap_ms": worst_gap_ms,
            "stuck_subscriber_attached_at_secs": stuck_at,
            "wrongly_offline_examples": wrongly.iter().take(5).map(|(h, t)| format!("{h} at {t:.1} s")).collect::<Vec<_>>(),
            "cut_hosts_detected_offline": detected.len(),
            "cut_hosts": sizes.cut,
            "offline_events_before_pause": offline_before_pause,
            "hub_online_before_fleet_stop": online_before_stop,
            "hosts_really_online": still_online_expected,
            "paused_at_secs": paused_at,
            "resumed_at_secs": resumed_at,
            "ramp_secs": ramp_secs,
            "hub_rss_baseline_mib": mib(baseline_rss),
            "hub_rss_peak_mib": mib(peak),
            "hub_rss_end_mib": mib(end_rss),
            "hub_rss_growth_mib": mib(end_rss) - mib(baseline_rss),
            "hub_rss_samples": samples.len(),
            "hub_warnings": warnings.len(),
            "hub_lag_warnings": lag_warnings.iter().take(3).collect::<Vec<_>>(),
            "registry_write_errors": s1.registry_write_errors,
            "hub_exited": hub_exited,
        }),
        command: format!("steward-loadtest faults overload{}", if ctx.quick { " --quick" } else { "" }),
    };
    if let Some(how) = report.extra["hub_exited"].as_str() {
        bail!("the hub exited during the run ({how}); figures: {}", report.extra);
    }
    if detected.len() as u64 != sizes.cut {
        bail!("only {} of {} cut hosts were reported offline; figures: {}", detected.len(), sizes.cut, report.extra);
    }
    if !wrongly_hosts.is_empty() && lag_warnings.is_empty() {
        bail!(
            "{} hosts that kept heartbeating were marked offline and the hub gave no warning; figures: {}",
            wrongly_hosts.len(),
            report.extra
        );
    }
    Ok(report)
}
