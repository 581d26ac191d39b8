//! Alarms: rules from the configuration document evaluated against every stored result, one
//! alarm per (host, check, rule), transitions stored once on the alarm's subject, silences,
//! acknowledgements and notifications.
//!
//! Layout: [`eval`] is the pure evaluation (rules compiled, per-track windows, transitions);
//! [`store`] the JetStream state (transitions appended with the alarm's expected last sequence,
//! the alarm record in `steward_alarms`, silences, timelines); `engine` the evaluator that
//! runs while this hub holds the account's alarm lock; `api` the endpoints every hub serves;
//! [`notify`] the notifier (NATS subject and webhooks); [`client`] the typed client.
//!
//! Each hub runs the actor: the endpoints on all of them, the evaluator and the notifier on the
//! one holding the lock (`<account>.alarms-leader` in `steward_leases`, TTL
//! [`LEADER_TTL`]); when that hub dies another takes over within the TTL and continues from
//! the durable consumers' acknowledged positions.

mod api;
pub mod client;
mod engine;
pub mod eval;
pub mod notify;
pub mod store;

use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_subjects::subject::alarm_leader_key;
use steward_subjects::Subjects;
use tracing::{info, warn};

pub use engine::{covers, feed_consumer, HostLabels};

use crate::lease::leader::LeaderLock;
use crate::results::catalog::SpecCatalog;

/// TTL of the evaluator's lock: how long a dead leader's successor waits at most.
pub const LEADER_TTL: Duration = Duration::from_secs(6);

/// What the alarms actor needs.
#[derive(Debug, Clone)]
pub struct AlarmsArgs {
    /// NATS connection.
    pub client: async_nats::Client,
    /// The account's subjects.
    pub subjects: Subjects,
    /// Webhook URLs every notifying transition is POSTed to.
    pub webhooks: Vec<String>,
}

/// Messages of the alarms actor.
#[derive(Debug)]
pub enum AlarmsMsg {
    /// A background task ended: restart through the supervisor.
    TaskEnded(&'static str),
}

/// State of the alarms actor.
pub struct AlarmsState {
    _service: async_nats::service::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// The alarms actor.
#[derive(Debug, Default)]
pub struct Alarms;

impl Actor for Alarms {
    type Msg = AlarmsMsg;
    type State = AlarmsState;
    type Arguments = AlarmsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AlarmsMsg>,
        args: AlarmsArgs,
    ) -> Result<AlarmsState, ActorProcessingErr> {
        let js = jetstream::new(args.client.clone());
        let store =
            store::AlarmStore::open(&js, &args.subjects).await.map_err(|e| ActorProcessingErr::from(e.to_string()))?;
        let (service, mut tasks) = api::serve(args.client.clone(), store)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("alarm service: {e}")))?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let me = myself.clone();
        tasks.push(tokio::spawn(async move {
            lead_forever(args, rx).await;
            let _ = me.cast(AlarmsMsg::TaskEnded("alarm evaluator"));
        }));
        Ok(AlarmsState { _service: service, tasks, shutdown })
    }

    async fn handle(
        &self,
        _me: ActorRef<AlarmsMsg>,
        msg: AlarmsMsg,
        _state: &mut AlarmsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AlarmsMsg::TaskEnded(what) => Err(crate::tasks::ended("alarms", what)),
        }
    }

    async fn post_stop(&self, _me: ActorRef<AlarmsMsg>, state: &mut AlarmsState) -> Result<(), ActorProcessingErr> {
        let _ = state.shutdown.send(true);
        for t in &state.tasks {
            t.abort();
        }
        Ok(())
    }
}

/// Takes the account's alarm lock whenever it is free and evaluates while holding it.
async fn lead_forever(args: AlarmsArgs, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let js = jetstream::new(args.client.clone());
    let instance = format!("alarms-{}", uuid::Uuid::new_v4().simple());
    let key = alarm_leader_key(args.subjects.account());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let lock = match LeaderLock::try_acquire_key(&js, key.clone(), &instance, LEADER_TTL).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(LEADER_TTL / 6) => continue,
                }
            }
            Err(e) => {
                warn!(error = %e, "alarm lock");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        info!(instance, "alarm evaluator leading");
        let stop = term(&args, &js, lock, &mut shutdown).await;
        match stop {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, "alarm evaluator stepped down");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One leadership term: follow specs and hosts, load, notify, evaluate.
async fn term(
    args: &AlarmsArgs,
    js: &jetstream::Context,
    mut lock: LeaderLock,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let guard = lock.guard();
    let mut aux: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let result = async {
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEADER_TTL / 3).await;
                if lock.refresh().await.is_err() {
                    return;
                }
            }
        });
        aux.push(refresher);
        let (catalog, t) =
            SpecCatalog::follow(&args.client, args.subjects.account()).await.map_err(|e| e.to_string())?;
        aux.push(t);
        let (hosts, t) = HostLabels::follow(&args.client, args.subjects.account()).await?;
        aux.push(t);
        let mut engine =
            engine::Engine::load(&args.client, &args.subjects, catalog, hosts).await.map_err(|e| e.to_string())?;
        let (js2, subjects, webhooks) = (js.clone(), args.subjects.clone(), args.webhooks.clone());
        aux.push(tokio::spawn(async move {
            if let Err(e) = notify::run(js2, subjects, webhooks).await {
                warn!(error = %e, "alarm notifier stopped");
            }
        }));
        engine::evaluate(js, &args.subjects, &mut engine, &guard, shutdown).await
    }
    .await;
    guard.revoke();
    for t in aux {
        t.abort();
    }
    result
}
