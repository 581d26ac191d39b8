//! The service-enablement loop (seed 000): keeps every connected host at the current
//! configuration revision's enabled services.
//!
//! For the current revision N, for every enabled service and every online host matching the
//! service's selector whose `applied_revision` is not N, a per-host task:
//! 1. ensures the service's worker is installed (connector `host.ensure_worker`, with a timeout:
//!    the seed's "install rhc-worker-playbook, poll until present in the dispatchers map");
//! 2. dispatches the service's playbook, by reference, to that host (dispatcher `run.dispatch`), labelled
//!    `revision=N` and `service=<id>`, with an idempotency key derived from (account, service,
//!    host, revision, attempt) so replays — a restarted hub, a second hub instance, the periodic
//!    re-check — never dispatch twice;
//! 3. polls the run's status (the seed's status polling) until the host's run ends; when every
//!    service of the host ended `success`, records N as the host's applied-state id through the
//!    connector (`host.applied`, answered by every connector instance, so the loop may run in
//!    any hub process).
//!
//! A host with no enabled service in scope has nothing to apply and is recorded at N directly.
//!
//! Triggers: `config.changed` (re-read the current revision), host `online` and `changed` events
//! (check that one host), and a periodic re-check ([`EnablementArgs::recheck_every`]) that
//! re-reads everything, so failures (ensure-worker timeout, failed run, unreadable playbook) are
//! retried without an event. Failures are logged with structured fields and never stop the actor.
//!
//! Retries and idempotency: attempt `k` of (service, host, revision) has its own idempotency key.
//! Each check walks the attempts from 1: an existing successful run is taken as done, an existing
//! run still going is waited for, an existing run that failed moves on to `k + 1`, and the first
//! unused key is dispatched. So each check dispatches at most once per (service, host, revision),
//! and only after every earlier attempt ended without success.
//!
//! Playbooks (seed 000's "RHC Client -> Config-manager API: Fetch https://xyz"): the service's
//! `playbook` field names a source (`file://PATH`, an absolute path, or `http(s)://URL`). Each
//! refresh reads it on the hub and stores the bytes with the config manager's content-addressed
//! playbook store ([`PlaybookStore`], the `steward_artifacts` object store), which yields the
//! reference `sha256:<hex>`. The dispatch carries only that reference (`Job::playbook_by_ref`,
//! content empty); the hub signs it, so the signature pins the exact bytes. The host fetches the
//! playbook through its hub connection (`config.playbook`) and runs it only when the bytes hash
//! to the signed reference (see `worker::job`). A source that cannot be read or stored fails the
//! service for that check, with the reason logged, and is retried by the next check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_subjects::api::config::{ConfigClient, GetRequest};
use steward_subjects::api::host::{HostEvent, HostEventKind, HostRecord};
use steward_subjects::api::run::{Job, RunRequest, RunStatus, RunStatusRequest, MAX_PLAYBOOK_BYTES};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::ConfigDocument;
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::selector::Selector;
use steward_subjects::streams::{CONFIG_EVENTS_STREAM, HOSTS_BUCKET, HOST_EVENTS_STREAM};
use steward_subjects::subject::host_registry_filter;
use steward_subjects::{ErrorCode, HostId, Subjects};
use tracing::{debug, info, warn};

use crate::config_manager::playbooks::PlaybookStore;
use crate::config_manager::source::SourceUrl;
use crate::connector::client::ConnectorClient;
use crate::dispatcher::client::DispatcherClient;

/// Attempts per (service, host, revision) after which the loop stops re-dispatching until the
/// revision changes (each attempt is a run that ended without success).
pub const MAX_ATTEMPTS: u32 = 20;

/// Failed status polls in a row after which a host's task gives up until the next check.
const MAX_POLL_ERRORS: u32 = 20;

/// Arguments of the enablement actor.
#[derive(Debug, Clone)]
pub struct EnablementArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// How long `ensure_worker` may wait for the worker to appear.
    pub ensure_timeout: Duration,
    /// Time each playbook run may take on a host.
    pub run_timeout: Duration,
    /// How often a dispatched run's status is polled.
    pub poll_every: Duration,
    /// Periodic re-check of every host (retries failures without an event).
    pub recheck_every: Duration,
    /// Hosts worked on at once.
    pub concurrency: usize,
}

impl EnablementArgs {
    /// Defaults: ensure-worker timeout 30 s, run timeout 10 min, poll every 500 ms, re-check
    /// every 30 s, 256 hosts at once.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        EnablementArgs {
            client,
            subjects,
            ensure_timeout: Duration::from_secs(30),
            run_timeout: Duration::from_secs(600),
            poll_every: Duration::from_millis(500),
            recheck_every: Duration::from_secs(30),
            concurrency: 256,
        }
    }
}

/// Messages of the enablement actor.
#[derive(Debug)]
pub enum EnablementMsg {
    /// Re-read the current revision and the online hosts, then check every host.
    Refresh(&'static str),
    /// The result of a refresh: the current revision (if any) and the online hosts.
    Planned(Option<Arc<Plan>>, Vec<HostRecord>),
    /// A host came online or changed.
    Host(Box<HostRecord>),
    /// A host's task ended.
    HostDone {
        /// The host.
        host: String,
        /// The revision it worked towards.
        revision: u64,
        /// Whether the host reached it.
        applied: bool,
    },
    /// A background task (event consumer, timer) ended: restart through the supervisor.
    TaskEnded(&'static str),
}

/// One enabled service of the current revision, with its playbook resolved.
#[derive(Debug)]
pub struct PreparedService {
    /// Service id.
    pub id: String,
    /// Worker the service needs.
    pub worker: String,
    /// Hosts in scope.
    pub selector: Selector,
    /// The stored playbook's reference (`sha256:<hex>`), or why it could not be read or stored.
    pub playbook: Result<String, String>,
}

/// The current revision and what it asks of hosts.
#[derive(Debug)]
pub struct Plan {
    /// Revision number.
    pub revision: u64,
    /// Enabled services.
    pub services: Vec<PreparedService>,
}

/// State of the enablement actor.
pub struct EnablementState {
    work: Arc<Work>,
    plan: Option<Arc<Plan>>,
    /// Host id → revision its task works towards.
    inflight: HashMap<String, u64>,
    refreshing: bool,
    refresh_again: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The enablement actor.
#[derive(Debug, Default)]
pub struct Enablement;

/// What the per-host tasks share.
struct Work {
    subjects: Subjects,
    config: ConfigClient,
    connector_api: ConnectorClient,
    /// Hub JetStream (the host registry is read from its bucket: any hub process can).
    js: jetstream::Context,
    runs: DispatcherClient,
    playbooks: PlaybookStore,
    ensure_timeout: Duration,
    run_timeout: Duration,
    poll_every: Duration,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Actor for Enablement {
    type Msg = EnablementMsg;
    type State = EnablementState;
    type Arguments = EnablementArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EnablementMsg>,
        args: EnablementArgs,
    ) -> Result<EnablementState, ActorProcessingErr> {
        let js = jetstream::new(args.client.clone());
        let mut tasks = Vec::new();

        // Ordered (ephemeral) consumers, new messages only: the loop is level-triggered — every
        // check recomputes what to do from the config revision, the host registry and the run
        // records, and a start or restart checks every host at once — so an event missed while
        // the actor was down loses nothing and there is no delivery state worth keeping on the
        // server. Ordered consumers also need no acks and leave nothing behind when this process
        // goes away; a second hub instance consuming the same events is harmless because
        // dispatches are idempotent.
        let config_stream = js.get_stream(CONFIG_EVENTS_STREAM).await?;
        let config_events = config_stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: args.subjects.config_changed(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = config_events.messages().await?;
        let me = myself.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_msg)) = messages.next().await {
                if me.cast(EnablementMsg::Refresh("config changed")).is_err() {
                    return;
                }
            }
            let _ = me.cast(EnablementMsg::TaskEnded("config events"));
        }));

        let host_stream = js.get_stream(HOST_EVENTS_STREAM).await?;
        let host_events = host_stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: args.subjects.host_event_all(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = host_events.messages().await?;
        let me = myself.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = messages.next().await {
                match codec::decode::<HostEvent>(Encoding::MsgPack, &msg.payload) {
                    Ok(ev) if matches!(ev.kind, HostEventKind::Online | HostEventKind::Changed) => {
                        if me.cast(EnablementMsg::Host(Box::new(ev.record))).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "undecodable host event ignored"),
                }
            }
            let _ = me.cast(EnablementMsg::TaskEnded("host events"));
        }));

        let me = myself.clone();
        let every = args.recheck_every;
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The first tick is immediate: the start-up check of every host.
                t.tick().await;
                if me.cast(EnablementMsg::Refresh("periodic re-check")).is_err() {
                    return;
                }
            }
        }));

        let work = Arc::new(Work {
            subjects: args.subjects.clone(),
            config: ConfigClient::new(args.client.clone(), args.subjects.clone()),
            connector_api: ConnectorClient::new(args.client.clone(), args.subjects.clone()),
            js: js.clone(),
            runs: DispatcherClient::new(args.client.clone(), args.subjects.clone()),
            playbooks: PlaybookStore::new(js.clone(), args.subjects.account().clone()),
            ensure_timeout: args.ensure_timeout,
            run_timeout: args.run_timeout,
            poll_every: args.poll_every,
            permits: Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1))),
        });
        info!(account = %args.subjects.account(), "enablement loop started");
        Ok(EnablementState {
            work,
            plan: None,
            inflight: HashMap::new(),
            refreshing: false,
            refresh_again: false,
            tasks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<EnablementMsg>,
        msg: EnablementMsg,
        state: &mut EnablementState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EnablementMsg::Refresh(why) => {
                if state.refreshing {
                    state.refresh_again = true;
                    return Ok(());
                }
                state.refreshing = true;
                debug!(reason = why, "enablement refresh");
                let work = state.work.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    let (plan, hosts) = work.refresh().await;
                    let _ = me.cast(EnablementMsg::Planned(plan, hosts));
                });
            }
            EnablementMsg::Planned(plan, hosts) => {
                state.refreshing = false;
                // `None` means the revision could not be read: keep the last plan.
                if let Some(plan) = plan {
                    state.plan = Some(plan);
                }
                for host in hosts {
                    state.check(&myself, host);
                }
                if std::mem::take(&mut state.refresh_again) {
                    let _ = myself.cast(EnablementMsg::Refresh("event during refresh"));
                }
            }
            EnablementMsg::Host(record) => state.check(&myself, *record),
            EnablementMsg::HostDone { host, revision, applied } => {
                state.inflight.remove(&host);
                let current = state.plan.as_ref().map(|p| p.revision);
                if applied && current.is_some_and(|c| c != revision) {
                    // A newer revision came while this host worked on an older one.
                    let _ = myself.cast(EnablementMsg::Refresh("revision moved on"));
                }
            }
            EnablementMsg::TaskEnded(what) => {
                return Err(ActorProcessingErr::from(format!("enablement task {what} ended")));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EnablementMsg>,
        state: &mut EnablementState,
    ) -> Result<(), ActorProcessingErr> {
        for t in &state.tasks {
            t.abort();
        }
        Ok(())
    }
}

impl EnablementState {
    /// Starts a task for `host` if it is online, behind the current revision and not being
    /// worked on already.
    fn check(&mut self, myself: &ActorRef<EnablementMsg>, host: HostRecord) {
        let Some(plan) = self.plan.clone() else { return };
        if !host.online || host.applied_revision == Some(plan.revision) {
            return;
        }
        if self.inflight.contains_key(&host.host_id) {
            return;
        }
        let Ok(host_id) = HostId::parse(&host.host_id) else { return };
        self.inflight.insert(host.host_id.clone(), plan.revision);
        let work = self.work.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let revision = plan.revision;
            let applied = work.bring_up_to_date(&plan, &host_id, &host.labels).await;
            let _ = me.cast(EnablementMsg::HostDone { host: host_id.to_string(), revision, applied });
        });
    }
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

/// Reads a playbook reference on the hub: `file://PATH`, an absolute path or `http(s)://URL`.
async fn resolve_playbook(reference: &str) -> Result<String, String> {
    let url = if reference.starts_with('/') { format!("file://{reference}") } else { reference.to_owned() };
    let bytes = SourceUrl::parse(&url)?.fetch().await?;
    if bytes.len() > MAX_PLAYBOOK_BYTES {
        return Err(format!("playbook of {} bytes is larger than the {MAX_PLAYBOOK_BYTES} bytes allowed", bytes.len()));
    }
    String::from_utf8(bytes).map_err(|_| "playbook is not UTF-8 text".to_owned())
}

/// Reads a service's playbook source and stores it; the reference it is stored under.
async fn store_playbook(store: &PlaybookStore, source: &str) -> Result<String, String> {
    let content = resolve_playbook(source).await?;
    store.put(&content).await.map(|s| s.reference).map_err(|e| format!("cannot store playbook: {e}"))
}

async fn prepare(revision: u64, doc: &ConfigDocument, store: &PlaybookStore) -> Plan {
    let mut services = Vec::new();
    for s in doc.services.iter().filter(|s| s.enabled) {
        let selector = match Selector::parse(&s.selector) {
            Ok(sel) => sel,
            Err(e) => {
                // Validation refuses bad selectors; a stored one that no longer parses is skipped.
                warn!(revision, service = %s.id, error = %e, "service selector does not parse, skipping service");
                continue;
            }
        };
        let playbook = store_playbook(store, &s.playbook).await;
        match &playbook {
            Ok(reference) => debug!(revision, service = %s.id, playbook = %s.playbook, reference = %reference,
                "service playbook stored"),
            Err(e) => {
                warn!(revision, service = %s.id, playbook = %s.playbook, error = %e, "cannot read service playbook")
            }
        }
        services.push(PreparedService { id: s.id.clone(), worker: s.worker.clone(), selector, playbook });
    }
    Plan { revision, services }
}

impl Work {
    /// The connector actor: the one given, or the connector running under the same supervisor
    /// (looked up each time, so a restarted connector is found).
    /// The current revision (with playbooks resolved) and the online hosts. A part that cannot be
    /// read is logged and left out (`None` plan: keep the previous one; no hosts: nothing to do).
    async fn refresh(&self) -> (Option<Arc<Plan>>, Vec<HostRecord>) {
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
    async fn bring_up_to_date(&self, plan: &Plan, host: &HostId, labels: &BTreeMap<String, String>) -> bool {
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
        // 1. The worker (the seed's package-manager install, polled until present).
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
                Err(e) => return Outcome::Failed(e),
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
                        return Outcome::Failed(e);
                    }
                    debug!(host_id = %host, run_id = %run_id, error = %e, "run status not read, polling on");
                }
            }
        }
    }

    /// The status of `host`'s part of a run.
    async fn host_status(&self, run_id: &str, host: &HostId) -> Result<RunStatus, String> {
        let req = RunStatusRequest { run_id: run_id.to_owned(), ..RunStatusRequest::default() };
        let view = self.runs.status(&req).await.map_err(|e| format!("run {run_id} status: {e}"))?;
        view.hosts
            .iter()
            .find(|h| h.run.host_id == host.as_str())
            .map(|h| h.run.status)
            .ok_or_else(|| format!("run {run_id} has no record for host {host}"))
    }
}
