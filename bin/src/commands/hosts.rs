//! `steward hosts`, `steward host ID [ping|install-worker NAME|remove-worker NAME|drain|resume|outcome CMD]`
//! and `steward ensure-worker HOST NAME`: the connector API from the command line.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use steward_actors::connector::client::ConnectorClient;
use steward_subjects::api::host::{CommandAction, HostRecord, SendCommandRequest, SendCommandResult};
use steward_subjects::rpc::{RequestError, RequestErrorKind};
use steward_subjects::selector::Selector;
use steward_subjects::token::Name;
use steward_subjects::{HostId, Subjects};

use crate::args::{parse_duration, parse_host, parse_name, parse_selector};
use crate::cli::{Global, OutputFormat};
use crate::output;

/// Options of `steward hosts`.
#[derive(Debug, Clone, Args)]
pub struct HostsArgs {
    /// Label selector: `k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`.
    #[arg(long, short = 's', default_value = "", value_parser = parse_selector)]
    pub selector: Selector,
    /// Only hosts that are online now.
    #[arg(long, conflicts_with = "offline")]
    pub online: bool,
    /// Only hosts that are offline now.
    #[arg(long)]
    pub offline: bool,
}

/// Options of `steward host ID [ACTION]`.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Host id.
    #[arg(value_parser = parse_host)]
    pub id: HostId,
    /// A command to send; without one, the host's registry record is shown.
    #[command(subcommand)]
    pub action: Option<HostAction>,
    /// How long to wait for the host's reply, in milliseconds (0: queue and return).
    #[arg(long, default_value_t = 10_000, global = true)]
    pub wait_ms: u64,
    /// The command expires after this many milliseconds if the host has not received it
    /// (0: no expiry; the stream keeps it for 7 days).
    #[arg(long, default_value_t = 0, global = true)]
    pub ttl_ms: u64,
}

/// Commands a host understands.
#[derive(Debug, Clone, Subcommand)]
pub enum HostAction {
    /// Ask the host to answer.
    Ping,
    /// Enable a worker from the host's catalog.
    InstallWorker {
        /// Worker name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Disable a worker.
    RemoveWorker {
        /// Worker name.
        #[arg(value_parser = parse_name)]
        name: Name,
    },
    /// Take no new work, finish current work.
    Drain,
    /// Take new work again after a drain.
    Resume,
    /// Show the recorded reply of a command sent earlier.
    Outcome {
        /// The command id `host ... ping` printed.
        #[arg(value_parser = parse_name)]
        command_id: Name,
    },
}

/// Options of `steward ensure-worker HOST NAME`.
#[derive(Debug, Clone, Args)]
pub struct EnsureWorkerArgs {
    /// Host id.
    #[arg(value_parser = parse_host)]
    pub host: HostId,
    /// Worker name.
    #[arg(value_parser = parse_name)]
    pub name: Name,
    /// How long to wait for the registry to show the worker (`500ms`, `30s`, `2m`; a unit is
    /// required).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

async fn api(global: &Global) -> anyhow::Result<ConnectorClient> {
    let client = global.connect().await?;
    Ok(ConnectorClient::new(client, Subjects::new(global.account.clone())))
}

/// Turns a failed request into an error message that says what to do.
fn explain(e: RequestError) -> anyhow::Error {
    match e.kind() {
        RequestErrorKind::NoResponders => {
            anyhow::anyhow!("no connector is running for this account (start `steward server` or `steward up`): {e}")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

fn row(h: &HostRecord) -> Vec<String> {
    let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let workers: Vec<String> = h.workers.iter().map(|(k, v)| format!("{k}@{v}")).collect();
    let mut state = if h.online { "online".to_owned() } else { "offline".to_owned() };
    if h.draining {
        state.push_str(",draining");
    }
    vec![
        h.host_id.clone(),
        state,
        h.last_seen.clone(),
        labels.join(","),
        workers.join(","),
        h.agent_version.clone(),
        h.applied_revision.map_or_else(|| "-".into(), |r| r.to_string()),
    ]
}

const HEADERS: [&str; 7] = ["HOST", "STATE", "LAST SEEN", "LABELS", "WORKERS", "VERSION", "APPLIED"];

/// `steward hosts`: hosts by selector and online state.
///
/// # Errors
/// When NATS or the connector cannot be reached.
pub async fn hosts(global: &Global, args: HostsArgs) -> anyhow::Result<()> {
    let online = match (args.online, args.offline) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let list = api(global).await?.list(&args.selector.to_string(), online).await.map_err(explain)?;
    let rows: Vec<Vec<String>> = list.hosts.iter().map(row).collect();
    output::print(global.output, &HEADERS, &rows, &list.hosts);
    Ok(())
}

#[derive(Debug, Serialize)]
struct Sent {
    host_id: String,
    action: &'static str,
    #[serde(flatten)]
    result: SendCommandResult,
}

/// `steward host ID [ACTION]`.
///
/// # Errors
/// When the host is unknown, the request is refused, or (for commands) the host replied with a
/// failure.
pub async fn host(global: &Global, args: HostArgs) -> anyhow::Result<()> {
    let api = api(global).await?;
    let (action, worker) = match &args.action {
        None => {
            let h = api.status(args.id.as_str()).await.map_err(explain)?;
            match global.output {
                OutputFormat::Json => output::print(global.output, &[], &[], &h),
                OutputFormat::Table => print_record(&h),
            }
            return Ok(());
        }
        Some(HostAction::Outcome { command_id }) => {
            let r = api.outcome(args.id.as_str(), command_id.as_str()).await.map_err(explain)?;
            output::print(
                global.output,
                &["COMMAND", "ACTION", "STATUS", "MESSAGE", "REPLIED"],
                &[vec![
                    r.command_id.clone(),
                    r.action.as_str().into(),
                    r.status.as_str().into(),
                    r.message.clone(),
                    r.replied_at.clone(),
                ]],
                &r,
            );
            return Ok(());
        }
        Some(HostAction::Ping) => (CommandAction::Ping, String::new()),
        Some(HostAction::InstallWorker { name }) => (CommandAction::InstallWorker, name.to_string()),
        Some(HostAction::RemoveWorker { name }) => (CommandAction::RemoveWorker, name.to_string()),
        Some(HostAction::Drain) => (CommandAction::Drain, String::new()),
        Some(HostAction::Resume) => (CommandAction::Resume, String::new()),
    };
    let req =
        SendCommandRequest { host_id: args.id.to_string(), action, worker, ttl_ms: args.ttl_ms, wait_ms: args.wait_ms };
    let result = api.send(&req).await.map_err(explain)?;
    let reply = result.reply.clone();
    let sent = Sent { host_id: args.id.to_string(), action: action.as_str(), result };
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &sent),
        OutputFormat::Table => match &reply {
            Some(r) => println!("{} {}: {} ({})", args.id, action.as_str(), r.status.as_str(), r.message),
            None => println!(
                "{} {}: queued as {} (no reply yet; the host gets it when it is online; see `steward host {} outcome {}`)",
                args.id,
                action.as_str(),
                sent.result.command_id,
                args.id,
                sent.result.command_id
            ),
        },
    }
    match reply {
        Some(r) if r.status != steward_subjects::api::host::CommandStatus::Ok => {
            anyhow::bail!("host {} answered {}: {}", args.id, r.status.as_str(), r.message)
        }
        _ => Ok(()),
    }
}

fn print_record(h: &HostRecord) {
    let kv = |k: &str, v: String| println!("{k:<18}{v}");
    kv("host", h.host_id.clone());
    kv("state", row(h)[1].clone());
    kv("connected since", h.connected_since.clone().unwrap_or_else(|| "-".into()));
    kv("last seen", h.last_seen.clone());
    if let Some(r) = &h.offline_reason {
        if !h.online {
            kv("offline because", r.clone());
        }
    }
    kv("labels", row(h)[3].clone());
    kv("workers", row(h)[4].clone());
    kv("available workers", h.available_workers.keys().cloned().collect::<Vec<_>>().join(","));
    kv("agent version", h.agent_version.clone());
    kv("incarnation", h.incarnation.to_string());
    kv("facts", format!("{} {} {}", h.facts.hostname, h.facts.os, h.facts.arch));
    kv("heartbeat", format!("{} ms", h.interval_ms));
    kv("applied revision", h.applied_revision.map_or_else(|| "-".into(), |r| r.to_string()));
}

/// `steward ensure-worker HOST NAME --timeout T`: install and wait until the registry shows it.
///
/// # Errors
/// A clear error when the host cannot install the worker or it does not appear in time.
pub async fn ensure_worker(global: &Global, args: EnsureWorkerArgs) -> anyhow::Result<()> {
    let api = api(global).await?;
    let r = api
        .ensure_worker(args.host.as_str(), args.name.as_str(), args.timeout)
        .await
        .map_err(explain)
        .with_context(|| format!("ensure-worker {} on {} failed", args.name, args.host))?;
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &r),
        OutputFormat::Table => {
            let how = if r.already_present {
                "already present".to_owned()
            } else {
                format!("installed in {} ms", r.waited_ms)
            };
            println!("{} on {}: version {} ({how})", r.worker, args.host, r.version);
        }
    }
    Ok(())
}
