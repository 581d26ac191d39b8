//! A Steward process: the components its roles ask for, under one root supervisor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use steward_subjects::streams::{self, EnsureReport, Replicas};
use steward_subjects::{AccountId, HostId, Subjects};
use tracing::info;

use crate::edge::{EdgeAgent, EdgeArgs};
use crate::health::{HealthArgs, HealthService};
use crate::status::StatusBoard;
use crate::supervisor::{ChildSpec, RestartPolicy, SupervisorArgs, SupervisorHandle};
use crate::{connect, ActorsError, ConnectOptions};

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The hub: ensures the streams and runs the hub components (health and connector today;
    /// config manager, renderer and dispatcher attach here).
    Hub,
}

impl Role {
    /// The role's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hub => "hub",
        }
    }
}

/// One edge agent to run inside the process.
#[derive(Debug, Clone)]
pub struct EdgeSpec {
    /// Host id.
    pub host_id: HostId,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its data folder.
    pub data_dir: PathBuf,
}

/// Everything a process needs to start.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// How to reach NATS.
    pub connect: ConnectOptions,
    /// The account served.
    pub account: AccountId,
    /// Hub roles to run.
    pub roles: Vec<Role>,
    /// Edge agents to run.
    pub edges: Vec<EdgeSpec>,
    /// JetStream replicas for `ensure`.
    pub replicas: Replicas,
    /// Heartbeat interval of edge agents.
    pub heartbeat: Duration,
    /// Restart policy for every component.
    pub policy: RestartPolicy,
    /// JetStream domain of the hub, for edge agents that reach it through a leaf node with its
    /// own JetStream (`None` when they connect to the hub directly).
    pub hub_domain: Option<String>,
    /// Configuration source the config manager polls (`--config-source`), if any.
    pub config_source: Option<crate::config_manager::ConfigSource>,
    /// The hub's job signing key file (`steward keys init`); without it the dispatcher sends
    /// unsigned jobs, which every edge refuses.
    pub signing_key: Option<PathBuf>,
    /// The hub public key file edge agents trust; without it an edge refuses every job and its
    /// runtime every job spec. The runtime accepts a file of several keys, one per line (key
    /// rotation).
    pub trusted_key: Option<PathBuf>,
    /// Credentials of individual edges (their host identities), used instead of
    /// `connect.creds` by that edge's agent, worker and runtime.
    pub edge_creds: BTreeMap<HostId, PathBuf>,
    /// Settings of the lease service (lease TTL, leader-lock TTL, ...).
    pub lease: crate::lease::LeaseConfig,
    /// Webhook URLs alarm notifications are POSTed to (`--alarm-webhook`).
    pub alarm_webhooks: Vec<String>,
    /// Settings of telemetry history (retention per level, flush timing, exposed series).
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl ProcessConfig {
    /// A hub-only process on `url` for `account`.
    #[must_use]
    pub fn hub(url: &str, account: AccountId) -> Self {
        ProcessConfig {
            connect: ConnectOptions::new(url),
            account,
            roles: vec![Role::Hub],
            edges: Vec::new(),
            replicas: Replicas::One,
            heartbeat: Duration::from_secs(5),
            policy: RestartPolicy::default(),
            hub_domain: None,
            config_source: None,
            signing_key: None,
            trusted_key: None,
            edge_creds: BTreeMap::new(),
            lease: crate::lease::LeaseConfig::default(),
            alarm_webhooks: Vec::new(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

/// A started process.
#[derive(Debug)]
pub struct RunningProcess {
    supervisor: SupervisorHandle,
    join: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
    board: StatusBoard,
    /// The hub's consumer-lag sampler ([`crate::metrics::sample_consumers`]), when a hub role runs.
    sampler: Option<tokio::task::JoinHandle<()>>,
    /// What `ensure` did at start (empty when the process has no hub role).
    pub ensured: EnsureReport,
}

impl RunningProcess {
    /// Connects, ensures the streams when a hub role is asked for, and starts every component.
    ///
    /// # Errors
    /// [`ActorsError`] when NATS cannot be reached, the streams cannot be ensured or a component
    /// cannot start.
    pub async fn start(config: ProcessConfig) -> Result<Self, ActorsError> {
        let client = connect(&config.connect, "steward-hub").await?;
        let subjects = Subjects::new(config.account.clone());
        let mut ensured = EnsureReport::default();
        let mut hub_js = None;
        if !config.roles.is_empty() {
            let js = async_nats::jetstream::new(client.clone());
            ensured = streams::ensure_with(&js, config.replicas, &config.telemetry.retention).await?;
            info!(streams = ensured.streams.len(), buckets = ensured.buckets.len(), "jetstream assets ensured");
            hub_js = Some(js);
        }
        let board = StatusBoard::new();
        let started = Instant::now();
        let started_at = crate::now_rfc3339();
        let mut children = Vec::new();
        if !config.roles.is_empty() {
            let health = HealthArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                kind: "hub".into(),
                roles: config.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                metadata: Default::default(),
                started_at,
                started,
                board: board.clone(),
            };
            let connector = crate::connector::ConnectorArgs::new(client.clone(), subjects.clone());
            children.push(ChildSpec::new("connector", move || (crate::connector::Connector, connector.clone())));
            let config_manager = crate::config_manager::ConfigManagerArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                source: config.config_source.clone(),
            };
            children.push(ChildSpec::new("config-manager", move || {
                (crate::config_manager::ConfigManager, config_manager.clone())
            }));
            let signer = match &config.signing_key {
                Some(path) => {
                    Some(crate::signing::JobSigner::load(path).map_err(|e| ActorsError::Spawn(e.to_string()))?)
                }
                None => None,
            };
            let renderer = crate::renderer::RendererArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                signer: signer.clone(),
            };
            children.push(ChildSpec::new("renderer", move || (crate::renderer::Renderer, renderer.clone())));
            let lease = crate::lease::LeaseArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                config: config.lease.clone(),
            };
            children.push(ChildSpec::new("lease", move || (crate::lease::LeaseService, lease.clone())));
            let dispatcher = crate::dispatcher::DispatcherArgs::new(client.clone(), subjects.clone(), signer);
            children.push(ChildSpec::new("dispatcher", move || (crate::dispatcher::Dispatcher, dispatcher.clone())));
            // Remediation starts after the dispatcher its runs go through.
            let remediation = crate::remediation::RemediationArgs::new(client.clone(), subjects.clone());
            children.push(ChildSpec::new("remediation", move || {
                (crate::remediation::RemediationService, remediation.clone())
            }));
            // Telemetry history reads stored results (the lease service stores them).
            let telemetry = crate::telemetry::TelemetryArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                config: config.telemetry.clone(),
            };
            children.push(ChildSpec::new("telemetry", move || (crate::telemetry::Telemetry, telemetry.clone())));
            // The service-enablement loop starts after the config manager, connector and
            // dispatcher it drives.
            let enablement = crate::enablement::EnablementArgs::new(client.clone(), subjects.clone());
            children.push(ChildSpec::new("enablement", move || (crate::enablement::Enablement, enablement.clone())));
            let alarms = crate::alarms::AlarmsArgs {
                client: client.clone(),
                subjects: subjects.clone(),
                webhooks: config.alarm_webhooks.clone(),
            };
            children.push(ChildSpec::new("alarms", move || (crate::alarms::Alarms, alarms.clone())));
            // Health starts last and stops first: once `$SRV.PING` answers for the hub, every hub
            // component before it is serving.
            children.push(ChildSpec::new("health", move || (HealthService, health.clone())));
        }
        for edge in &config.edges {
            let mut connect = config.connect.clone();
            if let Some(creds) = config.edge_creds.get(&edge.host_id) {
                connect.creds = Some(creds.clone());
            }
            let args = EdgeArgs {
                connect: connect.clone(),
                subjects: subjects.clone(),
                host_id: edge.host_id.clone(),
                labels: edge.labels.clone(),
                data_dir: edge.data_dir.clone(),
                heartbeat: config.heartbeat,
                catalog: crate::edge::WorkerCatalog::builtin(),
                hub_domain: config.hub_domain.clone(),
            };
            children.push(ChildSpec::new(format!("edge-{}", edge.host_id), move || (EdgeAgent, args.clone())));
            let verifier = match &config.trusted_key {
                Some(path) => Some(
                    crate::spec_signing::TrustedKeys::load(std::slice::from_ref(path))
                        .map_err(|e| ActorsError::Spawn(e.to_string()))?,
                ),
                None => None,
            };
            let worker = crate::worker::RunWorkerArgs {
                connect: connect.clone(),
                subjects: subjects.clone(),
                host_id: edge.host_id.clone(),
                verifier: verifier.clone(),
                hub_domain: config.hub_domain.clone(),
                work_dir: edge.data_dir.join("work"),
                ansible_playbook: PathBuf::from("ansible-playbook"),
            };
            children.push(ChildSpec::new(format!("worker-{}", edge.host_id), move || {
                (crate::worker::RunWorker, worker.clone())
            }));
            // The edge's assessment runtime: runs the host's specs (and matching pool specs),
            // keeps checking from its local store while the hub is away.
            let mut runtime = crate::runtime::RuntimeArgs::new(
                connect,
                subjects.clone(),
                steward_subjects::RuntimeId::parse(edge.host_id.as_str())
                    .map_err(|e| ActorsError::Spawn(e.to_string()))?,
                edge.data_dir.join("runtime"),
            );
            runtime.host = Some(edge.host_id.clone());
            runtime.labels = edge.labels.clone();
            runtime.hub_domain = config.hub_domain.clone();
            runtime.trusted = verifier.unwrap_or_default();
            children.push(ChildSpec::new(format!("runtime-{}", edge.host_id), move || {
                (crate::runtime::RuntimeActor, runtime.clone())
            }));
        }
        let (supervisor, join) =
            SupervisorHandle::start(SupervisorArgs { children, policy: config.policy, board: board.clone() }).await?;
        let sampler = hub_js.map(|js| {
            tokio::spawn(crate::metrics::sample_consumers(js, config.account.clone(), crate::metrics::global()))
        });
        Ok(RunningProcess { supervisor, join, client, board, sampler, ensured })
    }

    /// The root supervisor.
    #[must_use]
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.supervisor
    }

    /// The component status board.
    #[must_use]
    pub fn board(&self) -> &StatusBoard {
        &self.board
    }

    /// The hub connection.
    #[must_use]
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Stops every component in reverse start order (each gets `per_child` to drain), then
    /// drains the hub connection.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the supervisor was already gone.
    pub async fn shutdown(self, per_child: Duration) -> Result<(), ActorsError> {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        let r = self.supervisor.shutdown(per_child).await;
        let _ = self.join.await;
        let _ = self.client.drain().await;
        r
    }
}
