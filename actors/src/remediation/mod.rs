//! Remediation: alarm → guarded run → re-check.
//!
//! The service follows every alarm transition through a durable consumer on
//! `STEWARD_ALARM_EVENTS` shared by every hub instance. For each `firing` transition whose alarm a
//! remediation rule of the current configuration answers (its alarm rule, its check, its host
//! selector against the labels the alarm recorded), it decides once per (alarm, firing, rule):
//! start a run through the dispatcher on the alarm's host (or on one runner matching the rule's
//! `runner`), labelled `remediation=<rule>`, `alarm-host`, `alarm-check`, `alarm-rule`,
//! `alarm-firing` and keyed `remediation:<id>` so a redelivered transition never starts a second
//! run; or hold it, with the reason, when a guard says no: cooldown per (host, rule), at most
//! `max_in_flight` in flight per rule (the blast radius), at most `max_per_hour` started per rule
//! per rolling hour, approval. The guards' state is the remediation ledger in `steward_alarms`,
//! written with compare-and-set (see [`store`]), so hub instances never exceed a cap between
//! them. Every start, hold and end is noted on the alarm's timeline (`remediation_started` with
//! the run id, `remediation_held` with the reason, `remediation_finished` with the outcome).
//!
//! A sweep (every [`RemediationArgs::sweep_every`]) finds runs that ended: it frees their slot,
//! notes the outcome and publishes `jobspec.recheck.<host>` naming the spec whose result fired
//! the alarm, so the host's runtime runs it now instead of at its next interval and the
//! evaluator judges the alarm on a fresh result; a later `resolved` transition marks the
//! remediation as having cleared it. Held remediations wait for `alarm.approve`, which starts
//! one when the other guards allow it; `alarm.remediations` lists them (see [`api`]).
//!
//! Layout: this file is the actor; [`flow`] the decisions and their side effects; [`store`] the
//! ledger and the guards; [`api`] the endpoints; [`client`] their typed client.

pub mod api;
pub mod client;
pub mod flow;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_subjects::api::alarm::AlarmEvent;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::ALARM_EVENTS_STREAM;
use steward_subjects::subject::remediation_consumer;
use steward_subjects::Subjects;
use tracing::{debug, info, warn};

use self::flow::Core;
use crate::tasks::TaskSet;

/// How long a delivered transition may stay unacknowledged before it goes to another hub (a
/// killed hub's transitions come back after this).
const ACK_WAIT: Duration = Duration::from_secs(15);
/// Transitions pulled at once (handled one by one, each well within [`ACK_WAIT`]).
const BATCH: usize = 50;

/// How long a transition that could not be handled waits before it is offered again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Arguments of the remediation service.
#[derive(Debug, Clone)]
pub struct RemediationArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// How often in-flight remediations are looked at (ended runs, unfinished dispatches).
    pub sweep_every: Duration,
}

impl RemediationArgs {
    /// Defaults: sweep every 500 ms.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        RemediationArgs { client, subjects, sweep_every: Duration::from_millis(500) }
    }
}

/// Messages of the remediation service.
#[derive(Debug)]
pub enum RemediationMsg {
    /// A background task (consumer, sweep, endpoints) ended: restart through the supervisor.
    TaskEnded(&'static str),
}

/// State of the remediation service.
pub struct RemediationState {
    tasks: TaskSet<RemediationMsg>,
    _service: async_nats::service::Service,
}

/// The remediation service actor.
#[derive(Debug, Default)]
pub struct RemediationService;

impl Actor for RemediationService {
    type Msg = RemediationMsg;
    type State = RemediationState;
    type Arguments = RemediationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RemediationMsg>,
        args: RemediationArgs,
    ) -> Result<RemediationState, ActorProcessingErr> {
        let core = Arc::new(Core::open(args.client.clone(), args.subjects.clone()).await?);
        let js = jetstream::new(args.client.clone());
        let mut tasks = TaskSet::new(myself.clone(), RemediationMsg::TaskEnded);
        // Durable and shared: each transition goes to one hub instance, which acknowledges it
        // once its decision is stored. Created with "new" delivery: firings from before the
        // service first ran are not remediated.
        let consumer = js
            .get_stream(ALARM_EVENTS_STREAM)
            .await?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(remediation_consumer(args.subjects.account())),
                filter_subject: args.subjects.alarm_events_all(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                ack_wait: ACK_WAIT,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await?;
        let follow_core = core.clone();
        tasks.spawn("alarm transitions", async move {
            if let Err(e) = follow(&follow_core, consumer).await {
                warn!(error = %e, "remediation consumer ended");
            }
        });
        let sweep_core = core.clone();
        let every = args.sweep_every;
        tasks.spawn("sweep", async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                if let Err(e) = sweep_core.sweep().await {
                    warn!(error = %e, "remediation sweep failed");
                }
            }
        });
        let service = api::serve(&args, core, &mut tasks).await?;
        info!(account = %args.subjects.account(), "remediation service started");
        Ok(RemediationState { tasks, _service: service })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RemediationMsg>,
        msg: RemediationMsg,
        _state: &mut RemediationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RemediationMsg::TaskEnded(what) => Err(crate::tasks::ended("remediation task", what)),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RemediationMsg>,
        state: &mut RemediationState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        Ok(())
    }
}

/// Handles the transitions one at a time, acknowledging each once handled (or asking for it
/// again after [`RETRY_DELAY`] when a step failed).
async fn follow(core: &Core, consumer: consumer::Consumer<consumer::pull::Config>) -> Result<(), ActorProcessingErr> {
    let mut messages =
        consumer.stream().max_messages_per_batch(BATCH).heartbeat(Duration::from_secs(5)).messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let ack = match codec::decode::<AlarmEvent>(Encoding::MsgPack, &msg.payload) {
            Ok(ev) => match core.on_event(&ev).await {
                Ok(()) => AckKind::Ack,
                Err(e) => {
                    warn!(alarm = %ev.alarm.id, kind = ev.kind.as_str(), error = %e, "alarm transition not handled, offered again");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
            },
            Err(e) => {
                debug!(subject = %msg.subject, error = %e, "undecodable alarm transition skipped");
                AckKind::Term
            }
        };
        if let Err(e) = msg.ack_with(ack).await {
            debug!(error = %e, "alarm transition not acknowledged");
        }
    }
    Ok(())
}
