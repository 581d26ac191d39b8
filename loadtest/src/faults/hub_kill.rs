//! Fault scenario `hub_kill`: the only `steward server` is SIGKILLed under lease, result and
//! dispatch load, then started again.
//!
//! The fleet ([`super::fleet`]): one nats-server, one `steward server` (signing key, lease TTL
//! `hub_kill.lease_ttl_secs`), `hub_kill.runtimes` real `steward runtime`s running
//! `hub_kill.checks` pool checks every second (each execution logged by the check itself),
//! `hub_kill.edges` real `steward edge`s receiving one run after another (`sh -c 'sleep 0.2'`,
//! dispatched with an idempotency key, re-sent unchanged while the hub is away), and
//! `hub_kill.submitters` simulated runtimes submitting `hub_kill.batch` results per request
//! (a batch that got no answer is re-sent unchanged, as a runtime's outbox does).
//!
//! Timeline: load for `hub_kill.before_secs`, SIGKILL the hub, `hub_kill.down_ms` later start
//! it again, measure recovery (until a submit is stored again and every real check is leased
//! live again), keep the load for `hub_kill.after_secs`, stop it, drain, judge: acknowledged
//! results all stored, none stored twice (real runtimes' results too, and their sequence
//! numbers per spec and epoch have no gap), no check executed by two runtimes at once, no epoch
//! granted twice, every accepted run ended.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::FutureExt as _;
use serde_json::json;
use steward_subjects::api::run::{Job, RunAccepted, RunRequest, RunStatusRequest, RunView};
use steward_subjects::rpc;
use steward_subjects::Subjects;

use super::fleet::{self, Fleet, JournalFollower, SimTally, REAL};
use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: "hub_kill",
    about: "SIGKILL the steward server under lease + result + dispatch load, restart it: nothing acked lost or stored twice, no double execution, every run ends",
    run: |ctx| run(ctx).boxed(),
};

/// What the run dispatchers saw.
#[derive(Debug, Default)]
struct RunTally {
    events: Vec<Event>,
    /// (ms since start) of each run seen ending.
    ended_at: Vec<u64>,
    dispatch_retries: u64,
}

#[allow(clippy::too_many_lines)]
async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let runtimes = ctx.size("hub_kill.runtimes", 4, 2);
    let checks = ctx.size("hub_kill.checks", 24, 6);
    let submitters = ctx.size("hub_kill.submitters", 8, 2);
    let edges = ctx.size("hub_kill.edges", 2, 1);
    let batch = usize::try_from(ctx.size("hub_kill.batch", 50, 20)).unwrap_or(20);
    let before = Duration::from_secs(ctx.size("hub_kill.before_secs", 15, 6));
    let down = Duration::from_millis(ctx.size("hub_kill.down_ms", 3000, 2000));
    let after = Duration::from_secs(ctx.size("hub_kill.after_secs", 20, 6));
    let ttl_secs = ctx.size("hub_kill.lease_ttl_secs", 15, 15);
    let (interval_ms, busy_ms) = (1000, 200);

    let fleet = Fleet::start(ctx, "hubkill").await?;
    let journal = JournalFollower::start(&fleet).await?;
    let ttl_arg = format!("{ttl_secs}s");
    let mut hub = fleet.start_hub("hub", &["--lease-ttl", &ttl_arg]).await?;
    fleet.wait_hub(Duration::from_secs(60)).await.with_context(|| hub.log_tail(20))?;
    fleet.apply(fleet::document(checks, submitters * 4, &fleet.exec_log, busy_ms, interval_ms)).await?;
    let mut procs: Vec<StewardProc> = Vec::new();
    for i in 0..runtimes {
        procs.push(fleet.start_runtime(&format!("rt-{i}"), REAL).await?);
    }
    let edge_names: Vec<String> = (0..edges).map(|i| format!("edge-{i}")).collect();
    for e in &edge_names {
        procs.push(fleet.start_edge(e).await?);
    }
    all_checks_leased(&fleet, checks, Duration::from_secs(60)).await.context("checks never all leased")?;

    // Load.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sims = Arc::new(Mutex::new(SimTally::default()));
    let runs = Arc::new(Mutex::new(RunTally::default()));
    let mut tasks = fleet::spawn_submitters(&fleet, submitters, batch, &sims, &stop_rx);
    for e in &edge_names {
        tasks.push(tokio::spawn(dispatcher(
            fleet.client.clone(),
            fleet.subjects.clone(),
            e.clone(),
            fleet.t0,
            runs.clone(),
            stop_rx.clone(),
        )));
    }
    let load_from = fleet.now_ms();
    tokio::time::sleep(before).await;

    // The fault.
    let pid = hub.pid().context("the hub is not running")?;
    let t_kill = fleet.now_ms();
    let kill_ns = fleet::wall_ns();
    hub.kill9().await?;
    let killed = !std::path::Path::new(&format!("/proc/{pid}")).exists();
    tokio::time::sleep(down).await;
    let t_restart = fleet.now_ms();
    hub.restart()?;
    let restart_at = Instant::now();

    // Recovery: a submit stored again, every check leased live again.
    let (mut submit_back, mut leases_back, mut healthy) = (None, None, None);
    while restart_at.elapsed() < Duration::from_secs(120) && (submit_back.is_none() || leases_back.is_none()) {
        if healthy.is_none() && fleet.wait_hub(Duration::ZERO).await.is_ok() {
            healthy = Some(fleet.now_ms() - t_restart);
        }
        if submit_back.is_none() {
            submit_back = sims.lock().ok().and_then(|t| t.first_ack_after(t_restart)).map(|t| t - t_restart);
        }
        if leases_back.is_none() && checks_leased(&fleet, checks).await {
            leases_back = Some(fleet.now_ms() - t_restart);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_recovered = t_restart + submit_back.unwrap_or(0).max(leases_back.unwrap_or(0));
    let recovered_ns = fleet::wall_ns();
    tokio::time::sleep(after).await;
    let load_to = fleet.now_ms();

    // Drain and judge.
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for p in &mut procs {
        p.stop(Duration::from_secs(5)).await;
    }
    hub.stop(Duration::from_secs(5)).await;
    let stored = fleet::read_results(&fleet).await?;
    let (execs, max_gap_ns, gap_at) = fleet::executions(&fleet.exec_log)?;
    let leases = fleet::journal_findings(&journal.entries());
    let sims = std::mem::take(&mut *sims.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let runs = std::mem::take(&mut *runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner));

    let mut history: Vec<Event> = sims.acked.iter().map(|k| Event::ItemAcked { key: k.clone() }).collect();
    history.extend(stored.sim_events.iter().cloned());
    history.extend(execs.iter().cloned());
    history.extend(leases.events.iter().cloned());
    history.extend(runs.events.iter().cloned());
    let mut check = checker::check(&history);
    check.duplicates += stored.real_duplicates;
    check.examples.extend(stored.examples.iter().cloned());
    check.examples.extend(leases.examples.iter().cloned());

    let exec_starts = |from: u64, to: u64| {
        execs.iter().filter(|e| matches!(e, Event::ExecStarted { at, .. } if *at >= from && *at < to)).count() as u64
    };
    let fault_ms = t_recovered.saturating_sub(t_kill).max(1);
    let acked_during = sims.acked_between(t_kill, t_recovered);
    let acked_before = sims.acked_between(load_from, t_kill);
    let acked_after = sims.acked_between(t_recovered, load_to);
    let runs_started = runs.events.iter().filter(|e| matches!(e, Event::RunStarted { .. })).count() as u64;
    let runs_ended_before = runs.ended_at.iter().filter(|t| **t < t_kill).count() as u64;
    let runs_ended_after = runs.ended_at.iter().filter(|t| **t >= t_recovered).count() as u64;
    let recovery_ms = match (submit_back, leases_back) {
        (Some(a), Some(b)) => Some(a.max(b) as f64),
        _ => None,
    };
    Ok(FaultReport {
        name: "hub_kill".into(),
        fault: format!("steward server SIGKILLed after {}s of load, restarted {} ms later", before.as_secs(), down.as_millis()),
        load: format!(
            "{submitters} simulated submitters x {batch} results/request every 100 ms, {runtimes} runtimes x {checks} checks/s, {edges} edges receiving runs back to back"
        ),
        load_during_fault_per_sec: acked_during as f64 * 1000.0 / fault_ms as f64,
        acked: sims.acked.len() as u64,
        stored: stored.sim_events.len() as u64 + stored.real,
        check,
        recovery_ms,
        extra: json!({
            "auth": fleet.deployment.auth_mode(),
            "recovery": "from restart until a simulated submit was stored again and every check was leased live again (max of the two)",
            "hub_killed": killed,
            "hub_pid_killed": pid,
            "hub_healthy_again_ms": healthy,
            "submit_stored_again_ms": submit_back,
            "leader_lock_ttl_ms": 10_000,
            "why_recovery_takes_this_long": "the killed hub could not give its lease leader lock up: the restarted one waits for it to expire (leader lock TTL) before it serves leases and submits",
            "checks_leased_again_ms": leases_back,
            "lease_ttl_ms": ttl_secs * 1000,
            "down_ms": down.as_millis() as u64,
            "acked_before_fault": acked_before,
            "acked_during_fault": acked_during,
            "acked_after_fault": acked_after,
            "submit_stored_replies": sims.stored_replies,
            "submit_duplicate_replies": sims.duplicate_replies,
            "submit_refused": sims.refused,
            "submit_unanswered": sims.unanswered,
            "submit_first_error": sims.last_error,
            "real_results_stored": stored.real,
            "real_spec_epochs": stored.real_runs,
            "real_sequence_gaps": stored.real_gaps,
            "real_duplicates": stored.real_duplicates,
            "executions": execs.iter().filter(|e| matches!(e, Event::ExecStarted { .. })).count(),
            "executions_during_fault": exec_starts(kill_ns, recovered_ns),
            "longest_pause_between_executions_of_a_check_ms": max_gap_ns / 1_000_000,
            "longest_pause_started_ms_before_kill": i128::from(kill_ns / 1_000_000) - i128::from(gap_at / 1_000_000),
            "lease_grants": leases.grants,
            "epochs_not_growing": leases.epochs_not_growing,
            "leader_takeovers": leases.takeovers.len(),
            "runs_started": runs_started,
            "runs_ended_before_fault": runs_ended_before,
            "runs_ended_after_recovery": runs_ended_after,
            "dispatch_retries": runs.dispatch_retries,
        }),
        command: format!(
            "steward-loadtest faults hub_kill{}{}",
            if ctx.quick { " --quick" } else { "" },
            if ctx.auth { " --auth" } else { "" }
        ),
    })
}

/// Whether every check is leased live to a real runtime (as the lease leader lists them).
async fn checks_leased(fleet: &Fleet, checks: u64) -> bool {
    match fleet.live_leases().await {
        Ok(live) => live.values().filter(|h| h.starts_with("rt-")).count() as u64 >= checks,
        Err(_) => false,
    }
}

async fn all_checks_leased(fleet: &Fleet, checks: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !checks_leased(fleet, checks).await {
        if Instant::now() > deadline {
            anyhow::bail!("fewer than {checks} checks leased live after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Dispatches one short run after another to `host`: each is re-sent with its idempotency
/// key until accepted, then followed until it ends. After `stop`, follows the last run for at
/// most 60 s more (a run still not ended is reported by the checker).
async fn dispatcher(
    client: async_nats::Client,
    subjects: Subjects,
    host: String,
    t0: Instant,
    tally: Arc<Mutex<RunTally>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let timeout = Duration::from_secs(2);
    let mut n = 0u64;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        n += 1;
        let req = RunRequest {
            hosts: vec![host.clone()],
            job: Job::command(["sh", "-c", "sleep 0.2"]),
            timeout_ms: 20_000,
            idempotency_key: format!("hub-kill-{host}-{n}"),
            ..RunRequest::default()
        };
        let accepted = loop {
            match rpc::request::<_, RunAccepted>(&client, subjects.run_dispatch(), &req, timeout).await {
                Ok(a) => break Some(a),
                Err(_) if *stop.borrow() => break None,
                Err(_) => {
                    if let Ok(mut t) = tally.lock() {
                        t.dispatch_retries += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let Some(accepted) = accepted else { return };
        if let Ok(mut t) = tally.lock() {
            t.events.push(Event::RunStarted { run: accepted.run_id.clone() });
        }
        let status = RunStatusRequest { run_id: accepted.run_id.clone(), ..Default::default() };
        loop {
            if *stop.borrow() && stopped_at.is_none() {
                stopped_at = Some(Instant::now());
            }
            if stopped_at.is_some_and(|s| s.elapsed() > Duration::from_secs(60)) {
                return;
            }
            if let Ok(view) = rpc::request::<_, RunView>(&client, subjects.run_status(), &status, timeout).await {
                if view.run.status.is_terminal() {
                    if let Ok(mut t) = tally.lock() {
                        t.events.push(Event::RunEnded {
                            run: accepted.run_id.clone(),
                            state: view.run.status.as_str().to_owned(),
                        });
                        t.ended_at.push(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX));
                    }
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
