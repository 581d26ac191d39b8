//! Fault scenario `long_outage`: an outage longer than JetStream's dedupe window, during which
//! the hub keeps receiving a runtime's re-sent results but the runtime never hears back.
//!
//! Real processes, every connection authenticated (JWT, as `steward creds issue` makes them):
//! nats-server, `steward server`, and `steward runtime`s with host identities that reach NATS
//! through a proxy this scenario controls, running checks that log their own executions
//! ([`super::exec_log`]). The results stream's duplicate window is set short (the window shorter
//! than the outage, rather than an hour-long run). During the fault the proxy still carries
//! what runtimes send but drops what comes back: every submit reaches the hub and is stored or
//! answered, and every reply is lost, so each runtime re-sends its outbox head again and again,
//! long after the window has forgotten the first copy. When the link returns (the proxy drops
//! every connection; runtimes reconnect) the outboxes drain.
//!
//! Judged from the history: every execution that finished before the runtimes were stopped has
//! exactly one stored result (matched by check and start time), no result key is stored twice,
//! sequences per (spec, epoch) are contiguous from their first, and no two runtimes executed one
//! spec at once. Reported: results stored during the fault (re-sends did reach the hub), results
//! the hub answered `duplicate` (its fence counters), and the time from the link's return to the
//! last backlog result stored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::FutureExt as _;
use serde_json::json;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::lease::{LeasesReply, LeasesRequest};
use steward_subjects::api::result::{decode_stored, ResultRecord};
use steward_subjects::streams::RESULTS_STREAM;
use steward_subjects::{rpc, AccountId, Subjects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::exec_log::{self, RUNTIME_ENV};
use super::procs::StewardProc;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{self, Event};
use crate::env::{signing_key, steward_binary};

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: NAME,
    about: "runtimes hear no reply for longer than the dedupe window while their re-sends reach the hub: every result stored exactly once",
    run: |ctx| run(ctx).boxed(),
};

const NAME: &str = "long_outage";
const ACCOUNT: &str = "faults";

/// A TCP proxy in front of NATS that can stop carrying replies (server to client) while still
/// carrying requests, and then drop every connection so clients reconnect cleanly.
struct ReplyProxy {
    port: u16,
    replies: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl ReplyProxy {
    async fn start(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the proxy")?;
        let port = listener.local_addr()?.port();
        let replies = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (r, c) = (replies.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let handle = tokio::spawn(pipe(client, server, r.clone()));
                if let Ok(mut g) = c.lock() {
                    g.retain(|h| !h.is_finished());
                    g.push(handle);
                }
            }
        });
        Ok(ReplyProxy { port, replies, conns, accept })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// From now on, what the server sends is dropped.
    fn lose_replies(&self) {
        self.replies.store(false, Ordering::SeqCst);
    }

    /// Drops every connection (their reply streams are broken) and carries replies again.
    fn restore(&self) {
        if let Ok(mut g) = self.conns.lock() {
            for h in g.drain(..) {
                h.abort();
            }
        }
        self.replies.store(true, Ordering::SeqCst);
    }
}

impl Drop for ReplyProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.restore();
    }
}

/// Carries client → server always, server → client only while `replies` is set.
async fn pipe(client: TcpStream, server: TcpStream, replies: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if replies.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The configuration document: `checks` pool checks every `interval_ms`, check `i` in the pool of
/// the runtime labelled `fault=rt-<i % runtimes>` (so each runtime has its share), each logging
/// its executions to `log`.
fn document(log: &Path, checks: u64, runtimes: u64, interval_ms: u64) -> serde_json::Value {
    let assessments: Vec<_> = (0..checks)
        .map(|i| {
            json!({
                "id": format!("a{i}"),
                "executor": {"kind": "command", "argv": exec_log::check_argv(log, &format!("c{i}"), 20)},
                "interval": format!("{interval_ms}ms"),
                "timeout": "1s",
            })
        })
        .collect();
    let attestations: Vec<_> = (0..checks)
        .map(|i| {
            json!({"id": format!("c{i}"), "assessment": format!("a{i}"), "component": "fleet", "controls": ["up"], "pool": format!("p{}", i % runtimes)})
        })
        .collect();
    let pools: Vec<_> =
        (0..runtimes).map(|r| json!({"id": format!("p{r}"), "selector": format!("fault=rt-{r}")})).collect();
    json!({
        "version": 1,
        "controls": [{"id": "up"}],
        "components": [{"id": "fleet", "selector": "", "controls": ["up"]}],
        "assessments": assessments,
        "attestations": attestations,
        "pools": pools,
    })
}

/// `steward creds issue <target>` into `<dir>/auth` (before any server runs); the creds file
/// and the rendered server configuration.
async fn issue(dir: &Path, target: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let auth = dir.join("auth").display().to_string();
    let mut args = vec!["creds", "issue", "-o", "json", "--dir", auth.as_str()];
    args.extend_from_slice(target);
    let out = cli("nats://127.0.0.1:1", None, &args).await?;
    let v: serde_json::Value = serde_json::from_slice(&out).context("creds issue: not JSON")?;
    let path = |k: &str| v[k].as_str().map(PathBuf::from).with_context(|| format!("creds issue: no {k}: {v}"));
    Ok((path("creds_file")?, path("server_config")?))
}

/// Runs `steward <args>` (as `creds`, when given) to completion; its stdout.
async fn cli(url: &str, creds: Option<&Path>, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let bin = steward_binary()?;
    let mut command = tokio::process::Command::new(&bin);
    command.args(["--nats", url, "--account", ACCOUNT]);
    if let Some(c) = creds {
        command.arg("--creds").arg(c);
    }
    let out = command.args(args).output().await.with_context(|| format!("cannot run steward {args:?}"))?;
    if !out.status.success() {
        bail!("steward {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Every stored result of the account, in stream order.
async fn stored_results(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<ResultRecord>> {
    let stream = js.get_stream(RESULTS_STREAM).await.context("no results stream")?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        out.extend(decode_stored(Some(&m.headers), &m.payload).context("a stored segment does not decode")?);
    }
    Ok(out)
}

async fn fence_duplicates(client: &async_nats::Client, subjects: &Subjects) -> u64 {
    let req = LeasesRequest { limit: 1, ..Default::default() };
    rpc::request::<_, LeasesReply>(client, subjects.jobspec_leases(), &req, Duration::from_secs(5))
        .await
        .map_or(0, |r| r.fence.duplicate_results)
}

async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let checks = ctx.size("long_outage.checks", 8, 4);
    let runtimes = ctx.size("long_outage.runtimes", 2, 2);
    let interval_ms = ctx.size("long_outage.interval_ms", 1000, 1000);
    let window = Duration::from_millis(ctx.size("long_outage.window_ms", 2000, 1000));
    let outage = Duration::from_millis(ctx.size("long_outage.outage_ms", 30_000, 8_000));
    let log = ctx.dir.join("exec.log");

    // Secure by default: every process has its own JWT identity (hub: service; runtimes: host;
    // the CLI: admin operator); the scenario reads the stream as the hub's service identity.
    let (hub_creds, _) = issue(&ctx.dir, &["--service", "hub"]).await?;
    let mut host_creds = Vec::new();
    for r in 0..runtimes {
        host_creds.push(issue(&ctx.dir, &["--host", &format!("rt-{r}")]).await?.0);
    }
    let (admin, server_conf) = issue(&ctx.dir, &["--operator", "admin"]).await?;
    let mut opts = ServerOptions::named("long-outage");
    opts.max_file_store = 1024 * 1024 * 1024;
    opts.extra_config = std::fs::read_to_string(&server_conf).context("cannot read the server configuration")?;
    let nats = NatsServer::single(opts).await.context("cannot start nats-server")?;
    let url = nats.client_url();
    let key = signing_key(&ctx.dir).await?;
    let public = ctx.dir.join("steward-signing.pub");
    let hub_args: Vec<String> = vec![
        "--nats".into(),
        url.clone(),
        "--account".into(),
        ACCOUNT.into(),
        "--creds".into(),
        hub_creds.display().to_string(),
        "server".into(),
        "--signing-key".into(),
        key.display().to_string(),
    ];
    let mut hub = StewardProc::start("hub", &ctx.dir, &hub_args, &[])?;
    let client = async_nats::ConnectOptions::with_credentials_file(&hub_creds)
        .await
        .context("cannot read the hub's creds")?
        .name("long-outage-harness")
        .connect(&url)
        .await
        .context("cannot connect")?;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::new(AccountId::parse(ACCOUNT).map_err(|e| anyhow::anyhow!("{e}"))?);
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let client = client.clone();
        async move { client.request("$SRV.PING.steward-hub", "".into()).await.map(|_| ()) }
    })
    .await
    .with_context(|| format!("the hub did not start: {}", hub.log_tail(20)))?;

    // The window shorter than the outage.
    let mut cfg = js.get_stream(RESULTS_STREAM).await?.get_info().await?.config;
    cfg.duplicate_window = window;
    js.update_stream(cfg).await.context("cannot shorten the dedupe window")?;

    let doc = ctx.dir.join("doc.json");
    std::fs::write(&doc, serde_json::to_vec_pretty(&document(&log, checks, runtimes.max(1), interval_ms))?)?;
    cli(&url, Some(&admin), &["apply", "-f", &doc.display().to_string()]).await?;
    let specs: serde_json::Value = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let (url, admin) = (url.clone(), admin.clone());
        async move {
            let out = cli(&url, Some(&admin), &["-o", "json", "jobspecs"]).await.map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
            if v["specs"].as_array().map_or(0, Vec::len) as u64 == checks {
                Ok(v)
            } else {
                Err(format!("specs not rendered yet: {v}"))
            }
        }
    })
    .await
    .context("the configuration was not rendered")?;
    let check_of: HashMap<String, String> = specs["specs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["id"].as_str()?.to_owned(), s["provenance"]["attestation"].as_str()?.to_owned())))
        .collect();

    let proxy = ReplyProxy::start(format!("127.0.0.1:{}", nats.port())).await?;
    let mut rts = Vec::new();
    for r in 0..runtimes {
        let id = format!("rt-{r}");
        let args: Vec<String> = vec![
            "--nats".into(),
            proxy.url(),
            "--account".into(),
            ACCOUNT.into(),
            "--creds".into(),
            host_creds[usize::try_from(r)?].display().to_string(),
            "runtime".into(),
            "--id".into(),
            id.clone(),
            "--host".into(),
            id.clone(),
            "--labels".into(),
            format!("fault={id}"),
            "--trusted-key".into(),
            public.display().to_string(),
            "--data".into(),
            ctx.dir.join(&id).display().to_string(),
        ];
        rts.push(StewardProc::start(&id, &ctx.dir, &args, &[(RUNTIME_ENV.to_owned(), id.clone())])?);
    }

    // Results flow from every runtime before the fault.
    eventually(Duration::from_secs(60), Duration::from_millis(250), || {
        let js = js.clone();
        async move {
            let stored = stored_results(&js).await.map_err(|e| e.to_string())?;
            let by: std::collections::HashSet<&str> = stored.iter().map(|r| r.runtime.as_str()).collect();
            if by.len() as u64 == runtimes {
                Ok(())
            } else {
                Err(format!("results from {} of {runtimes} runtimes", by.len()))
            }
        }
    })
    .await
    .context("results did not flow before the fault")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dups_before = fence_duplicates(&client, &subjects).await;
    let stored_before = stored_results(&js).await?.len();
    let fault_start_ns = now_ns();
    proxy.lose_replies();
    tokio::time::sleep(outage).await;
    let stored_during = stored_results(&js).await?.len() - stored_before;
    let dups_during = fence_duplicates(&client, &subjects).await.saturating_sub(dups_before);
    proxy.restore();
    let restored = Instant::now();
    let restore_ns = now_ns();

    // Recovery: every execution that ended before the link returned has its result stored.
    let exec_ended_before: usize =
        exec_log::read(&log)?.iter().filter(|e| matches!(e, Event::ExecEnded { at, .. } if *at < restore_ns)).count();
    let recovered = eventually(Duration::from_secs(120), Duration::from_millis(200), || {
        let js = js.clone();
        async move {
            let n = stored_results(&js).await.map_err(|e| e.to_string())?.len();
            if n >= exec_ended_before {
                Ok(restored.elapsed())
            } else {
                Err(format!("{n} of {exec_ended_before} results stored"))
            }
        }
    })
    .await
    .ok();
    // Service back: every runtime stores results of checks it started after the link returned
    // (a runtime that could not renew for longer than the lease TTL stopped running its pool
    // specs meanwhile, as it must: it cannot know that no one else holds them).
    let restore_ms = restore_ns / 1_000_000;
    let resumed = eventually(Duration::from_secs(120), Duration::from_millis(250), || {
        let js = js.clone();
        async move {
            let stored = stored_results(&js).await.map_err(|e| e.to_string())?;
            let fresh: std::collections::HashSet<&str> =
                stored.iter().filter(|r| r.started_at_ms > restore_ms).map(|r| r.runtime.as_str()).collect();
            if fresh.len() as u64 == runtimes {
                Ok(restored.elapsed())
            } else {
                Err(format!("{} of {runtimes} runtimes ran checks since the link returned", fresh.len()))
            }
        }
    })
    .await
    .context("runtimes did not resume after the link returned")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop the runtimes; what they finished must all be stored.
    for rt in &mut rts {
        rt.stop(Duration::from_secs(10)).await;
    }
    let stop_ns = now_ns();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stored_results(&js).await?;
    let executions = exec_log::read(&log)?;
    if hub.exited()?.is_some() {
        bail!("the hub exited during the scenario: {}", hub.log_tail(20));
    }
    hub.stop(Duration::from_secs(5)).await;

    let history = judge(&executions, &stored, &check_of, stop_ns);
    let check = checker::check(&history.events);
    let mut contiguous_gaps = 0u64;
    let mut by_spec: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for r in &stored {
        by_spec.entry((r.spec.clone(), r.epoch)).or_default().push(r.seq);
    }
    for seqs in by_spec.values_mut() {
        seqs.sort_unstable();
        seqs.dedup();
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        contiguous_gaps += (last - first + 1) - seqs.len() as u64;
    }
    let outage_secs = outage.as_secs_f64();
    Ok(FaultReport {
        name: NAME.to_owned(),
        fault: format!(
            "replies lost for {:.0} s (dedupe window {:.1} s), requests still delivered",
            outage_secs,
            window.as_secs_f64()
        ),
        load: format!(
            "{runtimes} runtimes (host identities, JWT) x {} checks every {interval_ms} ms",
            checks / runtimes.max(1)
        ),
        load_during_fault_per_sec: stored_during as f64 / outage_secs,
        acked: history.expected,
        stored: history.distinct_stored,
        check,
        recovery_ms: recovered.map(|d| d.as_secs_f64() * 1000.0),
        extra: json!({
            "stored_during_fault": stored_during,
            "answered_duplicate_during_fault": dups_during,
            "executions": history.executions,
            "executions_expected_stored": history.expected,
            "sequence_gaps": contiguous_gaps,
            "resumed_ms": resumed.as_secs_f64() * 1000.0,
            "fault_start_ns": fault_start_ns,
            "recovery": "from the link's return until every execution that ended before it has its result stored",
            "acked_means": "executions that finished before the runtimes were stopped (each must have exactly one stored result)",
        }),
        command: format!("steward-loadtest faults long_outage{}", if ctx.quick { " --quick" } else { "" }),
    })
}

/// The history of a run, built from the executions the checks logged and the stored results.
struct Judged {
    events: Vec<Event>,
    executions: u64,
    expected: u64,
    distinct_stored: u64,
}

/// Each stored result is matched to the execution it reports (same check and runtime, the
/// execution starting within 2 s after the result's start); each execution that ended before
/// `stop_ns` (minus a margin for results in flight at the stop) is an item that must be stored.
fn judge(executions: &[Event], stored: &[ResultRecord], check_of: &HashMap<String, String>, stop_ns: u64) -> Judged {
    let mut events: Vec<Event> = executions.to_vec();
    // Executions per (check, runtime), by start time.
    let mut starts: HashMap<(String, String), Vec<(u64, bool)>> = HashMap::new();
    let mut ended: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for e in executions {
        match e {
            Event::ExecStarted { spec, runtime, at } => {
                starts.entry((spec.clone(), runtime.clone())).or_default().push((*at, false));
            }
            Event::ExecEnded { spec, runtime, at } => {
                ended.entry((spec.clone(), runtime.clone())).or_default().push(*at)
            }
            _ => {}
        }
    }
    for v in starts.values_mut() {
        v.sort_unstable();
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    for r in stored {
        let key = r.idempotency_key();
        events.push(Event::ItemStored { key: key.clone() });
        *seen.entry(key).or_default() += 1;
    }
    // Match each distinct stored result to an execution.
    let mut matched: HashMap<(String, String, u64), String> = HashMap::new();
    let mut once: std::collections::HashSet<String> = std::collections::HashSet::new();
    for r in stored {
        let key = r.idempotency_key();
        if !once.insert(key.clone()) {
            continue;
        }
        let Some(check) = check_of.get(&r.spec) else { continue };
        let Some(v) = starts.get_mut(&(check.clone(), r.runtime.clone())) else { continue };
        let from = r.started_at_ms.saturating_mul(1_000_000);
        if let Some(slot) =
            v.iter_mut().find(|(at, used)| !*used && *at + 50_000_000 >= from && *at <= from + 2_000_000_000)
        {
            slot.1 = true;
            matched.insert((check.clone(), r.runtime.clone(), slot.0), key);
        }
    }
    let margin = 3_000_000_000u64;
    let mut expected = 0u64;
    let mut total = 0u64;
    for ((check, runtime), v) in &starts {
        let ends = ended.get(&(check.clone(), runtime.clone())).cloned().unwrap_or_default();
        for (at, _) in v {
            total += 1;
            let finished = ends.iter().any(|e| *e >= *at && *e + margin < stop_ns);
            if !finished {
                continue;
            }
            expected += 1;
            let key = matched
                .get(&(check.clone(), runtime.clone(), *at))
                .cloned()
                .unwrap_or_else(|| format!("execution {check} on {runtime} at {at} ns (no stored result)"));
            events.push(Event::ItemAcked { key });
        }
    }
    Judged { events, executions: total, expected, distinct_stored: seen.len() as u64 }
}
