//! `steward up --cluster N`: N local cluster nodes, each a `steward node` child process (its
//! own nats-server and hub roles, R3 streams), tied to this process's life, plus the demo
//! edges in this process connected to every node. Killing one node (its nats-server and hub)
//! leaves a working cluster: that is the point of running it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use steward_actors::{ProcessConfig, RunningProcess};
use steward_deploy::server::free_ports;
use tokio::process::Child;
use tracing::{info, warn};

use super::node::NodeConfig;
use super::{UpPlan, UpSummary};
use crate::cli::{Global, UpArgs};

/// How long the nodes get to form the cluster and start their hubs.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node gets to stop after SIGTERM before it is killed.
const NODE_STOP_GRACE: Duration = Duration::from_secs(20);

/// One started node child.
struct NodeChild {
    name: String,
    dir: PathBuf,
    url: String,
    child: Child,
}

impl NodeChild {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("steward.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(NODE_STOP_GRACE, self.child.wait()).await.is_err() {
            warn!(node = %self.name, "node ignored SIGTERM, killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The node files of a local cluster of `n` nodes under `data`, client ports from `port`.
fn node_configs(plan: &UpPlan, args: &UpArgs, n: u8, signing_key: &Path) -> anyhow::Result<Vec<NodeConfig>> {
    let (port, listen) = (args.port, args.listen.as_str());
    let n = usize::from(n);
    let other = free_ports(2 * n).context("no free ports for the cluster's routes")?;
    let routes: Vec<String> = other[..n].iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
    (0..n)
        .map(|i| {
            let client = u16::try_from(i).ok().and_then(|i| port.checked_add(i)).context("--port too high")?;
            Ok(NodeConfig {
                name: format!("steward-n{}", i + 1),
                data: plan.data.join(format!("node-{}", i + 1)),
                listen: Some(listen.to_owned()),
                port: Some(client),
                cluster_port: Some(other[i]),
                monitor_port: Some(other[n + i]),
                // Every other node (a node's own URL in its list only costs a self-connection).
                routes: routes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, r)| r.clone()).collect(),
                roles: vec!["hub".to_owned()],
                auth: plan.identities.as_ref().map(|_| plan.data.join("auth")),
                insecure: plan.identities.is_none(),
                signing_key: Some(signing_key.to_path_buf()),
                replicas: Some(3),
                ..NodeConfig::default()
            })
        })
        .collect()
}

/// Writes the node's file and starts `steward node --config FILE` through the lifeline.
fn spawn_node(global: &Global, config: &NodeConfig) -> anyhow::Result<NodeChild> {
    std::fs::create_dir_all(&config.data).with_context(|| format!("cannot create {}", config.data.display()))?;
    let file = config.data.join("node.json");
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let exe = std::env::current_exe().context("cannot find this executable to start the nodes")?;
    let mut cmd = match super::tied_to_this_process() {
        Some(lifeline) => lifeline.command(&exe),
        None => tokio::process::Command::new(&exe),
    };
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(config.data.join("stderr.log"))?;
    cmd.arg("--account")
        .arg(global.account.as_str())
        .arg("--log-file")
        .arg(config.data.join("steward.log"))
        .args(["--log-format", if matches!(global.log_format, crate::cli::LogFormat::Json) { "json" } else { "text" }])
        .arg("node")
        .arg("--config")
        .arg(&file)
        .env_remove("STEWARD_CREDS")
        .env_remove("STEWARD_NATS_URL")
        .env_remove("STEWARD_LOG_FILE")
        .env_remove("STEWARD_METRICS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("cannot start node {}", config.name))?;
    Ok(NodeChild {
        name: config.name.clone(),
        dir: config.data.clone(),
        url: format!("nats://127.0.0.1:{}", config.port.unwrap_or_default()),
        child,
    })
}

/// Connects once a node's server accepts connections; fails early when a node exits.
async fn connect_when_up(
    connect: &steward_actors::ConnectOptions,
    nodes: &mut [NodeChild],
) -> anyhow::Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                anyhow::bail!("node {} exited ({status}):\n{}", node.name, node.log_tail());
            }
        }
        match steward_actors::connect_with(connect, "steward-up", |o| o).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).context("no cluster node accepted a connection");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits until every node's hub answers `$SRV.PING`; fails early when a node exits.
async fn wait_formed(client: &async_nats::Client, nodes: &mut [NodeChild]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                anyhow::bail!("node {} exited ({status}):\n{}", node.name, node.log_tail());
            }
        }
        let services = super::discover(client, Duration::from_millis(500)).await?;
        let hubs = services.iter().filter(|s| s.service == "steward-hub").count();
        if hubs >= nodes.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let tails: Vec<String> = nodes.iter().map(|n| format!("{}:\n{}", n.name, n.log_tail())).collect();
            anyhow::bail!(
                "the cluster did not come up within {FORM_TIMEOUT:?} ({hubs} of {} hubs answer):\n{}",
                nodes.len(),
                tails.join("\n")
            );
        }
    }
}

/// `steward up --cluster N`.
///
/// # Errors
/// When a node cannot start or the cluster does not form in time (the nodes' log tails say why).
pub(crate) async fn up_cluster(global: &Global, args: &UpArgs, plan: UpPlan, n: u8) -> anyhow::Result<()> {
    let (secret, public) = super::run::dev_keys(&plan.data.join("keys"))?;
    let configs = node_configs(&plan, args, n, &secret)?;
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(spawn_node(global, config)?);
    }
    let url = nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>().join(",");
    info!(nodes = nodes.len(), url = %url, "cluster nodes started");
    let context_file = super::write_up_context(&plan.data, &url, plan.identities.as_ref(), global)?;
    let mut process = ProcessConfig::hub(&url, global.account.clone());
    process.connect.creds = plan.identities.as_ref().map(|ids| ids.hub.clone()).or_else(|| global.creds.clone());
    let running = async {
        let client = connect_when_up(&process.connect, &mut nodes).await?;
        wait_formed(&client, &mut nodes).await?;
        process.roles = Vec::new();
        process.edges = plan.edges.clone();
        process.edge_creds = plan.identities.as_ref().map(|ids| ids.edges.clone()).unwrap_or_default();
        process.heartbeat = Duration::from_millis(args.heartbeat_ms.max(50));
        process.trusted_key = Some(public.clone());
        let edges = RunningProcess::start(process.clone()).await.context("cannot start the demo edges")?;
        super::apply_demo(&client, global, &plan.data).await;
        anyhow::Ok(edges)
    };
    let edges = tokio::select! {
        r = running => r,
        () = crate::shutdown::signal() => Err(anyhow::anyhow!("interrupted while the cluster was starting")),
    };
    let edges = match edges {
        Ok(e) => e,
        Err(e) => {
            for node in &mut nodes {
                node.stop().await;
            }
            return Err(e);
        }
    };
    let summary = UpSummary {
        nats_url: url.clone(),
        data: plan.data.display().to_string(),
        account: global.account.to_string(),
        roles: vec![format!("hub on each of {} nodes", nodes.len())],
        edges: plan.edges.iter().map(|e| e.host_id.to_string()).collect(),
        streams: vec!["replicated on 3 nodes (R3)".to_owned()],
        buckets: Vec::new(),
        nodes: nodes.iter().map(|n| format!("{} {} {}", n.name, n.url, n.dir.display())).collect(),
    };
    super::print_up_banner(global, &summary, plan.identities.is_some(), &plan.data, &context_file);
    crate::shutdown::signal().await;
    info!("stopping");
    let r = edges.shutdown(super::DRAIN_PER_COMPONENT).await;
    futures::future::join_all(nodes.iter_mut().map(NodeChild::stop)).await;
    r.context("shutdown")?;
    info!("stopped");
    Ok(())
}
