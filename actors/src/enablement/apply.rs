//! Bringing one host up to date with a plan, one service at a time: ensure the service's
//! worker (connector `host.ensure_worker`), dispatch its playbook by reference (dispatcher
//! `run.dispatch`, labelled `revision=N` and `service=<id>`), poll the run until the host's part
//! ends, then record the revision through the connector.
//!
//! Attempt `k` of (service, host, revision) has its own idempotency key, derived from (account,
//! service, host, revision, attempt), so replays (a restarted hub, a second hub instance, the
//! periodic re-check) never dispatch twice. Each check walks the attempts from 1: an existing
//! successful run is taken as done, an existing run still going is waited for, an existing run
//! that failed moves on to `k + 1`, and the first unused key is dispatched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config_manager::client::ConfigClient;
use async_nats::jetstream;
use steward_subjects::api::config::GetRequest;
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::run::{Job, RunRequest, RunStatus, RunStatusRequest};
use steward_subjects::rpc::{RequestError, RequestErrorKind};
use steward_subjects::streams::HOSTS_BUCKET;
use steward_subjects::subject::host_registry_filter;
use steward_subjects::{ErrorCode, HostId, Subjects};
use tracing::{debug, info, warn};

use super::plan::{prepare, Plan, PreparedService};
use super::MAX_ATTEMPTS;
use crate::config_manager::playbooks::PlaybookStore;
use crate::connector::client::ConnectorClient;
use crate::dispatcher::client::DispatcherClient;

/// Why the status of a host's part of a run is not known.
#[derive(Debug, thiserror::Error)]
pub enum RunStatusError {
    /// The dispatcher did not answer the status request.
    #[error("run {run_id} status: {source}")]
    Request {
        /// The run.
        run_id: String,
        /// The request's error.
        source: RequestError,
    },
    /// The run has no part for the host.
    #[error("run {run_id} has no record for host {host}")]
    NoRecord {
        /// The run.
        run_id: String,
        /// The host.
        host: HostId,
    },
}

/// Failed status polls in a row after which a host's task gives up until the next check.
const MAX_POLL_ERRORS: u32 = 20;

/// What the per-host tasks share.
pub(super) struct Work {
    pub(super) subjects: Subjects,
    pub(super) config: ConfigClient,
    pub(super) connector_api: ConnectorClient,
    /// Hub JetStream (the host registry is read from its bucket: any hub process can).
    pub(super) js: jetstream::Context,
    pub(super) runs: DispatcherClient,
    pub(super) playbooks: PlaybookStore,
    pub(super) ensure_timeout: Duration,
    pub(super) run_timeout: Duration,
    pub(super) poll_every: Duration,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
}

/// How one service ended on one host.
enum Outcome {
    Success,
    Failed(String),
}

/// The idempotency key of attempt `attempt` of `service` at `revision` on `host`.
fn idempotency_key(subjects: &Subjects, service: &str, host: &HostId, revision: u64, attempt: u32) -> String {
    format!("enablement/{}/{service}/{host}/{revision}/{attempt}", subjects.account())
}

impl Work {
    /// The current revision (with playbooks resolved) and the online hosts. A part that cannot be
    /// read is logged and left out (`None` plan: keep the previous one; no hosts: nothing to do).
    pub(super) async fn refresh(&self) -> (Option<Arc<Plan>>, Vec<HostRecord>) {
        let plan = match self.config.get(&GetRequest { revision: None }).await {
            Ok(archive) => Some(Arc::new(prepare(archive.meta.revision, &archive.document, &self.playbooks).await)),
            Err(e) if e.kind() == RequestErrorKind::Remote(ErrorCode::NotFound) => None,
            Err(e) => {
                warn!(error = %e, "enablement cannot read the current configuration revision");
                None
            }
        };
        // Straight from the registry bucket: a fleet's records do not fit one reply.
        let filter = host_registry_filter(self.subjects.account());
        let hosts = match crate::dispatcher::store::read_latest::<HostRecord>(&self.js, HOSTS_BUCKET, &filter).await {
            Ok(records) => records.into_iter().map(|(_, r)| r).filter(|r| r.online).collect(),
            Err(e) => {
                warn!(error = %e, "enablement cannot read the host registry");
                Vec::new()
            }
        };
        (plan, hosts)
    }

    /// Every enabled service in scope of `host`, then the applied revision. Returns whether the
    /// host was recorded at `plan.revision`.
    pub(super) async fn bring_up_to_date(&self, plan: &Plan, host: &HostId, labels: &BTreeMap<String, String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let revision = plan.revision;
        let mut all_ok = true;
        for service in plan.services.iter().filter(|s| s.selector.matches(labels)) {
            match self.apply_service(revision, service, host).await {
                Outcome::Success => {
                    info!(host_id = %host, service = %service.id, revision, "service applied on host");
                }
                Outcome::Failed(reason) => {
                    warn!(host_id = %host, service = %service.id, revision, reason = %reason,
                        "service not applied on host; retried on the next event or re-check");
                    all_ok = false;
                }
            }
        }
        if !all_ok {
            return false;
        }
        match self.connector_api.set_applied_revision(host.as_str(), revision).await {
            Ok(r) if r.recorded => {
                info!(host_id = %host, revision, "host reached revision");
                true
            }
            Ok(_) => {
                warn!(host_id = %host, revision, "connector does not know the host; applied revision not recorded");
                false
            }
            Err(e) => {
                warn!(host_id = %host, revision, error = %e, "applied revision not recorded");
                false
            }
        }
    }

    async fn apply_service(&self, revision: u64, service: &PreparedService, host: &HostId) -> Outcome {
        let reference = match &service.playbook {
            Ok(r) => r.clone(),
            Err(e) => return Outcome::Failed(format!("playbook unreadable: {e}")),
        };
        // 1. The worker (installed, and polled until the host reports it).
        match self.connector_api.ensure_worker(host.as_str(), &service.worker, self.ensure_timeout).await {
            Ok(r) if !r.already_present => {
                info!(host_id = %host, worker = %service.worker, waited_ms = r.waited_ms, "worker installed");
            }
            Ok(_) => {}
            Err(e) => return Outcome::Failed(format!("ensure worker {:?}: {e}", service.worker)),
        }
        // 2. Dispatch: walk the attempts until one is unused, running, or succeeded.
        let mut attempt = 1;
        let run_id = loop {
            if attempt > MAX_ATTEMPTS {
                return Outcome::Failed(format!("{MAX_ATTEMPTS} attempts failed; waiting for a new revision"));
            }
            let req = RunRequest {
                hosts: vec![host.to_string()],
                job: Job::playbook_by_ref(reference.clone()),
                labels: BTreeMap::from([
                    ("revision".to_owned(), revision.to_string()),
                    ("service".to_owned(), service.id.clone()),
                ]),
                timeout_ms: u64::try_from(self.run_timeout.as_millis()).unwrap_or(u64::MAX),
                idempotency_key: idempotency_key(&self.subjects, &service.id, host, revision, attempt),
                ..RunRequest::default()
            };
            let accepted = match self.runs.dispatch(&req).await {
                Ok(a) => a,
                Err(e) => return Outcome::Failed(format!("dispatch: {e}")),
            };
            if !accepted.existing {
                info!(host_id = %host, service = %service.id, revision, attempt, run_id = %accepted.run_id,
                    "service playbook dispatched");
                break accepted.run_id;
            }
            match self.host_status(&accepted.run_id, host).await {
                Ok(RunStatus::Success) => return Outcome::Success,
                Ok(s) if s.is_terminal() => attempt += 1,
                Ok(_) => break accepted.run_id,
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        };
        // 3. Poll the run until the host's outcome is known.
        // The run has a deadline, so this ends; a dispatcher that stays unreachable for
        // `MAX_POLL_ERRORS` polls in a row ends it too (the next check picks the run up again).
        let mut tick = tokio::time::interval(self.poll_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut errors = 0;
        loop {
            tick.tick().await;
            match self.host_status(&run_id, host).await {
                Ok(RunStatus::Success) => return Outcome::Success,
                Ok(s) if s.is_terminal() => return Outcome::Failed(format!("run {run_id} ended {s}")),
                Ok(_) => errors = 0,
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_POLL_ERRORS {
                        return Outcome::Failed(e.to_string());
                    }
                    debug!(host_id = %host, run_id = %run_id, error = %e, "run status not read, polling on");
                }
            }
        }
    }

    /// The status of `host`'s part of a run.
    async fn host_status(&self, run_id: &str, host: &HostId) -> Result<RunStatus, RunStatusError> {
        let req = RunStatusRequest { run_id: run_id.to_owned(), ..RunStatusRequest::default() };
        let view = self
            .runs
            .status(&req)
            .await
            .map_err(|source| RunStatusError::Request { run_id: run_id.to_owned(), source })?;
        view.hosts
            .iter()
            .find(|h| h.run.host_id == host.as_str())
            .map(|h| h.run.status)
            .ok_or_else(|| RunStatusError::NoRecord { run_id: run_id.to_owned(), host: host.clone() })
    }
}
