//! One function per subcommand; [`hosts`] (hosts, host, ensure-worker), [`creds`] and
//! [`config`] (apply, plan, get, history, diff, rollback, schema, jobspecs) have their own files.

pub mod alarms;
pub mod cluster;
pub mod config;
pub mod creds;
pub mod dead_letters;
pub mod hosts;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod remediation;
pub mod run;
pub mod runtime;
pub mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use steward_actors::{EdgeSpec, ProcessConfig, Role, RunningProcess};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::tls::TlsRemote;
use steward_subjects::streams::Replicas;
use steward_subjects::{AccountId, HostId, STEWARD_VERSION};
use tracing::info;

use crate::cli::{EdgeArgs, Global, HealthArgs, OutputFormat, ServerArgs, UpArgs};
use crate::output;

/// The demo configuration document `steward up` applies.
pub const DEMO_CONFIG: &str = include_str!("../../../examples/demo.json");
/// The demo service's playbook (examples/playbooks/state.yml).
pub const DEMO_PLAYBOOK: &str = include_str!("../../../examples/playbooks/state.yml");
/// Where the demo configuration expects the playbook on an installed hub; `steward up`
/// replaces it with the copy it writes into its data folder.
pub const DEMO_PLAYBOOK_PATH: &str = "/opt/steward/examples/playbooks/state.yml";

/// How long each component gets to drain on shutdown.
pub(crate) const DRAIN_PER_COMPONENT: Duration = Duration::from_secs(2);

/// The per-user state folder: `$XDG_STATE_HOME/steward`, else `~/.local/state/steward`.
#[must_use]
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("steward");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/steward"),
        None => PathBuf::from(".steward"),
    }
}

/// What `steward up` prints when everything runs.
#[derive(Debug, Serialize)]
pub(crate) struct UpSummary {
    pub(crate) nats_url: String,
    pub(crate) data: String,
    pub(crate) account: String,
    pub(crate) roles: Vec<String>,
    pub(crate) edges: Vec<String>,
    pub(crate) streams: Vec<String>,
    pub(crate) buckets: Vec<String>,
    /// Cluster nodes (`--cluster`): name, client URL and data folder of each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) nodes: Vec<String>,
}

/// The identities `steward up` runs with (issued on first start, kept while unchanged).
pub(crate) struct UpIdentities {
    /// The embedded server's trust configuration (operator, resolver, accounts).
    pub(crate) server_config: String,
    /// The hub's service credentials.
    pub(crate) hub: PathBuf,
    /// Each demo edge's host credentials.
    pub(crate) edges: BTreeMap<HostId, PathBuf>,
    /// The CLI's admin operator credentials (named by the context file).
    pub(crate) operator: PathBuf,
}

/// Opens the authority under `dir` and ensures the hub's service identity, one host identity
/// per demo edge and an admin operator identity for the CLI.
fn up_identities(dir: &std::path::Path, account: &AccountId, hosts: &[HostId]) -> anyhow::Result<UpIdentities> {
    use steward_deploy::authority::{Authority, IssueRequest, Kind};
    use steward_subjects::subject::OperatorRole;
    let auth = Authority::open(dir).with_context(|| format!("cannot open the identities in {}", dir.display()))?;
    let subjects = steward_subjects::Subjects::new(account.clone());
    let ensure = |kind: Kind, name: &str, role: Option<&str>, perms: steward_subjects::subject::HostPermissions| {
        let req = IssueRequest {
            account: account.to_string(),
            kind,
            name: name.to_owned(),
            role: role.map(str::to_owned),
            publish: perms.publish,
            subscribe: perms.subscribe,
        };
        auth.ensure(&req).map(|i| i.creds_file).with_context(|| format!("cannot issue the {kind} identity {name}"))
    };
    let hub = ensure(Kind::Service, "hub", None, subjects.service_permissions())?;
    let mut edges = BTreeMap::new();
    for host in hosts {
        edges.insert(host.clone(), ensure(Kind::Host, host.as_str(), None, subjects.host_permissions(host))?);
    }
    let admin = OperatorRole::Admin;
    let operator = ensure(Kind::Operator, "admin", Some(admin.as_str()), subjects.operator_permissions(admin))?;
    let file = auth.render_server_config()?;
    let server_config = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(UpIdentities { server_config, hub, edges, operator })
}

/// What `steward up` prepares before it starts anything: the absolute data folder, the demo
/// edges and (unless `--insecure`) the identities.
pub(crate) struct UpPlan {
    pub(crate) data: PathBuf,
    pub(crate) edges: Vec<EdgeSpec>,
    pub(crate) identities: Option<UpIdentities>,
}

fn up_plan(global: &Global, args: &UpArgs) -> anyhow::Result<UpPlan> {
    let data = args.data.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create data folder {}", data.display()))?;
    // Absolute from here on: the demo configuration refers to a playbook under it.
    let data = data.canonicalize().unwrap_or(data);
    let mut edges = Vec::new();
    for i in 1..=args.edges {
        let host_id = HostId::parse(&format!("edge-{i}"))?;
        let zone = if i % 2 == 1 { "a" } else { "b" };
        edges.push(EdgeSpec {
            labels: BTreeMap::from([("demo".to_owned(), "true".to_owned()), ("zone".to_owned(), zone.to_owned())]),
            data_dir: data.join("edges").join(host_id.as_str()),
            host_id,
        });
    }
    let identities = if args.insecure {
        let warning = format!(
            "steward up --insecure: the embedded NATS accepts ANY connection; whoever reaches port {} can run commands on every edge",
            args.port
        );
        // On the terminal too: logs go to a file by default.
        eprintln!("warning: {warning}");
        tracing::warn!("{warning}");
        None
    } else {
        let hosts: Vec<HostId> = edges.iter().map(|e| e.host_id.clone()).collect();
        Some(up_identities(&data.join("auth"), &global.account, &hosts)?)
    };
    Ok(UpPlan { data, edges, identities })
}

/// `steward up`: embedded NATS (authenticated unless `--insecure`), hub roles and demo edges
/// until Ctrl-C; nothing left behind, even when killed. With `--cluster N`, N local cluster
/// nodes (`steward node` children) instead of one server.
///
/// # Errors
/// When NATS cannot start (the error says how to install it) or a component cannot start.
pub async fn up(global: &Global, args: UpArgs) -> anyhow::Result<()> {
    let _metrics = args.metrics.serve().await?;
    let plan = up_plan(global, &args)?;
    if let Some(nodes) = args.cluster {
        return cluster::up_cluster(global, &args, plan, nodes).await;
    }
    let UpPlan { data, edges, identities } = plan;
    let mut opts = ServerOptions::named("steward-up");
    opts.lifeline = tied_to_this_process();
    opts.host.clone_from(&args.listen);
    opts.port = Some(args.port);
    opts.data_dir = Some(data.join("nats"));
    if let Some(ids) = &identities {
        opts.extra_config = ids.server_config.clone();
    }
    let mut server = NatsServer::single(opts).await.context("cannot start the embedded nats-server")?;
    let url = server.client_url();
    info!(url = %url, data = %data.display(), secure = identities.is_some(), "embedded nats-server ready");

    let mut config = ProcessConfig::hub(&url, global.account.clone());
    config.connect.creds = identities.as_ref().map(|ids| ids.hub.clone()).or_else(|| global.creds.clone());
    if let Some(ids) = &identities {
        config.edge_creds = ids.edges.clone();
    }
    config.heartbeat = Duration::from_millis(args.heartbeat_ms.max(50));
    config.telemetry = args.telemetry.config();
    let (secret, public) = run::dev_keys(&data.join("keys"))?;
    config.signing_key = Some(secret);
    config.trusted_key = Some(public);
    config.edges = edges;
    let context_file = write_up_context(&data, &url, identities.as_ref(), global)?;
    let process = match RunningProcess::start(config.clone()).await {
        Ok(p) => p,
        Err(e) => {
            server.stop().await;
            return Err(e).context("cannot start the hub components");
        }
    };
    apply_demo(process.client(), global, &data).await;
    let summary = UpSummary {
        nats_url: url.clone(),
        data: data.display().to_string(),
        account: global.account.to_string(),
        roles: config.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        edges: config.edges.iter().map(|e| e.host_id.to_string()).collect(),
        streams: process.ensured.streams.clone(),
        buckets: process.ensured.buckets.clone(),
        nodes: Vec::new(),
    };
    print_up_banner(global, &summary, identities.is_some(), &data, &context_file);
    crate::shutdown::signal().await;
    info!("stopping");
    let r = process.shutdown(DRAIN_PER_COMPONENT).await;
    server.stop().await;
    r.context("shutdown")?;
    info!("stopped");
    Ok(())
}

/// Writes `<data>/context.json` naming the server(s) and the operator identity for the CLI.
pub(crate) fn write_up_context(
    data: &std::path::Path,
    url: &str,
    identities: Option<&UpIdentities>,
    global: &Global,
) -> anyhow::Result<PathBuf> {
    let context_file = data.join("context.json");
    crate::context::Context {
        nats: url.to_owned(),
        creds: identities.map(|ids| ids.operator.clone()),
        account: global.account.to_string(),
    }
    .write(&context_file)?;
    Ok(context_file)
}

/// Applies the demo configuration (examples/demo.json) with the playbook copied into the data
/// folder; re-applying it on a later `up` is a no-op. Failures are logged, not fatal.
pub(crate) async fn apply_demo(client: &async_nats::Client, global: &Global, data: &std::path::Path) {
    let playbook = data.join("playbooks").join("state.yml");
    let document =
        match std::fs::create_dir_all(data.join("playbooks")).and_then(|()| std::fs::write(&playbook, DEMO_PLAYBOOK)) {
            Ok(()) => DEMO_CONFIG.replace(DEMO_PLAYBOOK_PATH, &playbook.display().to_string()),
            Err(e) => {
                tracing::warn!(error = %e, path = %playbook.display(), "demo playbook not written");
                DEMO_CONFIG.to_owned()
            }
        };
    let demo = steward_subjects::api::config::ApplyRequest {
        document,
        label: "demo".into(),
        author: "steward-up".into(),
        if_revision: None,
    };
    let configs = steward_actors::config_manager::client::ConfigClient::new(
        client.clone(),
        steward_subjects::Subjects::new(global.account.clone()),
    );
    match configs.apply(&demo).await {
        Ok(r) => info!(revision = r.revision.revision, noop = r.noop, "demo configuration applied"),
        Err(e) => tracing::warn!(error = %e, "demo configuration not applied"),
    }
}

/// Prints what `steward up` started (a table for people, JSON with `-o json`).
pub(crate) fn print_up_banner(
    global: &Global,
    summary: &UpSummary,
    secure: bool,
    data: &std::path::Path,
    context_file: &std::path::Path,
) {
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], summary),
        OutputFormat::Table => {
            println!("steward {STEWARD_VERSION} is up");
            println!("  nats:     {}", summary.nats_url);
            for node in &summary.nodes {
                println!("  node:     {node}");
            }
            println!("  data:     {}", summary.data);
            println!("  account:  {}", summary.account);
            println!("  roles:    {}", summary.roles.join(", "));
            println!("  edges:    {}", summary.edges.join(", "));
            println!("  streams:  {}", summary.streams.join(", "));
            if let Some(log) = crate::telemetry::log_file(global, default_log_file_for_data(data)) {
                println!("  logs:     {} (-v shows them here too)", log.display());
            }
            if secure {
                println!("  auth:     on; identities in {}", data.join("auth").display());
            } else {
                println!(
                    "  auth:     NONE (--insecure): anyone reaching {} may run commands on every edge",
                    summary.nats_url
                );
            }
            if context_file == crate::context::default_path() {
                println!("try: steward health    (the CLI finds {}; Ctrl-C stops everything)", context_file.display());
            } else {
                println!("try: export {}={}", crate::context::CONTEXT_ENV, context_file.display());
                println!("     steward health    (Ctrl-C stops everything)");
            }
        }
    }
}

/// `steward server`: the hub roles against an existing NATS deployment.
///
/// # Errors
/// When NATS cannot be reached or a component cannot start.
pub async fn server(global: &Global, args: ServerArgs) -> anyhow::Result<()> {
    let _metrics = args.metrics.serve().await?;
    let tenants = if args.tenants.is_empty() {
        vec![crate::args::Tenant { account: global.account.clone(), creds: None }]
    } else {
        args.tenants.clone()
    };
    if args.leader_ttl < Duration::from_millis(300) || args.lease_ttl < Duration::from_millis(300) {
        anyhow::bail!("--lease-ttl and --leader-ttl must be at least 300ms");
    }
    let lease = steward_actors::lease::LeaseConfig {
        ttl: args.lease_ttl,
        leader_ttl: args.leader_ttl,
        ..steward_actors::lease::LeaseConfig::default()
    };
    if tenants.len() > 1 && args.config_source.is_some() {
        anyhow::bail!("--config-source feeds one account; it cannot be used with more than one --tenant");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = tenants.iter().find(|t| !seen.insert(t.account.clone())) {
        anyhow::bail!("tenant {} is given twice", dup.account);
    }
    let configs: Vec<ProcessConfig> = tenants
        .iter()
        .map(|t| {
            let mut connect = global.connect_options();
            if let Some(creds) = &t.creds {
                connect.creds = Some(creds.clone());
            }
            ProcessConfig {
                connect,
                roles: vec![Role::Hub],
                replicas: if args.replicas >= 3 { Replicas::Three } else { Replicas::One },
                config_source: args
                    .config_source
                    .clone()
                    .map(|url| steward_actors::config_manager::ConfigSource { url, poll: args.poll }),
                signing_key: args.signing_key.clone(),
                lease: lease.clone(),
                alarm_webhooks: args.alarm_webhooks.clone(),
                telemetry: args.telemetry.config(),
                ..ProcessConfig::hub(&global.nats, t.account.clone())
            }
        })
        .collect();
    let processes = start_tenants(configs).await?;
    info!(nats = %global.nats, tenants = processes.len(), "hub roles running");
    crate::shutdown::signal().await;
    let results = futures::future::join_all(processes.into_iter().map(|p| p.shutdown(DRAIN_PER_COMPONENT))).await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

/// How many tenants start at once: each ensures the streams and starts its components, so a
/// few in parallel keep a 100-tenant start short without flooding the server.
const TENANT_START_CONCURRENCY: usize = 8;

/// Starts one hub (connection, streams, components) per tenant; when one cannot start, the
/// ones already started are stopped and the error names the tenant.
async fn start_tenants(configs: Vec<ProcessConfig>) -> anyhow::Result<Vec<RunningProcess>> {
    let mut started = futures::stream::iter(configs.into_iter().map(|config| async move {
        let account = config.account.clone();
        (account, RunningProcess::start(config).await)
    }))
    .buffer_unordered(TENANT_START_CONCURRENCY);
    let mut processes = Vec::new();
    let mut failure = None;
    while let Some((account, result)) = started.next().await {
        match result {
            Ok(p) => {
                info!(account = %account, "tenant serving");
                processes.push(p);
            }
            Err(e) if failure.is_none() => failure = Some(anyhow::Error::new(e).context(format!("tenant {account}"))),
            Err(_) => {}
        }
    }
    if let Some(e) = failure {
        futures::future::join_all(processes.into_iter().map(|p| p.shutdown(DRAIN_PER_COMPONENT))).await;
        return Err(e);
    }
    Ok(processes)
}

/// `steward edge`: one edge agent.
///
/// # Errors
/// When NATS cannot be reached or the local store cannot be opened.
pub async fn edge(global: &Global, args: EdgeArgs) -> anyhow::Result<()> {
    let _metrics = args.metrics.serve().await?;
    let data = args.data.unwrap_or_else(|| default_state_dir().join("edges").join(args.host_id.as_str()));
    let mut connect = global.connect_options();
    let mut hub_domain = None;
    let mut leaf = None;
    if let Some(remote) = &args.leaf_remote {
        let tls = (args.leaf_tls_ca.is_some() || args.leaf_tls_cert.is_some()).then(|| TlsRemote {
            ca: args.leaf_tls_ca.clone(),
            cert: args.leaf_tls_cert.clone(),
            key: args.leaf_tls_key.clone(),
        });
        let config = steward_actors::edge::LeafConfig {
            creds: global.creds.clone(),
            tls,
            ..steward_actors::edge::LeafConfig::new(remote.clone(), data.join("leaf"))
        };
        let server = steward_actors::edge::start_leaf(&args.host_id, &config).await?;
        info!(leaf = %server.client_url(), hub = %remote, "local leaf nats-server ready");
        // The leaf carries the host's credentials to the hub; the agent talks to it locally as
        // the one user the leaf admits.
        connect = config.local_connect(&server);
        hub_domain = Some(args.hub_domain.clone());
        leaf = Some(server);
    }
    let config = ProcessConfig {
        connect,
        roles: Vec::new(),
        edges: vec![EdgeSpec { host_id: args.host_id.clone(), labels: args.labels.0, data_dir: data }],
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(50)),
        hub_domain,
        trusted_key: args.trusted_key.clone(),
        ..ProcessConfig::hub(&global.nats, global.account.clone())
    };
    let process = RunningProcess::start(config).await?;
    info!(host_id = %args.host_id, "edge agent running");
    crate::shutdown::signal().await;
    let r = process.shutdown(DRAIN_PER_COMPONENT).await;
    if let Some(mut server) = leaf {
        server.stop().await;
    }
    r?;
    Ok(())
}

/// One service that answered `$SRV.PING`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Start time, as the service reports it.
    pub started: Option<String>,
    /// Seconds since start.
    pub uptime_secs: Option<u64>,
    /// Service metadata (account, roles, host id).
    pub metadata: HashMap<String, String>,
}

/// `steward health`: every service that answers `$SRV.PING`, with version and uptime.
///
/// # Errors
/// When NATS cannot be reached.
pub async fn health(global: &Global, args: HealthArgs) -> anyhow::Result<()> {
    let client = global.connect().await?;
    let services = discover(&client, Duration::from_millis(args.wait_ms)).await?;
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                s.id.clone(),
                s.version.clone(),
                s.uptime_secs.map(output::duration).unwrap_or_else(|| "?".into()),
                s.metadata.get("account").cloned().unwrap_or_default(),
                s.metadata.get("host_id").or_else(|| s.metadata.get("roles")).cloned().unwrap_or_default(),
            ]
        })
        .collect();
    output::print(global.output, &["SERVICE", "ID", "VERSION", "UPTIME", "ACCOUNT", "DETAIL"], &rows, &services);
    Ok(())
}

/// Collects `$SRV.PING` answers for `wait`, then asks each for its stats to learn its uptime.
///
/// # Errors
/// When the ping cannot be published.
pub async fn discover(client: &async_nats::Client, wait: Duration) -> anyhow::Result<Vec<ServiceHealth>> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply("$SRV.PING", inbox, "".into()).await?;
    client.flush().await?;
    let mut pings = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(p) = serde_json::from_slice::<async_nats::service::PingResponse>(&msg.payload) {
            pings.push(p);
        }
    }
    let mut out = Vec::with_capacity(pings.len());
    for p in pings {
        let stats = client
            .request(format!("$SRV.STATS.{}.{}", p.name, p.id), "".into())
            .await
            .ok()
            .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok());
        let started = stats.as_ref().and_then(|s| s["started"].as_str().map(str::to_owned));
        let uptime_secs = started.as_deref().and_then(|s| {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
            u64::try_from((time::OffsetDateTime::now_utc() - t).whole_seconds()).ok()
        });
        out.push(ServiceHealth {
            service: p.name,
            id: p.id,
            version: p.version,
            started,
            uptime_secs,
            metadata: p.metadata,
        });
    }
    out.sort_by(|a, b| {
        (&a.service, &a.metadata.get("host_id"), &a.id).cmp(&(&b.service, &b.metadata.get("host_id"), &b.id))
    });
    Ok(out)
}

/// The log file a command writes to unless `--log-file` says otherwise: `<data>/steward.log`
/// for `steward up` (its banner stays readable; `-v` shows the logs too).
#[must_use]
pub fn default_log_file(command: &crate::cli::Command) -> Option<PathBuf> {
    match command {
        crate::cli::Command::Up(args) => Some(args.data.clone().unwrap_or_else(default_state_dir).join("steward.log")),
        _ => None,
    }
}

fn default_log_file_for_data(data: &std::path::Path) -> Option<PathBuf> {
    Some(data.join("steward.log"))
}

/// The lifeline children are started through so they end with this process even when it is
/// SIGKILLed; `None` (children then end on a clean stop only) when the executable's path is
/// unreadable.
pub(crate) fn tied_to_this_process() -> Option<steward_deploy::lifeline::Lifeline> {
    match steward_deploy::lifeline::Lifeline::current_exe("lifeline") {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find this executable; children will outlive a killed steward");
            None
        }
    }
}

/// `steward lifeline --parent PID -- PROGRAM ARGS`: requests SIGTERM at the parent's death and
/// becomes the program (see `steward_deploy::lifeline`). Returns only when that fails.
#[must_use]
pub fn lifeline(args: &crate::cli::LifelineArgs) -> steward_deploy::lifeline::LifelineError {
    let (program, rest) = match args.command.split_first() {
        Some((p, rest)) => (p.clone(), rest),
        None => (std::ffi::OsString::new(), &[][..]),
    };
    steward_deploy::lifeline::exec_tied_to_parent(args.parent, nix::sys::signal::Signal::SIGTERM, &program, rest)
}

/// `steward version`.
///
/// # Errors
/// Never; the signature matches the other commands.
pub fn version(global: &Global) -> anyhow::Result<()> {
    match global.output {
        OutputFormat::Json => println!("{}", serde_json::json!({"version": STEWARD_VERSION})),
        OutputFormat::Table => println!("steward {STEWARD_VERSION}"),
    }
    Ok(())
}
