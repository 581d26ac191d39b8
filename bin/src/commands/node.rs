//! `steward node`: one member of a NATS cluster run from Steward's own binary — `nats-server`
//! as a managed child (found as everywhere else, tied to this process's life) plus the hub
//! roles connected to it — from a JSON file (`--config`) and/or flags (flags win).
//!
//! `steward up --cluster 3` runs three of these on one machine; on three machines, each runs
//! one with its own `name` and the same `routes` (README, "A cluster from the binary").

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use steward_actors::{ProcessConfig, Role, RunningProcess};
use steward_deploy::server::{ClusterOptions, NatsServer, ServerOptions};
use steward_subjects::streams::Replicas;
use tracing::{info, warn};

use crate::cli::Global;

/// How long the hub waits between attempts while the cluster is not ready for its streams
/// (R3 streams need three nodes up).
const HUB_RETRY: Duration = Duration::from_secs(2);

/// Options of `steward node`; each overrides the same key of `--config`.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// A JSON file with the keys below (`name`, `data`, `listen`, `port`, `cluster_port`,
    /// `monitor_port`, `leafnode_port`, `cluster_name`, `routes`, `roles`, `auth`, `insecure`,
    /// `signing_key`, `replicas`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's server name, unique in the cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// Data folder (the nats-server's store and config).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Interface the client, route and leafnode ports listen on (default `0.0.0.0`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Client port (default 4222).
    #[arg(long)]
    pub port: Option<u16>,
    /// Route port other nodes connect to (default 6222).
    #[arg(long)]
    pub cluster_port: Option<u16>,
    /// Monitoring port on 127.0.0.1 (default 8222).
    #[arg(long)]
    pub monitor_port: Option<u16>,
    /// Accept edge leaf nodes on this port.
    #[arg(long)]
    pub leafnode_port: Option<u16>,
    /// Cluster name, the same on every node (default `steward`).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Route URLs of every node, comma separated (`host:6222` or `nats-route://host:6222`;
    /// a node's own entry is ignored by the server).
    #[arg(long, value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Roles, comma separated: `hub` (the default) or `nats` (the server only).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Identity authority folder (`steward creds --dir`): the server trusts its operator and
    /// the hub connects with its `hub` service identity.
    #[arg(long)]
    pub auth: Option<PathBuf>,
    /// Run WITHOUT authentication (anyone reaching the ports may run commands on every edge).
    #[arg(long)]
    pub insecure: bool,
    /// The job signing key file of the hub (`steward keys init`).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// JetStream replicas of Steward's streams (default 3 with two or more routes, else 1).
    #[arg(long)]
    pub replicas: Option<u8>,
    /// Metrics endpoint of this node's hub.
    #[command(flatten)]
    pub metrics: super::metrics::MetricsArgs,
    /// Telemetry retention of this node's hub.
    #[command(flatten)]
    pub telemetry: super::telemetry::HubTelemetryArgs,
}

/// A node's settings, as read from `--config` and completed by flags and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Server name.
    pub name: String,
    /// Data folder.
    pub data: PathBuf,
    /// Listen interface.
    pub listen: Option<String>,
    /// Client port.
    pub port: Option<u16>,
    /// Route port.
    pub cluster_port: Option<u16>,
    /// Monitoring port.
    pub monitor_port: Option<u16>,
    /// Leafnode port.
    pub leafnode_port: Option<u16>,
    /// Cluster name.
    pub cluster_name: Option<String>,
    /// Route URLs.
    pub routes: Vec<String>,
    /// Roles (`hub`, `nats`).
    pub roles: Vec<String>,
    /// Authority folder.
    pub auth: Option<PathBuf>,
    /// No authentication.
    pub insecure: bool,
    /// Job signing key file.
    pub signing_key: Option<PathBuf>,
    /// Stream replicas.
    pub replicas: Option<u8>,
}

impl NodeConfig {
    /// Reads `--config` (if any) and applies the flags over it.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or the result is incomplete or inconsistent.
    pub fn load(args: &NodeArgs) -> anyhow::Result<Self> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{} is not a valid node file", path.display()))?
            }
            None => NodeConfig::default(),
        };
        let or = |flag: &Option<u16>, file: Option<u16>| flag.or(file);
        if let Some(v) = &args.name {
            c.name.clone_from(v);
        }
        if let Some(v) = &args.data {
            c.data.clone_from(v);
        }
        c.listen = args.listen.clone().or(c.listen);
        c.port = or(&args.port, c.port);
        c.cluster_port = or(&args.cluster_port, c.cluster_port);
        c.monitor_port = or(&args.monitor_port, c.monitor_port);
        c.leafnode_port = or(&args.leafnode_port, c.leafnode_port);
        c.cluster_name = args.cluster_name.clone().or(c.cluster_name);
        if !args.routes.is_empty() {
            c.routes.clone_from(&args.routes);
        }
        if !args.roles.is_empty() {
            c.roles.clone_from(&args.roles);
        }
        c.auth = args.auth.clone().or(c.auth);
        c.insecure |= args.insecure;
        c.signing_key = args.signing_key.clone().or(c.signing_key);
        c.replicas = args.replicas.or(c.replicas);
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.name.is_empty() || !self.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)) {
            anyhow::bail!("a node needs a name (letters, digits, '-' and '_'): --name or \"name\" in --config");
        }
        if self.data.as_os_str().is_empty() {
            anyhow::bail!("a node needs a data folder: --data or \"data\" in --config");
        }
        if let Some(bad) = self.roles.iter().find(|r| !matches!(r.as_str(), "hub" | "nats")) {
            anyhow::bail!("unknown role {bad:?}: a node runs `hub` (the default) or `nats` (the server only)");
        }
        match (&self.auth, self.insecure) {
            (Some(_), true) => anyhow::bail!("--auth and --insecure exclude each other"),
            (None, false) => anyhow::bail!(
                "a node needs --auth DIR (the identity authority made by `steward creds`), or --insecure to accept anyone"
            ),
            _ => {}
        }
        if let Some(r) = self.replicas.filter(|r| !matches!(r, 1 | 3)) {
            anyhow::bail!("replicas must be 1 or 3, not {r}");
        }
        Ok(())
    }

    /// Whether the hub roles run here.
    #[must_use]
    pub fn runs_hub(&self) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == "hub")
    }

    /// Replicas of Steward's streams: as given, else 3 on a cluster of three or more.
    #[must_use]
    pub fn replicas(&self) -> Replicas {
        match self.replicas {
            Some(3) => Replicas::Three,
            Some(_) => Replicas::One,
            None if self.routes.len() >= 2 => Replicas::Three,
            None => Replicas::One,
        }
    }

    /// The nats-server options of this node (trust configuration not included).
    #[must_use]
    pub fn server_options(&self) -> ServerOptions {
        let routes = self
            .routes
            .iter()
            .map(|r| if r.contains("://") { r.clone() } else { format!("nats-route://{r}") })
            .collect();
        ServerOptions {
            host: self.listen.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
            port: Some(self.port.unwrap_or(4222)),
            monitor_port: Some(self.monitor_port.unwrap_or(8222)),
            data_dir: Some(self.data.join("nats")),
            cluster: Some(ClusterOptions {
                name: self.cluster_name.clone().unwrap_or_else(|| "steward".to_owned()),
                port: Some(self.cluster_port.unwrap_or(6222)),
                routes,
            }),
            leafnode_listen: self.leafnode_port.is_some(),
            leafnode_port: self.leafnode_port,
            max_file_store: 64 * 1024 * 1024 * 1024,
            max_memory_store: 1024 * 1024 * 1024,
            start_timeout: Duration::from_secs(60),
            port_retries: 0,
            ..ServerOptions::named(self.name.clone())
        }
    }
}

/// The hub's trust configuration and service credentials from the authority in `dir`; the
/// resolver keeps pushed account JWTs in this node's own folder.
fn node_trust(dir: &Path, data: &Path, global: &Global) -> anyhow::Result<(String, PathBuf)> {
    use steward_deploy::authority::{Authority, IssueRequest, Kind};
    let auth = Authority::open(dir).with_context(|| format!("cannot open the identities in {}", dir.display()))?;
    let perms = steward_subjects::Subjects::new(global.account.clone()).service_permissions();
    let req = IssueRequest {
        account: global.account.to_string(),
        kind: Kind::Service,
        name: "hub".to_owned(),
        role: None,
        publish: perms.publish,
        subscribe: perms.subscribe,
    };
    let hub = auth.ensure(&req).context("cannot issue the hub's service identity")?.creds_file;
    let config = auth.server_config(&data.join("nats").join("jwt"))?;
    Ok((config, global.creds.clone().unwrap_or(hub)))
}

/// `steward node`: this cluster member's nats-server and hub roles until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the settings are incomplete, the server cannot start, or the hub cannot start for a
/// reason other than the cluster not being ready yet.
pub async fn node(global: &Global, args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args)?;
    let args_telemetry = args.telemetry.clone();
    let _metrics = args.metrics.serve().await?;
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create data folder {}", config.data.display()))?;
    let mut opts = config.server_options();
    opts.lifeline = super::tied_to_this_process();
    let mut hub_creds = global.creds.clone();
    if let Some(dir) = &config.auth {
        let (trust, creds) = node_trust(dir, &config.data, global)?;
        opts.extra_config = trust;
        hub_creds = Some(creds);
    } else {
        warn!(name = %config.name, "steward node --insecure: the server accepts ANY connection");
    }
    let mut server = NatsServer::start(opts).await.context("cannot start this node's nats-server")?;
    let url = format!("nats://127.0.0.1:{}", server.port());
    info!(name = %config.name, url = %url, routes = config.routes.len(), "node's nats-server ready");
    let hub = if config.runs_hub() {
        let mut process = ProcessConfig::hub(&url, global.account.clone());
        process.connect.creds = hub_creds;
        process.roles = vec![Role::Hub];
        process.replicas = config.replicas();
        process.signing_key = config.signing_key.clone();
        process.telemetry = args_telemetry.config();
        tokio::select! {
            hub = start_hub(process) => Some(hub),
            () = crate::shutdown::signal() => {
                server.stop().await;
                return Ok(());
            }
        }
    } else {
        None
    };
    info!(name = %config.name, hub = hub.is_some(), "node running");
    crate::shutdown::signal().await;
    let r = match hub {
        Some(p) => p.shutdown(super::DRAIN_PER_COMPONENT).await.map_err(anyhow::Error::new),
        None => Ok(()),
    };
    server.stop().await;
    r
}

/// Starts the hub roles, retrying while the cluster cannot place the streams yet (R3 needs
/// three nodes up).
async fn start_hub(config: ProcessConfig) -> RunningProcess {
    let mut attempt = 0_u32;
    loop {
        match RunningProcess::start(config.clone()).await {
            Ok(p) => return p,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 15 == 0 {
                    warn!(error = %e, attempt, "hub roles not started yet (is a majority of the cluster up?); retrying");
                }
                tokio::time::sleep(HUB_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(file: Option<PathBuf>) -> NodeArgs {
        NodeArgs { config: file, ..NodeArgs::default() }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.json");
        std::fs::write(
            &file,
            r#"{"name": "n1", "data": "/var/lib/steward", "routes": ["a:6222", "nats-route://b:6222", "c:6222"], "insecure": true, "port": 4300}"#,
        )
        .unwrap();
        let c = NodeConfig::load(&NodeArgs { port: Some(4400), ..args(Some(file)) }).unwrap();
        assert_eq!((c.name.as_str(), c.port), ("n1", Some(4400)));
        assert!(c.runs_hub());
        assert_eq!(c.replicas(), Replicas::Three);
        let opts = c.server_options();
        assert_eq!(opts.host, "0.0.0.0");
        assert_eq!(opts.data_dir, Some(PathBuf::from("/var/lib/steward/nats")));
        let cluster = opts.cluster.unwrap();
        assert_eq!(cluster.port, Some(6222));
        assert_eq!(cluster.routes[0], "nats-route://a:6222");
        assert_eq!(cluster.routes[1], "nats-route://b:6222");
    }

    #[test]
    fn incomplete_or_open_nodes_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let base = NodeArgs { name: Some("n1".into()), data: Some(dir.path().into()), ..NodeArgs::default() };
        let err = NodeConfig::load(&base).unwrap_err().to_string();
        assert!(err.contains("--auth") && err.contains("--insecure"), "{err}");
        let err = NodeConfig::load(&NodeArgs { name: None, insecure: true, ..base.clone() }).unwrap_err().to_string();
        assert!(err.contains("name"), "{err}");
        let err = NodeConfig::load(&NodeArgs { roles: vec!["web".into()], insecure: true, ..base.clone() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown role \"web\""), "{err}");
        let file = dir.path().join("bad.json");
        std::fs::write(&file, r#"{"name": "n1", "rout": []}"#).unwrap();
        let err = format!("{:#}", NodeConfig::load(&args(Some(file))).unwrap_err());
        assert!(err.contains("unknown field `rout`"), "{err}");
        assert!(NodeConfig::load(&NodeArgs { insecure: true, ..base }).is_ok());
    }
}
