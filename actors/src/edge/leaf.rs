//! The edge site's leaf node: a local `nats-server` as a leaf of the hub (own JetStream
//! domain, the host's credentials on the link, TLS to the hub if asked); the agent connects to
//! it over loopback and reaches the hub's streams through the hub's JetStream domain.
//!
//! The leaf accepts only its own host's processes: it listens on 127.0.0.1 and admits one nkey
//! user, whose seed the edge generates on first start ([`LeafConfig::local_seed_file`], mode
//! 0600, refused when others may read it). Anonymous and other keys are refused, so no local
//! process can borrow the host's hub identity through the link.
//!
//! An edge process killed with SIGKILL cannot stop its leaf, which would keep running with the
//! host's hub link and its JetStream store while the restarted edge starts a second leaf on the
//! same folder. So the leaf's process id is kept in the folder ([`LeafConfig::pid_file`]) and
//! [`start_leaf`] first stops a leaf an earlier edge process left running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use steward_deploy::auth::{leaf_remote_block_tls, load_or_create_seed, local_users_block, LeafAuth};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::tls::TlsRemote;
use steward_subjects::HostId;
use tracing::{info, warn};

use crate::{ActorsError, ConnectOptions};

/// How long a leaf left running by an earlier edge process gets to stop after SIGTERM before
/// it is killed.
const STALE_STOP_GRACE: Duration = Duration::from_secs(5);

/// How an edge site's local leaf node reaches the hub.
#[derive(Debug, Clone)]
pub struct LeafConfig {
    /// The hub's leafnode URL (`nats-leaf://hub:7422`, `tls://hub:7422`).
    pub remote_url: String,
    /// The host's credentials (nkey seed file or JWT credentials file), carried on the link.
    pub creds: Option<PathBuf>,
    /// The leaf's folder (config, log, JetStream store, the local user's seed).
    pub data_dir: PathBuf,
    /// Client port of the leaf; `None` picks a free one.
    pub port: Option<u16>,
    /// TLS on the link to the hub (`None` = as the hub asks).
    pub tls: Option<TlsRemote>,
}

impl LeafConfig {
    /// A plain link to `remote_url` without credentials, the leaf's files in `data_dir`.
    #[must_use]
    pub fn new(remote_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        LeafConfig { remote_url: remote_url.into(), creds: None, data_dir: data_dir.into(), port: None, tls: None }
    }

    /// The seed file of the one user the leaf admits (created by [`start_leaf`]).
    #[must_use]
    pub fn local_seed_file(&self) -> PathBuf {
        self.data_dir.join("local-user.nk")
    }

    /// The file naming the leaf `nats-server` an edge process started: its process id and its
    /// configuration file, one a line.
    #[must_use]
    pub fn pid_file(&self) -> PathBuf {
        self.data_dir.join("leaf.pid")
    }

    /// How the host's own processes connect to the started leaf `server`: its loopback URL
    /// with the local user's seed.
    #[must_use]
    pub fn local_connect(&self, server: &NatsServer) -> ConnectOptions {
        ConnectOptions { creds: Some(self.local_seed_file()), ..ConnectOptions::new(server.client_url()) }
    }
}

/// The JetStream domain of an edge site's leaf node: `edge-<host>`.
#[must_use]
pub fn leaf_domain(host: &HostId) -> String {
    format!("edge-{host}")
}

/// Starts the local leaf `nats-server` of host `host`: its own JetStream domain
/// ([`leaf_domain`]), a loopback client port admitting only the local user
/// ([`LeafConfig::local_connect`]), one remote to the hub carrying the host's credentials.
/// Waits until the server is ready (not until the hub link is up: the agent works cut off and
/// the link comes up on its own). A leaf an earlier edge process left running on the same
/// folder is stopped first ([`LeafConfig::pid_file`]).
///
/// # Errors
/// [`ActorsError::Spawn`] naming why the server did not start (a bad credentials or local seed
/// file is named).
pub async fn start_leaf(host: &HostId, config: &LeafConfig) -> Result<NatsServer, ActorsError> {
    let auth = match &config.creds {
        Some(path) => LeafAuth::from_file(path).map_err(|e| ActorsError::Spawn(e.to_string()))?,
        None => LeafAuth::None,
    };
    // The rendered configuration holds the host's seed: keep the folder private.
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
        .map_err(|e| ActorsError::Spawn(format!("cannot prepare {}: {e}", config.data_dir.display())))?;
    let local = load_or_create_seed(&config.local_seed_file())
        .map_err(|e| ActorsError::Spawn(format!("cannot use the leaf's local user: {e}")))?;
    let opts = ServerOptions {
        name: format!("steward-edge-{host}"),
        host: "127.0.0.1".to_owned(),
        port: config.port,
        data_dir: Some(config.data_dir.clone()),
        jetstream: true,
        jetstream_domain: Some(leaf_domain(host)),
        max_memory_store: 64 * 1024 * 1024,
        max_file_store: 1024 * 1024 * 1024,
        extra_config: leaf_remote_block_tls(&config.remote_url, &auth, config.tls.as_ref())
            + &local_users_block(&[local.public_key]),
        ..ServerOptions::default()
    };
    stop_stale_leaf(config).await;
    let server = NatsServer::start(opts)
        .await
        .map_err(|e| ActorsError::Spawn(format!("cannot start the leaf nats-server: {e}")))?;
    if let Some(pid) = server.pid() {
        let record = format!("{pid}\n{}\n", server.config_path().display());
        if let Err(e) = std::fs::write(config.pid_file(), record) {
            warn!(error = %e, path = %config.pid_file().display(), "leaf pid file not written");
        }
    }
    Ok(server)
}

/// Stops the leaf `nats-server` the pid file names when it still runs this folder's
/// configuration (an earlier edge process was killed without stopping it): SIGTERM, then
/// SIGKILL after [`STALE_STOP_GRACE`]. A process id reused by another program is never
/// signalled, since its command line does not name that configuration file. Returns the
/// process id it stopped.
async fn stop_stale_leaf(config: &LeafConfig) -> Option<i32> {
    let text = std::fs::read_to_string(config.pid_file()).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let conf = lines.next()?.to_owned();
    if pid <= 0 || !runs_config(pid, &conf) {
        return None;
    }
    warn!(pid, "a leaf nats-server left running by an earlier edge process; stopping it");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let started = Instant::now();
    while runs_config(pid, &conf) {
        let waited = started.elapsed();
        if waited >= 2 * STALE_STOP_GRACE {
            warn!(pid, "the earlier leaf nats-server does not stop; starting beside it");
            return None;
        }
        if waited >= STALE_STOP_GRACE {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!(pid, "earlier leaf nats-server stopped");
    Some(pid)
}

/// Whether process `pid` runs with `conf` as one of its arguments (a process that ended, even
/// one not reaped yet, has none).
fn runs_config(pid: i32, conf: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| !arg.is_empty() && arg == conf.as_bytes()))
}
