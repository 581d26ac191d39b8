//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use steward_actors::{ActorsError, ConnectOptions};
use steward_subjects::{AccountId, HostId};

use crate::args::{parse_account, parse_duration, parse_host, parse_labels, parse_tenant, Labels, Tenant};

/// Steward keeps a fleet of hosts configured, checked and remediated, over NATS.
#[derive(Debug, Parser)]
#[command(name = "steward", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// NATS server URL(s), comma separated.
    #[arg(long = "nats", global = true, env = "STEWARD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Tenant account (letters, digits, '-' and '_').
    #[arg(long, global = true, env = "STEWARD_ACCOUNT", default_value = AccountId::DEFAULT, value_parser = parse_account)]
    pub account: AccountId,
    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, global = true, env = "STEWARD_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA file (PEM) to check the NATS server's TLS certificate with; TLS is then required
    /// (`tls://` URLs require it too).
    #[arg(long, global = true, env = "STEWARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a NATS server that verifies client certificates.
    #[arg(long, global = true, env = "STEWARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, global = true, env = "STEWARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Log format (the filter comes from STEWARD_LOG or RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Write logs to this file (appended) instead of the terminal. `steward up` and
    /// `steward node` log to `<data>/steward.log` unless told otherwise.
    #[arg(long, global = true, env = "STEWARD_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Also show the logs in the terminal when they go to a file.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// OpenTelemetry collector (OTLP over HTTP, base URL such as `http://127.0.0.1:4318`):
    /// spans are exported to `<URL>/v1/traces`. Off when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Global {
    /// How to reach NATS: `--nats`, `--creds` and the TLS files.
    #[must_use]
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            url: self.nats.clone(),
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }

    /// A NATS connection for a CLI command (client name `steward-cli`).
    ///
    /// # Errors
    /// When NATS cannot be reached or the credentials are refused.
    pub async fn connect(&self) -> Result<async_nats::Client, ActorsError> {
        // A permission the identity lacks arrives as a server error on the connection while the
        // request itself only times out; it is kept so the command's error can name it.
        steward_actors::connect_with(&self.connect_options(), "steward-cli", |o| {
            o.event_callback(|event| async move {
                if let async_nats::Event::ServerError(e) = event {
                    let text = e.to_string();
                    if text.to_lowercase().contains("permissions violation") {
                        if let Ok(mut slot) = REFUSED.lock() {
                            slot.get_or_insert(text);
                        }
                    }
                }
            })
        })
        .await
    }
}

/// The first permissions violation the server reported on a CLI connection.
static REFUSED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// What the server refused on this command's connection, if anything: a permission the
/// identity lacks (`Permissions Violation for Publish to "<subject>"`).
#[must_use]
pub fn refused_by_server() -> Option<String> {
    REFUSED.lock().ok().and_then(|slot| slot.clone())
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Steward locally: an embedded single-node NATS with JetStream, the hub roles and
    /// demo edge agents, until Ctrl-C.
    Up(UpArgs),
    /// Run the hub roles against an existing NATS deployment (`--nats`).
    Server(ServerArgs),
    /// Run one edge agent.
    Edge(EdgeArgs),
    /// Run one member of a NATS cluster: nats-server as a managed child plus the hub roles.
    Node(crate::commands::node::NodeArgs),
    /// List every Steward service that answers `$SRV.PING`, with version and uptime.
    Health(HealthArgs),
    /// List hosts by label selector and online state.
    Hosts(crate::commands::hosts::HostsArgs),
    /// Show one host, or send it a command (ping, install-worker, drain, ...).
    Host(crate::commands::hosts::HostArgs),
    /// Install a worker on a host and wait until the registry shows it.
    EnsureWorker(crate::commands::hosts::EnsureWorkerArgs),
    /// Issue nkey identities and the server-side authorization.
    Creds(crate::commands::creds::CredsArgs),
    /// Validate and apply a configuration document as a new revision.
    Apply(crate::commands::config::ApplyArgs),
    /// Dry-run a configuration document: validation and the job-spec diff per host.
    Plan(crate::commands::config::PlanArgs),
    /// Show the current (or a given) configuration revision.
    Get(crate::commands::config::GetArgs),
    /// List configuration revisions (filters and paging).
    History(crate::commands::config::HistoryArgs),
    /// Compare two configuration revisions (document and job specs).
    Diff(crate::commands::config::DiffArgs),
    /// Re-apply an old configuration revision as a new one.
    Rollback(crate::commands::config::RollbackArgs),
    /// Print the JSON Schema of the configuration document.
    Schema,
    /// List rendered job specs, or explain one.
    Jobspecs(crate::commands::config::JobSpecsArgs),
    /// Run a command or a playbook on hosts.
    Run(crate::commands::run::RunArgs),
    /// List runs.
    Runs(crate::commands::run::RunsArgs),
    /// Show a run: per-host status and the latest job events (`--follow` streams them).
    RunStatus(crate::commands::run::RunStatusArgs),
    /// Cancel a run: stops its processes on every host.
    Cancel(crate::commands::run::CancelArgs),
    /// Job signing keys (`keys init`).
    Keys(crate::commands::keys::KeysArgs),
    /// Run a standalone assessment runtime (leases pool specs, runs them, reports results).
    Runtime(crate::commands::runtime::RuntimeArgs),
    /// List job specs with their lease holders and epochs.
    Leases(crate::commands::runtime::LeasesArgs),
    /// Show stored assessment results.
    Results(crate::commands::runtime::ResultsArgs),
    /// Show the history of a host's check values: a small graph per metric (`-o json`: the
    /// points).
    Metrics(crate::commands::telemetry::MetricsQueryArgs),
    /// Show messages Steward's consumers dropped (terminated or never acknowledged), with why.
    DeadLetters(crate::commands::dead_letters::DeadLettersArgs),
    /// List alarms (`--state firing`, `--selector`, `--host`).
    Alarms(crate::commands::alarms::AlarmsArgs),
    /// Show one alarm and its timeline: transitions, silences, acknowledgements, remediations.
    Alarm(crate::commands::alarms::AlarmArgs),
    /// Acknowledge a firing alarm.
    Ack(crate::commands::alarms::AckArgs),
    /// Silence alarms by selector, host, check or rule until a time (`add`, `list`, `expire`).
    Silence(crate::commands::alarms::SilenceArgs),
    /// List remediations: held (with why), running (with their run), finished (with the
    /// outcome and whether the alarm cleared).
    Remediations(crate::commands::remediation::RemediationsArgs),
    /// Act on a remediation (`approve ID`).
    Remediation(crate::commands::remediation::RemediationArgs),
    /// Print the version.
    Version,
    /// Run a program that ends when its parent ends (used by `steward up` and `steward node`
    /// for their children; see `steward_deploy::lifeline`).
    #[command(hide = true)]
    Lifeline(LifelineArgs),
}

/// Options of the hidden `steward lifeline`.
#[derive(Debug, Clone, Args)]
pub struct LifelineArgs {
    /// The pid of the parent whose death ends the program.
    #[arg(long)]
    pub parent: u32,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// Options of `steward up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Data folder (NATS store, edge stores); default: a per-user state folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Client port of the embedded NATS server.
    #[arg(long, default_value_t = 4222)]
    pub port: u16,
    /// Interface the embedded NATS server listens on (`0.0.0.0` to accept other machines or,
    /// in a container, connections from outside it; identities are still required unless
    /// `--insecure`).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: String,
    /// Number of demo edge agents.
    #[arg(long, default_value_t = 2)]
    pub edges: u32,
    /// Edge heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Start the embedded NATS WITHOUT authentication (anyone who can reach the port may run
    /// commands on every edge); for experiments only, warned about at every start. By default
    /// every connection needs an identity `up` issued under `<data>/auth`.
    #[arg(long)]
    pub insecure: bool,
    /// Start a local JetStream cluster of this many nodes (3 to 5; `steward node` children
    /// with client ports `--port`, `--port`+1, ..., R3 streams and a hub per node) instead of
    /// one server, to try failover on one machine.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub cluster: Option<u8>,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: crate::commands::metrics::MetricsArgs,
    /// Telemetry retention.
    #[command(flatten)]
    pub telemetry: crate::commands::telemetry::HubTelemetryArgs,
}

/// Options of `steward server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// JetStream replicas for Steward's streams: 1 on a single node, 3 on a cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub replicas: u8,
    /// Configuration source polled by the config manager: `file://PATH`, `http://URL` or
    /// `https://URL`; a valid, changed candidate becomes a revision labelled `source`.
    #[arg(long)]
    pub config_source: Option<String>,
    /// The job signing key file (`steward keys init`); without it hosts refuse every job.
    #[arg(long, env = "STEWARD_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Poll interval of `--config-source` (`500ms`, `30s`, `5m`, `1h`; a unit is required).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub poll: std::time::Duration,
    /// Serve this tenant account too (repeatable): `ACCOUNT`, connecting with `--creds`, or
    /// `ACCOUNT=CREDS_FILE` with that account's service credentials. Without any, the process
    /// serves `--account`. One process serves every tenant given; each has its own connection,
    /// components and durable consumers.
    #[arg(long = "tenant", value_parser = parse_tenant)]
    pub tenants: Vec<Tenant>,
    /// Lease time-to-live: a runtime that does not renew within it loses its specs
    /// (`15s`; a unit is required).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// TTL of the lease leader lock: a standby hub takes the lease service over this long after
    /// the leader stopped refreshing it (`10s`; a unit is required; at least `300ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_ttl: std::time::Duration,
    /// POST every alarm notification (JSON, header `Steward-Event-Id`) to this URL, retrying
    /// with back-off until it answers 2xx (repeatable).
    #[arg(long = "alarm-webhook", value_parser = parse_webhook)]
    pub alarm_webhooks: Vec<String>,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: crate::commands::metrics::MetricsArgs,
    /// Telemetry retention.
    #[command(flatten)]
    pub telemetry: crate::commands::telemetry::HubTelemetryArgs,
}

fn parse_webhook(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

/// Options of `steward edge`.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Host id (letters, digits, '-' and '_').
    #[arg(long, value_parser = parse_host)]
    pub host_id: HostId,
    /// Labels, `k=v,k2=v2`.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: Labels,
    /// Folder of the agent's local store.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Reach the hub through a local leaf node: start a leaf `nats-server` connected to this
    /// hub leafnode URL (`nats-leaf://hub:7422`, `tls://hub:7422`), carrying `--creds`, and
    /// connect to it over loopback. The leaf admits only this edge's processes (a local nkey
    /// user kept in the data folder). `--nats` and the global TLS options are then ignored.
    #[arg(long)]
    pub leaf_remote: Option<String>,
    /// CA file (PEM) the leaf checks the hub's leafnode certificate with (the link then uses TLS).
    #[arg(long, env = "STEWARD_LEAF_TLS_CA", requires = "leaf_remote")]
    pub leaf_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) the leaf presents to a hub that verifies them.
    #[arg(long, requires_all = ["leaf_remote", "leaf_tls_key"])]
    pub leaf_tls_cert: Option<PathBuf>,
    /// The leaf client certificate's private key (PEM).
    #[arg(long, requires = "leaf_tls_cert")]
    pub leaf_tls_key: Option<PathBuf>,
    /// JetStream domain of the hub (used with `--leaf-remote`, where the leaf has its own).
    #[arg(long, default_value = "hub")]
    pub hub_domain: String,
    /// The hub's public signing key file; jobs not signed by it are refused.
    #[arg(long, env = "STEWARD_TRUSTED_KEY")]
    pub trusted_key: Option<PathBuf>,
    /// Metrics endpoint.
    #[command(flatten)]
    pub metrics: crate::commands::metrics::MetricsArgs,
}

/// Options of `steward health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// How long to collect `$SRV.PING` answers, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
}
