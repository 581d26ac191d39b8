//! Fault scenario `node_loss`: a 3-node JetStream cluster loses the node that leads the results
//! stream and the lease journal (SIGKILL) under load, and gets it back later.
//!
//! Set-up: a 3-node cluster (open mode: the harness's JWT setup is single-node only), Steward's
//! streams at R3, two `steward server --replicas 3` processes connected with all three URLs, each
//! serving two tenant accounts: `nl`, whose configuration document gives `checks` pool specs to
//! `runtimes` real `steward runtime` processes (each check logs its own executions, see
//! [`super::exec_log`]), and `nlsim`, whose specs are leased by simulated runtimes that submit
//! results in batches through `result.submit` (as `loadtest/src/scenarios/results.rs` does) and
//! renew their leases every 3 s. A simulated submitter re-sends what was not acknowledged (a
//! failed request or `retry` outcomes) from the same head, as a runtime's outbox does, and
//! records every attempt with its time and outcome.
//!
//! The fault: the node leading `STEWARD_RESULTS` is found from stream info; when another node
//! leads `STEWARD_LEASE_JOURNAL`, a leader step-down with that node as preferred moves it there
//! first (both leaders on one node). That node is SIGKILLed, load keeps running, and after a
//! while it is restarted; the scenario waits until it is current again on both streams.
//!
//! Judged: acknowledged results never stored (lost), results stored twice (duplicates, of both
//! accounts), one check running in two runtimes at once (double executions), hub processes
//! still running, every check run again after the restart. Measured: the submit-failure window
//! per submitter (first failed submit to the first success after it, median and max), the
//! longest gap between two acknowledgements, and the time until the restarted node has caught
//! up (`recovery_ms`).
//!
//! Sizes (`--set`): `node_loss.submitters`, `node_loss.specs` (per submitter),
//! `node_loss.batch`, `node_loss.pace_ms`, `node_loss.runtimes`, `node_loss.checks`,
//! `node_loss.warmup_s`, `node_loss.down_s`, `node_loss.after_s`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures::FutureExt as _;
use serde_json::json;
use steward_deploy::server::ServerOptions;
use steward_deploy::topology::Cluster;
use steward_deploy::wait::eventually;
use steward_subjects::api::lease::{
    LeaseReply, LeaseRequest, LeasesReply, LeasesRequest, RenewReply, RenewRequest, SpecEpoch,
};
use steward_subjects::api::result::{ResultRecord, ResultStatus, SubmitReply, SubmitRequest, SubmitStatus};
use steward_subjects::rpc;
use steward_subjects::streams::{self, Replicas, LEASE_JOURNAL_STREAM, RESULTS_STREAM};
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{AccountId, RuntimeId, Subjects};

use super::exec_log::{self, RUNTIME_ENV};
use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};
use crate::env::{signing_key, steward_binary};
use crate::scenarios::lease::write_specs;
use crate::scenarios::results::read_back;

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: NAME,
    about: "SIGKILL of the cluster node leading STEWARD_RESULTS and the lease journal under result, lease and check load, then its restart: 0 lost, 0 duplicates, 0 double executions; submit-failure window measured",
    run: |ctx| run(ctx).boxed(),
};

/// The scenario's name.
const NAME: &str = "node_loss";

/// Account of the real runtimes (configuration document, pool specs).
const ACCOUNT: &str = "nl";
/// Account of the simulated submitters (specs written straight to the store).
const SIM_ACCOUNT: &str = "nlsim";
/// Reply timeout of a simulated submit or renew (a runtime's hub call timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before re-sending what was not acknowledged.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often a simulated runtime renews its leases (a third of the 15 s TTL).
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a submitter keeps re-sending its last batch once the load stops.
const DRAIN: Duration = Duration::from_secs(30);
/// Check interval and duration of the real runtimes' checks.
const CHECK_INTERVAL: &str = "1s";
const CHECK_BUSY_MS: u64 = 200;
/// Longest wait for the set-up steps and for the restarted node to catch up.
const SETUP_WAIT: Duration = Duration::from_secs(120);

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    submitters: u64,
    specs: u64,
    batch: u64,
    pace_ms: u64,
    runtimes: u64,
    checks: u64,
    warmup: Duration,
    down: Duration,
    after: Duration,
}

impl Sizes {
    fn of(ctx: &FaultCtx) -> Self {
        Sizes {
            submitters: ctx.size("node_loss.submitters", 8, 4).max(1),
            specs: ctx.size("node_loss.specs", 4, 2).max(1),
            batch: ctx.size("node_loss.batch", 10, 10).clamp(1, 500),
            pace_ms: ctx.size("node_loss.pace_ms", 100, 100),
            runtimes: ctx.size("node_loss.runtimes", 3, 2).max(2),
            checks: ctx.size("node_loss.checks", 12, 6).max(1),
            warmup: Duration::from_secs(ctx.size("node_loss.warmup_s", 15, 6)),
            down: Duration::from_secs(ctx.size("node_loss.down_s", 20, 8)),
            after: Duration::from_secs(ctx.size("node_loss.after_s", 20, 8)),
        }
    }
}

async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let sizes = Sizes::of(ctx);
    let dir = &ctx.dir;
    let t0 = Instant::now();

    // The cluster and the streams at R3.
    let template = ServerOptions {
        data_dir: Some(dir.join("nats")),
        max_file_store: 8 * 1024 * 1024 * 1024,
        ..ServerOptions::named("nl")
    };
    let mut cluster = Cluster::start_with(3, template).await.context("cannot start a 3-node cluster")?;
    let urls = cluster.server_addrs().join(",");
    let setup = async_nats::connect(cluster.server_addrs()).await.context("cannot connect to the cluster")?;
    let js = jetstream::new(setup.clone());
    streams::ensure(&js, Replicas::Three).await.context("cannot create the R3 streams")?;

    // Two hub processes, each serving both accounts.
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    let secret = signing_key(&keys).await?;
    let public = keys.join("steward-signing.pub");
    let mut hubs = Vec::new();
    for i in 1..=2 {
        let args = strings(&["--nats", &urls, "server", "--replicas", "3", "--signing-key"])
            .into_iter()
            .chain([path(&secret)])
            .chain(strings(&["--tenant", ACCOUNT, "--tenant", SIM_ACCOUNT]))
            .collect::<Vec<_>>();
        hubs.push(StewardProc::start(&format!("hub-{i}"), dir, &args, &[])?);
    }

    // The simulated submitters' specs and leases.
    let sim = AccountId::parse(SIM_ACCOUNT)?;
    let sim_subjects = Subjects::new(sim.clone());
    let n_sim_specs = sizes.submitters * sizes.specs;
    write_specs(&js, &sim, n_sim_specs, "node_loss").await?;
    wait_specs_known(&setup, &sim_subjects, n_sim_specs).await?;
    let mut submitter_clients = Vec::new();
    let mut held = Vec::new();
    for r in 0..sizes.submitters {
        let client = async_nats::ConnectOptions::new()
            .name(format!("node-loss-submitter-{r}"))
            .connect(cluster.server_addrs())
            .await
            .context("cannot connect a submitter")?;
        held.push(lease_share(&client, &sim_subjects, r, sizes.specs).await?);
        submitter_clients.push(client);
    }

    // The real runtimes' checks: a configuration document of pool specs.
    let exec = dir.join("exec.log");
    let doc = dir.join("doc.json");
    std::fs::write(&doc, serde_json::to_vec_pretty(&document(&exec, sizes.checks))?)?;
    steward_cli(&urls, &["apply", "--label", "node-loss", "-f", &path(&doc)]).await?;
    let mut runtimes = Vec::new();
    for i in 1..=sizes.runtimes {
        let id = format!("rt-{i}");
        let args = strings(&["--nats", &urls, "--account", ACCOUNT, "runtime", "--id", &id, "--labels", "fault=nl"])
            .into_iter()
            .chain(["--trusted-key".to_owned(), path(&public), "--data".to_owned(), path(&dir.join(&id))])
            .collect::<Vec<_>>();
        runtimes.push(StewardProc::start(&id, dir, &args, &[(RUNTIME_ENV.to_owned(), id.clone())])?);
    }
    wait_checks_running(&exec, sizes.checks).await?;

    // Load.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut renewers = Vec::new();
    for (r, (client, specs)) in submitter_clients.iter().zip(held).enumerate() {
        let runtime = RuntimeId::parse(&format!("lt-nl-{r}"))?;
        tasks.push(tokio::spawn(submit_loop(
            client.clone(),
            sim_subjects.clone(),
            runtime.clone(),
            specs.clone(),
            sizes,
            stop_rx.clone(),
            t0,
        )));
        renewers.push(tokio::spawn(renew_loop(client.clone(), sim_subjects.clone(), runtime, specs, stop_rx.clone())));
    }
    tokio::time::sleep(sizes.warmup).await;

    // The fault: both leaders on one node, SIGKILLed.
    let before = leaders(&js).await?;
    let results_leader = before.get(RESULTS_STREAM).cloned().context("STEWARD_RESULTS has no leader")?;
    let moved = move_leader(&setup, &js, LEASE_JOURNAL_STREAM, &results_leader).await;
    let at_kill = leaders(&js).await?;
    let victim_name = at_kill.get(RESULTS_STREAM).cloned().context("STEWARD_RESULTS has no leader")?;
    let journal_leader = at_kill.get(LEASE_JOURNAL_STREAM).cloned().unwrap_or_default();
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.name() == victim_name)
        .with_context(|| format!("no node named {victim_name}"))?;
    let pid = cluster.node(victim)?.pid().unwrap_or(0);
    let kill_at = t0.elapsed();
    let status = cluster.kill_node(victim).await?.context("the leader node was not running")?;
    let killed_by = std::os::unix::process::ExitStatusExt::signal(&status);
    if killed_by != Some(9) {
        bail!("node {victim_name} (pid {pid}) ended with {status}, not SIGKILL");
    }
    tokio::time::sleep(sizes.down).await;
    let after_kill = leaders(&js).await.unwrap_or_default();

    // Back: restart, then wait until it is current on both streams.
    let restart_at = t0.elapsed();
    let restart_wall = wall_ns();
    cluster.restart_node(victim).await.context("the killed node did not come back")?;
    let healthy_ms = ms(t0.elapsed() - restart_at);
    wait_caught_up(&js, &victim_name).await?;
    let caught_up_ms = ms(t0.elapsed() - restart_at);
    tokio::time::sleep(sizes.after).await;
    let _ = stop_tx.send(true);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await?);
    }
    let mut renew = RenewTally::default();
    for t in renewers {
        renew.merge(&t.await?);
    }
    let end_at = t0.elapsed();

    // Every process must still be running; then the runtimes stop (releasing their specs).
    for h in &mut hubs {
        if let Some(status) = h.exited()? {
            bail!("{} exited during the fault ({status}):\n{}", h.name(), h.log_tail(30));
        }
    }
    for rt in &mut runtimes {
        if let Some(status) = rt.exited()? {
            bail!("{} exited during the fault ({status}):\n{}", rt.name(), rt.log_tail(30));
        }
    }
    for rt in &mut runtimes {
        rt.stop(Duration::from_secs(5)).await;
    }
    let takeovers: Vec<usize> = hubs.iter().map(|h| count_lines(h.log_path(), "lease state loaded; serving")).collect();
    let step_downs: Vec<usize> = hubs.iter().map(|h| count_lines(h.log_path(), "lease leader stepped down")).collect();
    for h in &mut hubs {
        h.stop(Duration::from_secs(5)).await;
    }

    // The history: acknowledged and stored results, executions.
    let mut history = Vec::new();
    for l in &logs {
        history.extend(l.acked.iter().map(|key| Event::ItemAcked { key: key.clone() }));
    }
    let acked: u64 = logs.iter().map(|l| l.acked.len() as u64).sum();
    let mut sim_history = Vec::new();
    let results = js.get_stream(RESULTS_STREAM).await?;
    let sim_stored = read_back(&results, &setup, &sim_subjects, &mut sim_history).await?;
    let stored_distinct = sim_history
        .iter()
        .filter_map(|e| match e {
            Event::ItemStored { key } => Some(key.as_str()),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len() as u64;
    history.extend(sim_history);
    let real_stored = read_back(&results, &setup, &Subjects::new(AccountId::parse(ACCOUNT)?), &mut history).await?;
    let execs = exec_log::read(&exec)?;
    let not_rerun = checks_not_run_since(&execs, sizes.checks, restart_wall);
    history.extend(execs.iter().cloned());
    let mut check = checker::check(&history);
    if !not_rerun.is_empty() {
        check.examples.push(format!("checks not run again after the restart: {not_rerun:?}"));
    }

    // Figures.
    let windows: Vec<Window> = logs.iter().flat_map(|l| l.windows(kill_at)).collect();
    let kill_windows: Vec<f64> = windows.iter().filter(|w| w.started < restart_at).map(|w| w.ms).collect();
    let restart_windows: Vec<f64> = windows.iter().filter(|w| w.started >= restart_at).map(|w| w.ms).collect();
    let per_submitter_kill: Vec<f64> = logs.iter().map(|l| l.failed_ms(kill_at, restart_at)).collect();
    let stalls: Vec<f64> = logs.iter().map(|l| l.longest_gap_ms(kill_at, end_at)).collect();
    let during = (restart_at - kill_at).as_secs_f64();
    let acked_during: u64 = logs.iter().map(|l| l.acked_between(kill_at, restart_at)).sum();
    let failed_attempts: u64 = logs.iter().map(|l| l.attempts.iter().filter(|a| !a.ok).count() as u64).sum();
    let refused: u64 = logs.iter().map(|l| l.refused).sum();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for l in &logs {
        for (k, v) in &l.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    if refused > 0 {
        check.examples.push(format!("{refused} submitted results were refused (lease lost?)"));
    }

    Ok(FaultReport {
        name: NAME.to_owned(),
        fault: format!(
            "SIGKILL of {victim_name} (leader of STEWARD_RESULTS and {}) at {:.0} s, restarted after {:.0} s",
            if journal_leader == victim_name { "STEWARD_LEASE_JOURNAL" } else { "not of the journal" },
            kill_at.as_secs_f64(),
            (restart_at - kill_at).as_secs_f64()
        ),
        load: format!(
            "{} simulated runtimes submitting {} results every {} ms and renewing every 3 s, {} steward runtimes x {} checks every {CHECK_INTERVAL}; 3-node cluster, R3, 2 hubs",
            sizes.submitters, sizes.batch, sizes.pace_ms, sizes.runtimes, sizes.checks
        ),
        load_during_fault_per_sec: if during > 0.0 { acked_during as f64 / during } else { 0.0 },
        acked,
        stored: stored_distinct,
        check,
        recovery_ms: Some(caught_up_ms),
        extra: json!({
            "recovery": "from the restart of the killed node until it is current (lag 0) on STEWARD_RESULTS and STEWARD_LEASE_JOURNAL",
            "restart_healthy_ms": healthy_ms,
            "caught_up_ms": caught_up_ms,
            "submit_failure_window_ms": {
                "what": "per failure episode after the kill: start of the first failed submit to the acknowledgement of the first successful one after it",
                "at_kill": stats(&kill_windows),
                "at_restart": stats(&restart_windows),
                "per_submitter_at_kill": stats(&per_submitter_kill),
                "submitters_with_failures_at_kill": per_submitter_kill.iter().filter(|w| **w > 0.0).count(),
            },
            "longest_ack_gap_ms": stats(&stalls),
            "failed_submits": failed_attempts,
            "submit_errors": errors,
            "refused_results": refused,
            "renewals": renew.json(),
            "leaders_before": before,
            "journal_leader_moved": moved,
            "leaders_at_kill": at_kill,
            "leaders_after_kill": after_kill,
            "killed_pid": pid,
            "stored_sim_results": sim_stored,
            "stored_runtime_results": real_stored,
            "executions": execs.iter().filter(|e| matches!(e, Event::ExecStarted { .. })).count(),
            "checks_not_run_after_restart": not_rerun,
            "lease_takeovers_per_hub": takeovers,
            "lease_step_downs_per_hub": step_downs,
        }),
        command: format!(
            "target/debug/steward-loadtest faults node_loss{}",
            if ctx.quick { " --quick" } else { "" }
        ),
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Lines of `file` containing `needle`.
fn count_lines(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

/// Median and max of `v` (ms), and how many.
fn stats(v: &[f64]) -> serde_json::Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"n": s.len(), "median": s[s.len() / 2].round(), "max": s[s.len() - 1].round()})
}

/// `steward <args>` once; fails with its stderr.
async fn steward_cli(urls: &str, args: &[&str]) -> anyhow::Result<()> {
    let bin = steward_binary()?;
    let out = tokio::process::Command::new(&bin)
        .args(["--nats", urls, "--account", ACCOUNT])
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("steward {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `checks` pool specs (pool `fault`, selector `fault=nl`), each running a logged check.
fn document(exec: &Path, checks: u64) -> serde_json::Value {
    let assessments: Vec<_> = (0..checks)
        .map(|i| {
            let name = format!("chk-{i}");
            json!({
                "id": name,
                "executor": {"kind": "command", "argv": exec_log::check_argv(exec, &name, CHECK_BUSY_MS)},
                "interval": CHECK_INTERVAL,
                "timeout": "1s",
            })
        })
        .collect();
    let attestations: Vec<_> = (0..checks)
        .map(|i| json!({"id": format!("att-{i}"), "assessment": format!("chk-{i}"), "component": "site", "controls": ["c1"], "pool": "fault"}))
        .collect();
    json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "site", "selector": "", "controls": ["c1"]}],
        "assessments": assessments,
        "attestations": attestations,
        "pools": [{"id": "fault", "selector": "fault=nl"}],
    })
}

/// Waits until the lease service of the account knows `n` specs.
async fn wait_specs_known(client: &async_nats::Client, subjects: &Subjects, n: u64) -> anyhow::Result<()> {
    eventually(SETUP_WAIT, Duration::from_millis(200), || async {
        let r: LeasesReply = rpc::request(
            client,
            subjects.jobspec_leases(),
            &LeasesRequest { limit: 1, ..Default::default() },
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        if r.specs >= n {
            Ok(())
        } else {
            Err(format!("lease service knows {} of {n} specs", r.specs))
        }
    })
    .await
    .context("the lease service did not load the simulated specs")
}

/// Waits until every check has run at least once.
async fn wait_checks_running(exec: &Path, checks: u64) -> anyhow::Result<()> {
    eventually(SETUP_WAIT, Duration::from_millis(500), || async {
        let events = exec_log::read(exec).map_err(|e| e.to_string())?;
        let ran: HashSet<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::ExecEnded { spec, .. } => Some(spec.as_str()),
                _ => None,
            })
            .collect();
        if ran.len() as u64 >= checks {
            Ok(())
        } else {
            Err(format!("{} of {checks} checks have run", ran.len()))
        }
    })
    .await
    .context("the runtimes did not run every check")
}

/// The checks (of `checks`) that did not start after `since_ns` (wall clock).
fn checks_not_run_since(execs: &[Event], checks: u64, since_ns: u64) -> Vec<String> {
    let ran: HashSet<&str> = execs
        .iter()
        .filter_map(|e| match e {
            Event::ExecStarted { spec, at, .. } if *at > since_ns => Some(spec.as_str()),
            _ => None,
        })
        .collect();
    (0..checks).map(|i| format!("chk-{i}")).filter(|c| !ran.contains(c.as_str())).collect()
}

/// Simulated runtime `r` leases its `n` specs; answers `(spec, epoch)`.
async fn lease_share(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: u64,
    n: u64,
) -> anyhow::Result<Vec<(String, u64)>> {
    let runtime = RuntimeId::parse(&format!("lt-nl-{r}"))?;
    let req =
        LeaseRequest { runtime: runtime.to_string(), max: u32::try_from(n).unwrap_or(u32::MAX), ..Default::default() };
    let subject = subjects.identity_subject(IdentityEndpoint::Lease, None, &runtime);
    let reply: LeaseReply = rpc::request(client, subject, &req, Duration::from_secs(10)).await?;
    if reply.granted.is_empty() {
        bail!("simulated runtime {r} was granted no spec");
    }
    Ok(reply.granted.into_iter().map(|g| (g.spec.id, g.epoch)).collect())
}

/// The leaders of Steward's streams (and the lease KV buckets), by stream name.
async fn leaders(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in [RESULTS_STREAM, LEASE_JOURNAL_STREAM, "KV_steward_leases", "KV_steward_jobspecs"] {
        let stream = js.get_stream(name).await.with_context(|| format!("no stream {name}"))?;
        if let Some(leader) = stream.cached_info().cluster.as_ref().and_then(|c| c.leader.clone()) {
            out.insert(name.to_owned(), leader);
        }
    }
    Ok(out)
}

/// Moves the leadership of `stream` to node `to` with step-down requests naming it as
/// preferred (nats-server 2.11+); a few attempts. Answers whether it had to move and did.
async fn move_leader(
    client: &async_nats::Client,
    js: &jetstream::Context,
    stream: &str,
    to: &str,
) -> serde_json::Value {
    let leader = |js: jetstream::Context| async move {
        js.get_stream(stream).await.ok().and_then(|s| s.cached_info().cluster.as_ref().and_then(|c| c.leader.clone()))
    };
    let from = leader(js.clone()).await.unwrap_or_default();
    if from == to {
        return json!({"needed": false});
    }
    let body = serde_json::to_vec(&json!({"placement": {"preferred": to}})).unwrap_or_default();
    for attempt in 1..=5 {
        let _ = client.request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"), body.clone().into()).await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if leader(js.clone()).await.as_deref() == Some(to) {
                return json!({"needed": true, "from": from, "moved": true, "attempts": attempt});
            }
        }
    }
    json!({"needed": true, "from": from, "moved": false})
}

/// Waits until node `name` is current, with no lag, on the results stream and the journal.
async fn wait_caught_up(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    eventually(SETUP_WAIT, Duration::from_millis(100), || async {
        for stream in [RESULTS_STREAM, LEASE_JOURNAL_STREAM] {
            let s = js.get_stream(stream).await.map_err(|e| format!("{stream}: {e}"))?;
            let cluster = s.cached_info().cluster.clone().unwrap_or_default();
            if cluster.leader.as_deref() == Some(name) {
                continue;
            }
            let peer = cluster.replicas.iter().find(|p| p.name == name);
            match peer {
                Some(p) if p.current && !p.offline && p.lag.unwrap_or(0) == 0 => {}
                Some(p) => return Err(format!("{name} on {stream}: current {} lag {:?}", p.current, p.lag)),
                None => return Err(format!("{name} is not a replica of {stream} yet")),
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("{name} did not catch up"))
}

/// One submit request and what came of it (times since the scenario started).
#[derive(Debug, Clone, Copy)]
struct Attempt {
    start: Duration,
    end: Duration,
    /// Every result acknowledged (stored or duplicate) and none to retry.
    ok: bool,
    /// Results acknowledged by this request.
    acked: u64,
}

/// A failure episode: from the start of a failed submit to the first success after it.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Duration,
    ms: f64,
}

/// What one simulated submitter saw.
#[derive(Debug, Default)]
struct SubmitLog {
    attempts: Vec<Attempt>,
    acked: Vec<String>,
    refused: u64,
    errors: HashMap<String, u64>,
}

impl SubmitLog {
    /// The failure episodes that ended after `from` (an episode never closed counts to the
    /// last attempt).
    fn windows(&self, from: Duration) -> Vec<Window> {
        let mut out = Vec::new();
        let mut open: Option<Duration> = None;
        for a in &self.attempts {
            if a.end < from {
                continue;
            }
            match (a.ok, open) {
                (false, None) => open = Some(a.start),
                (true, Some(s)) => {
                    out.push(Window { started: s, ms: ms(a.end.saturating_sub(s)) });
                    open = None;
                }
                _ => {}
            }
        }
        if let (Some(s), Some(last)) = (open, self.attempts.last()) {
            out.push(Window { started: s, ms: ms(last.end.saturating_sub(s)) });
        }
        out
    }

    /// This submitter's window at the kill: the first failure ending after `kill` (and
    /// starting before `restart`) to the first success after it; 0 without failures.
    fn failed_ms(&self, kill: Duration, restart: Duration) -> f64 {
        self.windows(kill).iter().find(|w| w.started < restart).map_or(0.0, |w| w.ms)
    }

    /// The longest time between two acknowledgements in `[from, to]` (ms).
    fn longest_gap_ms(&self, from: Duration, to: Duration) -> f64 {
        let mut last: Option<Duration> = None;
        let mut longest = Duration::ZERO;
        for a in self.attempts.iter().filter(|a| a.acked > 0) {
            if a.end < from {
                last = Some(a.end);
                continue;
            }
            if a.end > to {
                break;
            }
            if let Some(l) = last {
                longest = longest.max(a.end - l);
            }
            last = Some(a.end);
        }
        ms(longest)
    }

    /// Results acknowledged by requests that ended in `[from, to]`.
    fn acked_between(&self, from: Duration, to: Duration) -> u64 {
        self.attempts.iter().filter(|a| a.end >= from && a.end <= to).map(|a| a.acked).sum()
    }
}

/// One simulated runtime: submits `sizes.batch` results every `sizes.pace_ms` round-robin over
/// its specs; what is not acknowledged is sent again (same head) until it is. After `stop` it
/// finishes its pending batch (for at most [`DRAIN`]).
async fn submit_loop(
    client: async_nats::Client,
    subjects: Subjects,
    runtime: RuntimeId,
    specs: Vec<(String, u64)>,
    sizes: Sizes,
    stop: tokio::sync::watch::Receiver<bool>,
    t0: Instant,
) -> SubmitLog {
    let subject = subjects.identity_subject(IdentityEndpoint::Submit, None, &runtime);
    let mut log = SubmitLog::default();
    let mut seq: HashMap<String, u64> = HashMap::new();
    let mut i = 0usize;
    let mut pending: Vec<ResultRecord> = Vec::new();
    let mut stopped_at: Option<Instant> = None;
    // Numbered like a real runtime's outbox: one incarnation, positions from 1.
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let mut outbox = 0u64;
    loop {
        if *stop.borrow() {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if pending.is_empty() || at.elapsed() > DRAIN {
                break;
            }
        }
        if pending.is_empty() {
            pending = next_batch(&specs, &mut seq, &mut i, sizes.batch, runtime.as_str());
            for r in &mut pending {
                outbox += 1;
                r.outbox = outbox;
            }
        }
        let start = t0.elapsed();
        let req = SubmitRequest { results: pending.clone(), incarnation: incarnation.clone() };
        let reply = rpc::request::<_, SubmitReply>(&client, subject.clone(), &req, CALL_TIMEOUT).await;
        let end = t0.elapsed();
        let mut attempt = Attempt { start, end, ok: false, acked: 0 };
        match reply {
            Ok(reply) => {
                let outcomes: HashMap<String, (SubmitStatus, String)> =
                    reply.outcomes.into_iter().map(|o| (o.key, (o.status, o.reason))).collect();
                let mut retry = Vec::new();
                for r in pending.drain(..) {
                    let key = r.idempotency_key();
                    match outcomes.get(&key) {
                        Some((SubmitStatus::Stored | SubmitStatus::Duplicate, _)) => {
                            log.acked.push(key);
                            attempt.acked += 1;
                        }
                        Some((SubmitStatus::Refused, reason)) => {
                            log.refused += 1;
                            *log.errors.entry(format!("refused: {reason}")).or_default() += 1;
                        }
                        Some((SubmitStatus::Retry, reason)) => {
                            *log.errors.entry(format!("retry: {reason}")).or_default() += 1;
                            retry.push(r);
                        }
                        None => {
                            *log.errors.entry("no outcome".into()).or_default() += 1;
                            retry.push(r);
                        }
                    }
                }
                attempt.ok = retry.is_empty();
                pending = retry;
            }
            Err(e) => {
                *log.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
            }
        }
        log.attempts.push(attempt);
        let pause = if attempt.ok { Duration::from_millis(sizes.pace_ms) } else { RETRY_PAUSE };
        tokio::time::sleep(pause).await;
    }
    log
}

/// The next `take` results of `runtime`, round-robin over its specs, numbered per spec from 1.
fn next_batch(
    specs: &[(String, u64)],
    seq: &mut HashMap<String, u64>,
    i: &mut usize,
    take: u64,
    runtime: &str,
) -> Vec<ResultRecord> {
    (0..take)
        .map(|_| {
            let (spec, epoch) = &specs[*i % specs.len()];
            *i += 1;
            let s = seq.entry(spec.clone()).or_insert(0);
            *s += 1;
            ResultRecord {
                spec: spec.clone(),
                epoch: *epoch,
                seq: *s,
                runtime: runtime.to_owned(),
                host: runtime.to_owned(),
                executor: "command".into(),
                status: ResultStatus::Pass,
                message: "exit 0".into(),
                exit_code: Some(0),
                output: "ok\n".into(),
                ..ResultRecord::default()
            }
        })
        .collect()
}

/// Renewals of one simulated runtime.
#[derive(Debug, Default)]
struct RenewTally {
    ok: u64,
    failed: u64,
    refused: u64,
}

impl RenewTally {
    fn merge(&mut self, o: &RenewTally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.refused += o.refused;
    }

    fn json(&self) -> serde_json::Value {
        json!({"ok": self.ok, "failed": self.failed, "refused_specs": self.refused})
    }
}

/// Renews the simulated runtime's leases every [`RENEW_EVERY`] until `stop`.
async fn renew_loop(
    client: async_nats::Client,
    subjects: Subjects,
    runtime: RuntimeId,
    specs: Vec<(String, u64)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> RenewTally {
    let subject = subjects.identity_subject(IdentityEndpoint::Renew, None, &runtime);
    let req = RenewRequest {
        runtime: runtime.to_string(),
        held: specs.iter().map(|(spec, epoch)| SpecEpoch { spec: spec.clone(), epoch: *epoch }).collect(),
        ..Default::default()
    };
    let mut tally = RenewTally::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stop.changed() => return tally,
        }
        match rpc::request::<_, RenewReply>(&client, subject.clone(), &req, CALL_TIMEOUT).await {
            Ok(r) => {
                tally.ok += 1;
                tally.refused += r.refused.len() as u64;
            }
            Err(_) => tally.failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64, e: u64, ok: bool) -> Attempt {
        Attempt { start: Duration::from_millis(s), end: Duration::from_millis(e), ok, acked: u64::from(ok) }
    }

    #[test]
    fn a_failure_window_runs_from_the_first_failed_submit_to_the_first_success_after_it() {
        let log = SubmitLog {
            attempts: vec![at(0, 10, true), at(100, 2100, false), at(2200, 4200, false), at(4300, 4350, true)],
            ..SubmitLog::default()
        };
        let w = log.windows(Duration::from_millis(50));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].started, Duration::from_millis(100));
        assert!((w[0].ms - 4250.0).abs() < 1e-6, "{w:?}");
        assert!((log.failed_ms(Duration::from_millis(50), Duration::from_secs(60)) - 4250.0).abs() < 1e-6);
        assert!((log.longest_gap_ms(Duration::from_millis(50), Duration::from_secs(60)) - 4340.0).abs() < 1e-6);
    }

    #[test]
    fn a_submitter_without_failures_has_no_window() {
        let log = SubmitLog { attempts: vec![at(0, 10, true), at(100, 110, true)], ..SubmitLog::default() };
        assert!(log.windows(Duration::ZERO).is_empty());
        assert!(log.failed_ms(Duration::ZERO, Duration::from_secs(1)).abs() < 1e-9);
    }

    #[test]
    fn a_window_never_closed_lasts_until_the_last_attempt() {
        let log = SubmitLog {
            attempts: vec![at(0, 10, true), at(100, 200, false), at(300, 900, false)],
            ..SubmitLog::default()
        };
        let w = log.windows(Duration::ZERO);
        assert_eq!(w.len(), 1);
        assert!((w[0].ms - 800.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_check_not_started_after_the_restart_is_named() {
        let execs = vec![
            Event::ExecStarted { spec: "chk-0".into(), runtime: "rt-1".into(), at: 5 },
            Event::ExecStarted { spec: "chk-1".into(), runtime: "rt-1".into(), at: 20 },
        ];
        assert_eq!(checks_not_run_since(&execs, 2, 10), ["chk-0"]);
    }
}
