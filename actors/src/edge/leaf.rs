//! The edge site's leaf node: a local `nats-server` as a leaf of the hub (own JetStream
//! domain, the host's credentials on the link); the agent connects to it over loopback and
//! reaches the hub's streams through the hub's JetStream domain.

use std::path::PathBuf;

use steward_deploy::auth::{leaf_remote_block, LeafAuth};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_subjects::HostId;

use crate::ActorsError;

/// How an edge site's local leaf node reaches the hub.
#[derive(Debug, Clone)]
pub struct LeafConfig {
    /// The hub's leafnode URL (`nats-leaf://hub:7422`).
    pub remote_url: String,
    /// The host's credentials (nkey seed file or JWT credentials file), carried on the link.
    pub creds: Option<PathBuf>,
    /// The leaf's folder (config, log, JetStream store).
    pub data_dir: PathBuf,
    /// Client port of the leaf; `None` picks a free one.
    pub port: Option<u16>,
}

/// The JetStream domain of an edge site's leaf node: `edge-<host>`.
#[must_use]
pub fn leaf_domain(host: &HostId) -> String {
    format!("edge-{host}")
}

/// Starts the local leaf `nats-server` of host `host`: its own JetStream domain
/// ([`leaf_domain`]), loopback client port, one remote to the hub carrying the host's
/// credentials. Waits until the server is ready (not until the hub link is up: the agent works
/// cut off and the link comes up on its own).
///
/// # Errors
/// [`ActorsError::Spawn`] naming why the server did not start.
pub async fn start_leaf(host: &HostId, config: &LeafConfig) -> Result<NatsServer, ActorsError> {
    let auth = match &config.creds {
        Some(path) => LeafAuth::from_file(path).map_err(|e| ActorsError::Spawn(e.to_string()))?,
        None => LeafAuth::None,
    };
    // The rendered configuration holds the host's seed: keep the folder private.
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
        .map_err(|e| ActorsError::Spawn(format!("cannot prepare {}: {e}", config.data_dir.display())))?;
    let opts = ServerOptions {
        name: format!("steward-edge-{host}"),
        port: config.port,
        data_dir: Some(config.data_dir.clone()),
        jetstream: true,
        jetstream_domain: Some(leaf_domain(host)),
        max_memory_store: 64 * 1024 * 1024,
        max_file_store: 1024 * 1024 * 1024,
        extra_config: leaf_remote_block(&config.remote_url, &auth),
        ..ServerOptions::default()
    };
    NatsServer::start(opts).await.map_err(|e| ActorsError::Spawn(format!("cannot start the leaf nats-server: {e}")))
}
