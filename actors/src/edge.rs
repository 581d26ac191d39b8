//! The edge agent: the host side of Steward. It keeps its identity in its own redb store, so a
//! restarted agent comes back as the same host, and announces itself with heartbeats on
//! `steward.v1.<account>.host.heartbeat.<host>` over its own NATS connection. Each agent also
//! registers a `steward-edge` health service on that connection.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_storage::edge::{EdgeIdentity, EdgeStore};
use steward_subjects::api::health::{ComponentState, ComponentStatus};
use steward_subjects::api::host::{Heartbeat, HostFacts};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::{HostId, Subjects, STEWARD_VERSION};
use tracing::{debug, info, warn};

use crate::health::{HealthArgs, HealthService};
use crate::status::StatusBoard;
use crate::{connect, ConnectOptions};

/// Arguments of an edge agent.
#[derive(Debug, Clone)]
pub struct EdgeArgs {
    /// How to reach NATS.
    pub connect: ConnectOptions,
    /// Account subjects.
    pub subjects: Subjects,
    /// Host id (used on first start; a stored identity wins afterwards).
    pub host_id: HostId,
    /// Labels (replace the stored ones when non-empty).
    pub labels: BTreeMap<String, String>,
    /// Folder of the agent's local store.
    pub data_dir: PathBuf,
    /// Heartbeat interval.
    pub heartbeat: Duration,
}

/// Messages of the edge agent.
#[derive(Debug)]
pub enum EdgeMsg {
    /// Time to publish a heartbeat.
    Heartbeat,
}

/// State of an edge agent.
pub struct EdgeState {
    client: async_nats::Client,
    subjects: Subjects,
    host: HostId,
    identity: EdgeIdentity,
    store: Arc<EdgeStore>,
    facts: HostFacts,
    seq: u64,
    interval: Duration,
    ticker: tokio::task::JoinHandle<()>,
}

/// The edge agent actor.
#[derive(Debug, Default)]
pub struct EdgeAgent;

impl Actor for EdgeAgent {
    type Msg = EdgeMsg;
    type State = EdgeState;
    type Arguments = EdgeArgs;

    async fn pre_start(&self, myself: ActorRef<EdgeMsg>, args: EdgeArgs) -> Result<EdgeState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| ActorProcessingErr::from(format!("cannot create {}: {e}", args.data_dir.display())))?;
        let path = args.data_dir.join("edge.redb");
        let (host_id, labels) = (args.host_id.to_string(), args.labels.clone());
        let now = crate::now_rfc3339();
        let (store, identity) = tokio::task::spawn_blocking(move || -> Result<_, steward_storage::StoreError> {
            let store = EdgeStore::open(&path)?;
            let identity = store.start(&host_id, &labels, &now)?;
            Ok((Arc::new(store), identity))
        })
        .await??;
        let host = HostId::parse(&identity.host_id)?;
        let client = connect(&args.connect, &format!("steward-edge-{host}")).await?;
        let board = StatusBoard::new();
        board.set(ComponentStatus {
            name: format!("edge-{host}"),
            state: ComponentState::Running,
            restarts: 0,
            last_error: None,
        });
        let health = HealthArgs {
            client: client.clone(),
            subjects: args.subjects.clone(),
            kind: "edge".into(),
            roles: vec!["edge".into()],
            metadata: HashMap::from([("host_id".to_owned(), host.to_string())]),
            started_at: crate::now_rfc3339(),
            started: Instant::now(),
            board,
        };
        Actor::spawn_linked(None, HealthService, health, myself.get_cell()).await?;
        let facts = HostFacts {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        };
        let ticker = myself.send_interval(args.heartbeat, || EdgeMsg::Heartbeat);
        info!(host_id = %host, starts = identity.starts, "edge agent started");
        let mut state = EdgeState {
            client,
            subjects: args.subjects,
            host,
            identity,
            store,
            facts,
            seq: 0,
            interval: args.heartbeat,
            ticker,
        };
        publish_heartbeat(&mut state, false).await;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<EdgeMsg>,
        msg: EdgeMsg,
        state: &mut EdgeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EdgeMsg::Heartbeat => publish_heartbeat(state, false).await,
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<EdgeMsg>, state: &mut EdgeState) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        publish_heartbeat(state, true).await;
        if let Err(e) = state.client.flush().await {
            debug!(host_id = %state.host, error = %e, "flush on stop failed");
        }
        info!(host_id = %state.host, "edge agent stopped");
        Ok(())
    }
}

async fn publish_heartbeat(state: &mut EdgeState, leaving: bool) {
    state.seq += 1;
    let store = state.store.clone();
    let workers =
        tokio::task::spawn_blocking(move || store.workers()).await.ok().and_then(Result::ok).unwrap_or_default();
    let hb = Heartbeat {
        host_id: state.host.to_string(),
        labels: state.identity.labels.clone(),
        agent_version: STEWARD_VERSION.to_owned(),
        facts: state.facts.clone(),
        workers,
        interval_ms: u64::try_from(state.interval.as_millis()).unwrap_or(u64::MAX),
        seq: state.seq,
        incarnation: state.identity.starts,
        leaving,
    };
    match codec::encode(Encoding::MsgPack, &hb) {
        Ok(payload) => {
            if let Err(e) = state.client.publish(state.subjects.host_heartbeat(&state.host), payload).await {
                warn!(host_id = %state.host, error = %e, "heartbeat not published");
            }
        }
        Err(e) => warn!(host_id = %state.host, error = %e, "heartbeat not encoded"),
    }
}
