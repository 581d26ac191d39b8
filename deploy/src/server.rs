//! One `nats-server` process: options, config file, start with readiness checks, stop, restart,
//! and cleanup on drop.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::binary::{check_nats_server, find_nats_server};
use crate::lifeline::Lifeline;
use crate::monitor::{self, HttpResponse};
use crate::tls::{TlsListen, TlsRemote};
use crate::{config, DeployError, NotReady};

/// How long [`NatsServer::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often readiness is polled while starting.
const READY_POLL: Duration = Duration::from_millis(25);
/// How many log lines errors carry.
const LOG_TAIL_LINES: usize = 30;

/// Cluster (route) settings of one node.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The cluster name; all nodes of a cluster use the same one.
    pub name: String,
    /// This node's route port; `None` picks a free one.
    pub port: Option<u16>,
    /// Route URLs of the other nodes (`nats-route://host:port`).
    pub routes: Vec<String>,
}

/// One leaf-node remote: a hub this server connects to as a leaf.
#[derive(Debug, Clone, Default)]
pub struct LeafRemote {
    /// The hub's leafnode URL (`nats-leaf://host:port`).
    pub url: String,
    /// A credentials file presented to the hub, if the hub requires authentication.
    pub credentials: Option<PathBuf>,
    /// The local account bound to this remote (`None` = the default account).
    pub account: Option<String>,
    /// TLS on the link (`None` = as the hub asks: plain, or TLS with the system's trust store).
    pub tls: Option<TlsRemote>,
}

/// How to configure and run one `nats-server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The binary to run; `None` uses [`find_nats_server`].
    pub binary: Option<PathBuf>,
    /// `server_name`; must be unique within a cluster or leaf topology.
    pub name: String,
    /// The interface to listen on (default `127.0.0.1`).
    pub host: String,
    /// The client port; `None` picks a free one.
    pub port: Option<u16>,
    /// TLS on the client port (`None` = plain); clients then connect with `tls://`.
    pub tls: Option<TlsListen>,
    /// The monitoring (HTTP) port, used for readiness; `None` picks a free one.
    pub monitor_port: Option<u16>,
    /// The server's folder (config, log, JetStream store). `None` = a temporary folder removed
    /// on drop; `Some` = a persistent folder that is kept.
    pub data_dir: Option<PathBuf>,
    /// Whether JetStream is enabled.
    pub jetstream: bool,
    /// The JetStream domain, if any.
    pub jetstream_domain: Option<String>,
    /// JetStream memory-store limit in bytes.
    pub max_memory_store: u64,
    /// JetStream file-store limit in bytes.
    pub max_file_store: u64,
    /// Cluster settings; `None` = a standalone server.
    pub cluster: Option<ClusterOptions>,
    /// Whether to accept leaf-node connections.
    pub leafnode_listen: bool,
    /// The leafnode port when `leafnode_listen` is set; `None` picks a free one.
    pub leafnode_port: Option<u16>,
    /// TLS on the leafnode port (`None` = plain).
    pub leafnode_tls: Option<TlsListen>,
    /// Do not tell leaf nodes this server's own leafnode URLs: they then reconnect only to the
    /// URL they were configured with (a hub reached through a proxy or a load balancer, whose
    /// own addresses the leafs cannot or must not use).
    pub leafnode_no_advertise: bool,
    /// Hubs this server connects to as a leaf node.
    pub leaf_remotes: Vec<LeafRemote>,
    /// `max_payload` in bytes; `None` keeps the server default (1 MiB).
    pub max_payload: Option<u32>,
    /// Raw configuration text appended to the rendered file.
    pub extra_config: String,
    /// How long [`NatsServer::start`] waits for readiness.
    pub start_timeout: Duration,
    /// How many times start is retried with new free ports when a port was taken meanwhile.
    pub port_retries: u32,
    /// Start the server through this launcher so it ends when this process dies, even by
    /// SIGKILL (`None` = a plain child, stopped on drop only).
    pub lifeline: Option<Lifeline>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            binary: None,
            name: "steward".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: None,
            tls: None,
            monitor_port: None,
            data_dir: None,
            jetstream: true,
            jetstream_domain: None,
            max_memory_store: 256 * 1024 * 1024,
            max_file_store: 2 * 1024 * 1024 * 1024,
            cluster: None,
            leafnode_listen: false,
            leafnode_port: None,
            leafnode_tls: None,
            leafnode_no_advertise: false,
            leaf_remotes: Vec::new(),
            max_payload: None,
            extra_config: String::new(),
            start_timeout: Duration::from_secs(20),
            port_retries: 3,
            lifeline: None,
        }
    }
}

impl ServerOptions {
    /// Default options with the given server name.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }
}

/// The ports a server was actually started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedPorts {
    /// Client port.
    pub client: u16,
    /// Monitoring port.
    pub monitor: u16,
    /// Route port, when clustered.
    pub route: Option<u16>,
    /// Leafnode listen port, when listening for leaf nodes.
    pub leaf: Option<u16>,
}

/// Ports already handed out by this process, so two servers started concurrently never pick
/// the same one.
static PICKED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Picks `n` distinct free TCP ports on 127.0.0.1 (bind to port 0, then release).
///
/// # Errors
///
/// [`DeployError::Io`] when binding fails.
pub fn free_ports(n: usize) -> Result<Vec<u16>, DeployError> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut attempts = 0;
    while ports.len() < n {
        attempts += 1;
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|err| DeployError::io("bind a free port", err))?;
        let port = listener.local_addr().map_err(|err| DeployError::io("read a bound port", err))?.port();
        let fresh = match PICKED_PORTS.lock() {
            Ok(mut picked) => picked.insert(port),
            Err(_) => true,
        };
        // Keep even a reused port bound until the end so the kernel hands out another one.
        held.push(listener);
        if fresh || attempts > n * 20 {
            ports.push(port);
        }
    }
    drop(held);
    Ok(ports)
}

/// A running (or stopped) `nats-server` process with its own folder.
///
/// Dropping it kills the process and removes a temporary folder, so a panicking test never
/// leaves a server behind.
#[derive(Debug)]
pub struct NatsServer {
    opts: ServerOptions,
    binary: PathBuf,
    ports: ResolvedPorts,
    dir: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
    /// Where the current process's output starts in the log file.
    log_offset: u64,
    /// Held only for its `Drop`, which removes a temporary folder; declared last so the folder
    /// is removed after the process is gone.
    _temp: Option<TempDir>,
}

impl NatsServer {
    /// Writes the config, starts the process and waits until it is ready: the client port
    /// accepts connections and the monitoring `/healthz?js-enabled-only=true` answers 200.
    ///
    /// Ports left as `None` are picked free; when the server still finds one taken, start is
    /// retried with new ports up to `opts.port_retries` times.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), steward_deploy::DeployError> {
    /// use steward_deploy::{NatsServer, ServerOptions};
    /// let server = NatsServer::start(ServerOptions::named("demo")).await?;
    /// println!("nats at {}", server.client_url());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Discovery errors (see [`find_nats_server`]), [`DeployError::Io`], and
    /// [`DeployError::Exited`], [`DeployError::AddressInUse`] or [`DeployError::StartTimeout`]
    /// with the tail of the server log.
    pub async fn start(opts: ServerOptions) -> Result<Self, DeployError> {
        let binary = match &opts.binary {
            Some(path) => path.clone(),
            None => find_nats_server()?,
        };
        check_nats_server(&binary)?;

        let (dir, temp) = match &opts.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|err| DeployError::io(format!("create server folder {}", dir.display()), err))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(&format!("steward-nats-{}-", opts.name))
                    .tempdir()
                    .map_err(|err| DeployError::io("create a temporary server folder", err))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };

        let mut server = Self {
            ports: resolve_ports(&opts)?,
            opts,
            binary,
            dir,
            child: None,
            pid: None,
            log_offset: 0,
            _temp: temp,
        };
        let mut attempt = 0;
        loop {
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(DeployError::AddressInUse { .. })
                    if attempt < server.opts.port_retries && server.has_auto_ports() =>
                {
                    attempt += 1;
                    tracing::warn!(name = %server.opts.name, attempt, "nats-server port taken, retrying with new ports");
                    server.ports = resolve_ports(&server.opts)?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts one JetStream node (JetStream is switched on whatever `opts` says).
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub async fn single(mut opts: ServerOptions) -> Result<Self, DeployError> {
        opts.jetstream = true;
        Self::start(opts).await
    }

    fn has_auto_ports(&self) -> bool {
        self.opts.port.is_none()
            || self.opts.monitor_port.is_none()
            || (self.opts.leafnode_listen && self.opts.leafnode_port.is_none())
            || self.opts.cluster.as_ref().is_some_and(|c| c.port.is_none())
    }

    async fn spawn_and_wait(&mut self) -> Result<(), DeployError> {
        let config_path = self.config_path();
        let text = config::render(&self.opts, &self.ports, &self.store_dir());
        tokio::fs::write(&config_path, text)
            .await
            .map_err(|err| DeployError::io(format!("write config {}", config_path.display()), err))?;

        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|err| DeployError::io(format!("open log {}", log_path.display()), err))?;
        self.log_offset = log.metadata().map_err(|err| DeployError::io("read log length", err))?.len();
        let log_err = log.try_clone().map_err(|err| DeployError::io("clone log handle", err))?;

        let mut command = match &self.opts.lifeline {
            Some(lifeline) => lifeline.command(&self.binary),
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| DeployError::io(format!("spawn {}", self.binary.display()), err))?;
        self.pid = child.id();
        self.child = Some(child);
        tracing::debug!(name = %self.opts.name, pid = ?self.pid, port = self.ports.client, "nats-server spawned");

        let result = self.wait_ready().await;
        if result.is_err() {
            self.kill_now().await;
        } else {
            tracing::info!(name = %self.opts.name, pid = ?self.pid, url = %self.client_url(), "nats-server ready");
        }
        result
    }

    async fn wait_ready(&mut self) -> Result<(), DeployError> {
        let timeout = self.opts.start_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reason;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log_tail = self.log_tail();
                    let name = self.opts.name.clone();
                    return Err(if log_tail.contains("address already in use") {
                        DeployError::AddressInUse { name, log_tail }
                    } else {
                        DeployError::Exited { name, status: status.to_string(), log_tail }
                    });
                }
            }
            reason = match self.check_ready().await {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(DeployError::StartTimeout {
                    name: self.opts.name.clone(),
                    timeout,
                    reason,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn check_ready(&self) -> Result<(), NotReady> {
        TcpStream::connect(("127.0.0.1", self.ports.client))
            .await
            .map_err(|source| NotReady::ClientPort { port: self.ports.client, source })?;
        let health = monitor::http_get(self.ports.monitor, "/healthz?js-enabled-only=true")
            .await
            .map_err(|err| NotReady::Monitor(Box::new(err)))?;
        if health.status == 200 {
            Ok(())
        } else {
            Err(NotReady::Unhealthy { status: health.status, body: health.body.trim().to_owned() })
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited within 5 s. Does nothing
    /// when it is not running.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let terminated = match child.id() {
            Some(pid) => tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await
                .is_ok_and(|s| s.success()),
            None => false,
        };
        if terminated {
            if let Ok(Ok(status)) = tokio::time::timeout(STOP_GRACE, child.wait()).await {
                tracing::info!(name = %self.opts.name, pid = ?self.pid, %status, "nats-server stopped");
                return;
            }
            tracing::warn!(name = %self.opts.name, pid = ?self.pid, "nats-server ignored sigterm, killing it");
        }
        if let Err(err) = child.kill().await {
            tracing::warn!(name = %self.opts.name, pid = ?self.pid, error = %err, "failed to kill nats-server");
        }
    }

    /// Kills the process at once with SIGKILL (no shutdown: open files, raft state and client
    /// connections are cut as by a crash or a lost machine), reaps it and returns how it ended
    /// (`None` when it was not running). [`NatsServer::restart`] starts it again with its ports
    /// and data.
    ///
    /// # Errors
    ///
    /// [`DeployError::Io`] when the signal cannot be sent or the process not reaped.
    pub async fn kill9(&mut self) -> Result<Option<std::process::ExitStatus>, DeployError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Some(status));
        }
        child.start_kill().map_err(|err| DeployError::io(format!("SIGKILL {}", self.opts.name), err))?;
        let status = child.wait().await.map_err(|err| DeployError::io(format!("reap {}", self.opts.name), err))?;
        tracing::info!(name = %self.opts.name, pid = ?self.pid, %status, "nats-server killed (SIGKILL)");
        Ok(Some(status))
    }

    async fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again with the same ports and data (stopping it first if it runs),
    /// and waits until it is ready.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`]; no new ports are picked, so a port taken meanwhile gives
    /// [`DeployError::AddressInUse`].
    pub async fn restart(&mut self) -> Result<(), DeployError> {
        self.stop().await;
        self.spawn_and_wait().await
    }

    /// Whether this handle has a process (started and not stopped since), without reaping it.
    #[must_use]
    pub fn has_process(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The URL clients connect to, `nats://127.0.0.1:<port>` (`tls://` when the client port
    /// has TLS).
    #[must_use]
    pub fn client_url(&self) -> String {
        let scheme = if self.opts.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://{}:{}", self.connect_host(), self.ports.client)
    }

    /// The URL leaf nodes connect to (`nats-leaf://...`), when listening for leaf nodes.
    #[must_use]
    pub fn leaf_url(&self) -> Option<String> {
        self.ports.leaf.map(|port| format!("nats-leaf://{}:{port}", self.connect_host()))
    }

    /// The URL other cluster nodes route to (`nats-route://...`), when clustered.
    #[must_use]
    pub fn route_url(&self) -> Option<String> {
        self.ports.route.map(|port| format!("nats-route://{}:{port}", self.connect_host()))
    }

    fn connect_host(&self) -> &str {
        match self.opts.host.as_str() {
            "0.0.0.0" | "::" | "" => "127.0.0.1",
            host => host,
        }
    }

    /// The server name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The options the server was started with (ports as requested, not as resolved).
    #[must_use]
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The ports the server runs on.
    #[must_use]
    pub fn ports(&self) -> ResolvedPorts {
        self.ports
    }

    /// The client port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The leafnode listen port, when listening for leaf nodes.
    #[must_use]
    pub fn leaf_port(&self) -> Option<u16> {
        self.ports.leaf
    }

    /// The route port, when clustered.
    #[must_use]
    pub fn route_port(&self) -> Option<u16> {
        self.ports.route
    }

    /// The monitoring port.
    #[must_use]
    pub fn monitor_port(&self) -> u16 {
        self.ports.monitor
    }

    /// The server's folder (config, log, store).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configured JetStream `store_dir` (nats-server keeps its data in `jetstream/` below it).
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The rendered configuration file.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }

    /// The log file receiving the server's stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// The process id of the current (or last) process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// `GET /healthz` (with `query`, e.g. `"?js-enabled-only=true"`, or `""`).
    ///
    /// # Errors
    ///
    /// [`DeployError::Monitor`] when the request fails.
    pub async fn healthz(&self, query: &str) -> Result<HttpResponse, DeployError> {
        monitor::http_get(self.ports.monitor, &format!("/healthz{query}")).await
    }

    /// `GET` a JSON monitoring endpoint such as `/varz`, `/jsz`, `/leafz` or `/routez`.
    ///
    /// # Errors
    ///
    /// [`DeployError::Monitor`] on a failed request, a non-200 status or a non-JSON body.
    pub async fn monitor_json(&self, path: &str) -> Result<serde_json::Value, DeployError> {
        monitor::get_json(self.ports.monitor, path).await
    }

    /// The last lines of the current process's log output.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            if file.seek(SeekFrom::Start(self.log_offset)).is_ok() {
                let _ = file.read_to_string(&mut text);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

fn resolve_ports(opts: &ServerOptions) -> Result<ResolvedPorts, DeployError> {
    let mut free = free_ports(4)?.into_iter();
    let mut next = |requested: Option<u16>| -> u16 { requested.or_else(|| free.next()).unwrap_or_default() };
    let client = next(opts.port);
    let monitor = next(opts.monitor_port);
    let route = opts.cluster.as_ref().map(|c| next(c.port));
    let leaf = opts.leafnode_listen.then(|| next(opts.leafnode_port));
    Ok(ResolvedPorts { client, monitor, route, leaf })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Best effort: SIGKILL, then reap so no zombie is left. `Drop` cannot await; SIGKILL
        // takes effect within milliseconds, so a short blocking wait is acceptable here.
        let _ = child.start_kill();
        for _ in 0..200 {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::debug!(name = %self.opts.name, pid = ?self.pid, "nats-server killed on drop");
    }
}
