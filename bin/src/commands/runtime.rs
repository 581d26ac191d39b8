//! `steward runtime` (a standalone assessment runtime for pool specs), `steward leases` (specs
//! and who holds them), `steward jobspecs --explain` (a spec, who may run it and who does) and
//! `steward results` (stored results, and a result's full output).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use steward_actors::lease::client::{lease_snapshot, LeaseClient};
use steward_actors::renderer::client::JobSpecClient;
use steward_actors::results::client::{ResultQuery, ResultsClient};
use steward_actors::runtime::{RuntimeArgs as ActorArgs, RuntimeHandle};
use steward_actors::spec_signing::TrustedKeys;
use steward_subjects::api::lease::{LeasesRequest, RuntimeSession};
use steward_subjects::api::result::{ResultRecord, MAX_INLINE_OUTPUT};
use steward_subjects::config::{JobSpec, SpecId, TargetKind};
use steward_subjects::selector::Selector;
use steward_subjects::streams::{
    read_object, read_output, ObjectReadError, OutputReadError, ARTIFACTS_STORE, OUTPUTS_STREAM,
};
use steward_subjects::subject::{result_output_object, OutputRef};
use steward_subjects::{HostId, RuntimeId, Subjects};
use tracing::{info, warn};

use crate::args::{parse_host, parse_labels, parse_runtime, Labels};
use crate::cli::Global;
use crate::output;

/// Options of `steward runtime`.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Runtime id (letters, digits, '-' and '_').
    #[arg(long = "id", value_parser = parse_runtime)]
    pub id: RuntimeId,
    /// The host this runtime runs on: it also runs that host's specs. With the host's own
    /// credentials, `--id` must be the host id (a host identity may lease and submit only as
    /// its runtime of the same name).
    #[arg(long, value_parser = parse_host)]
    pub host: Option<HostId>,
    /// Labels, `k=v,k2=v2`, matched against pool selectors.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: Labels,
    /// Folder of the runtime's local store (last-known specs, result outbox).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Most specs held.
    #[arg(long, default_value_t = 1000)]
    pub capacity: u32,
    /// Most specs asked for per lease request.
    #[arg(long, default_value_t = 50)]
    pub batch: u32,
    /// JetStream domain of the hub, when `--nats` is a leaf node with its own JetStream (large
    /// outputs go to the hub's object store).
    #[arg(long)]
    pub hub_domain: Option<String>,
    /// Public key file(s) of the hub's spec signing key (`steward keys init`); repeat the flag,
    /// or list several keys in one file, while a key is being rotated. Specs not signed by one
    /// of them are refused (never run) and reported as `refused: ...` results.
    #[arg(long = "trusted-key", env = "STEWARD_TRUSTED_KEY", value_delimiter = ',')]
    pub trusted_keys: Vec<PathBuf>,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: super::metrics::MetricsArgs,
}

/// Options of `steward leases`.
#[derive(Debug, Clone, Args)]
pub struct LeasesArgs {
    /// Only specs held by this runtime.
    #[arg(long)]
    pub runtime: Option<String>,
    /// Only specs without a live holder.
    #[arg(long)]
    pub unassigned: bool,
    /// Most rows.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Options of `steward results`.
#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    /// Only results of this spec id (32 hex digits).
    #[arg(long, value_parser = parse_spec_id)]
    pub spec: Option<String>,
    /// Only results of this host (or standalone runtime id).
    #[arg(long, value_parser = parse_host)]
    pub host: Option<HostId>,
    /// Only results stored within this long (`10m`, `2h`) or since this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Most results shown (the latest ones).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print the full output of one result (`<spec>:<epoch>:<seq>`, or its `output_ref`,
    /// `out:<seq>`) from the outputs stream (older results: the artifacts object store), raw,
    /// instead of listing results.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["spec", "host", "since"])]
    pub full_output: Option<String>,
}

fn parse_spec_id(s: &str) -> Result<String, String> {
    s.parse::<SpecId>().map(|id| id.to_string()).map_err(|e| e.to_string())
}

fn parse_since(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let d = crate::args::parse_duration(s).map_err(|e| anyhow::anyhow!("--since {s:?}: {e}"))?;
    Ok(time::OffsetDateTime::now_utc() - d)
}

fn ms_rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// `steward runtime`: runs one assessment runtime until Ctrl-C.
///
/// # Errors
/// When the local store cannot be opened.
pub async fn runtime(global: &Global, args: RuntimeArgs) -> anyhow::Result<()> {
    let _metrics = args.metrics.serve().await?;
    let data = args.data.unwrap_or_else(|| super::default_state_dir().join("runtimes").join(args.id.as_str()));
    let mut a = ActorArgs::new(global.connect_options(), Subjects::new(global.account.clone()), args.id.clone(), data);
    a.host = args.host;
    a.labels = args.labels.0;
    a.capacity = args.capacity.max(1);
    a.batch = args.batch.max(1);
    a.hub_domain = args.hub_domain;
    a.trusted = TrustedKeys::load(&args.trusted_keys).context("--trusted-key")?;
    if a.trusted.is_empty() {
        warn!(runtime = %args.id, "no --trusted-key given: every job spec is refused");
    }
    let (handle, join) = RuntimeHandle::start(a).await.context("cannot start the runtime")?;
    info!(runtime = %args.id, "runtime running");
    crate::shutdown::signal().await;
    handle.stop();
    let _ = join.await;
    Ok(())
}

#[derive(Debug, Serialize)]
struct LeasesOutput {
    specs: u64,
    runtimes: u64,
    total: u64,
    rows: Vec<steward_subjects::api::lease::LeaseRow>,
}

/// `steward leases`: job specs with their holders and epochs.
///
/// # Errors
/// When no hub answers or the request is refused.
pub async fn leases(global: &Global, args: LeasesArgs) -> anyhow::Result<()> {
    let nats = global.connect().await?;
    let client = LeaseClient::new(nats, Subjects::new(global.account.clone()));
    let reply = client
        .leases(&LeasesRequest {
            runtime: args.runtime,
            unassigned: args.unassigned,
            limit: args.limit,
            ..Default::default()
        })
        .await?;
    let rows: Vec<Vec<String>> = reply
        .rows
        .iter()
        .map(|r| {
            vec![
                r.spec.clone(),
                r.target.clone(),
                r.executor.clone(),
                if r.holder.is_empty() { "-".into() } else { r.holder.clone() },
                r.epoch.to_string(),
                if r.live { "live".into() } else { "free".into() },
            ]
        })
        .collect();
    let out = LeasesOutput { specs: reply.specs, runtimes: reply.runtimes, total: reply.total, rows: reply.rows };
    output::print(global.output, &["SPEC", "TARGET", "EXECUTOR", "HOLDER", "EPOCH", "STATE"], &rows, &out);
    if global.output == crate::cli::OutputFormat::Table {
        println!("{} of {} specs shown; {} live runtimes", rows.len(), out.total, out.runtimes);
    }
    Ok(())
}

/// `steward results`: the latest stored results.
///
/// # Errors
/// When the results stream cannot be read or `--since` is malformed.
pub async fn results(global: &Global, args: ResultsArgs) -> anyhow::Result<()> {
    let nats = global.connect().await?;
    if let Some(key) = &args.full_output {
        return full_output(&nats, global, key).await;
    }
    let q = ResultQuery {
        spec: args.spec,
        host: args.host,
        since: args.since.as_deref().map(parse_since).transpose()?,
        limit: args.limit,
    };
    let results = ResultsClient::new(nats.clone(), Subjects::new(global.account.clone())).query(&q).await?;
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                ms_rfc3339(r.ended_at_ms),
                r.spec.clone(),
                r.host.clone(),
                format!("{}:{}", r.epoch, r.seq),
                r.status.as_str().to_owned(),
                r.ended_at_ms.saturating_sub(r.started_at_ms).to_string(),
                if r.output_ref.is_some() { "stored".into() } else { "inline".into() },
                r.message.clone(),
            ]
        })
        .collect();
    output::print(
        global.output,
        &["ENDED", "SPEC", "HOST", "EPOCH:SEQ", "STATUS", "MS", "OUTPUT", "MESSAGE"],
        &rows,
        &results,
    );
    if global.output == crate::cli::OutputFormat::Table && results.iter().any(|r| r.output_ref.is_some()) {
        println!("(full output of a `stored` result: steward results --full-output <spec>:<epoch>:<seq>)");
    }
    Ok(())
}

/// Results of one spec searched for the one `--full-output <spec>:<epoch>:<seq>` names.
const OUTPUT_LOOKUP: usize = 10_000;

/// Where the full output `key` names is stored: `key` is an `output_ref` (`out:<seq>`, or an
/// object name of older results) or `<spec>:<epoch>:<seq>`, looked up among the spec's latest
/// [`OUTPUT_LOOKUP`] results (older ones are looked for under their object name).
async fn output_reference(nats: &async_nats::Client, global: &Global, key: &str) -> anyhow::Result<OutputRef> {
    if let Some(r) = OutputRef::parse(key) {
        return Ok(r);
    }
    let parts: Vec<&str> = key.split(':').collect();
    let bad = || {
        anyhow::anyhow!(
            "--full-output {key:?}: expected <spec>:<epoch>:<seq> (the EPOCH:SEQ column of `steward results`) or an output_ref (out:<seq>)"
        )
    };
    let [spec, epoch, seq] = parts.as_slice() else { return Err(bad()) };
    let spec = parse_spec_id(spec).map_err(|e| anyhow::anyhow!("--full-output {key:?}: {e}"))?;
    let (epoch, seq) = (epoch.parse::<u64>().map_err(|_| bad())?, seq.parse::<u64>().map_err(|_| bad())?);
    let q = ResultQuery { spec: Some(spec.clone()), limit: OUTPUT_LOOKUP, ..ResultQuery::default() };
    let results = ResultsClient::new(nats.clone(), Subjects::new(global.account.clone())).query(&q).await?;
    let Some(r) = results.iter().rev().find(|r| r.epoch == epoch && r.seq == seq) else {
        return Ok(OutputRef::Object(result_output_object(&global.account, &spec, epoch, seq)));
    };
    let Some(named) = r.output_ref.as_deref() else {
        anyhow::bail!(
            "result {key} has no stored output; outputs up to {MAX_INLINE_OUTPUT} bytes are kept only inline in the result (`steward results --spec ...`){}",
            if r.message.is_empty() { String::new() } else { format!(" ({})", r.message) }
        );
    };
    OutputRef::parse(named).ok_or_else(|| anyhow::anyhow!("result {key} names an unreadable output_ref {named:?}"))
}

async fn full_output(nats: &async_nats::Client, global: &Global, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let reference = output_reference(nats, global, key).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let bytes = match reference {
        OutputRef::Stream(seq) => read_output(&js, seq).await.map(|(_, b)| b.to_vec()).map_err(|e| match e {
            OutputReadError::NotFound(_) => {
                anyhow::anyhow!("no stored output out:{seq} (aged out of {OUTPUTS_STREAM}, or never stored)")
            }
            e => anyhow::anyhow!("{e}"),
        })?,
        OutputRef::Object(name) => {
            let store =
                js.get_object_store(ARTIFACTS_STORE).await.with_context(|| format!("cannot open {ARTIFACTS_STORE}"))?;
            read_object(&store, &name, usize::MAX).await.map_err(|e| match e {
                ObjectReadError::NotFound(_) => anyhow::anyhow!(
                    "no stored output {name:?}; outputs up to {MAX_INLINE_OUTPUT} bytes are kept only inline in the result (`steward results --spec ...`)"
                ),
                e => anyhow::anyhow!("cannot read {name}: {e}"),
            })?
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

/// One runtime as `jobspecs --explain` sees it.
#[derive(Debug, Serialize)]
struct RuntimeEligibility {
    runtime: String,
    host: String,
    labels: std::collections::BTreeMap<String, String>,
    live: bool,
    eligible: bool,
    reason: String,
}

/// The current lease of a spec.
#[derive(Debug, Serialize)]
struct LeaseState {
    holder: String,
    epoch: u64,
    live: bool,
    expires_at: String,
}

/// The latest stored result of a spec.
#[derive(Debug, Serialize)]
struct LastRun {
    key: String,
    status: String,
    runtime: String,
    host: String,
    ended_at: String,
    message: String,
}

/// What `jobspecs --explain` prints.
#[derive(Debug, Serialize)]
struct Explanation {
    key: String,
    target: String,
    selector: Option<String>,
    why: Vec<String>,
    lease: Option<LeaseState>,
    /// Why the lease state is missing (no lease service answered), empty otherwise.
    lease_note: String,
    runtimes: Vec<RuntimeEligibility>,
    last_run: Option<LastRun>,
    last_run_note: String,
    spec: JobSpec,
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Whether `s` may run `spec`, and why.
fn eligibility(spec: &JobSpec, selector: Option<&Result<Selector, String>>, s: &RuntimeSession) -> (bool, String) {
    match spec.target.kind {
        TargetKind::Host => {
            if s.host == spec.target.id {
                (true, format!("runs on host {}, the spec's target", s.host))
            } else if s.host.is_empty() {
                (false, "a standalone runtime: host specs run only on their host's runtime".into())
            } else {
                (false, format!("runs on host {}, the spec targets host {}", s.host, spec.target.id))
            }
        }
        TargetKind::Pool => match selector {
            Some(Ok(sel)) if sel.is_empty() => (true, "the pool's selector is empty: every runtime may run it".into()),
            Some(Ok(sel)) => {
                let failing: Vec<String> =
                    sel.requirements().iter().filter(|r| !r.matches(&s.labels)).map(ToString::to_string).collect();
                if failing.is_empty() {
                    (true, format!("labels {} match selector {:?}", labels_text(&s.labels), sel.to_string()))
                } else {
                    (false, format!("labels {} fail {}", labels_text(&s.labels), failing.join(", ")))
                }
            }
            Some(Err(e)) => (false, format!("the pool's selector does not parse ({e}): no runtime may run it")),
            None => (false, "no selector".into()),
        },
    }
}

/// `steward jobspecs --explain ID`: the spec, why it exists, its target, which runtimes may
/// run it and why, who holds it at which epoch, and when it last ran.
///
/// # Errors
/// A malformed or unknown spec id, or NATS failures.
pub async fn explain(global: &Global, id: &str) -> anyhow::Result<()> {
    let id = parse_spec_id(id).map_err(|e| anyhow::anyhow!("--explain: {e}"))?;
    let nats = global.connect().await?;
    let subjects = Subjects::new(global.account.clone());
    let api = JobSpecClient::new(nats.clone(), subjects.clone());
    let r = api.explain(&id).await.map_err(|e| match e.remote() {
        Some(w) => anyhow::anyhow!("job spec {id}: {w}"),
        None => anyhow::Error::new(e).context(format!("cannot explain job spec {id}")),
    })?;
    let spec = r.spec;
    let now = steward_actors::now_ms();
    // The spec and why it exists come from the config manager; the lease state from the lease
    // leader. Without a leader (a hub restarting, the lock not yet taken over) the explanation
    // still says what it can.
    let (snapshot, lease_note) = match lease_snapshot(&nats, &subjects, &id).await {
        Ok(s) => (s, String::new()),
        Err(e) => (Default::default(), format!("lease state unknown: the lease service did not answer ({e})")),
    };
    let selector = (spec.target.kind == TargetKind::Pool)
        .then(|| Selector::parse(&spec.runtime_selector).map_err(|e| e.to_string()));
    let session_of = |rt: &str| snapshot.sessions.iter().find(|s| s.runtime == rt);
    let lease = snapshot.lease.as_ref().filter(|l| l.epoch > 0 || !l.holder.is_empty()).map(|l| LeaseState {
        holder: l.holder.clone(),
        epoch: l.epoch,
        live: l.live,
        expires_at: if l.expires_at_ms == 0 { String::new() } else { ms_rfc3339(l.expires_at_ms) },
    });
    let runtimes: Vec<RuntimeEligibility> = snapshot
        .sessions
        .iter()
        .map(|s| {
            let (eligible, reason) = eligibility(&spec, selector.as_ref(), s);
            RuntimeEligibility {
                runtime: s.runtime.clone(),
                host: s.host.clone(),
                labels: s.labels.clone(),
                live: s.expires_at_ms > now,
                eligible,
                reason,
            }
        })
        .collect();
    // Results are filed under the host of the runtime that ran them: the target host for host
    // specs; for pool specs the holder's host (its runtime id when standalone).
    let filed_under = match spec.target.kind {
        TargetKind::Host => Some(spec.target.id.clone()),
        TargetKind::Pool => lease.as_ref().filter(|l| !l.holder.is_empty()).map(|l| {
            session_of(&l.holder).filter(|s| !s.host.is_empty()).map_or_else(|| l.holder.clone(), |s| s.host.clone())
        }),
    };
    let (last_run, last_run_note) = match filed_under.as_deref().map(HostId::parse) {
        Some(Ok(host)) => {
            let q = ResultQuery { spec: Some(id.clone()), host: Some(host.clone()), since: None, limit: 1 };
            match ResultsClient::new(nats.clone(), subjects.clone()).query(&q).await {
                Ok(v) => match v.last() {
                    Some(r) => (Some(last_run(r)), String::new()),
                    None => (None, format!("no stored result filed under {host}")),
                },
                Err(e) => (None, format!("results not readable: {e}")),
            }
        }
        Some(Err(e)) => (None, format!("results not searched: {e}")),
        None => (None, "unknown: the spec has no holder to search the results of".into()),
    };
    let out = Explanation {
        key: r.key,
        target: format!("{}/{}", spec.target.kind.as_str(), spec.target.id),
        selector: (spec.target.kind == TargetKind::Pool).then(|| spec.runtime_selector.clone()),
        why: r.why,
        lease,
        lease_note,
        runtimes,
        last_run,
        last_run_note,
        spec,
    };
    match global.output {
        crate::cli::OutputFormat::Json => output::print(global.output, &[], &[], &out),
        crate::cli::OutputFormat::Table => print_explanation(&out)?,
    }
    Ok(())
}

fn last_run(r: &ResultRecord) -> LastRun {
    LastRun {
        key: r.idempotency_key(),
        status: r.status.as_str().to_owned(),
        runtime: r.runtime.clone(),
        host: r.host.clone(),
        ended_at: ms_rfc3339(r.ended_at_ms),
        message: r.message.clone(),
    }
}

fn print_explanation(e: &Explanation) -> anyhow::Result<()> {
    println!("spec {} ({})", e.spec.id, e.key);
    match &e.selector {
        Some(sel) if sel.is_empty() => println!("target: {} (runtime selector: empty, any runtime)", e.target),
        Some(sel) => println!("target: {} (runtime selector {sel:?})", e.target),
        None => println!("target: {} (run by that host's runtime)", e.target),
    }
    println!("why it exists:");
    for line in &e.why {
        println!("  - {line}");
    }
    match &e.lease {
        Some(l) if !l.holder.is_empty() => println!(
            "holder: {} at epoch {} ({}{})",
            l.holder,
            l.epoch,
            if l.live { "live" } else { "session expired: the spec is free for another runtime" },
            if l.expires_at.is_empty() { String::new() } else { format!(", session until {}", l.expires_at) }
        ),
        Some(l) => println!("holder: none (released; last epoch {})", l.epoch),
        None if !e.lease_note.is_empty() => println!("holder: {}", e.lease_note),
        None => println!("holder: none (never leased)"),
    }
    let eligible = e.runtimes.iter().filter(|r| r.eligible && r.live).count();
    println!("runtimes: {eligible} live and eligible of {} known", e.runtimes.len());
    let rows: Vec<Vec<String>> = e
        .runtimes
        .iter()
        .map(|r| {
            vec![
                r.runtime.clone(),
                if r.host.is_empty() { "-".into() } else { r.host.clone() },
                labels_text(&r.labels),
                if r.live { "live".into() } else { "expired".into() },
                if r.eligible { "yes".into() } else { "no".into() },
                r.reason.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        for line in output::table(&["RUNTIME", "HOST", "LABELS", "SESSION", "ELIGIBLE", "WHY"], &rows).lines() {
            println!("  {line}");
        }
    }
    match &e.last_run {
        Some(r) => {
            println!("last run: {} {} ({}, by {} on {}) {}", r.ended_at, r.status, r.key, r.runtime, r.host, r.message)
        }
        None => println!("last run: {}", e.last_run_note),
    }
    println!("spec:");
    println!("{}", serde_json::to_string_pretty(&e.spec)?);
    Ok(())
}
