//! Fault scenario `disk_full`: JetStream's storage limit is reached under load.
//!
//! nats-server runs with a small `max_file_store` (the 256 MiB the dead-letter stream reserves
//! plus a little room). A hub (`steward server`) and real `steward runtime` processes run pool
//! checks made with [`exec_log::check_argv`] (each check also prints its own name, so a stored
//! result names the check that produced it); a harness probe leases a spec of its own and
//! submits a result every 100 ms like a runtime with an outbox (it keeps what was not stored and
//! sends it again, in order), recording every reply. A filler stream then takes all but a few
//! hundred KiB of the limit; the load fills the rest. While storage is full every reply the
//! probe gets is recorded (a result the hub cannot store is answered `retry` with `unavailable:
//! JetStream storage is full ...`; once the lease journal cannot be written either, the lease
//! leader steps down and requests find no responder until space is back), the runtimes keep
//! their results in their outbox and no process may exit. After `disk_full.full_secs` the
//! filler stream is deleted: every result produced meanwhile must be stored exactly once.
//!
//! History: executions come from the checks' own log; each ended execution is one result the
//! runtime put in its outbox (`acked` counts these plus the probe's results the hub
//! acknowledged); stored results are read back from `STEWARD_RESULTS` (for a runtime, the n-th
//! stored result of a check matches its n-th execution). Results still in a runtime's outbox
//! after its clean stop are read from its redb store and reported (`outbox_left`), not hidden.
//!
//! Recovery: from deleting the filler until every result of an execution that ended before
//! that moment (and every probe result made before it) is stored: the outbox backlog drained.
//!
//! Sizes (`--set`): `disk_full.runtimes`, `disk_full.checks`, `disk_full.busy_ms`,
//! `disk_full.spare_mib` (room above the reservation), `disk_full.headroom_kib` (left free by the
//! filler), `disk_full.full_secs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt as _, StreamExt as _};
use serde_json::json;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_storage::runtime::RuntimeStore;
use steward_subjects::api::lease::{LeaseReply, LeaseRequest, RenewReply, RenewRequest, SpecEpoch};
use steward_subjects::api::result::{
    decode_stored, ResultRecord, ResultStatus, SubmitReply, SubmitRequest, SubmitStatus,
};
use steward_subjects::rpc;
use steward_subjects::streams::RESULTS_STREAM;
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{AccountId, RuntimeId, Subjects};

use super::exec_log::{self, RUNTIME_ENV};
use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};
use crate::env::{signing_key, steward_binary};

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: "disk_full",
    about: "JetStream storage limit reached under load: the hub answers `unavailable` (storage full), runtimes keep results in their outbox, nothing lost once space is freed, no process exits",
    run: |ctx| run(ctx).boxed(),
};

/// What the streams Steward creates reserve from the file-store limit (the dead-letter
/// stream's `max_bytes`): the server refuses to create them below it.
const RESERVED: u64 = 256 * 1024 * 1024;
/// The stream that takes the room.
const FILLER_STREAM: &str = "DISKFULL_FILLER";
/// Its subject.
const FILLER_SUBJECT: &str = "diskfull.filler";
/// The probe's runtime id and label.
const PROBE: &str = "probe-0";
/// Longest wait for one condition of the set-up or the recovery.
const WAIT: Duration = Duration::from_secs(120);
/// The harness's own request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The sizes of a run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    runtimes: u64,
    checks: u64,
    busy_ms: u64,
    spare: u64,
    headroom: u64,
    full: Duration,
}

impl Sizes {
    fn of(ctx: &FaultCtx) -> Self {
        Sizes {
            runtimes: ctx.size("disk_full.runtimes", 4, 2).max(1),
            checks: ctx.size("disk_full.checks", 24, 6).max(1),
            busy_ms: ctx.size("disk_full.busy_ms", 50, 20),
            spare: ctx.size("disk_full.spare_mib", 64, 16).max(2) * 1024 * 1024,
            headroom: ctx.size("disk_full.headroom_kib", 384, 256) * 1024,
            full: Duration::from_secs(ctx.size("disk_full.full_secs", 60, 8)),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The configuration: one pool of workers running `checks` logged checks every second, and the
/// probe's own pool with one spec the harness never runs.
fn document(sizes: Sizes, log: &Path) -> anyhow::Result<String> {
    let mut assessments = Vec::new();
    let mut attestations = Vec::new();
    for i in 0..sizes.checks {
        let check = format!("chk-{i:03}");
        let mut argv = exec_log::check_argv(log, &check, sizes.busy_ms);
        // The result's output names the check, so stored results map back to executions.
        if let Some(script) = argv.last_mut() {
            script.push_str(&format!("; echo {check}"));
        }
        assessments.push(
            json!({"id": check, "executor": {"kind": "command", "argv": argv}, "interval": "1s", "timeout": "1s"}),
        );
        attestations.push(json!({"id": format!("a-{check}"), "assessment": check, "component": "svc", "controls": ["c"], "pool": "workers"}));
    }
    assessments.push(
        json!({"id": "probe", "executor": {"kind": "command", "argv": ["true"]}, "interval": "1s", "timeout": "1s"}),
    );
    attestations
        .push(json!({"id": "a-probe", "assessment": "probe", "component": "svc", "controls": ["c"], "pool": "probes"}));
    let doc = json!({
        "version": 1,
        "description": "disk_full fault scenario",
        "controls": [{"id": "c"}],
        "components": [{"id": "svc", "selector": "", "controls": ["c"]}],
        "assessments": assessments,
        "attestations": attestations,
        "pools": [{"id": "workers", "selector": "role=worker"}, {"id": "probes", "selector": "role=probe"}],
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `steward --nats URL <args>` to completion.
async fn cli(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let bin = steward_binary()?;
    let out = tokio::process::Command::new(&bin).arg("--nats").arg(url).args(args).output().await?;
    if !out.status.success() {
        bail!("steward {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stored results, as read back from `STEWARD_RESULTS` while the run goes on.
#[derive(Debug, Default)]
struct StoredView {
    /// (host, check) → (epoch, seq) → copies; the probe's under (`probe-0`, "").
    by_check: HashMap<(String, String), BTreeMap<(u64, u64), u64>>,
    /// The probe's keys → copies.
    probe: HashMap<String, u64>,
    /// (host, spec, epoch) → seqs, to find gaps.
    seqs: HashMap<(String, String, u64), Vec<u64>>,
    /// Stored results read (copies).
    total: u64,
    /// Stream messages (segments) read.
    segments: u64,
}

impl StoredView {
    fn distinct(&self, host: &str, check: &str) -> u64 {
        self.by_check.get(&(host.to_owned(), check.to_owned())).map_or(0, |m| m.len() as u64)
    }
}

/// Reads every stored result of the account as it comes (an ordered consumer, created before
/// storage fills).
async fn follow_results(
    js: &jetstream::Context,
    client: &async_nats::Client,
    subjects: &Subjects,
    view: Arc<Mutex<StoredView>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = js.get_stream(RESULTS_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subjects.result_put_all(),
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.messages().await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = msgs.next().await {
            let Ok(records) = decode_stored(msg.headers.as_ref(), &msg.payload) else { continue };
            let mut v = view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            v.segments += 1;
            for r in records {
                v.total += 1;
                v.seqs.entry((r.host.clone(), r.spec.clone(), r.epoch)).or_default().push(r.seq);
                if r.host == PROBE {
                    *v.probe.entry(r.idempotency_key()).or_default() += 1;
                    continue;
                }
                let check = r.output.trim().to_owned();
                *v.by_check.entry((r.host.clone(), check)).or_default().entry((r.epoch, r.seq)).or_default() += 1;
            }
        }
    }))
}

/// What the probe saw.
#[derive(Debug, Default)]
struct ProbeTally {
    /// Keys the hub acknowledged (stored or duplicate), with when (ns since the Unix epoch).
    acked: Vec<(String, u64)>,
    /// Results made, with when (ns).
    made: Vec<(String, u64)>,
    /// Distinct `retry` reasons, with how often each came.
    retry_reasons: BTreeMap<String, u64>,
    /// When the first `retry` came (ns).
    first_retry_ns: Option<u64>,
    /// `refused` outcomes (reason → count).
    refused: BTreeMap<String, u64>,
    /// Requests that failed as a whole (timeouts, errors), by message.
    request_errors: BTreeMap<String, u64>,
    /// Renewals that failed, by message.
    renew_errors: BTreeMap<String, u64>,
    /// Times the lease had to be taken again.
    releases: u64,
    /// Results still waiting when the probe stopped.
    pending_at_end: u64,
}

fn bump(m: &mut BTreeMap<String, u64>, k: String) {
    *m.entry(k).or_default() += 1;
}

/// Leases the probe's spec; answers (spec, epoch).
async fn probe_lease(client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<(String, u64)> {
    let runtime = RuntimeId::parse(PROBE)?;
    let req = LeaseRequest {
        runtime: PROBE.into(),
        labels: BTreeMap::from([("role".to_owned(), "probe".to_owned())]),
        max: 1,
        ..Default::default()
    };
    let subject = subjects.identity_subject(IdentityEndpoint::Lease, None, &runtime);
    let reply: LeaseReply = rpc::request(client, subject, &req, REQUEST_TIMEOUT).await?;
    let g = reply.granted.into_iter().next().context("the probe was granted no spec")?;
    Ok((g.spec.id, g.epoch))
}

/// The probe: one result every 100 ms, kept in order until the hub stores it; renews every 2 s.
async fn probe(client: async_nats::Client, subjects: Subjects, stop: Arc<AtomicBool>, tally: Arc<Mutex<ProbeTally>>) {
    let Ok(runtime) = RuntimeId::parse(PROBE) else { return };
    let submit_subject = subjects.identity_subject(IdentityEndpoint::Submit, None, &runtime);
    let renew_subject = subjects.identity_subject(IdentityEndpoint::Renew, None, &runtime);
    let labels = BTreeMap::from([("role".to_owned(), "probe".to_owned())]);
    let mut held: Option<(String, u64)> = None;
    let mut seq = 0u64;
    // Numbered like a real runtime's outbox: one incarnation, positions from 1.
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let mut outbox = 0u64;
    let mut pending: VecDeque<ResultRecord> = VecDeque::new();
    let mut last_renew = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lock = || tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if held.is_none() {
            match probe_lease(&client, &subjects).await {
                Ok(h) => {
                    held = Some(h);
                    seq = 0;
                }
                Err(e) => {
                    bump(&mut lock().renew_errors, format!("lease: {e}"));
                    continue;
                }
            }
        }
        let Some((spec, epoch)) = held.clone() else { continue };
        if last_renew.elapsed() >= Duration::from_secs(2) {
            last_renew = Instant::now();
            let req = RenewRequest {
                runtime: PROBE.into(),
                host: String::new(),
                labels: labels.clone(),
                held: vec![SpecEpoch { spec: spec.clone(), epoch }],
            };
            match rpc::request::<_, RenewReply>(&client, renew_subject.clone(), &req, REQUEST_TIMEOUT).await {
                Ok(r) if !r.refused.is_empty() => {
                    // The lease is gone: what is pending under it can never be stored.
                    let mut t = lock();
                    t.releases += 1;
                    for r in r.refused {
                        bump(&mut t.renew_errors, format!("refused: {}", r.reason));
                    }
                    held = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) => bump(&mut lock().renew_errors, e.to_string()),
            }
        }
        seq += 1;
        outbox += 1;
        let record = ResultRecord {
            spec: spec.clone(),
            epoch,
            seq,
            outbox,
            runtime: PROBE.into(),
            host: PROBE.into(),
            executor: "command".into(),
            status: ResultStatus::Pass,
            message: "exit 0".into(),
            exit_code: Some(0),
            ..ResultRecord::default()
        };
        lock().made.push((record.idempotency_key(), now_ns()));
        pending.push_back(record);
        let batch: Vec<ResultRecord> = pending.iter().take(256).cloned().collect();
        let n = batch.len();
        let reply = rpc::request::<_, SubmitReply>(
            &client,
            submit_subject.clone(),
            &SubmitRequest { results: batch, incarnation: incarnation.clone() },
            REQUEST_TIMEOUT,
        )
        .await;
        let mut t = lock();
        match reply {
            Ok(reply) => {
                let mut done = 0;
                for o in reply.outcomes.iter().take(n) {
                    match o.status {
                        SubmitStatus::Stored | SubmitStatus::Duplicate => {
                            t.acked.push((o.key.clone(), now_ns()));
                            done += 1;
                        }
                        SubmitStatus::Refused => {
                            bump(&mut t.refused, o.reason.clone());
                            done += 1;
                        }
                        SubmitStatus::Retry => {
                            t.first_retry_ns.get_or_insert_with(now_ns);
                            bump(&mut t.retry_reasons, o.reason.clone());
                            break;
                        }
                    }
                }
                pending.drain(..done);
            }
            Err(e) => bump(&mut t.request_errors, e.to_string()),
        }
    }
    lock().pending_at_end = pending.len() as u64;
}

/// JetStream storage of the server: (used, limit) in bytes.
async fn storage(nats: &NatsServer) -> anyhow::Result<(u64, u64)> {
    let jsz = nats.monitor_json("/jsz").await?;
    let used = jsz["storage"].as_u64().context("/jsz has no storage")?;
    let max = jsz["config"]["max_storage"].as_u64().context("/jsz has no config.max_storage")?;
    Ok((used, max))
}

/// Fills the file store with the filler stream until `headroom` bytes are left; answers the
/// bytes written.
async fn fill(js: &jetstream::Context, nats: &NatsServer, headroom: u64) -> anyhow::Result<u64> {
    js.create_stream(stream::Config {
        name: FILLER_STREAM.into(),
        subjects: vec![format!("{FILLER_SUBJECT}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("cannot create the filler stream")?;
    let mut written = 0u64;
    loop {
        let (used, max) = storage(nats).await?;
        let room = max.saturating_sub(used);
        if room <= headroom {
            return Ok(written);
        }
        let chunk = (room - headroom).clamp(1024, 256 * 1024);
        let payload = bytes::Bytes::from(vec![b'x'; usize::try_from(chunk).unwrap_or(1024)]);
        match js.publish(format!("{FILLER_SUBJECT}.{written}"), payload).await?.await {
            Ok(_) => written += chunk,
            // The load took the rest meanwhile: full already.
            Err(_) => return Ok(written),
        }
    }
}

/// Executions that ended, per (runtime, check), among `events` ending before `before` (ns).
fn ended_counts(events: &[Event], before: u64) -> HashMap<(String, String), u64> {
    let mut m = HashMap::new();
    for e in events {
        if let Event::ExecEnded { spec, runtime, at } = e {
            if *at < before {
                *m.entry((runtime.clone(), spec.clone())).or_default() += 1;
            }
        }
    }
    m
}

/// Whether every process is still running; names those that are not.
fn exited(procs: &mut [StewardProc], nats: &mut NatsServer) -> Vec<String> {
    let mut out = Vec::new();
    for p in procs.iter_mut() {
        if let Ok(Some(status)) = p.exited() {
            out.push(format!("{} exited ({status}): {}", p.name(), p.log_tail(5)));
        }
    }
    if !nats.is_running() {
        out.push(format!("nats-server exited: {}", nats.log_tail()));
    }
    out
}

/// Results left in each runtime's outbox (read from its redb store after it stopped):
/// (runtime, check) → count.
fn outbox_left(dir: &Path, runtimes: &[String]) -> anyhow::Result<HashMap<(String, String), u64>> {
    let mut left = HashMap::new();
    for rt in runtimes {
        let path: PathBuf = dir.join(rt).join("runtime.redb");
        let store = RuntimeStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        for p in store.pending(usize::MAX)? {
            *left.entry((rt.clone(), p.record.output.trim().to_owned())).or_default() += 1;
        }
    }
    Ok(left)
}

#[allow(clippy::too_many_lines)]
async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let sizes = Sizes::of(ctx);
    let dir = ctx.dir.clone();
    std::fs::create_dir_all(&dir)?;
    if ctx.auth {
        tracing_note("disk_full runs in open mode: the storage limit is the server's, not an account's");
    }
    let mut nats = NatsServer::single(ServerOptions {
        max_file_store: RESERVED + sizes.spare,
        data_dir: Some(dir.join("nats")),
        ..ServerOptions::named("disk-full")
    })
    .await
    .context("cannot start nats-server")?;
    let url = nats.client_url();
    let client = async_nats::ConnectOptions::new().name("disk-full-harness").connect(url.as_str()).await?;
    let js = jetstream::new(client.clone());
    let subjects = Subjects::new(AccountId::parse(AccountId::DEFAULT)?);

    // Hub, configuration, runtimes.
    let secret = signing_key(&dir.join("keys")).await?;
    let public = dir.join("keys").join("steward-signing.pub");
    let hub_args = strings(&["--nats", &url, "server", "--signing-key", &secret.display().to_string()]);
    let mut procs = vec![StewardProc::start("hub", &dir, &hub_args, &[])?];
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let client = client.clone();
        async move { client.request("$SRV.PING.steward-hub", "".into()).await.map(|_| ()) }
    })
    .await
    .context("the hub did not become healthy")?;
    let log = dir.join("exec.log");
    let doc = dir.join("config.json");
    std::fs::write(&doc, document(sizes, &log)?)?;
    cli(&url, &["apply", "--label", "disk-full", "-f", &doc.display().to_string()]).await?;
    let runtimes: Vec<String> = (0..sizes.runtimes).map(|k| format!("rt-{k}")).collect();
    for rt in &runtimes {
        let args = strings(&[
            "--nats",
            &url,
            "runtime",
            "--id",
            rt,
            "--labels",
            "role=worker",
            "--data",
            &dir.join(rt).display().to_string(),
            "--trusted-key",
            &public.display().to_string(),
        ]);
        procs.push(StewardProc::start(rt, &dir, &args, &[(RUNTIME_ENV.to_owned(), rt.clone())])?);
    }
    // Every check runs somewhere before the fault.
    eventually(WAIT, Duration::from_millis(500), || async {
        let events = exec_log::read(&log).map_err(|e| e.to_string())?;
        let mut seen: Vec<&str> = events
            .iter()
            .filter_map(|e| if let Event::ExecEnded { spec, .. } = e { Some(spec.as_str()) } else { None })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() as u64 >= sizes.checks {
            Ok(())
        } else {
            Err(format!("{} of {} checks ran", seen.len(), sizes.checks))
        }
    })
    .await
    .context("the runtimes did not run every check")?;
    let view = Arc::new(Mutex::new(StoredView::default()));
    let follower = follow_results(&js, &client, &subjects, view.clone()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(ProbeTally::default()));
    let probe_task = tokio::spawn(probe(client.clone(), subjects.clone(), stop.clone(), tally.clone()));
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        if tally.lock().map(|t| t.acked.is_empty()).unwrap_or(true) {
            Err("the probe has no result stored yet")
        } else {
            Ok(())
        }
    })
    .await
    .context("the probe could not store a result")?;

    // The fault: fill the store, then wait until the hub says it is full.
    let (used0, max) = storage(&nats).await?;
    let fill_started = Instant::now();
    let filler_bytes = fill(&js, &nats, sizes.headroom).await?;
    let filled_in = fill_started.elapsed();
    let full_deadline = Instant::now() + WAIT;
    let full_at_ns = loop {
        if let Some(t) = tally.lock().ok().and_then(|t| t.first_retry_ns) {
            break t;
        }
        if Instant::now() > full_deadline {
            bail!("storage never filled: the probe got no `retry` within {WAIT:?} ({:?})", storage(&nats).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let full_at = Instant::now();
    let stored_at_full = view.lock().map(|v| v.total).unwrap_or(0);
    let mut crashed = Vec::new();
    while full_at.elapsed() < sizes.full {
        tokio::time::sleep(Duration::from_millis(500)).await;
        crashed.extend(exited(&mut procs, &mut nats));
        if !crashed.is_empty() {
            break;
        }
    }
    let (used_full, _) = storage(&nats).await?;
    let stored_during_full = view.lock().map(|v| v.total).unwrap_or(0) - stored_at_full;

    // Free the space; time until the backlog is stored.
    js.delete_stream(FILLER_STREAM).await.context("cannot delete the filler stream")?;
    let free_ns = now_ns();
    let freed_at = Instant::now();
    let full_secs = freed_at.duration_since(full_at).as_secs_f64();
    let events = exec_log::read(&log)?;
    let backlog = ended_counts(&events, free_ns);
    let produced_during_full = events
        .iter()
        .filter(|e| matches!(e, Event::ExecEnded { at, .. } if *at >= full_at_ns && *at < free_ns))
        .count() as u64;
    let probe_backlog: Vec<String> = tally
        .lock()
        .map(|t| t.made.iter().filter(|(_, at)| *at < free_ns).map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let drained = eventually(WAIT, Duration::from_millis(100), || async {
        let v = view.lock().map_err(|e| e.to_string())?;
        let behind: u64 = backlog.iter().map(|((rt, check), n)| n.saturating_sub(v.distinct(rt, check))).sum::<u64>()
            + probe_backlog.iter().filter(|k| !v.probe.contains_key(*k)).count() as u64;
        if behind == 0 {
            Ok(())
        } else {
            Err(format!("{behind} results of before the free still not stored"))
        }
    })
    .await;
    let recovery_ms = drained.is_ok().then(|| freed_at.elapsed().as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(2)).await; // normal service after the drain, for the record
    crashed.extend(exited(&mut procs, &mut nats));

    // Stop: probe, runtimes (clean stop: last drain), hub; then read what is left.
    stop.store(true, Ordering::Relaxed);
    let _ = probe_task.await;
    let processes_alive_at_end = crashed.is_empty();
    for p in procs.iter_mut().rev() {
        p.stop(Duration::from_secs(10)).await;
    }
    let settle = view.lock().map(|v| v.total).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = eventually(Duration::from_secs(10), Duration::from_millis(500), || {
        let now = view.lock().map(|v| v.total).unwrap_or(0);
        async move {
            if now > settle {
                Ok(())
            } else {
                Err("no new results")
            }
        }
    })
    .await;
    follower.abort();
    let left = outbox_left(&dir, &runtimes)?;

    // History and verdict.
    let events = exec_log::read(&log)?;
    let mut history = events.clone();
    let ended = ended_counts(&events, u64::MAX);
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let view = std::mem::take(&mut *view.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for ((rt, check), n) in &ended {
        for i in 1..=*n {
            history.push(Event::ItemAcked { key: format!("{rt}/{check}/{i}") });
        }
    }
    for ((host, check), results) in &view.by_check {
        for (i, copies) in results.values().enumerate() {
            for _ in 0..*copies {
                history.push(Event::ItemStored { key: format!("{host}/{check}/{}", i + 1) });
            }
        }
    }
    history.extend(tally.acked.iter().map(|(k, _)| Event::ItemAcked { key: k.clone() }));
    for (key, copies) in &view.probe {
        for _ in 0..*copies {
            history.push(Event::ItemStored { key: key.clone() });
        }
    }
    let mut check = checker::check(&history);
    for c in &crashed {
        check.examples.push(format!("process exited: {c}"));
    }
    let seq_gaps: u64 = view
        .seqs
        .values()
        .map(|s| {
            let mut s = s.clone();
            s.sort_unstable();
            s.dedup();
            s.last().copied().unwrap_or(0) - s.len() as u64
        })
        .sum();
    let produced: u64 = ended.values().sum();
    let stored_runtime: u64 = view.by_check.values().map(|m| m.len() as u64).sum();
    let hub_reply = tally.retry_reasons.keys().next().cloned().unwrap_or_default();
    // What the runtimes were told `refused` (logged at debug level by the outbox drain; the
    // harness runs them with `STEWARD_LOG=...,steward_actors::runtime::outbox=debug` to see it).
    let mut refused_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for rt in &runtimes {
        let text = std::fs::read_to_string(dir.join(format!("{rt}.log"))).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("result refused")).map(strip_ansi) {
            let reason = line.split("reason=").nth(1).unwrap_or("?");
            let reason: String = reason.split(" spec ").next().unwrap_or(reason).chars().take(60).collect();
            bump(&mut refused_reasons, reason);
        }
    }
    let warn_lines = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .map(|t| t.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count())
            .unwrap_or(0)
    };
    let mut report = FaultReport {
        name: "disk_full".into(),
        fault: format!(
            "file store {} MiB ({} reserved), filler leaves {} KiB, full {full_secs:.0} s, then freed",
            (RESERVED + sizes.spare) / (1024 * 1024),
            RESERVED / (1024 * 1024),
            sizes.headroom / 1024
        ),
        load: format!(
            "{} steward runtimes x {} logged checks every 1 s ({} ms each) + 1 harness probe submitting every 100 ms; load/s = results produced while full",
            sizes.runtimes, sizes.checks, sizes.busy_ms
        ),
        load_during_fault_per_sec: produced_during_full as f64 / full_secs.max(f64::EPSILON),
        acked: produced + tally.acked.len() as u64,
        stored: stored_runtime + view.probe.len() as u64,
        check,
        recovery_ms,
        extra: json!({
            "recovery": "from deleting the filler stream until every result produced before it (runtime outboxes and the probe) is stored",
            "max_file_store_bytes": max,
            "used_before_fill_bytes": used0,
            "used_while_full_bytes": used_full,
            "filler_bytes": filler_bytes,
            "fill_secs": filled_in.as_secs_f64(),
            "full_secs": full_secs,
            "results_produced_while_full": produced_during_full,
            "results_stored_while_full": stored_during_full,
            "runtime_results_produced": produced,
            "runtime_results_stored": stored_runtime,
            "probe_results_acked": tally.acked.len(),
            "probe_results_stored": view.probe.len(),
            "probe_pending_at_end": tally.pending_at_end,
            "hub_reply_while_full": hub_reply,
            "retry_replies": tally.retry_reasons,
            "refused": tally.refused,
            "probe_request_errors": tally.request_errors,
            "probe_lease_renew_errors": tally.renew_errors,
            "probe_lease_lost": tally.releases,
            "outbox_left": left.values().sum::<u64>(),
            "seq_gaps": seq_gaps,
            "stored_copies": view.total,
            "segments": view.segments,
            "processes_exited": crashed,
            "processes_alive_at_end": processes_alive_at_end,
            "hub_log_warnings": warn_lines("hub"),
            "runtime_results_refused": refused_reasons,
            "runtime_log_warnings": runtimes.iter().map(|r| warn_lines(r)).sum::<usize>(),
        }),
        command: format!("steward-loadtest faults disk_full{}", if ctx.quick { " --quick" } else { "" }),
    };
    if !processes_alive_at_end {
        bail!("a process exited while storage was full or after: {crashed:?}; figures: {}", report.extra);
    }
    if let Err(e) = drained {
        // Not an error of the run: the checker counts what never got stored as lost.
        report.check.examples.insert(0, format!("backlog not stored within {WAIT:?} of freeing space: {e}"));
    }
    Ok(report)
}

/// Notes a limitation of the run on stderr.
fn tracing_note(what: &str) {
    eprintln!("disk_full: {what}");
}
