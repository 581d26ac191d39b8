//! A small real Steward fleet for fault scenarios that need hubs, runtimes and edges together
//! (`hub_kill`, `leader_pause`): one nats-server (JWT mode with `--auth`), a job signing key,
//! `steward server` / `steward runtime` / `steward edge` processes ([`super::procs`]), a
//! configuration document with one pool of checks that log their own executions
//! ([`super::exec_log`]) and one pool of specs only simulated submitters lease; plus readers of
//! what the fleet left behind: the lease journal (grants, leader generations), the results
//! stream (stored keys, sequence gaps) and the simulated submitters' acknowledgements.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::json;
use steward_subjects::api::config::{ApplyReply, ApplyRequest};
use steward_subjects::api::lease::{
    LeaseJournalEntry, LeaseReply, LeaseRequest, LeasesReply, LeasesRequest, RenewReply, RenewRequest, SpecEpoch,
};
use steward_subjects::api::result::{
    decode_stored, ResultRecord, ResultStatus, SubmitReply, SubmitRequest, SubmitStatus,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::streams::{LEASE_JOURNAL_STREAM, RESULTS_STREAM};
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{AccountId, RuntimeId, Subjects};

use super::exec_log::{self, RUNTIME_ENV};
use super::procs::StewardProc;
use super::FaultCtx;
use crate::auth::Identity;
use crate::checker::Event;
use crate::env::{signing_key, Deployment, Topology};

/// Label value of the runtimes that run the logged checks (`fleet=real`).
pub const REAL: &str = "real";
/// Label value of the simulated submitters (`fleet=sim`).
pub const SIM: &str = "sim";

/// The deployment, keys and folders of one scenario.
pub struct Fleet {
    /// NATS (and the identities, with `--auth`).
    pub deployment: Deployment,
    /// The account served.
    pub account: AccountId,
    /// Its subjects.
    pub subjects: Subjects,
    /// The harness's own connection.
    pub client: async_nats::Client,
    /// The scenario's folder.
    pub dir: PathBuf,
    /// The hub's job signing key (secret).
    pub signing_key: PathBuf,
    /// Its public half (runtimes and edges trust it).
    pub public_key: PathBuf,
    /// The log the checks write their executions to.
    pub exec_log: PathBuf,
    /// When the fleet started (history times are ms since then).
    pub t0: Instant,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("account", &self.account).field("dir", &self.dir).finish()
    }
}

impl Fleet {
    /// Starts nats-server (authenticated with `ctx.auth`) and makes the signing key.
    ///
    /// # Errors
    /// When nats-server or `steward keys init` fails.
    pub async fn start(ctx: &FaultCtx, account: &str) -> anyhow::Result<Self> {
        let deployment = Deployment::start(Topology::Single, account, ctx.auth).await?;
        let keys = ctx.dir.join("keys");
        std::fs::create_dir_all(&keys)?;
        let signing_key = signing_key(&keys).await?;
        let public_key = keys.join("steward-signing.pub");
        let account = AccountId::parse(account).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = deployment.connect_in(account.as_str(), "fault-harness").await?;
        Ok(Fleet {
            subjects: Subjects::new(account.clone()),
            account,
            client,
            dir: ctx.dir.clone(),
            signing_key,
            public_key,
            exec_log: ctx.dir.join("exec.log"),
            deployment,
            t0: Instant::now(),
        })
    }

    /// Milliseconds since the fleet started.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `--nats`, `--account` and (authenticated) `--creds` of `who`.
    async fn global_args(&self, who: Identity) -> anyhow::Result<Vec<String>> {
        let mut a = vec!["--nats".into(), self.deployment.url_list(), "--account".into(), self.account.to_string()];
        if let Some(creds) = self.deployment.creds(self.account.as_str(), who).await? {
            a.push("--creds".into());
            a.push(creds.display().to_string());
        }
        Ok(a)
    }

    /// Starts `steward server` named `name` with the signing key and `extra` flags.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_hub(&self, name: &str, extra: &[&str]) -> anyhow::Result<StewardProc> {
        let mut args = self.global_args(Identity::Hub).await?;
        args.extend(["server".into(), "--signing-key".into(), self.signing_key.display().to_string()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        StewardProc::start(name, &self.dir, &args, &[])
    }

    /// Waits until a hub's health service answers (every hub component is then serving).
    ///
    /// # Errors
    /// When none answers within `within`.
    pub async fn wait_hub(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ping = self.client.request("$SRV.PING.steward-hub", "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), ping).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no steward hub answered within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies `document` as a new configuration revision (retrying while the hub starts).
    ///
    /// # Errors
    /// When it is refused or no hub answers within 30 s.
    pub async fn apply(&self, document: String) -> anyhow::Result<()> {
        let req =
            ApplyRequest { document, label: "fault".into(), author: "steward-loadtest".into(), if_revision: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r: Result<ApplyReply, _> =
                rpc::request(&self.client, self.subjects.config_apply(), &req, Duration::from_secs(10)).await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("configuration not applied: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Starts `steward runtime --id <name>` with labels `fleet=<fleet>`, its data folder, the
    /// trusted key and `STEWARD_FAULT_RUNTIME=<name>` (so its checks log who ran them).
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_runtime(&self, name: &str, fleet: &str) -> anyhow::Result<StewardProc> {
        let mut args = self.global_args(Identity::Harness).await?;
        args.extend([
            "runtime".into(),
            "--id".into(),
            name.into(),
            "--labels".into(),
            format!("fleet={fleet}"),
            "--data".into(),
            self.dir.join(name).display().to_string(),
            "--trusted-key".into(),
            self.public_key.display().to_string(),
        ]);
        StewardProc::start(name, &self.dir, &args, &[(RUNTIME_ENV.to_owned(), name.to_owned())])
    }

    /// Starts `steward edge --host-id <name>` (labels `fleet=edge`: it leases no pool spec of
    /// ours), its data folder, the trusted key, a 1 s heartbeat.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_edge(&self, name: &str) -> anyhow::Result<StewardProc> {
        let mut args = self.global_args(Identity::Harness).await?;
        args.extend([
            "edge".into(),
            "--host-id".into(),
            name.into(),
            "--labels".into(),
            "fleet=edge".into(),
            "--data".into(),
            self.dir.join(name).display().to_string(),
            "--trusted-key".into(),
            self.public_key.display().to_string(),
            "--heartbeat-ms".into(),
            "1000".into(),
        ]);
        StewardProc::start(name, &self.dir, &args, &[(RUNTIME_ENV.to_owned(), name.to_owned())])
    }

    /// The live leases of the account as the lease leader lists them: spec → holder.
    ///
    /// # Errors
    /// When no leader answers.
    pub async fn live_leases(&self) -> anyhow::Result<HashMap<String, String>> {
        let req = LeasesRequest { limit: 100_000, ..Default::default() };
        let reply: LeasesReply =
            rpc::request(&self.client, self.subjects.jobspec_leases(), &req, Duration::from_secs(2)).await?;
        Ok(reply.rows.into_iter().filter(|r| r.live && !r.holder.is_empty()).map(|r| (r.spec, r.holder)).collect())
    }
}

/// The configuration document: `real` pool specs (one per check `chk-<i>`, run every
/// `interval_ms` by runtimes labelled `fleet=real`, each execution logged to `log` and lasting
/// `busy_ms`; at least 1 s apart, the shortest interval a document may have) and `sim` pool specs (`true`, leased by the simulated submitters `fleet=sim`).
#[must_use]
pub fn document(real: u64, sim: u64, log: &Path, busy_ms: u64, interval_ms: u64) -> String {
    let mut controls = Vec::new();
    let mut attestations = Vec::new();
    let mut control_ids = Vec::new();
    for i in 0..real {
        controls.push(json!({"id": format!("ctl-{i}"), "title": format!("check {i}"), "parameters": {"check": format!("chk-{i}")}}));
        control_ids.push(format!("ctl-{i}"));
        attestations.push(json!({"id": format!("real-{i}"), "assessment": "logged", "component": "all", "controls": [format!("ctl-{i}")], "pool": "real"}));
    }
    for i in 0..sim {
        controls.push(json!({"id": format!("sim-{i}"), "title": format!("simulated {i}"), "parameters": {"check": format!("sim-{i}")}}));
        control_ids.push(format!("sim-{i}"));
        attestations.push(json!({"id": format!("simulated-{i}"), "assessment": "noop", "component": "all", "controls": [format!("sim-{i}")], "pool": "sim"}));
    }
    let interval_ms = interval_ms.max(1000);
    let interval = format!("{interval_ms}ms");
    json!({
        "version": 1,
        "description": "fault scenario: checks that log their own executions, and specs for simulated submitters",
        "controls": controls,
        "components": [{"id": "all", "title": "everything", "selector": "", "controls": control_ids}],
        "assessments": [
            {"id": "logged", "title": "logged check", "executor": {"kind": "command", "argv": exec_log::check_argv(log, "{{control.check}}", busy_ms)}, "interval": interval, "timeout": interval},
            {"id": "noop", "title": "never run", "executor": {"kind": "command", "argv": ["true"]}, "interval": "60s", "timeout": "5s"}
        ],
        "attestations": attestations,
        "pools": [
            {"id": "real", "title": "runtimes running logged checks", "selector": format!("fleet={REAL}")},
            {"id": "sim", "title": "simulated submitters", "selector": format!("fleet={SIM}")}
        ]
    })
    .to_string()
}

/// What the simulated submitters saw.
#[derive(Debug, Default)]
pub struct SimTally {
    /// Idempotency keys acknowledged (stored or duplicate).
    pub acked: Vec<String>,
    /// When each acknowledged batch came back (ms since the fleet started) and how many keys
    /// it acknowledged.
    pub acks: Vec<(u64, u64)>,
    /// `stored` outcomes.
    pub stored_replies: u64,
    /// `duplicate` outcomes (a re-sent batch whose first reply was lost).
    pub duplicate_replies: u64,
    /// Results refused (stale epoch after a lease was lost): not acknowledged, not resent.
    pub refused: u64,
    /// Requests that got no answer (hub away) and were sent again.
    pub unanswered: u64,
    /// The first error a submit got (for the report).
    pub last_error: String,
}

impl SimTally {
    /// Keys acknowledged between `from_ms` and `to_ms`.
    #[must_use]
    pub fn acked_between(&self, from_ms: u64, to_ms: u64) -> u64 {
        self.acks.iter().filter(|(t, _)| *t >= from_ms && *t < to_ms).map(|(_, n)| n).sum()
    }

    /// The first acknowledgement at or after `from_ms`.
    #[must_use]
    pub fn first_ack_after(&self, from_ms: u64) -> Option<u64> {
        self.acks.iter().map(|(t, _)| *t).filter(|t| *t >= from_ms).min()
    }
}

/// Starts `n` simulated submitters (`sim-0` ...) on `fleet`, each sending `batch` results every
/// 100 ms into `tally` until `stop`, then draining for at most 30 s.
pub fn spawn_submitters(
    fleet: &Fleet,
    n: u64,
    batch: usize,
    tally: &Arc<Mutex<SimTally>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            tokio::spawn(sim_submitter(
                fleet.client.clone(),
                fleet.subjects.clone(),
                format!("sim-{i}"),
                batch,
                Duration::from_millis(100),
                fleet.t0,
                tally.clone(),
                stop.clone(),
                Duration::from_secs(30),
            ))
        })
        .collect()
}
/// A simulated submitter: leases `fleet=sim` specs as runtime `name`, renews them, and submits
/// `batch` results every `every`; a batch that got no answer is sent again, unchanged, until
/// it is answered (as a runtime's outbox does). Ends when `stop` turns true and nothing is
/// left to send (or `drain` has passed since).
#[allow(clippy::too_many_arguments)]
pub async fn sim_submitter(
    client: async_nats::Client,
    subjects: Subjects,
    name: String,
    batch: usize,
    every: Duration,
    t0: Instant,
    tally: Arc<Mutex<SimTally>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let Ok(runtime) = RuntimeId::parse(&name) else { return };
    let timeout = Duration::from_secs(2);
    let subject = |e: IdentityEndpoint| subjects.identity_subject(e, None, &runtime);
    let labels: BTreeMap<String, String> = [("fleet".to_owned(), SIM.to_owned())].into();
    let mut held: Vec<(String, u64)> = Vec::new();
    let mut seq: HashMap<(String, u64), u64> = HashMap::new();
    // Numbered like a real runtime's outbox (one incarnation, positions from 1), so a re-send
    // is recognised by the hub's stored watermark however late it comes.
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let mut outbox = 0u64;
    let mut pending: Option<Vec<ResultRecord>> = None;
    let mut renewed = Instant::now();
    let mut ttl = Duration::from_secs(15);
    let mut stop_at: Option<Instant> = None;
    let mut i = 0usize;
    let ms = |t: Instant| u64::try_from(t.duration_since(t0).as_millis()).unwrap_or(u64::MAX);
    loop {
        if stop_at.is_none() && *stop.borrow() {
            stop_at = Some(Instant::now());
        }
        if let Some(at) = stop_at {
            if pending.is_none() || at.elapsed() > drain {
                return;
            }
        }
        if held.is_empty() && stop_at.is_none() {
            let req = LeaseRequest { runtime: name.clone(), labels: labels.clone(), max: 4, ..Default::default() };
            match rpc::request::<_, LeaseReply>(&client, subject(IdentityEndpoint::Lease), &req, timeout).await {
                Ok(r) => {
                    held = r.granted.into_iter().map(|g| (g.spec.id, g.epoch)).collect();
                    ttl = Duration::from_millis(r.ttl_ms.max(300));
                    renewed = Instant::now();
                }
                Err(_) => tally.lock().map(|mut t| t.unanswered += 1).unwrap_or(()),
            }
            if held.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if !held.is_empty() && renewed.elapsed() >= ttl / 3 {
            let req = RenewRequest {
                runtime: name.clone(),
                labels: labels.clone(),
                held: held.iter().map(|(spec, epoch)| SpecEpoch { spec: spec.clone(), epoch: *epoch }).collect(),
                ..Default::default()
            };
            if let Ok(r) = rpc::request::<_, RenewReply>(&client, subject(IdentityEndpoint::Renew), &req, timeout).await
            {
                renewed = Instant::now();
                held.retain(|(s, e)| !r.refused.iter().any(|x| &x.spec == s && x.epoch == *e));
            }
        }
        if pending.is_none() && stop_at.is_none() && !held.is_empty() {
            let mut results = Vec::with_capacity(batch);
            for _ in 0..batch {
                let (spec, epoch) = held[i % held.len()].clone();
                i += 1;
                let s = seq.entry((spec.clone(), epoch)).or_insert(0);
                *s += 1;
                outbox += 1;
                results.push(ResultRecord {
                    spec,
                    epoch,
                    seq: *s,
                    outbox,
                    runtime: name.clone(),
                    host: name.clone(),
                    executor: "command".into(),
                    status: ResultStatus::Pass,
                    message: "exit 0".into(),
                    exit_code: Some(0),
                    output: "ok\n".into(),
                    ..ResultRecord::default()
                });
            }
            pending = Some(results);
        }
        let Some(results) = pending.take() else {
            tokio::time::sleep(every).await;
            continue;
        };
        let req = SubmitRequest { results, incarnation: incarnation.clone() };
        match rpc::request::<_, SubmitReply>(&client, subject(IdentityEndpoint::Submit), &req, timeout).await {
            Ok(reply) => {
                let mut retry = Vec::new();
                let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut acked = 0;
                for (o, r) in reply.outcomes.into_iter().zip(req.results) {
                    match o.status {
                        SubmitStatus::Stored | SubmitStatus::Duplicate => {
                            if o.status == SubmitStatus::Stored {
                                t.stored_replies += 1;
                            } else {
                                t.duplicate_replies += 1;
                            }
                            t.acked.push(format!("{name}/{}", o.key));
                            acked += 1;
                        }
                        SubmitStatus::Retry => retry.push(r),
                        SubmitStatus::Refused => {
                            t.refused += 1;
                            held.retain(|(s, e)| !(s == &r.spec && *e == r.epoch));
                        }
                    }
                }
                if acked > 0 {
                    t.acks.push((ms(Instant::now()), acked));
                }
                if !retry.is_empty() {
                    pending = Some(retry);
                }
            }
            Err(e) => {
                if let Ok(mut t) = tally.lock() {
                    t.unanswered += 1;
                }
                pending = Some(req.results);
                if let Ok(mut t) = tally.lock() {
                    if t.last_error.is_empty() {
                        t.last_error = e.to_string();
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// What the results stream holds for the account.
#[derive(Debug, Default)]
pub struct StoredResults {
    /// One [`Event::ItemStored`] per stored copy of a simulated submitter's result.
    pub sim_events: Vec<Event>,
    /// Results stored by real runtimes.
    pub real: u64,
    /// Real runtimes' keys stored more than once (extra copies).
    pub real_duplicates: u64,
    /// Gaps in a real runtime's sequence numbers per (spec, epoch) (missing numbers between the
    /// first and the last stored).
    pub real_gaps: u64,
    /// (spec, epoch) pairs of real runtimes.
    pub real_runs: u64,
    /// Examples of problems.
    pub examples: Vec<String>,
}

/// Reads every stored result of the account; results of runtimes named `sim-*` become
/// [`Event::ItemStored`], the others are checked for duplicates and sequence gaps.
///
/// # Errors
/// When the stream cannot be read or a segment not decoded.
pub async fn read_results(fleet: &Fleet) -> anyhow::Result<StoredResults> {
    let js = jetstream::new(fleet.client.clone());
    let stream = js.get_stream(RESULTS_STREAM).await?;
    let mut out = StoredResults::default();
    let mut keys: HashMap<String, u64> = HashMap::new();
    let mut seqs: HashMap<(String, u64), Vec<u64>> = HashMap::new();
    for_each(&stream, &fleet.client, fleet.subjects.result_put_all(), |msg| {
        for rec in decode_stored(msg.headers.as_ref(), &msg.payload)? {
            let key = rec.idempotency_key();
            if rec.runtime.starts_with("sim-") {
                out.sim_events.push(Event::ItemStored { key: format!("{}/{key}", rec.runtime) });
            } else {
                out.real += 1;
                *keys.entry(format!("{}/{key}", rec.runtime)).or_default() += 1;
                seqs.entry((rec.spec.clone(), rec.epoch)).or_default().push(rec.seq);
            }
        }
        Ok(())
    })
    .await?;
    for (k, n) in keys {
        if n > 1 {
            out.real_duplicates += n - 1;
            if out.examples.len() < 10 {
                out.examples.push(format!("result {k} stored {n} times"));
            }
        }
    }
    out.real_runs = seqs.len() as u64;
    for ((spec, epoch), mut s) in seqs {
        s.sort_unstable();
        s.dedup();
        let (first, last) = (s[0], s[s.len() - 1]);
        let gaps = (last - first + 1) - s.len() as u64;
        if gaps > 0 {
            out.real_gaps += gaps;
            if out.examples.len() < 10 {
                out.examples
                    .push(format!("spec {spec} epoch {epoch}: {gaps} sequence numbers missing in {first}..={last}"));
            }
        }
    }
    Ok(out)
}

/// Calls `f` on every message of `stream` on `filter`, oldest first.
async fn for_each(
    stream: &jetstream::stream::Stream,
    client: &async_nats::Client,
    filter: String,
    mut f: impl FnMut(&jetstream::Message) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let c = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: filter,
            ..Default::default()
        })
        .await?;
    let mut pending = c.cached_info().num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut msgs = c.messages().await?;
    while pending > 0 {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await else {
            bail!("stream read stalled with {pending} messages left");
        };
        pending = msg.info().map(|i| i.pending).unwrap_or(0);
        f(&msg)?;
    }
    Ok(())
}

/// One lease journal entry as the harness saw it.
#[derive(Debug, Clone)]
pub struct JournalSeen {
    /// Stream sequence.
    pub seq: u64,
    /// When the harness received it (ms since the fleet started).
    pub at_ms: u64,
    /// The entry.
    pub entry: LeaseJournalEntry,
}

/// Follows the lease journal from its start (the leader purges it below each snapshot, so it
/// is followed live rather than read at the end).
pub struct JournalFollower {
    seen: Arc<Mutex<Vec<JournalSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for JournalFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalFollower").finish()
    }
}

impl JournalFollower {
    /// Starts following (call before the first hub starts; the stream must exist, so this
    /// creates the stream set first).
    ///
    /// # Errors
    /// When the stream cannot be created or read.
    pub async fn start(fleet: &Fleet) -> anyhow::Result<Self> {
        let js = jetstream::new(fleet.client.clone());
        steward_subjects::streams::ensure(&js, fleet.deployment.replicas()).await?;
        let stream = js.get_stream(LEASE_JOURNAL_STREAM).await?;
        let c = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: fleet.client.new_inbox(),
                filter_subject: fleet.subjects.jobspec_journal(),
                ..Default::default()
            })
            .await?;
        let mut msgs = c.messages().await?;
        let seen: Arc<Mutex<Vec<JournalSeen>>> = Arc::default();
        let (out, t0) = (seen.clone(), fleet.t0);
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = msgs.next().await {
                let Ok(entry) = codec::decode_limited::<LeaseJournalEntry>(Encoding::MsgPack, &msg.payload, usize::MAX)
                else {
                    continue;
                };
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                let at_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                if let Ok(mut s) = out.lock() {
                    s.push(JournalSeen { seq, at_ms, entry });
                }
            }
        });
        Ok(JournalFollower { seen, task })
    }

    /// Everything seen so far.
    #[must_use]
    pub fn entries(&self) -> Vec<JournalSeen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for JournalFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the journal says about leases and leaders.
#[derive(Debug, Default)]
pub struct JournalFindings {
    /// [`Event::LeaseGranted`] / [`Event::LeaseEnded`] per grant (a grant ends when the spec's
    /// next lease change is journaled).
    pub events: Vec<Event>,
    /// Grants journaled.
    pub grants: u64,
    /// Grants whose epoch did not grow past the spec's previous one.
    pub epochs_not_growing: u64,
    /// Entries written by a leader generation older than a takeover journaled before them.
    pub stale_writes_after_takeover: u64,
    /// Takeover entries: (generation, instance, ms since start).
    pub takeovers: Vec<(u64, String, u64)>,
    /// Examples of problems.
    pub examples: Vec<String>,
}

/// Turns the followed journal into lease history and leader figures.
#[must_use]
pub fn journal_findings(entries: &[JournalSeen]) -> JournalFindings {
    let mut f = JournalFindings::default();
    let mut current: HashMap<String, (String, u64)> = HashMap::new();
    let mut newest_generation = 0u64;
    let mut sorted: Vec<&JournalSeen> = entries.iter().collect();
    sorted.sort_by_key(|e| e.seq);
    for e in sorted {
        let at = e.at_ms * 1_000_000;
        if e.entry.generation < newest_generation {
            f.stale_writes_after_takeover += 1;
            if f.examples.len() < 10 {
                f.examples.push(format!(
                    "journal seq {}: written by generation {} after generation {} took over",
                    e.seq, e.entry.generation, newest_generation
                ));
            }
        }
        if e.entry.takeover {
            newest_generation = newest_generation.max(e.entry.generation);
            f.takeovers.push((e.entry.generation, e.entry.instance.clone(), e.at_ms));
        }
        for l in &e.entry.leases {
            if let Some((holder, epoch)) = current.get(&l.spec) {
                if (holder, *epoch) == (&l.holder, l.epoch) {
                    continue;
                }
                if !holder.is_empty() {
                    f.events.push(Event::LeaseEnded {
                        spec: l.spec.clone(),
                        holder: holder.clone(),
                        epoch: *epoch,
                        at,
                    });
                }
                if !l.holder.is_empty() && l.epoch <= *epoch {
                    f.epochs_not_growing += 1;
                    if f.examples.len() < 10 {
                        f.examples.push(format!("spec {}: epoch {} granted after epoch {epoch}", l.spec, l.epoch));
                    }
                }
            }
            if !l.holder.is_empty() {
                f.grants += 1;
                f.events.push(Event::LeaseGranted {
                    spec: l.spec.clone(),
                    holder: l.holder.clone(),
                    epoch: l.epoch,
                    at,
                });
            }
            current.insert(l.spec.clone(), (l.holder.clone(), l.epoch));
        }
    }
    f
}

/// The executions logged by the checks, and the longest pause between two executions of one
/// check (ns) with the time it started (ns, the checks' clock).
///
/// # Errors
/// When the log cannot be read.
pub fn executions(log: &Path) -> anyhow::Result<(Vec<Event>, u64, u64)> {
    let events = exec_log::read(log).context("exec log")?;
    let mut starts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        if let Event::ExecStarted { spec, at, .. } = e {
            starts.entry(spec).or_default().push(*at);
        }
    }
    let (mut gap, mut gap_at) = (0u64, 0u64);
    for s in starts.values_mut() {
        s.sort_unstable();
        for w in s.windows(2) {
            if w[1] - w[0] > gap {
                gap = w[1] - w[0];
                gap_at = w[0];
            }
        }
    }
    Ok((events, gap, gap_at))
}

/// Wall-clock now in ns (the checks' clock, `date +%s%N`).
#[must_use]
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
