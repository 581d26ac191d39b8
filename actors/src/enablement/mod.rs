//! The service-enablement loop: keeps every connected host at the current configuration
//! revision's enabled services.
//!
//! For the current revision N, each online host in scope of an enabled service whose
//! `applied_revision` is not N gets a task that installs the service's worker, runs the
//! service's playbook there and, once every service of the host ended `success`, records N as
//! the host's applied revision through the connector (`host.applied`); a host with no service
//! in scope is recorded at N directly.
//!
//! Triggers: `config.changed`, host `online`/`changed` events (that one host), and a periodic
//! re-check ([`EnablementArgs::recheck_every`]) that retries failures without an event.
//! Failures are logged and never stop the actor. Layout: this file is the actor; `plan` reads
//! the revision and stores its playbooks; `apply` brings one host up to date.

mod apply;
mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config_manager::client::ConfigClient;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_subjects::api::host::{HostEvent, HostEventKind, HostRecord};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{CONFIG_EVENTS_STREAM, HOST_EVENTS_STREAM};
use steward_subjects::{HostId, Subjects};
use tracing::{debug, info};

pub use self::apply::RunStatusError;
use self::apply::Work;
pub(crate) use self::plan::store_playbook;
pub use self::plan::{Plan, PlaybookError, PreparedService};
use crate::config_manager::playbooks::PlaybookStore;
use crate::connector::client::ConnectorClient;
use crate::dispatcher::client::DispatcherClient;
use crate::tasks::TaskSet;

/// Attempts per (service, host, revision) after which the loop stops re-dispatching until the
/// revision changes (each attempt is a run that ended without success).
pub const MAX_ATTEMPTS: u32 = 20;

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

/// State of the enablement actor.
pub struct EnablementState {
    work: Arc<Work>,
    plan: Option<Arc<Plan>>,
    /// Host id → revision its task works towards.
    inflight: HashMap<String, u64>,
    refreshing: bool,
    refresh_again: bool,
    tasks: TaskSet<EnablementMsg>,
}

/// The enablement actor.
#[derive(Debug, Default)]
pub struct Enablement;

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
        let mut tasks = TaskSet::new(myself.clone(), EnablementMsg::TaskEnded);

        // Ordered (ephemeral) consumers, new messages only: the loop is level-triggered — every
        // check recomputes what to do from the config revision, the host registry and the run
        // records, and a start or restart checks every host at once — so an event missed while
        // the actor was down loses nothing and there is no delivery state worth keeping on the
        // server. Ordered consumers also need no acks and leave nothing behind when this process
        // goes away; a second hub instance consuming the same events is harmless because
        // dispatches are idempotent.
        let mut messages = new_events(&js, CONFIG_EVENTS_STREAM, args.subjects.config_changed()).await?;
        let me = myself.clone();
        tasks.spawn("config events", async move {
            while let Some(Ok(_msg)) = messages.next().await {
                if me.cast(EnablementMsg::Refresh("config changed")).is_err() {
                    return;
                }
            }
        });

        let mut messages = new_events(&js, HOST_EVENTS_STREAM, args.subjects.host_event_all()).await?;
        let me = myself.clone();
        tasks.spawn("host events", async move {
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
        });

        let me = myself.clone();
        let every = args.recheck_every;
        tasks.spawn_detached(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The first tick is immediate: the start-up check of every host.
                t.tick().await;
                if me.cast(EnablementMsg::Refresh("periodic re-check")).is_err() {
                    return;
                }
            }
        });

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
            EnablementMsg::TaskEnded(what) => return Err(crate::tasks::ended("enablement task", what)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EnablementMsg>,
        state: &mut EnablementState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        Ok(())
    }
}

/// The messages published on `stream` under `filter` from now on, through an ordered consumer.
async fn new_events(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
) -> Result<consumer::pull::Ordered, ActorProcessingErr> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
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
