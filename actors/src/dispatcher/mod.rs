//! The dispatcher: runs on hosts. It answers `run.dispatch`, `run.status`, `run.cancel` and
//! `run.list` ([`api`]), keeps runs in the `steward_runs` bucket ([`store`]), stores each
//! attempt's work order as a durable host command (`delivery`), follows the hosts' job events
//! through a durable consumer shared by every hub instance, ends hosts whose deadline passed as
//! `timeout` ([`lifecycle`]), retries per the run's policy, and cancels on request.
//!
//! A run is answered once its records are written; a small run's orders are published beside
//! the record writes, so a quick host's events may come before its host record and are offered
//! again for a while. Every update is a compare-and-set against the revision this instance
//! remembers, so instances never overwrite each other; an instance applying an event of a run
//! it does not hold adopts it, so deadlines and retries are enforced wherever events land
//! (`runs`). Events naming a run the hub never created are dropped at once and every event is
//! delivered a bounded number of times (`events`), so no host can stall the shared consumer.
//! A cancel deletes stored orders of hosts that have not started and sends the others a stop
//! order.

pub mod api;
pub mod client;
mod delivery;
mod events;
pub mod lifecycle;
mod runs;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::streams::RUN_EVENTS_STREAM;
use steward_subjects::subject::run_events_consumer;
use steward_subjects::Subjects;
use tracing::{info, warn};

use crate::signing::JobSigner;
use crate::tasks::TaskSet;
use runs::Core;
use store::RunStore;

/// Arguments of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Account subjects.
    pub subjects: Subjects,
    /// The hub's signing key; `None` dispatches unsigned jobs (hosts refuse them).
    pub signer: Option<JobSigner>,
    /// How often deadlines, retries and re-deliveries are checked.
    pub tick: Duration,
    /// How long before a work order the commands stream did not acknowledge is published
    /// again.
    pub redeliver_after: Duration,
}

impl DispatcherArgs {
    /// Defaults: check every 250 ms, publish an unstored work order again after 2 s.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects, signer: Option<JobSigner>) -> Self {
        DispatcherArgs {
            client,
            subjects,
            signer,
            tick: Duration::from_millis(250),
            redeliver_after: Duration::from_secs(2),
        }
    }
}

/// Messages of the dispatcher.
#[derive(Debug)]
pub enum DispatcherMsg {
    /// One of its tasks (service, event consumer, sweeper) ended.
    TaskEnded(&'static str),
    /// How many job events this instance dropped without applying them (naming a run the hub
    /// never created, or past the redelivery bound).
    DroppedEvents(RpcReplyPort<u64>),
}

/// State of the dispatcher.
pub struct DispatcherState {
    tasks: TaskSet<DispatcherMsg>,
    service: Option<async_nats::service::Service>,
    core: Arc<Core>,
}

/// The dispatcher actor. Its work runs on spawned tasks sharing the `Arc`'d run state, for
/// latency: a request is served without a hop through the actor's mailbox; the actor only owns
/// the tasks and restarts (through its supervisor) when one ends.
#[derive(Debug, Default)]
pub struct Dispatcher;

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let js = jetstream::new(args.client.clone());
        let store = RunStore::open(js.clone(), args.subjects.clone()).await?;
        let core = Arc::new(Core {
            client: args.client.clone(),
            js: js.clone(),
            subjects: args.subjects.clone(),
            store,
            signer: args.signer.clone(),
            redeliver_after_ms: crate::duration_ms(args.redeliver_after),
            active: Mutex::new(HashMap::new()),
            deltas: Mutex::new(HashMap::new()),
            adopt: Mutex::new(HashSet::new()),
            dropped_events: AtomicU64::new(0),
        });
        core.load_active().await?;

        let mut tasks = TaskSet::new(myself.clone(), DispatcherMsg::TaskEnded);
        let service = api::serve(&args, core.clone(), &mut tasks).await?;

        let stream = js.get_stream(RUN_EVENTS_STREAM).await?;
        let durable = run_events_consumer(args.subjects.account());
        // Created or updated: a durable made by an older hub gets today's bounds too.
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: args.subjects.run_event_all(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                max_ack_pending: 100_000,
                max_deliver: events::MAX_DELIVER,
                ..Default::default()
            })
            .await?;
        let events_core = core.clone();
        tasks.spawn("events", async move {
            if let Err(e) = events_core.follow_events(consumer).await {
                warn!(error = %e, "dispatcher event consumer ended");
            }
        });

        let sweep_core = core.clone();
        let tick = args.tick;
        tasks.spawn_detached(async move {
            let mut t = tokio::time::interval(tick);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                sweep_core.sweep().await;
            }
        });
        info!(account = %args.subjects.account(), signed = args.signer.is_some(), "dispatcher started");
        Ok(DispatcherState { tasks, service: Some(service), core })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::TaskEnded(name) => Err(crate::tasks::ended("dispatcher task", name)),
            DispatcherMsg::DroppedEvents(reply) => {
                // The asker may have stopped waiting: nothing to do then.
                let _ = reply.send(state.core.dropped_events.load(Ordering::Relaxed));
                Ok(())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.stop("dispatcher", state.service.take()).await;
        Ok(())
    }
}
