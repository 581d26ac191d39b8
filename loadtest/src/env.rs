//! The deployment a run measures: NATS (started here through `steward_deploy`, or an existing
//! one) and the hub processes scenarios start.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::topology::Cluster;
use steward_deploy::wait::eventually;
use steward_subjects::streams::Replicas;

use crate::auth::{Identity, JwtAuth};

/// Which NATS a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One JetStream node started by the harness.
    Single,
    /// A 3-node JetStream cluster started by the harness (streams R3).
    Cluster3,
    /// An existing deployment at these URLs (CPU and memory of nats-server are not measured).
    External(String),
}

enum Servers {
    Single(Box<NatsServer>),
    Cluster(Cluster),
    None,
}

/// A running deployment.
pub struct Deployment {
    servers: Servers,
    urls: Vec<String>,
    topology: Topology,
    nats_version: Option<String>,
    /// The default account (`--account`): what [`Deployment::connect`] connects to.
    account: String,
    /// The identities, when the server authenticates (`--auth`).
    auth: Option<JwtAuth>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment").field("urls", &self.urls).field("topology", &self.topology).finish()
    }
}

impl Deployment {
    /// Starts (or attaches to) the deployment; with `auth`, in operator (JWT) mode with
    /// `account`'s identities issued, checking that an anonymous client is refused.
    ///
    /// # Errors
    /// When nats-server cannot be found or started, when `auth` is asked of a cluster or an
    /// external deployment, or when the authenticated server accepts an anonymous client.
    pub async fn start(topology: Topology, account: &str, auth: bool) -> anyhow::Result<Self> {
        let auth = if auth {
            if topology != Topology::Single {
                bail!("--auth runs a single node the harness starts (not --cluster or --nats): each node would need its own resolver folder");
            }
            Some(JwtAuth::new(account)?)
        } else {
            None
        };
        let extra_config = match &auth {
            Some(a) => a.server_config()?,
            None => String::new(),
        };
        let big = |name: &str| {
            let mut o = ServerOptions::named(name);
            o.max_memory_store = 1024 * 1024 * 1024;
            // With --auth every account has its own streams, and each reserves its `max_bytes`
            // (256 MiB for dead letters) from this limit: 100 tenant accounts need 25 GiB of
            // reservations, never written. Open mode keeps 8 GiB (one set of streams).
            o.max_file_store = if extra_config.is_empty() { 8 } else { 64 } * 1024 * 1024 * 1024;
            o.extra_config.clone_from(&extra_config);
            o
        };
        let version = || {
            steward_deploy::find_nats_server()
                .ok()
                .and_then(|b| steward_deploy::nats_server_version(&b).ok())
                .map(|v| v.to_string())
        };
        let (servers, urls) = match &topology {
            Topology::Single => {
                let s = NatsServer::single(big("loadtest")).await.context("cannot start nats-server")?;
                let url = s.client_url();
                (Servers::Single(Box::new(s)), vec![url])
            }
            Topology::Cluster3 => {
                let c = Cluster::start_with(3, big("loadtest")).await.context("cannot start a 3-node cluster")?;
                let urls = c.server_addrs();
                (Servers::Cluster(c), urls)
            }
            Topology::External(url) => (Servers::None, url.split(',').map(|u| u.trim().to_owned()).collect()),
        };
        let nats_version = if matches!(topology, Topology::External(_)) { None } else { version() };
        let d = Deployment { servers, urls, topology, nats_version, account: account.to_owned(), auth };
        if d.auth.is_some() {
            d.anonymous_refused().await?;
        }
        Ok(d)
    }

    /// Fails when the deployment is authenticated but accepts a client without credentials (the
    /// figures would silently be open-mode ones).
    ///
    /// # Errors
    /// When an anonymous connection succeeds.
    pub async fn anonymous_refused(&self) -> anyhow::Result<()> {
        let anonymous = async_nats::ConnectOptions::new()
            .name("loadtest-anonymous-probe")
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url_list())
            .await;
        match anonymous {
            Ok(_) => bail!("nats-server at {} accepted an anonymous client in --auth mode", self.url_list()),
            Err(_) => Ok(()),
        }
    }

    /// `jwt` when the deployment authenticates every client, `open` otherwise.
    #[must_use]
    pub fn auth_mode(&self) -> &'static str {
        if self.auth.is_some() {
            "jwt"
        } else {
            "open"
        }
    }

    /// The authority's folder, when authenticated.
    #[must_use]
    pub fn auth_dir(&self) -> Option<&std::path::Path> {
        self.auth.as_ref().map(JwtAuth::dir)
    }

    /// The credentials file of `who` in `account` (issued on first use), when authenticated.
    ///
    /// # Errors
    /// When issuing fails.
    pub async fn creds(&self, account: &str, who: Identity) -> anyhow::Result<Option<PathBuf>> {
        match &self.auth {
            Some(a) => Ok(Some(a.creds(&self.url_list(), account, who).await?)),
            None => Ok(None),
        }
    }

    /// A `steward server --tenant` argument for `account`: `ACCOUNT`, or `ACCOUNT=CREDS` with
    /// the account's hub identity when authenticated.
    ///
    /// # Errors
    /// When issuing fails.
    pub async fn tenant_arg(&self, account: &str) -> anyhow::Result<String> {
        Ok(match self.creds(account, Identity::Hub).await? {
            Some(c) => format!("{account}={}", c.display()),
            None => account.to_owned(),
        })
    }

    /// Client URLs.
    #[must_use]
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Client URLs joined with commas (the `--nats` form).
    #[must_use]
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// Name of the topology for the report.
    #[must_use]
    pub fn topology_name(&self) -> &'static str {
        match self.topology {
            Topology::Single => "single",
            Topology::Cluster3 => "cluster3",
            Topology::External(_) => "external",
        }
    }

    /// Replicas for streams created by scenarios.
    #[must_use]
    pub fn replicas(&self) -> Replicas {
        match self.topology {
            Topology::Cluster3 => Replicas::Three,
            _ => Replicas::One,
        }
    }

    /// nats-server version, when the harness started it.
    #[must_use]
    pub fn nats_version(&self) -> Option<String> {
        self.nats_version.clone()
    }

    /// Pids of the nats-server processes (empty for an external deployment).
    #[must_use]
    pub fn nats_pids(&self) -> Vec<u32> {
        match &self.servers {
            Servers::Single(s) => s.pid().into_iter().collect(),
            Servers::Cluster(c) => c.nodes().iter().filter_map(NatsServer::pid).collect(),
            Servers::None => Vec::new(),
        }
    }

    /// A new client connection named `name` to the default account (the harness identity
    /// when authenticated).
    ///
    /// # Errors
    /// When the deployment cannot be reached.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        self.connect_in(&self.account.clone(), name).await
    }

    /// A new client connection named `name` to `account` (the harness identity of that account
    /// when authenticated; in open mode every account shares the server's global account).
    ///
    /// # Errors
    /// When the deployment cannot be reached or the identity cannot be issued.
    pub async fn connect_in(&self, account: &str, name: &str) -> anyhow::Result<async_nats::Client> {
        let addrs: Vec<async_nats::ServerAddr> =
            self.urls.iter().map(|u| u.parse()).collect::<Result<_, _>>().context("bad nats url")?;
        let options = match self.creds(account, Identity::Harness).await? {
            Some(creds) => async_nats::ConnectOptions::with_credentials_file(&creds)
                .await
                .with_context(|| format!("cannot read {}", creds.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        options
            .name(name)
            .client_capacity(65_536)
            .subscription_capacity(1 << 20)
            .connect(addrs)
            .await
            .with_context(|| format!("cannot connect to {}", self.url_list()))
    }
}

/// A `steward` hub process started for a scenario; killed on drop.
#[derive(Debug)]
pub struct HubProcess {
    child: tokio::process::Child,
}

/// Finds the `steward` binary next to this executable (cargo builds both into one folder).
///
/// # Errors
/// When it is not there, with the command that builds it.
pub fn steward_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STEWARD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the harness executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("steward");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the steward binary was not found next to {}; build it with `cargo build --release -p steward -p steward-loadtest` or set STEWARD_BIN",
        exe.display()
    )
}

/// Generates a job signing key pair in `dir` with `steward keys init`; answers the secret
/// key's path (for `steward server --signing-key`).
///
/// # Errors
/// When the binary is missing or the keys cannot be written.
pub async fn signing_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let bin = steward_binary()?;
    let out = tokio::process::Command::new(&bin)
        .args(["keys", "init", "--dir"])
        .arg(dir)
        .output()
        .await
        .with_context(|| format!("cannot run {} keys init", bin.display()))?;
    if !out.status.success() {
        bail!("steward keys init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir.join("steward-signing.key"))
}

impl HubProcess {
    /// Starts `steward <args>` against `deployment` for `account` and waits until its health
    /// service answers.
    ///
    /// # Errors
    /// When the binary is missing or the process does not become healthy within 30 s.
    pub async fn start(deployment: &Deployment, account: &str, args: &[&str]) -> anyhow::Result<Self> {
        let bin = steward_binary()?;
        let mut command = tokio::process::Command::new(&bin);
        command.args(["--nats", &deployment.url_list(), "--account", account]);
        if let Some(creds) = deployment.creds(account, Identity::Hub).await? {
            command.arg("--creds").arg(creds);
        }
        let child = command
            .args(args)
            .env("STEWARD_LOG", std::env::var("STEWARD_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let client = deployment.connect_in(account, "loadtest-hub-wait").await?;
        eventually(Duration::from_secs(30), Duration::from_millis(100), || {
            let client = client.clone();
            async move { client.request("$SRV.PING.steward-hub", "".into()).await.map(|_| ()) }
        })
        .await
        .context("hub process did not become healthy")?;
        Ok(HubProcess { child })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
