//! `steward runtime` (a standalone assessment runtime for pool specs), `steward leases` (specs
//! and who holds them) and `steward results` (stored results).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use steward_actors::lease_client::{query_results, LeaseClient, ResultQuery};
use steward_actors::runtime::{RuntimeArgs as ActorArgs, RuntimeHandle};
use steward_subjects::api::lease::LeasesRequest;
use steward_subjects::{HostId, RuntimeId, Subjects};
use tracing::info;

use crate::cli::{parse_labels, Global, Labels};
use crate::output;

/// Options of `steward runtime`.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Runtime id (letters, digits, '-' and '_').
    #[arg(long = "id", value_parser = parse_runtime)]
    pub id: RuntimeId,
    /// The host this runtime runs on: it also runs that host's specs.
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
    /// Only results of this spec id.
    #[arg(long)]
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
}

fn parse_runtime(s: &str) -> Result<RuntimeId, String> {
    RuntimeId::parse(s).map_err(|e| e.to_string())
}

fn parse_host(s: &str) -> Result<HostId, String> {
    HostId::parse(s).map_err(|e| e.to_string())
}

fn parse_since(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let d = steward_subjects::config::duration::parse(s).map_err(|e| anyhow::anyhow!("--since {s:?}: {e}"))?;
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
    let data = args.data.unwrap_or_else(|| super::default_state_dir().join("runtimes").join(args.id.as_str()));
    let mut a =
        ActorArgs::new(super::connect_options(global), Subjects::new(global.account.clone()), args.id.clone(), data);
    a.host = args.host;
    a.labels = args.labels.0;
    a.capacity = args.capacity.max(1);
    a.batch = args.batch.max(1);
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
    let nats = steward_actors::connect(&super::connect_options(global), "steward-cli").await?;
    let client = LeaseClient::new(nats, Subjects::new(global.account.clone()));
    let reply =
        client.leases(&LeasesRequest { runtime: args.runtime, unassigned: args.unassigned, limit: args.limit }).await?;
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
    let nats = steward_actors::connect(&super::connect_options(global), "steward-cli").await?;
    let q = ResultQuery {
        spec: args.spec,
        host: args.host,
        since: args.since.as_deref().map(parse_since).transpose()?,
        limit: args.limit,
    };
    let results = query_results(&nats, &Subjects::new(global.account.clone()), &q).await?;
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
                r.message.clone(),
            ]
        })
        .collect();
    output::print(global.output, &["ENDED", "SPEC", "HOST", "EPOCH:SEQ", "STATUS", "MS", "MESSAGE"], &rows, &results);
    Ok(())
}
