//! The health service: every Steward process registers one NATS micro service per NATS
//! connection, so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` discover and measure it, and answers
//! `health.status` with the process's roles, uptime and component states.
//!
//! Endpoints (both micro endpoints, so both in the micro queue group):
//! - `steward.v1.<account>.health.status` — any instance answers (load shared);
//! - `steward.v1.<account>.health.status.<instance>` — only that instance subscribes.

use std::collections::HashMap;
use std::time::Instant;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_subjects::api::health::{HealthRequest, HealthStatus};
use steward_subjects::rpc;
use steward_subjects::subject::service_name;
use steward_subjects::{Subjects, Token, TokenKind, STEWARD_VERSION};
use tracing::{debug, warn};

use crate::status::StatusBoard;
use crate::tasks::TaskSet;

/// Arguments of the health service.
#[derive(Debug, Clone)]
pub struct HealthArgs {
    /// Connection the service registers on.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// Component kind, used in the service name `steward-<kind>` (`hub`, `edge`).
    pub kind: String,
    /// Roles of the process (reported in the status and the service metadata).
    pub roles: Vec<String>,
    /// Extra metadata for `$SRV.INFO` (for example `host_id`).
    pub metadata: HashMap<String, String>,
    /// Process start time, RFC 3339.
    pub started_at: String,
    /// Process start instant (for uptime).
    pub started: Instant,
    /// Component statuses to report.
    pub board: StatusBoard,
}

/// Messages of the health service.
#[derive(Debug)]
pub enum HealthMsg {
    /// An endpoint's subscription ended (connection closed or service stopped underneath).
    EndpointClosed,
}

/// State of the health service.
pub struct HealthState {
    service: Option<async_nats::service::Service>,
    tasks: TaskSet<HealthMsg>,
    instance: String,
}

/// The health service actor.
#[derive(Debug, Default)]
pub struct HealthService;

impl Actor for HealthService {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        let mut metadata = args.metadata.clone();
        metadata.insert("account".into(), args.subjects.account().to_string());
        metadata.insert("roles".into(), args.roles.join(","));
        let service = args
            .client
            .service_builder()
            .description(format!("steward {} process health", args.kind))
            .metadata(metadata)
            .start(service_name(&args.kind), STEWARD_VERSION)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot register health service: {e}")))?;
        let instance = service.info().await.id;
        let instance_token = Token::parse(TokenKind::InstanceId, &instance)?;
        let shared = service
            .endpoint_builder()
            .name("status")
            .add(args.subjects.health_status())
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot add health endpoint: {e}")))?;
        let own = service
            .endpoint_builder()
            .name("status-instance")
            .add(args.subjects.health_status_of(&instance_token))
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot add health endpoint: {e}")))?;
        let ctx = ServeCtx { args, instance: instance.clone() };
        let mut tasks = TaskSet::new(myself, |_| HealthMsg::EndpointClosed);
        tasks.spawn("endpoints", async move {
            let mut requests = futures::stream::select(shared, own);
            while let Some(req) = requests.next().await {
                ctx.answer(req).await;
            }
        });
        debug!(instance = %instance, "health service registered");
        Ok(HealthState { service: Some(service), tasks, instance })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealthMsg::EndpointClosed => {
                Err(ActorProcessingErr::from(format!("health endpoints of {} closed", state.instance)))
            }
        }
    }

    async fn post_stop(&self, _myself: ActorRef<HealthMsg>, state: &mut HealthState) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        if let Some(service) = state.service.take() {
            if let Err(e) = service.stop().await {
                warn!(instance = %state.instance, error = %e, "health service did not stop cleanly");
            }
        }
        Ok(())
    }
}

struct ServeCtx {
    args: HealthArgs,
    instance: String,
}

impl ServeCtx {
    async fn answer(&self, req: async_nats::service::Request) {
        let result = match rpc::decode_request::<HealthRequest>(&req.message) {
            Ok((_req, enc)) => (Ok(self.status()), enc),
            Err((e, enc)) => (Err(e), enc),
        };
        if let Err(e) = rpc::respond(&req, result.1, result.0).await {
            debug!(error = %e, "health reply not sent");
        }
    }

    fn status(&self) -> HealthStatus {
        HealthStatus {
            service: service_name(&self.args.kind),
            instance: self.instance.clone(),
            roles: self.args.roles.clone(),
            version: STEWARD_VERSION.to_owned(),
            started_at: self.args.started_at.clone(),
            uptime_secs: self.args.started.elapsed().as_secs(),
            components: self.args.board.snapshot(),
        }
    }
}
