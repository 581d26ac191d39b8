//! `steward-loadtest`: run load scenarios against a NATS deployment it starts (or an existing
//! one) and report throughput, latency, correctness counters, hub CPU and memory, and the ratio
//! to the raw-NATS ceiling measured in the same run.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use steward_loadtest::env::{Deployment, Topology};
use steward_loadtest::measure::median;
use steward_loadtest::report::{Machine, RunReport, ScenarioReport};
use steward_loadtest::scenario::{Ctx, Options};
use steward_loadtest::scenarios::registry;

/// Steward load tests.
#[derive(Debug, Parser)]
#[command(name = "steward-loadtest", version, about)]
struct Cli {
    /// Scenarios to run (`all` for every one, `list` to list them); `faults [NAME...]` runs the
    /// fault scenarios instead (all of them, or those named; `faults list` lists them).
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// Use an existing NATS deployment instead of starting one.
    #[arg(long, env = "STEWARD_NATS_URL")]
    nats: Option<String>,
    /// Start a cluster of this many nodes (3) instead of a single node; streams are R3.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=3))]
    cluster: Option<u8>,
    /// Small sizes: every scenario in about a minute; a correctness smoke test, not a benchmark.
    #[arg(long)]
    quick: bool,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// One NATS connection per simulated host or runtime.
    #[arg(long)]
    conn_per_host: bool,
    /// Run the scenarios this many times and report medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    /// Run the nats-server the harness starts in operator (JWT) mode: every connection (hub
    /// processes, the harness's clients, the simulated hosts) authenticates; a single node only.
    #[arg(long, conflicts_with_all = ["nats", "cluster"])]
    auth: bool,
    /// Account the scenarios use.
    #[arg(long, default_value = "loadtest")]
    account: String,
    /// Size overrides, `name=N` (for example `raw.js_publish_async=50000`).
    #[arg(long = "set", value_parser = parse_set)]
    set: Vec<(String, u64)>,
}

fn parse_set(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not name=N"))?;
    Ok((k.to_owned(), v.parse().map_err(|e| format!("{s:?}: {e}"))?))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: correctness counters are not zero (duplicates or lost items)");
            std::process::ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.scenarios.first().is_some_and(|s| s == "faults") {
        return run_faults(cli).await;
    }
    let all = registry();
    if cli.scenarios.iter().any(|s| s == "list") {
        for d in &all {
            println!("{:<10} {}", d.name, d.about);
        }
        return Ok(true);
    }
    let selected: Vec<_> = if cli.scenarios.iter().any(|s| s == "all") {
        all.clone()
    } else {
        let mut v = Vec::new();
        for name in &cli.scenarios {
            match all.iter().find(|d| d.name == name) {
                Some(d) => v.push(*d),
                None => bail!(
                    "unknown scenario {name:?}; known: all, {}",
                    all.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    steward_subjects::AccountId::parse(&cli.account).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topology = match (&cli.nats, cli.cluster) {
        (Some(url), _) => Topology::External(url.clone()),
        (None, Some(_)) => Topology::Cluster3,
        (None, None) => Topology::Single,
    };
    let deployment = std::sync::Arc::new(Deployment::start(topology, &cli.account, cli.auth).await?);
    let mut report = RunReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: Machine::detect(deployment.nats_version()),
        topology: deployment.topology_name().to_owned(),
        quick: cli.quick,
        auth: deployment.auth_mode().to_owned(),
        identities: if cli.auth { steward_loadtest::auth::identities_json() } else { serde_json::Value::Null },
        ..Default::default()
    };
    let options = Options {
        quick: cli.quick,
        conn_per_host: cli.conn_per_host,
        account: cli.account.clone(),
        overrides: cli.set.into_iter().collect(),
    };
    // A failed scenario stops the run, but what was measured before it is still reported.
    let mut failure = None;
    'rounds: for round in 0..cli.repeat {
        // A fresh context per round: each round measures its own raw ceiling.
        let ctx = Ctx::new(deployment.clone(), options.clone());
        for def in &selected {
            eprintln!(
                "running {}{}",
                def.name,
                if cli.repeat > 1 { format!(" (round {})", round + 1) } else { String::new() }
            );
            let results = match (def.run)(&ctx).await.with_context(|| format!("scenario {} failed", def.name)) {
                Ok(r) => r,
                Err(e) => {
                    failure = Some(e);
                    Vec::new()
                }
            };
            for mut r in ctx.take_extra_reports().into_iter().chain(results) {
                if cli.repeat > 1 {
                    r.extra = merge_round(r.extra, round);
                }
                r.params = with_auth(r.params, deployment.auth_mode());
                report.scenarios.push(r);
            }
            if failure.is_some() {
                break 'rounds;
            }
        }
    }
    if cli.repeat > 1 {
        report.medians = medians(&report.scenarios);
    }
    print!("{}", report.table());
    if let Some(path) = &cli.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(report.correct())
}

fn with_auth(params: serde_json::Value, mode: &str) -> serde_json::Value {
    let mut map = match params {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("value".to_owned(), other)]),
    };
    map.insert("auth".into(), mode.into());
    serde_json::Value::Object(map)
}

fn merge_round(extra: serde_json::Value, round: u32) -> serde_json::Value {
    let mut map = match extra {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("value".to_owned(), other)]),
    };
    map.insert("round".into(), round.into());
    serde_json::Value::Object(map)
}

fn medians(all: &[ScenarioReport]) -> Vec<steward_loadtest::report::MedianFigures> {
    let mut by_name: HashMap<&str, Vec<&ScenarioReport>> = HashMap::new();
    let mut order = Vec::new();
    for r in all {
        if !by_name.contains_key(r.name.as_str()) {
            order.push(r.name.as_str());
        }
        by_name.entry(&r.name).or_default().push(r);
    }
    order
        .into_iter()
        .map(|name| {
            let runs = &by_name[name];
            let f = |g: &dyn Fn(&ScenarioReport) -> Option<f64>| median(runs.iter().filter_map(|r| g(r)).collect());
            steward_loadtest::report::MedianFigures {
                name: name.to_owned(),
                runs: runs.len(),
                ops_per_sec: f(&|r| Some(r.ops_per_sec)).unwrap_or(0.0),
                p50_us: f(&|r| r.latency.map(|l| l.p50_us)),
                p99_us: f(&|r| r.latency.map(|l| l.p99_us)),
                ratio: f(&|r| r.ceiling.as_ref().map(|c| c.ratio)),
            }
        })
        .collect()
}

/// `steward-loadtest faults [NAME...]`: each fault scenario in a folder of its own, a table, and
/// the JSON report; true when every checker verdict is clean.
async fn run_faults(cli: Cli) -> anyhow::Result<bool> {
    use steward_loadtest::faults::{self, FaultCtx};
    let all = faults::registry();
    let names = &cli.scenarios[1..];
    if names.iter().any(|s| s == "list") {
        for d in &all {
            println!("{:<13} {}", d.name, d.about);
        }
        return Ok(true);
    }
    let selected: Vec<_> = if names.is_empty() || names.iter().any(|s| s == "all") {
        all.clone()
    } else {
        let mut v = Vec::new();
        for name in names {
            match all.iter().find(|d| d.name == name) {
                Some(d) => v.push(*d),
                None => bail!(
                    "unknown fault scenario {name:?}; known: {}",
                    all.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    let root =
        tempfile::Builder::new().prefix("steward-faults-").tempdir().context("cannot make a temporary folder")?;
    let mut reports = Vec::new();
    let mut failure = None;
    for def in selected {
        let dir = root.path().join(def.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ctx = FaultCtx {
            quick: cli.quick,
            dir: dir.clone(),
            auth: cli.auth,
            overrides: cli.set.iter().cloned().collect(),
        };
        eprintln!("fault {}: {}", def.name, def.about);
        match (def.run)(&ctx).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!(
                    "fault {} failed: {e:#} (its processes' logs are in {}; set STEWARD_FAULTS_KEEP=1 to keep them)",
                    def.name,
                    dir.display()
                );
                failure = Some(e.context(format!("fault scenario {}", def.name)));
                break;
            }
        }
    }
    print!("{}", faults::table(&reports));
    if let Some(path) = &cli.report {
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "quick": cli.quick,
            "faults": reports,
        }))?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if std::env::var_os("STEWARD_FAULTS_KEEP").is_some() {
        let kept = root.keep();
        eprintln!("kept {} (STEWARD_FAULTS_KEEP)", kept.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(reports.iter().all(faults::FaultReport::is_clean))
}
