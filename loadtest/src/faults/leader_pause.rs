//! Fault scenario `leader_pause`: the lease leader (one of two `steward server`s) is frozen with
//! SIGSTOP for longer than its leader-lock TTL while runtimes work, then resumed.
//!
//! Both hubs run with a short leader lock (`--leader-ttl`, `leader_pause.leader_ttl_ms`) and
//! lease TTL (`--lease-ttl`, `leader_pause.lease_ttl_ms`). The leader is the instance named by
//! the `<account>.leader` record of the `steward_leases` bucket; each hub logs its instance
//! when it takes the lock, which maps the record to a process. `leader_pause.runtimes` real
//! runtimes run `leader_pause.checks` logged checks every `leader_pause.interval_ms`, and
//! `leader_pause.submitters` simulated runtimes submit results through the leader.
//!
//! Judged: no check executed by two runtimes at once (exec logs), no epoch of a spec granted to
//! two holders and epochs only growing (lease journal, followed live), acknowledged results
//! stored once, and the old leader's writes refused once resumed: no journal entry of its
//! generation after the new leader's takeover entry, its own log saying it stepped down, and a
//! journal append made with its fence refused by JetStream (the harness sends one).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use async_nats::HeaderMap;
use futures::{FutureExt as _, StreamExt};
use serde_json::json;
use steward_subjects::api::lease::{LeaderRecord, LeaseJournalEntry};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{LEASES_BUCKET, LEASE_JOURNAL_STREAM};
use steward_subjects::subject::lease_leader_key;

use super::fleet::{self, Fleet, JournalFollower, SimTally, REAL};
use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: "leader_pause",
    about: "SIGSTOP the lease leader beyond its lock TTL while runtimes work, then resume it: no double execution, no two live holders, its writes refused",
    run: |ctx| run(ctx).boxed(),
};

#[allow(clippy::too_many_lines)]
async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let runtimes = ctx.size("leader_pause.runtimes", 4, 3);
    let checks = ctx.size("leader_pause.checks", 24, 6);
    let submitters = ctx.size("leader_pause.submitters", 4, 2);
    let batch = usize::try_from(ctx.size("leader_pause.batch", 50, 20)).unwrap_or(20);
    let leader_ttl_ms = ctx.size("leader_pause.leader_ttl_ms", 2000, 1500);
    let lease_ttl_ms = ctx.size("leader_pause.lease_ttl_ms", 4500, 3000);
    let pause_ms = ctx.size("leader_pause.pause_ms", 3 * leader_ttl_ms, 3 * leader_ttl_ms);
    let before = Duration::from_secs(ctx.size("leader_pause.before_secs", 10, 5));
    let after = Duration::from_secs(ctx.size("leader_pause.after_secs", 15, 6));
    let interval_ms = ctx.size("leader_pause.interval_ms", 1000, 1000);
    let busy_ms = 150;

    let fleet = Fleet::start(ctx, "leaderpause").await?;
    let journal = JournalFollower::start(&fleet).await?;
    let (leader_ttl, lease_ttl) = (format!("{leader_ttl_ms}ms"), format!("{lease_ttl_ms}ms"));
    let flags = ["--leader-ttl", leader_ttl.as_str(), "--lease-ttl", lease_ttl.as_str()];
    let mut hubs = vec![fleet.start_hub("hub-a", &flags).await?];
    fleet.wait_hub(Duration::from_secs(60)).await.with_context(|| hubs[0].log_tail(20))?;
    hubs.push(fleet.start_hub("hub-b", &flags).await?);
    fleet.apply(fleet::document(checks, submitters * 4, &fleet.exec_log, busy_ms, interval_ms)).await?;
    let mut procs: Vec<StewardProc> = Vec::new();
    for i in 0..runtimes {
        procs.push(fleet.start_runtime(&format!("rt-{i}"), REAL).await?);
    }
    wait_checks_leased(&fleet, checks).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sims = Arc::new(Mutex::new(SimTally::default()));
    let tasks = fleet::spawn_submitters(&fleet, submitters, batch, &sims, &stop_rx);
    let load_from = fleet.now_ms();
    tokio::time::sleep(before).await;

    // Which process leads.
    let js = jetstream::new(fleet.client.clone());
    let bucket = js.get_key_value(LEASES_BUCKET).await?;
    let key = lease_leader_key(&fleet.account);
    let old = leader_record(&bucket, &key).await?;
    let li = leader_process(&hubs, &old.instance)?;
    let leader_name = hubs[li].name().to_owned();
    let pid = hubs[li].pid().context("the leader is not running")?;

    // The fault: freeze it beyond its lock TTL.
    let t_pause = fleet.now_ms();
    let pause_ns = fleet::wall_ns();
    hubs[li].pause()?;
    let stopped = wait_state(pid, |s| s == 'T' || s == 't').await;
    let paused_at = Instant::now();
    let mut takeover_ms = None;
    let mut new = None;
    while paused_at.elapsed() < Duration::from_millis(pause_ms) {
        if new.is_none() {
            if let Ok(r) = leader_record(&bucket, &key).await {
                if r.instance != old.instance {
                    takeover_ms = Some(fleet.now_ms() - t_pause);
                    new = Some(r);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_resume = fleet.now_ms();
    let resume_ns = fleet::wall_ns();
    hubs[li].resume()?;
    let running_again = wait_state(pid, |s| s != 'T' && s != 't').await;
    if new.is_none() {
        // The takeover may land just after the pause ended: look once more, briefly.
        let until = Instant::now() + Duration::from_millis(2 * leader_ttl_ms);
        while new.is_none() && Instant::now() < until {
            if let Ok(r) = leader_record(&bucket, &key).await {
                if r.instance != old.instance {
                    takeover_ms = Some(fleet.now_ms() - t_pause);
                    new = Some(r);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Recovery: every check leased live again and a submit stored, after the resume.
    let resumed_at = Instant::now();
    let (mut leases_back, mut submit_back) = (None, None);
    while resumed_at.elapsed() < Duration::from_secs(60) && (leases_back.is_none() || submit_back.is_none()) {
        if submit_back.is_none() {
            submit_back = sims.lock().ok().and_then(|t| t.first_ack_after(t_resume)).map(|t| t - t_resume);
        }
        if leases_back.is_none() {
            if let Ok(live) = fleet.live_leases().await {
                if live.values().filter(|h| h.starts_with("rt-")).count() as u64 >= checks {
                    leases_back = Some(fleet.now_ms() - t_resume);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(after).await;
    let load_to = fleet.now_ms();
    let after_ns = fleet::wall_ns();

    // The old leader's fence no longer admits a write.
    let probe = fence_probe(&fleet, &old).await;

    // Drain and judge.
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for p in &mut procs {
        p.stop(Duration::from_secs(5)).await;
    }
    let old_log = strip_ansi(&std::fs::read_to_string(hubs[li].log_path()).unwrap_or_default());
    let step_downs: Vec<String> = old_log
        .lines()
        .filter(|l| l.contains("lease leader stepped down") && l.contains(&old.instance))
        .map(|l| l.split("error=").nth(1).unwrap_or(l).trim().to_owned())
        .collect();
    let refused_appends = step_downs.iter().filter(|l| l.contains("fenced")).count();
    for h in &mut hubs {
        h.stop(Duration::from_secs(5)).await;
    }
    let stored = fleet::read_results(&fleet).await?;
    let (execs, _, _) = fleet::executions(&fleet.exec_log)?;
    let leases = fleet::journal_findings(&journal.entries());
    let sims = std::mem::take(&mut *sims.lock().unwrap_or_else(std::sync::PoisonError::into_inner));

    let mut history: Vec<Event> = sims.acked.iter().map(|k| Event::ItemAcked { key: k.clone() }).collect();
    history.extend(stored.sim_events.iter().cloned());
    history.extend(execs.iter().cloned());
    history.extend(leases.events.iter().cloned());
    let mut check = checker::check(&history);
    check.duplicates += stored.real_duplicates;
    // A write of the old generation after the takeover, or epochs going backwards, is two live
    // holders as far as the journal can tell.
    check.double_leases += leases.stale_writes_after_takeover + leases.epochs_not_growing;
    check.examples.extend(stored.examples.iter().cloned());
    check.examples.extend(leases.examples.iter().cloned());
    if let Err(e) = &probe {
        check.double_leases += 1;
        check.examples.push(format!("fence probe: {e}"));
    }

    let exec_starts = |from: u64, to: u64| {
        execs.iter().filter(|e| matches!(e, Event::ExecStarted { at, .. } if *at >= from && *at < to)).count() as u64
    };
    let fault_ms = t_resume.saturating_sub(t_pause).max(1);
    // Recovery: from the pause until the new leader stored a submit (it serves).
    let served_again = takeover_ms.and_then(|t| sims.first_ack_after(t_pause + t)).map(|t| t - t_pause);
    let new_instance = new.as_ref().map(|r| r.instance.clone());
    let new_process =
        new_instance.as_deref().and_then(|i| leader_process(&hubs, i).ok()).map(|i| hubs[i].name().to_owned());
    Ok(FaultReport {
        name: "leader_pause".into(),
        fault: format!(
            "lease leader SIGSTOPped {pause_ms} ms (leader lock TTL {leader_ttl_ms} ms, lease TTL {lease_ttl_ms} ms), then resumed"
        ),
        load: format!(
            "{runtimes} runtimes x {checks} checks every {interval_ms} ms, {submitters} simulated submitters x {batch} results every 100 ms, 2 hubs"
        ),
        load_during_fault_per_sec: sims.acked_between(t_pause, t_resume) as f64 * 1000.0 / fault_ms as f64,
        acked: sims.acked.len() as u64,
        stored: stored.sim_events.len() as u64 + stored.real,
        check,
        recovery_ms: served_again.map(|ms| ms as f64),
        extra: json!({
            "auth": fleet.deployment.auth_mode(),
            "recovery": "from the pause until a simulated submit was stored by the new leader (the leadership moves while the old leader is frozen)",
            "submit_stored_by_new_leader_after_pause_ms": served_again,
            "paused_process": leader_name,
            "paused_pid": pid,
            "process_was_stopped": stopped,
            "process_running_again": running_again,
            "old_leader": {"instance": old.instance, "generation": old.generation},
            "new_leader": new.as_ref().map(|r| json!({"instance": r.instance, "generation": r.generation, "process": new_process})),
            "takeover_after_pause_ms": takeover_ms,
            "leases_live_again_after_resume_ms": leases_back,
            "submit_stored_after_resume_ms": submit_back,
            "journal_takeovers": leases.takeovers.iter().map(|(g, i, at)| json!({"generation": g, "instance": i, "at_ms": at})).collect::<Vec<_>>(),
            "journal_writes_of_old_generation_after_takeover": leases.stale_writes_after_takeover,
            "epochs_not_growing": leases.epochs_not_growing,
            "lease_grants": leases.grants,
            "old_leader_step_downs": step_downs,
            "old_leader_appends_refused_as_fenced": refused_appends,
            "fence_probe": match &probe { Ok(s) => s.clone(), Err(e) => format!("NOT refused: {e}") },
            "acked_before_pause": sims.acked_between(load_from, t_pause),
            "acked_during_pause": sims.acked_between(t_pause, t_resume),
            "acked_after_resume": sims.acked_between(t_resume, load_to),
            "submit_duplicate_replies": sims.duplicate_replies,
            "submit_refused": sims.refused,
            "submit_unanswered": sims.unanswered,
            "executions": execs.iter().filter(|e| matches!(e, Event::ExecStarted { .. })).count(),
            "executions_before_pause": exec_starts(0, pause_ns),
            "executions_during_pause": exec_starts(pause_ns, resume_ns),
            "executions_after_resume": exec_starts(resume_ns, after_ns),
            "real_results_stored": stored.real,
            "real_sequence_gaps": stored.real_gaps,
        }),
        command: format!(
            "steward-loadtest faults leader_pause{}{}",
            if ctx.quick { " --quick" } else { "" },
            if ctx.auth { " --auth" } else { "" }
        ),
    })
}

async fn wait_checks_leased(fleet: &Fleet, checks: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(live) = fleet.live_leases().await {
            if live.values().filter(|h| h.starts_with("rt-")).count() as u64 >= checks {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("fewer than {checks} checks leased live after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_record(bucket: &kv::Store, key: &str) -> anyhow::Result<LeaderRecord> {
    let entry = bucket.get(key).await?.context("no leader record")?;
    Ok(codec::decode_limited(Encoding::MsgPack, &entry, usize::MAX)?)
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The hub whose log says it took the lock as `instance`.
fn leader_process(hubs: &[StewardProc], instance: &str) -> anyhow::Result<usize> {
    for (i, h) in hubs.iter().enumerate() {
        let log = strip_ansi(&std::fs::read_to_string(h.log_path()).unwrap_or_default());
        if log.lines().any(|l| l.contains("lease leader") && l.contains(instance)) {
            return Ok(i);
        }
    }
    bail!("no hub log names leader instance {instance}")
}

/// Whether the state of `pid` satisfies `ok` within a second (a signal's effect is seen a
/// moment after it is sent).
async fn wait_state(pid: u32, ok: impl Fn(char) -> bool) -> bool {
    for _ in 0..50 {
        if process_state(pid).is_some_and(&ok) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The state letter of `/proc/<pid>/stat` (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Appends to the lease journal as the old leader would: expecting its fence. Ok (with what
/// JetStream said) when refused.
async fn fence_probe(fleet: &Fleet, old: &LeaderRecord) -> Result<String, String> {
    let js = jetstream::new(fleet.client.clone());
    let fence_subject = fleet.subjects.jobspec_fence();
    let stream = js.get_stream(LEASE_JOURNAL_STREAM).await.map_err(|e| e.to_string())?;
    // The old leader's fence message (its payload is its instance).
    let c = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: fleet.client.new_inbox(),
            filter_subject: fence_subject.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = c.cached_info().num_pending;
    let mut fence_seq = None;
    let mut msgs = c.messages().await.map_err(|e| e.to_string())?;
    while pending > 0 {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await else { break };
        pending = m.info().map(|i| i.pending).unwrap_or(0);
        if m.payload.as_ref() == old.instance.as_bytes() {
            fence_seq = m.info().ok().map(|i| i.stream_sequence);
        }
    }
    let Some(fence_seq) = fence_seq else { return Err("the old leader's fence message was not found".into()) };
    let entry = LeaseJournalEntry { instance: old.instance.clone(), generation: old.generation, ..Default::default() };
    let payload = codec::encode(Encoding::MsgPack, &entry).map_err(|e| e.to_string())?;
    let mut h = HeaderMap::new();
    h.insert("Nats-Expected-Last-Subject-Sequence", fence_seq.to_string().as_str());
    h.insert("Nats-Expected-Last-Subject-Sequence-Subject", fence_subject.as_str());
    let ack = js.publish_with_headers(fleet.subjects.jobspec_journal(), h, payload).await.map_err(|e| e.to_string())?;
    match ack.await {
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            Ok(format!("append with the old leader's fence (seq {fence_seq}) refused: {e}"))
        }
        Err(e) => Err(format!("append failed otherwise: {e}")),
        Ok(a) => Err(format!("append with the old leader's fence was stored at seq {}", a.sequence)),
    }
}
