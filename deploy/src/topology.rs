//! The NATS topologies Steward runs on, used by tests and by `steward up` alike: one JetStream
//! node, an n-node JetStream cluster, and a hub with one leaf node in its own JetStream domain.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::server::{free_ports, ClusterOptions, LeafRemote, NatsServer, ServerOptions};
use crate::{eventually, DeployError};

/// How long a topology waits to form (cluster meta leader, leaf connection).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often topology conditions are polled.
const POLL: Duration = Duration::from_millis(50);

/// One JetStream node. Dereferences to its [`NatsServer`].
#[derive(Debug)]
pub struct SingleNode {
    server: NatsServer,
}

impl SingleNode {
    /// Starts one JetStream node with default options in a temporary folder.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), steward_deploy::DeployError> {
    /// let node = steward_deploy::SingleNode::start().await?;
    /// println!("nats at {}", node.client_url());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub async fn start() -> Result<Self, DeployError> {
        Self::start_with(ServerOptions::named("single")).await
    }

    /// Starts one JetStream node with the given options.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub async fn start_with(opts: ServerOptions) -> Result<Self, DeployError> {
        Ok(Self { server: NatsServer::single(opts).await? })
    }
}

impl Deref for SingleNode {
    type Target = NatsServer;
    fn deref(&self) -> &NatsServer {
        &self.server
    }
}

impl DerefMut for SingleNode {
    fn deref_mut(&mut self) -> &mut NatsServer {
        &mut self.server
    }
}

/// An n-node JetStream cluster, every node routed to every other on free ports, each in its own
/// folder.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts an `n`-node cluster (normally 3) in temporary folders and waits until every node
    /// is healthy and a JetStream meta leader is elected.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), steward_deploy::DeployError> {
    /// let cluster = steward_deploy::Cluster::start(3).await?;
    /// println!("servers {:?}", cluster.server_addrs());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`], or [`DeployError::Timeout`] when the cluster does not form.
    pub async fn start(n: usize) -> Result<Self, DeployError> {
        Self::start_with(n, ServerOptions::named("node")).await
    }

    /// Starts an `n`-node cluster from a template: node `i` is named `<template.name>-<i>`,
    /// and, when `template.data_dir` is set, keeps its data in `<data_dir>/<name>`. Explicit
    /// ports in the template are ignored (each node needs its own); the cluster name is taken
    /// from `template.cluster` or defaults to `steward`.
    ///
    /// # Errors
    ///
    /// As [`Cluster::start`].
    pub async fn start_with(n: usize, template: ServerOptions) -> Result<Self, DeployError> {
        if n == 0 {
            return Err(DeployError::Topology("a cluster needs at least one node".into()));
        }
        let cluster_name = template.cluster.as_ref().map_or_else(|| "steward".to_owned(), |c| c.name.clone());
        let retries = template.port_retries;
        let mut attempt = 0;
        loop {
            // Route ports are fixed up front so every node can list every other; if one is
            // taken before its node binds it, the whole cluster is started again.
            let route_ports = free_ports(n)?;
            let route_url = |p: u16| format!("nats-route://127.0.0.1:{p}");
            let mut nodes = Vec::with_capacity(n);
            let mut failure = None;
            for (i, &port) in route_ports.iter().enumerate() {
                let name = format!("{}-{}", template.name, i + 1);
                let opts = ServerOptions {
                    data_dir: template.data_dir.as_ref().map(|d| d.join(&name)),
                    port: None,
                    monitor_port: None,
                    leafnode_port: None,
                    jetstream: true,
                    cluster: Some(ClusterOptions {
                        name: cluster_name.clone(),
                        port: Some(port),
                        routes: route_ports.iter().filter(|&&p| p != port).map(|&p| route_url(p)).collect(),
                    }),
                    name,
                    ..template.clone()
                };
                match NatsServer::start(opts).await {
                    Ok(node) => nodes.push(node),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            match failure {
                None => {
                    let cluster = Self { nodes };
                    cluster.wait_formed(FORM_TIMEOUT).await?;
                    tracing::info!(nodes = n, cluster = %cluster_name, "nats cluster formed");
                    return Ok(cluster);
                }
                Some(DeployError::AddressInUse { .. }) if attempt < retries => {
                    attempt += 1;
                    tracing::warn!(attempt, "cluster route port taken, starting the cluster again");
                }
                Some(err) => return Err(err),
            }
        }
    }

    /// Waits until every node that is not stopped answers `/healthz` with 200 (JetStream
    /// current) and all of them report the same meta leader. After [`Cluster::stop_node`] this
    /// waits for the survivors to elect a new meta leader if the stopped node held it.
    ///
    /// # Errors
    ///
    /// [`DeployError::Timeout`] with the last failed check.
    pub async fn wait_formed(&self, timeout: Duration) -> Result<(), DeployError> {
        eventually(timeout, POLL, || async {
            let mut leaders = Vec::new();
            for node in &self.nodes {
                if !node.has_process() {
                    continue;
                }
                let health = node.healthz("").await?;
                if health.status != 200 {
                    return Err(DeployError::Topology(format!(
                        "{} healthz {}: {}",
                        node.name(),
                        health.status,
                        health.body.trim()
                    )));
                }
                let jsz = node.monitor_json("/jsz").await?;
                let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                if leader.is_empty() {
                    return Err(DeployError::Topology(format!("{} sees no meta leader", node.name())));
                }
                leaders.push(leader.to_owned());
            }
            leaders.dedup();
            if leaders.len() == 1 {
                Ok(())
            } else {
                Err(DeployError::Topology(format!("nodes disagree on the meta leader: {leaders:?}")))
            }
        })
        .await
    }

    /// Waits until node `i` answers `/healthz` with 200 (running and current with the cluster).
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] for a bad index, [`DeployError::Timeout`] otherwise.
    pub async fn wait_node_healthy(&self, i: usize, timeout: Duration) -> Result<(), DeployError> {
        let node = self.node(i)?;
        eventually(timeout, POLL, || async {
            let health = node.healthz("").await?;
            if health.status == 200 {
                Ok(())
            } else {
                Err(DeployError::Topology(format!("{} healthz {}: {}", node.name(), health.status, health.body.trim())))
            }
        })
        .await
    }

    /// The number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never true for a started cluster).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] when `i` is out of range.
    pub fn node(&self, i: usize) -> Result<&NatsServer, DeployError> {
        let len = self.nodes.len();
        self.nodes.get(i).ok_or_else(|| DeployError::Topology(format!("node {i} out of range (cluster has {len})")))
    }

    /// Node `i`, mutably.
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] when `i` is out of range.
    pub fn node_mut(&mut self, i: usize) -> Result<&mut NatsServer, DeployError> {
        let len = self.nodes.len();
        self.nodes.get_mut(i).ok_or_else(|| DeployError::Topology(format!("node {i} out of range (cluster has {len})")))
    }

    /// All nodes.
    #[must_use]
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Client URL of node `i`.
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] when `i` is out of range.
    pub fn client_url(&self, i: usize) -> Result<String, DeployError> {
        Ok(self.node(i)?.client_url())
    }

    /// Client URLs of all nodes; async-nats accepts the `Vec<String>` directly:
    /// `async_nats::connect(cluster.server_addrs())`.
    #[must_use]
    pub fn server_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::client_url).collect()
    }

    /// Stops node `i` (SIGTERM, then SIGKILL after 5 s).
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] when `i` is out of range.
    pub async fn stop_node(&mut self, i: usize) -> Result<(), DeployError> {
        self.node_mut(i)?.stop().await;
        Ok(())
    }

    /// Kills node `i` with SIGKILL, as a crash or a lost machine would (see
    /// [`NatsServer::kill9`]).
    ///
    /// # Errors
    ///
    /// [`DeployError::Topology`] when `i` is out of range, else as [`NatsServer::kill9`].
    pub async fn kill_node(&mut self, i: usize) -> Result<Option<std::process::ExitStatus>, DeployError> {
        self.node_mut(i)?.kill9().await
    }

    /// Restarts node `i` with its ports and data and waits until it is healthy again.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::restart`], or [`DeployError::Timeout`] when it does not rejoin.
    pub async fn restart_node(&mut self, i: usize) -> Result<(), DeployError> {
        self.node_mut(i)?.restart().await?;
        self.wait_node_healthy(i, FORM_TIMEOUT).await
    }
}

/// A hub (JetStream domain `hub`, leafnode listener) and one leaf node (JetStream domain
/// `leaf`) connected to it, the shape of a Steward edge site.
#[derive(Debug)]
pub struct HubLeaf {
    hub: NatsServer,
    leaf: NatsServer,
}

impl HubLeaf {
    /// Starts the hub and the leaf in temporary folders and waits until the leaf is connected.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), steward_deploy::DeployError> {
    /// let pair = steward_deploy::HubLeaf::start().await?;
    /// println!("hub {} leaf {}", pair.hub().client_url(), pair.leaf().client_url());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`], or [`DeployError::Timeout`] when the leaf does not connect.
    pub async fn start() -> Result<Self, DeployError> {
        let hub = ServerOptions { jetstream_domain: Some("hub".into()), ..ServerOptions::named("hub") };
        let leaf = ServerOptions { jetstream_domain: Some("leaf".into()), ..ServerOptions::named("leaf") };
        Self::start_with(hub, leaf).await
    }

    /// Starts a hub and a leaf from the given options: the hub always listens for leaf nodes,
    /// and the leaf gets one more remote, the hub's leafnode URL (with no credentials; add
    /// authenticated remotes to `leaf.leaf_remotes` yourself).
    ///
    /// # Errors
    ///
    /// As [`HubLeaf::start`].
    pub async fn start_with(mut hub: ServerOptions, mut leaf: ServerOptions) -> Result<Self, DeployError> {
        hub.leafnode_listen = true;
        let hub = NatsServer::start(hub).await?;
        let url = hub.leaf_url().ok_or_else(|| DeployError::Topology("hub has no leafnode port".into()))?;
        let expected = leaf.leaf_remotes.len() + 1;
        leaf.leaf_remotes.push(LeafRemote { url, ..LeafRemote::default() });
        let leaf = NatsServer::start(leaf).await?;
        let pair = Self { hub, leaf };
        pair.wait_leaf_connected_n(expected, FORM_TIMEOUT).await?;
        tracing::info!(hub = %pair.hub.client_url(), leaf = %pair.leaf.client_url(), "nats hub and leaf connected");
        Ok(pair)
    }

    /// Waits until the hub reports at least one connected leaf node (`/leafz`).
    ///
    /// # Errors
    ///
    /// [`DeployError::Timeout`] with the last observation.
    pub async fn wait_leaf_connected(&self, timeout: Duration) -> Result<(), DeployError> {
        self.wait_leaf_connected_n(1, timeout).await
    }

    async fn wait_leaf_connected_n(&self, n: usize, timeout: Duration) -> Result<(), DeployError> {
        eventually(timeout, POLL, || async {
            let leafz = self.hub.monitor_json("/leafz").await?;
            let connected = leafz["leafnodes"].as_u64().unwrap_or(0);
            if connected >= n as u64 {
                Ok(())
            } else {
                Err(DeployError::Topology(format!("hub sees {connected} leaf connections, want {n}")))
            }
        })
        .await
    }

    /// The hub.
    #[must_use]
    pub fn hub(&self) -> &NatsServer {
        &self.hub
    }

    /// The leaf.
    #[must_use]
    pub fn leaf(&self) -> &NatsServer {
        &self.leaf
    }

    /// The hub, mutably (to stop or restart it).
    pub fn hub_mut(&mut self) -> &mut NatsServer {
        &mut self.hub
    }

    /// The leaf, mutably (to stop or restart it).
    pub fn leaf_mut(&mut self) -> &mut NatsServer {
        &mut self.leaf
    }
}
