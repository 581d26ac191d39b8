//! Fault scenario `leaf_cut`: the leaf link of every edge is cut for 60 s (10 s in the short
//! version) while the edges keep running their checks, and one edge agent is SIGKILLed and
//! restarted while cut off.
//!
//! Real processes: a hub `nats-server` (JetStream domain `hub`, leafnode port, JWT operator mode
//! with `--auth`), `steward server` with a signing key from `steward keys init`, and one
//! `steward edge --leaf-remote` per host, each running its own leaf `nats-server` whose remote
//! is a [`CutProxy`] in front of the hub's leafnode port. A configuration applied with
//! `steward apply` gives every edge [`CHECKS`] host checks at a 1 s interval (the shortest the
//! configuration allows), so each edge runs a check every 200 ms on average; each check is an
//! [`exec_log::check_argv`] command, so the history holds what the edges really executed.
//!
//! Timeline: warm-up until every spec has a stored result, the cut (the proxy drops every leaf
//! connection and refuses new ones), the first edge SIGKILLed a third into the cut and
//! restarted half-way through it (still cut off: it starts from its redb outbox and spec
//! cache), the link restored, then a settling time. The judged executions are those that
//! started before the end of the settling time; the scenario waits until each has ended and
//! its result is stored (or a deadline passes), then reads every stored result back from
//! `STEWARD_RESULTS`.
//!
//! Judgement: the edge processes do not expose the hub's per-result acknowledgements, so the
//! expected set ("acked") is every execution logged as completed, each matched to its stored
//! result by spec and time; an execution without one is lost, except on the killed edge the
//! executions that were running when it was killed (their result was never recorded). Every
//! stored key must be stored once, and each (spec, epoch) must hold the sequence numbers 1..n
//! without a gap. The cut must be real (no result stored while it lasted) and the edges must
//! have kept working through it (executions logged during the cut whose results were stored
//! after the link came back). Recovery is the time from the restore until the last result
//! produced before the restore was stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::FutureExt as _;
use futures::StreamExt as _;
use serde_json::json;
use steward_deploy::authority::{Authority, IssueRequest, Kind};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_subjects::api::result::decode_stored;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::JobSpec;
use steward_subjects::streams::{JOBSPECS_BUCKET, RESULTS_STREAM};
use steward_subjects::subject::OperatorRole;
use steward_subjects::{AccountId, HostId, Subjects};

use super::exec_log::{self, RUNTIME_ENV};
use super::procs::StewardProc;
use super::proxy::CutProxy;
use super::{FaultCtx, FaultDef, FaultReport};
use crate::checker::{check, Event};

/// The scenario's name.
const NAME: &str = "leaf_cut";

/// The scenario.
pub const DEF: FaultDef = FaultDef {
    name: NAME,
    about: "every edge's leaf link cut for 60 s (10 s --quick) through a proxy while checks run; one edge SIGKILLed and restarted while cut off",
    run: |ctx| run(ctx).boxed(),
};

/// The account everything runs in.
const ACCOUNT: &str = "acme";
/// Host checks per edge, each at a 1 s interval: one check every 200 ms per edge.
const CHECKS: u64 = 5;
/// How long each check runs.
const BUSY_MS: u64 = 20;
/// Results stored this soon after the cut may have been in the hub's hands before it.
const CUT_MARGIN_NS: u64 = 500_000_000;
/// An execution of the killed edge that ended this shortly before the kill may not have
/// reached its outbox (the process finished, the agent had not recorded it yet).
const KILL_MARGIN_NS: u64 = 1_000_000_000;

/// Sizes of one run (`--set name=N` overrides each).
#[derive(Debug, Clone, Copy)]
struct Plan {
    edges: u64,
    checks: u64,
    warm_secs: u64,
    cut_secs: u64,
    settle_secs: u64,
    deadline_secs: u64,
}

impl Plan {
    fn of(ctx: &FaultCtx) -> Self {
        Plan {
            edges: ctx.size("edges", 4, 3).max(1),
            checks: ctx.size("checks", CHECKS, CHECKS).max(1),
            warm_secs: ctx.size("warm_secs", 10, 3),
            cut_secs: ctx.size("cut_secs", 60, 10).max(3),
            settle_secs: ctx.size("settle_secs", 5, 2),
            deadline_secs: ctx.size("deadline_secs", 180, 45),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn host_name(i: u64) -> String {
    format!("edge-{i}")
}

fn check_name(i: u64) -> String {
    format!("c{i}")
}

/// The identities of an authenticated run: credentials files by name.
struct Identities {
    server_config: String,
    hub: PathBuf,
    admin: PathBuf,
    hosts: BTreeMap<String, PathBuf>,
}

/// Issues the hub's service identity, one host identity per edge and an admin operator for the
/// harness (before the server starts, so it preloads the account).
fn issue_identities(dir: &Path, hosts: &[String]) -> anyhow::Result<Identities> {
    let auth = Authority::open(dir.join("auth")).context("cannot open the authority")?;
    let account = AccountId::parse(ACCOUNT)?;
    let subjects = Subjects::new(account);
    let issue = |kind: Kind, name: &str, role: Option<&str>, perms: steward_subjects::subject::HostPermissions| {
        let req = IssueRequest {
            account: ACCOUNT.to_owned(),
            kind,
            name: name.to_owned(),
            role: role.map(str::to_owned),
            publish: perms.publish,
            subscribe: perms.subscribe,
        };
        auth.ensure(&req).map(|i| i.creds_file).with_context(|| format!("cannot issue the {kind} identity {name}"))
    };
    let hub = issue(Kind::Service, "hub", None, subjects.service_permissions())?;
    let admin = OperatorRole::Admin;
    let admin = issue(Kind::Operator, "admin", Some(admin.as_str()), subjects.operator_permissions(admin))?;
    let mut creds = BTreeMap::new();
    for h in hosts {
        let host = HostId::parse(h)?;
        creds.insert(h.clone(), issue(Kind::Host, h, None, subjects.host_permissions(&host))?);
    }
    let server_config = auth.server_config(&dir.join("resolver"))?;
    Ok(Identities { server_config, hub, admin, hosts: creds })
}

/// The configuration: `checks` host checks on every edge (label `fleet=yes`), each logging its
/// executions to `log`.
fn document(log: &Path, checks: u64) -> String {
    let names: Vec<String> = (1..=checks).map(check_name).collect();
    let assessments: Vec<serde_json::Value> = names
        .iter()
        .map(|c| {
            json!({
                "id": c,
                "executor": {"kind": "command", "argv": exec_log::check_argv(log, c, BUSY_MS)},
                "interval": "1s",
                "timeout": "1s",
            })
        })
        .collect();
    let attestations: Vec<serde_json::Value> = names
        .iter()
        .map(|c| json!({"id": format!("a-{c}"), "assessment": c, "component": "fleet", "controls": ["alive"]}))
        .collect();
    json!({
        "controls": [{"id": "alive"}],
        "components": [{"id": "fleet", "selector": "fleet=yes", "controls": ["alive"]}],
        "assessments": assessments,
        "attestations": attestations,
    })
    .to_string()
}

/// One result read back from `STEWARD_RESULTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    /// Spec id.
    pub spec: String,
    /// Lease epoch.
    pub epoch: u64,
    /// Sequence within (spec, epoch).
    pub seq: u64,
    /// Runtime that ran it.
    pub runtime: String,
    /// Start, ms (edge clock).
    pub started_ms: u64,
    /// End, ms (edge clock).
    pub ended_ms: u64,
    /// When the hub stored it, ns (the stream's timestamp).
    pub stored_ns: u64,
}

impl StoredResult {
    fn key(&self) -> String {
        format!("{}:{}:{}", self.spec, self.epoch, self.seq)
    }
}

/// Reads `STEWARD_RESULTS` incrementally.
struct ResultsReader {
    stream: async_nats::jetstream::stream::Stream,
    next: u64,
    results: Vec<StoredResult>,
}

impl ResultsReader {
    async fn new(client: &async_nats::Client) -> anyhow::Result<Self> {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream(RESULTS_STREAM).await.context("cannot open the results stream")?;
        Ok(ResultsReader { stream, next: 1, results: Vec::new() })
    }

    /// Reads what was stored since the last call.
    async fn poll(&mut self) -> anyhow::Result<&[StoredResult]> {
        let last = self.stream.info().await.context("results stream info")?.state.last_sequence;
        while self.next <= last {
            let seq = self.next;
            let msg = self.stream.get_raw_message(seq).await.with_context(|| format!("results message {seq}"))?;
            let stored_ns = u64::try_from(msg.time.unix_timestamp_nanos()).unwrap_or(0);
            for r in decode_stored(Some(&msg.headers), &msg.payload)? {
                self.results.push(StoredResult {
                    spec: r.spec,
                    epoch: r.epoch,
                    seq: r.seq,
                    runtime: r.runtime,
                    started_ms: r.started_at_ms,
                    ended_ms: r.ended_at_ms,
                    stored_ns,
                });
            }
            self.next += 1;
        }
        Ok(&self.results)
    }
}

/// The spec of each (check, host), from the spec store.
async fn spec_map(client: &async_nats::Client) -> anyhow::Result<HashMap<(String, String), String>> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.context("cannot open the job-spec bucket")?;
    let mut keys = kv.keys().await.context("job-spec keys")?;
    let mut out = HashMap::new();
    while let Some(key) = keys.next().await {
        let key = key.context("job-spec key")?;
        let Some(bytes) = kv.get(&key).await.context("job-spec get")? else { continue };
        let spec: JobSpec = codec::decode(Encoding::MsgPack, &bytes).with_context(|| format!("job spec {key}"))?;
        out.insert((spec.provenance.assessment.clone(), spec.target.id.clone()), spec.id.clone());
    }
    Ok(out)
}

/// One execution read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The check's name.
    pub check: String,
    /// The edge (runtime) that ran it.
    pub host: String,
    /// Start, ns.
    pub start_ns: u64,
    /// End, ns (`None`: never ended).
    pub end_ns: Option<u64>,
}

/// Pairs each start with the next end of the same check on the same edge.
fn executions(events: &[Event]) -> Vec<Exec> {
    let mut out: Vec<Exec> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    for e in events {
        match e {
            Event::ExecStarted { spec, runtime, at } => {
                open.insert((spec.clone(), runtime.clone()), out.len());
                out.push(Exec { check: spec.clone(), host: runtime.clone(), start_ns: *at, end_ns: None });
            }
            Event::ExecEnded { spec, runtime, at } => {
                if let Some(i) = open.remove(&(spec.clone(), runtime.clone())) {
                    out[i].end_ns = Some(*at);
                }
            }
            _ => {}
        }
    }
    out
}

/// When things happened (ns since the Unix epoch).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    /// The link was cut.
    pub cut_ns: u64,
    /// The edge was SIGKILLed.
    pub kill_ns: u64,
    /// It was started again.
    pub restart_ns: u64,
    /// The link was restored.
    pub restore_ns: u64,
    /// Executions started before this are judged.
    pub final_ns: u64,
}

/// What [`judge`] found.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    /// The history for the checker.
    pub history: Vec<Event>,
    /// Executions expected to have a stored result.
    pub expected: u64,
    /// Distinct stored results of the judged executions' time window.
    pub stored: u64,
    /// Executions of the killed edge running when it was killed (no result expected).
    pub unfinished_at_kill: u64,
    /// Executions that ended while the link was cut.
    pub executed_during_cut: u64,
    /// Of those, how many have a result stored after the restore.
    pub produced_during_cut_stored_after: u64,
    /// Results stored while the link was cut (after a short margin).
    pub stored_during_cut: u64,
    /// Results of the killed edge produced during the cut before the kill and stored after
    /// the restore (they survived the kill in its outbox).
    pub killed_outbox_survivors: u64,
    /// Results of the killed edge started after its restart.
    pub killed_after_restart: u64,
    /// Missing sequence numbers (spec:epoch:seq).
    pub seq_gaps: Vec<String>,
    /// Specs whose results carry more than one epoch.
    pub specs_with_new_epoch: u64,
    /// From the restore until the last result produced before it was stored, ms.
    pub recovery_ms: Option<f64>,
}

/// Matches executions to stored results and builds the history and figures.
#[must_use]
pub fn judge(
    execs: &[Exec],
    stored: &[StoredResult],
    spec_of: &HashMap<(String, String), String>,
    killed: &str,
    t: Timeline,
) -> Judgement {
    let mut j = Judgement::default();
    // Stored results per spec, by start; every stored copy is an ItemStored.
    let mut by_spec: HashMap<&str, Vec<&StoredResult>> = HashMap::new();
    for r in stored {
        by_spec.entry(r.spec.as_str()).or_default().push(r);
        j.history.push(Event::ItemStored { key: r.key() });
    }
    for v in by_spec.values_mut() {
        v.sort_by_key(|r| (r.started_ms, r.seq));
    }
    // Leases as the stored results show them: the first start of each (spec, epoch, runtime).
    let mut leases: BTreeMap<(&str, u64, &str), u64> = BTreeMap::new();
    for r in stored {
        let at = leases.entry((&r.spec, r.epoch, &r.runtime)).or_insert(u64::MAX);
        *at = (*at).min(r.started_ms.saturating_mul(1_000_000));
    }
    for ((spec, epoch, holder), at) in &leases {
        j.history.push(Event::LeaseGranted {
            spec: (*spec).to_owned(),
            holder: (*holder).to_owned(),
            epoch: *epoch,
            at: *at,
        });
    }
    let mut epochs: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for r in stored {
        epochs.entry(&r.spec).or_default().insert(r.epoch);
    }
    j.specs_with_new_epoch = epochs.values().filter(|e| e.len() > 1).count() as u64;

    // Sequence gaps per (spec, epoch).
    let mut seqs: BTreeMap<(&str, u64), BTreeSet<u64>> = BTreeMap::new();
    for r in stored {
        seqs.entry((&r.spec, r.epoch)).or_default().insert(r.seq);
    }
    let mut gaps: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for ((spec, epoch), set) in &seqs {
        let max = set.iter().next_back().copied().unwrap_or(0);
        for s in 1..=max {
            if !set.contains(&s) {
                j.seq_gaps.push(format!("{spec}:{epoch}:{s}"));
                gaps.entry(spec).or_default().push((*epoch, s));
            }
        }
    }

    let in_cut = |ns: u64| ns >= t.cut_ns && ns <= t.restore_ns;
    let mut last_backlog_ns: Option<u64> = None;
    let mut stored_keys: BTreeSet<String> = BTreeSet::new();
    let mut gap_used: BTreeSet<(String, u64, u64)> = BTreeSet::new();
    for e in execs {
        let Some(spec) = spec_of.get(&(e.check.clone(), e.host.clone())) else { continue };
        j.history.push(Event::ExecStarted { spec: spec.clone(), runtime: e.host.clone(), at: e.start_ns });
        let Some(end_ns) = e.end_ns else { continue };
        j.history.push(Event::ExecEnded { spec: spec.clone(), runtime: e.host.clone(), at: end_ns });
        if e.start_ns >= t.final_ns {
            continue;
        }
        let (start_ms, end_ms) = (e.start_ns / 1_000_000, end_ns / 1_000_000);
        let found = by_spec.get(spec.as_str()).and_then(|v| {
            let i = v.partition_point(|r| r.started_ms <= start_ms + 1);
            i.checked_sub(1).map(|i| v[i]).filter(|r| end_ms <= r.ended_ms + 1)
        });
        if in_cut(end_ns) {
            j.executed_during_cut += 1;
        }
        match found {
            Some(r) => {
                j.expected += 1;
                stored_keys.insert(r.key());
                j.history.push(Event::ItemAcked { key: r.key() });
                if in_cut(end_ns) && r.stored_ns >= t.restore_ns {
                    j.produced_during_cut_stored_after += 1;
                }
                if end_ns < t.restore_ns && r.stored_ns >= t.restore_ns {
                    last_backlog_ns = Some(last_backlog_ns.map_or(r.stored_ns, |l| l.max(r.stored_ns)));
                }
                if e.host == killed {
                    if in_cut(end_ns) && end_ns < t.kill_ns && r.stored_ns >= t.restore_ns {
                        j.killed_outbox_survivors += 1;
                    }
                    if e.start_ns > t.restart_ns {
                        j.killed_after_restart += 1;
                    }
                }
            }
            None if e.host == killed && e.start_ns <= t.kill_ns && end_ns + KILL_MARGIN_NS >= t.kill_ns => {
                j.unfinished_at_kill += 1;
            }
            None => {
                j.expected += 1;
                // Name it after the missing sequence number it most likely had, so a gap and
                // its execution count once.
                let gap = gaps.get(spec.as_str()).and_then(|g| {
                    g.iter().find(|(epoch, seq)| {
                        !gap_used.contains(&(spec.clone(), *epoch, *seq))
                            && bracketed(
                                by_spec.get(spec.as_str()).map_or(&[][..], Vec::as_slice),
                                *epoch,
                                *seq,
                                start_ms,
                            )
                    })
                });
                let key = match gap {
                    Some((epoch, seq)) => {
                        gap_used.insert((spec.clone(), *epoch, *seq));
                        format!("{spec}:{epoch}:{seq}")
                    }
                    None => format!("{spec}:unstored@{}", e.start_ns),
                };
                j.history.push(Event::ItemAcked { key });
            }
        }
    }
    // Gaps no execution explained are lost results too.
    for (spec, g) in &gaps {
        for (epoch, seq) in g {
            if !gap_used.contains(&((*spec).to_owned(), *epoch, *seq)) {
                j.history.push(Event::ItemAcked { key: format!("{spec}:{epoch}:{seq}") });
            }
        }
    }
    j.stored = stored_keys.len() as u64;
    j.stored_during_cut = stored
        .iter()
        .filter(|r| r.stored_ns >= t.cut_ns.saturating_add(CUT_MARGIN_NS) && r.stored_ns < t.restore_ns)
        .count() as u64;
    #[allow(clippy::cast_precision_loss)]
    {
        j.recovery_ms = last_backlog_ns.map(|l| l.saturating_sub(t.restore_ns) as f64 / 1e6);
    }
    j
}

/// Whether missing `seq` of `epoch` sits where an execution started at `start_ms` would have
/// been numbered: after the stored result just before it and before the one just after it.
fn bracketed(results: &[&StoredResult], epoch: u64, seq: u64, start_ms: u64) -> bool {
    let before = results.iter().filter(|r| r.epoch == epoch && r.seq < seq).map(|r| r.started_ms).max();
    let after = results.iter().filter(|r| r.epoch == epoch && r.seq > seq).map(|r| r.started_ms).min();
    before.is_none_or(|b| b <= start_ms) && after.is_none_or(|a| start_ms <= a)
}

/// The running pieces.
struct Fleet {
    dir: PathBuf,
    url: String,
    ids: Option<Identities>,
    server: StewardProc,
    edges: Vec<StewardProc>,
}

impl Fleet {
    /// The global arguments of a `steward` command against `url` with `creds`.
    fn global_args(url: &str, creds: Option<&Path>) -> Vec<String> {
        let mut a = vec!["--nats".to_owned(), url.to_owned(), "--account".to_owned(), ACCOUNT.to_owned()];
        if let Some(c) = creds {
            a.extend(["--creds".to_owned(), c.display().to_string()]);
        }
        a
    }

    fn global(&self, creds: Option<&Path>) -> Vec<String> {
        Self::global_args(&self.url, creds)
    }

    fn logs(&self) -> String {
        let mut s = format!("--- server\n{}\n", self.server.log_tail(20));
        for e in &self.edges {
            s.push_str(&format!("--- {}\n{}\n", e.name(), e.log_tail(20)));
        }
        s
    }
}

async fn connect(url: &str, creds: Option<&Path>) -> anyhow::Result<async_nats::Client> {
    let opts = match creds {
        Some(c) => async_nats::ConnectOptions::with_credentials_file(c)
            .await
            .with_context(|| format!("cannot read {}", c.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    opts.name("loadtest-leaf-cut").connect(url).await.with_context(|| format!("cannot connect to {url}"))
}

/// Polls `f` every 250 ms until it answers `Some` or `secs` pass.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the execution log and the stored results every 250 ms until `done` holds for them;
/// answers whether it did within `secs`.
async fn settled(
    reader: &mut ResultsReader,
    log: &Path,
    secs: u64,
    done: impl Fn(&[Exec], &[StoredResult]) -> bool,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let execs = executions(&exec_log::read(log)?);
        if done(&execs, reader.poll().await?) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn sleep_until_ns(at: u64) {
    let now = now_ns();
    if at > now {
        tokio::time::sleep(Duration::from_nanos(at - now)).await;
    }
}

async fn run(ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    let plan = Plan::of(ctx);
    let dir = ctx.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let hosts: Vec<String> = (1..=plan.edges).map(host_name).collect();
    let ids = if ctx.auth { Some(issue_identities(&dir, &hosts)?) } else { None };

    let hub = NatsServer::single(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        // The leafs must not learn the hub's own leafnode URL and go around the proxy.
        leafnode_no_advertise: true,
        data_dir: Some(dir.join("hub-nats")),
        extra_config: ids.as_ref().map(|i| i.server_config.clone()).unwrap_or_default(),
        ..ServerOptions::named("leafcut-hub")
    })
    .await
    .context("cannot start the hub nats-server")?;
    let leaf_port = hub.leaf_port().context("the hub has no leafnode port")?;
    let proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], leaf_port))).await?;
    let remote = format!("nats-leaf://{}", proxy.addr());

    let keys = dir.join("keys");
    let secret = crate::env::signing_key(&keys).await?;
    let public = keys.join("steward-signing.pub");
    let admin = ids.as_ref().map(|i| i.admin.clone());
    let client = connect(&hub.client_url(), admin.as_deref()).await?;

    let mut server_args = Fleet::global_args(&hub.client_url(), ids.as_ref().map(|i| i.hub.as_path()));
    server_args.extend(["server".to_owned(), "--signing-key".to_owned(), secret.display().to_string()]);
    let server = StewardProc::start("server", &dir, &server_args, &[])?;
    wait_for(60, "the hub's services", || {
        let c = client.clone();
        async move { Ok(c.request("$SRV.PING.steward-hub", "".into()).await.ok().map(|_| ())) }
    })
    .await?;

    let mut fleet = Fleet { dir: dir.clone(), url: hub.client_url(), ids, server, edges: Vec::new() };
    for h in &hosts {
        let mut args = fleet.global(fleet.ids.as_ref().and_then(|i| i.hosts.get(h)).map(PathBuf::as_path));
        args.extend(
            [
                "edge",
                "--host-id",
                h,
                "--labels",
                "fleet=yes",
                "--heartbeat-ms",
                "1000",
                "--data",
                &dir.join(format!("data-{h}")).display().to_string(),
                "--trusted-key",
                &public.display().to_string(),
                "--leaf-remote",
                &remote,
            ]
            .map(str::to_owned),
        );
        fleet.edges.push(StewardProc::start(h, &dir, &args, &[(RUNTIME_ENV.to_owned(), h.clone())])?);
    }

    let log = dir.join("exec.log");
    let doc = dir.join("config.json");
    std::fs::write(&doc, document(&log, plan.checks))?;
    let mut apply = fleet.global(admin.as_deref());
    apply.extend(["apply".to_owned(), "-f".to_owned(), doc.display().to_string()]);
    let out = tokio::process::Command::new(crate::env::steward_binary()?)
        .args(&apply)
        .output()
        .await
        .context("cannot run steward apply")?;
    if !out.status.success() {
        bail!("steward apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    let want = usize::try_from(plan.edges * plan.checks)?;
    let spec_of = wait_for(60, "the rendered specs", || {
        let c = client.clone();
        async move { Ok(spec_map(&c).await.ok().filter(|m| m.len() >= want)) }
    })
    .await?;
    let mut reader = ResultsReader::new(&client).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let specs: BTreeSet<&str> = reader.poll().await?.iter().map(|r| r.spec.as_str()).collect();
        if specs.len() >= want {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no stored result of {} of the {want} specs within 90 s\n{}", want - specs.len(), fleet.logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(plan.warm_secs)).await;

    // The fault.
    let mut t = Timeline { cut_ns: now_ns(), ..Timeline::default() };
    proxy.cut();
    let cut_ns_len = plan.cut_secs * 1_000_000_000;
    sleep_until_ns(t.cut_ns + cut_ns_len / 3).await;
    let killed = hosts[0].clone();
    t.kill_ns = now_ns();
    fleet.edges[0].kill9().await?;
    sleep_until_ns(t.cut_ns + cut_ns_len / 2).await;
    t.restart_ns = now_ns();
    fleet.edges[0].restart()?;
    sleep_until_ns(t.cut_ns + cut_ns_len).await;
    t.restore_ns = now_ns();
    proxy.restore();

    // Recovery: every execution that ended before the restore has its result stored.
    let probe = Timeline { final_ns: t.restore_ns, ..t };
    let recovered_within_deadline = settled(&mut reader, &log, plan.deadline_secs, |execs, stored| {
        check(&judge(execs, stored, &spec_of, &killed, probe).history).lost == 0
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(plan.settle_secs)).await;
    t.final_ns = now_ns();

    // Every execution started before the end has ended and its result is stored (or the
    // deadline passed: the checker then counts what is missing).
    settled(&mut reader, &log, plan.deadline_secs, |execs, stored| {
        let running = execs.iter().any(|e| e.start_ns < t.final_ns && e.end_ns.is_none() && e.host != killed);
        !running && check(&judge(execs, stored, &spec_of, &killed, t).history).lost == 0
    })
    .await?;
    let execs = executions(&exec_log::read(&log)?);
    let stored = reader.poll().await?.to_vec();
    let j = judge(&execs, &stored, &spec_of, &killed, t);
    let report = check(&j.history);

    let restarted_alive = fleet.edges[0].exited()?.is_none();
    let proxy_stats = proxy.stats();
    for e in &mut fleet.edges {
        e.stop(Duration::from_secs(5)).await;
    }
    fleet.server.stop(Duration::from_secs(5)).await;

    #[allow(clippy::cast_precision_loss)]
    let per_sec = j.executed_during_cut as f64 / plan.cut_secs as f64;
    let auth = if ctx.auth { "jwt" } else { "open" };
    Ok(FaultReport {
        name: NAME.to_owned(),
        fault: format!(
            "leaf link cut {} s (proxy), {killed} SIGKILLed at {:.1} s and restarted at {:.1} s into the cut",
            plan.cut_secs,
            secs(t.kill_ns - t.cut_ns),
            secs(t.restart_ns - t.cut_ns)
        ),
        load: format!(
            "{} edges behind leaf nodes x {} host checks at 1 s (one check per edge every {} ms), auth {auth}",
            plan.edges,
            plan.checks,
            1000 / plan.checks
        ),
        load_during_fault_per_sec: per_sec,
        acked: j.expected,
        stored: j.stored,
        check: report,
        recovery_ms: j.recovery_ms,
        extra: json!({
            "acked_means": "executions logged as completed by the edges (the edge processes do not expose the hub's acknowledgements), matched to stored results by spec and time",
            "recovery_means": "from the restore until the last result produced before it was stored",
            "recovered_within_deadline": recovered_within_deadline,
            "edges": plan.edges,
            "checks_per_edge": plan.checks,
            "cut_secs": plan.cut_secs,
            "executed_during_cut": j.executed_during_cut,
            "produced_during_cut_stored_after": j.produced_during_cut_stored_after,
            "stored_during_cut": j.stored_during_cut,
            "killed_edge": killed,
            "killed_unfinished_at_kill": j.unfinished_at_kill,
            "killed_outbox_survivors": j.killed_outbox_survivors,
            "killed_after_restart": j.killed_after_restart,
            "killed_edge_running_at_end": restarted_alive,
            "seq_gaps": j.seq_gaps,
            "specs_with_new_epoch": j.specs_with_new_epoch,
            "stored_total": stored.len(),
            "proxy": {
                "forwarded": proxy_stats.forwarded,
                "dropped_at_cut": proxy_stats.dropped,
                "refused_while_cut": proxy_stats.refused,
                "open_at_end": proxy_stats.open,
            },
            "dir": fleet.dir.display().to_string(),
        }),
        command: format!(
            "steward-loadtest faults leaf_cut{}{}",
            if ctx.quick { " --quick" } else { "" },
            if ctx.auth { " --auth" } else { "" }
        ),
    })
}

#[allow(clippy::cast_precision_loss)]
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const MS: u64 = 1_000_000;

    fn res(seq: u64, started_ms: u64, stored_ms: u64) -> StoredResult {
        StoredResult {
            spec: "s1".into(),
            epoch: 1,
            seq,
            runtime: "edge-1".into(),
            started_ms,
            ended_ms: started_ms + 30,
            stored_ns: stored_ms * MS,
        }
    }

    fn exec(start_ms: u64) -> Exec {
        Exec {
            check: "c1".into(),
            host: "edge-1".into(),
            start_ns: start_ms * MS + 2 * MS,
            end_ns: Some(start_ms * MS + 25 * MS),
        }
    }

    fn map() -> HashMap<(String, String), String> {
        HashMap::from([(("c1".to_owned(), "edge-1".to_owned()), "s1".to_owned())])
    }

    fn timeline() -> Timeline {
        Timeline {
            cut_ns: 2000 * MS,
            kill_ns: 2500 * MS,
            restart_ns: 2600 * MS,
            restore_ns: 3000 * MS,
            final_ns: 5000 * MS,
        }
    }

    #[test]
    fn every_execution_stored_once_after_the_cut_is_clean() {
        let execs: Vec<Exec> = [1000, 2100, 2200, 3500].into_iter().map(exec).collect();
        let stored = vec![res(1, 1000, 1040), res(2, 2100, 3100), res(3, 2200, 3100), res(4, 3500, 3540)];
        let j = judge(&execs, &stored, &map(), "edge-9", timeline());
        let c = check(&j.history);
        assert!(c.is_clean(), "{c:?}");
        assert_eq!((j.expected, j.stored, j.executed_during_cut, j.produced_during_cut_stored_after), (4, 4, 2, 2));
        assert_eq!(j.stored_during_cut, 0);
        assert_eq!(j.recovery_ms, Some(100.0));
    }

    #[test]
    fn a_refused_result_is_lost_and_a_resent_one_a_duplicate() {
        let execs: Vec<Exec> = [1000, 2100, 2200].into_iter().map(exec).collect();
        let stored = vec![res(1, 1000, 1040), res(1, 1000, 3100), res(3, 2200, 3100)];
        let j = judge(&execs, &stored, &map(), "edge-9", timeline());
        let c = check(&j.history);
        assert_eq!((c.lost, c.duplicates), (1, 1), "{c:?}");
        assert_eq!(j.seq_gaps, vec!["s1:1:2".to_owned()]);
    }

    #[test]
    fn the_killed_edges_unfinished_execution_is_not_expected() {
        let mut at_kill = exec(2490);
        at_kill.end_ns = Some(2600 * MS);
        let execs = vec![exec(1000), at_kill];
        let stored = vec![res(1, 1000, 1040)];
        let j = judge(&execs, &stored, &map(), "edge-1", timeline());
        assert!(check(&j.history).is_clean());
        assert_eq!((j.expected, j.unfinished_at_kill), (1, 1));
        // The same execution on another edge is lost.
        let j = judge(&execs, &stored, &map(), "edge-9", timeline());
        assert_eq!(check(&j.history).lost, 1);
    }

    #[test]
    fn results_stored_during_the_cut_are_counted() {
        let execs = vec![exec(2100)];
        let stored = vec![res(1, 2100, 2700)];
        let j = judge(&execs, &stored, &map(), "edge-9", timeline());
        assert_eq!(j.stored_during_cut, 1);
        assert_eq!(j.produced_during_cut_stored_after, 0);
    }
}
