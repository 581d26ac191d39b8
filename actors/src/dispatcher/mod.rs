//! The dispatcher: runs on hosts. It answers `run.dispatch`, `run.status`, `run.cancel` and
//! `run.list` as the NATS micro service `steward-dispatcher` (queue group: any hub instance may
//! answer), keeps runs in the `steward_runs` bucket ([`store`]), delivers work orders to hosts
//! as durable host commands, follows each host's job events through a durable consumer
//! on `STEWARD_RUN_EVENTS` (the seed's "upload announce"), ends hosts whose deadline passed as
//! `timeout` ([`lifecycle`]), retries per the run's policy, and cancels on request.
//!
//! # The round trip
//! A run without an idempotency key writes its host records and run record together (one
//! round trip for all acknowledgements, host records first); a run of at most
//! 16 hosts publishes its work orders beside those writes, so the order's
//! JetStream write is not queued behind them. A quick host may then report before its host
//! record exists: its events are looked up again a few times 1 ms apart, then offered again
//! after 20 ms, while the run id (a UUIDv7) is younger than 10 s; a run whose records could
//! not be written takes its orders back (deletes them) before it answers the error. With a
//! key, the key is looked up, then claimed after the run record and before the host records,
//! so the same key twice gives the same run, and work orders leave only after the records.
//! Larger runs publish after the records too. The caller gets its answer once the records are
//! acknowledged. The dispatcher remembers each host record it wrote with its revision, so applying the
//! host's `last` event is one compare-and-set without a read. Per run and per event nothing
//! looks at other runs: the sweeper only visits runs this instance holds. When the event of a
//! run's last open host is applied, the run record is settled right there with one
//! compare-and-set against the revision this instance remembers (no read); settling on the
//! tick instead batched those writes and slowed the round trips in flight beside them.
//!
//! # Work delivery and its durability
//! Each attempt's work order is stored as a `run` command of the connector's durable host
//! commands (`host.command.<host>` on `STEWARD_HOST_COMMANDS`, `Nats-Msg-Id` per (run, host,
//! attempt), expiring at the attempt's deadline): a connected host's command consumer gets it
//! at once, a host that is away gets it when it comes back. The edge agent hands it to its run
//! worker and acknowledges it once the worker answered; the worker takes an order once per
//! (run, attempt). The dispatcher publishes the orders of a run all at once (see above for
//! when) and remembers which ones the stream acknowledged; an order whose publish failed
//! is published again after [`DispatcherArgs::redeliver_after`] (2 s) while its host is pending.
//! A restarted hub, or another instance holding the run, publishes the pending hosts' orders
//! again (stored once within the dedupe window, dropped by the host after it). A host away
//! past the deadline ends `timeout`, and its order expires unrun. A cancel deletes the stored
//! orders of hosts that have not started (by the sequence this instance remembers, or found
//! among the host's commands by command id), so a host that is away does not run a canceled
//! run when it comes back; a connected host also gets the stop order, which its worker
//! remembers, refusing a late order of that run.
//!
//! The edge's command consumer hands work orders to its run worker with one local request,
//! journals the ones the worker took (redb, while the job already runs) so a redelivery after
//! a restart does not run them again, and sends no command reply (the run's job events are
//! the answer).
//!
//! # Several hub instances
//! Every update is a compare-and-set, so instances never overwrite each other. The events
//! consumer is one durable shared by all instances with explicit acknowledgements: each event
//! is applied by the instance that pulled it, whichever dispatched the run. Count changes are
//! written into the run record as deltas (per run, at most once per tick); a run is declared
//! ended only when its host records say every host ended (from memory when this instance
//! knows, else read). An instance that applies an event of a run it does not hold adopts the
//! run (reads it from the store), so deadlines and retries are enforced wherever the events
//! land.

pub mod client;
pub mod lifecycle;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::service::ServiceExt;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sha2::{Digest, Sha256};
use steward_subjects::api::host::{CommandAction, HostCommand, HostRecord, COMMAND_ID_HEADER};
use steward_subjects::api::run::{
    EventKind, HostRun, HostRunView, RunAccepted, RunCancelRequest, RunCancelResult, RunEvent, RunList, RunListRequest,
    RunRecord, RunRequest, RunStatus, RunStatusRequest, RunView, StatusCounts, StopAck, StopOrder, WorkOrder,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::envelope::WireError;
use steward_subjects::rpc;
use steward_subjects::selector::Selector;
use steward_subjects::streams::{HOSTS_BUCKET, HOST_COMMANDS_STREAM, RUN_EVENTS_STREAM};
use steward_subjects::subject::{
    host_registry_filter, run_events_consumer, run_work_command_id, run_work_msg_id, service_name,
};
use steward_subjects::{HostId, Subjects, STEWARD_VERSION};
use tracing::{debug, info, warn};

use crate::signing::{hex, job_digest, JobSigner};
use store::{HostChange, KnownHost, RunStore, RunStoreError};

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
}

/// State of the dispatcher.
pub struct DispatcherState {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    service: Option<async_nats::service::Service>,
}

/// The dispatcher actor.
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
            redeliver_after_ms: millis(args.redeliver_after),
            active: Mutex::new(HashMap::new()),
            deltas: Mutex::new(HashMap::new()),
            adopt: Mutex::new(HashSet::new()),
        });
        core.load_active().await?;

        let service = args
            .client
            .service_builder()
            .description("steward dispatcher: runs on hosts")
            .metadata(std::collections::HashMap::from([("account".to_owned(), args.subjects.account().to_string())]))
            .start(service_name("dispatcher"), STEWARD_VERSION)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot register dispatcher service: {e}")))?;
        let mut endpoints = Vec::new();
        for (name, subject) in [
            ("dispatch", args.subjects.run_dispatch()),
            ("status", args.subjects.run_status()),
            ("cancel", args.subjects.run_cancel()),
            ("list", args.subjects.run_list()),
        ] {
            // Micro endpoints subscribe in the service's queue group: any hub instance answers.
            let ep = service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(|e| ActorProcessingErr::from(format!("cannot add dispatcher endpoint {name}: {e}")))?;
            endpoints.push(ep.map(move |r| (name, r)).boxed());
        }
        let mut requests = futures::stream::select_all(endpoints);
        let serve_core = core.clone();
        let me = myself.clone();
        let serve = tokio::spawn(async move {
            while let Some((name, req)) = requests.next().await {
                let core = serve_core.clone();
                tokio::spawn(async move { core.answer(name, req).await });
            }
            let _ = me.cast(DispatcherMsg::TaskEnded("service"));
        });

        let stream = js.get_stream(RUN_EVENTS_STREAM).await?;
        let durable = run_events_consumer(args.subjects.account());
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: args.subjects.run_event_all(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::New,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await?;
        let events_core = core.clone();
        let me = myself.clone();
        let events = tokio::spawn(async move {
            if let Err(e) = events_core.follow_events(consumer).await {
                warn!(error = %e, "dispatcher event consumer ended");
            }
            let _ = me.cast(DispatcherMsg::TaskEnded("events"));
        });

        let sweep_core = core.clone();
        let tick = args.tick;
        let sweeper = tokio::spawn(async move {
            let mut t = tokio::time::interval(tick);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                sweep_core.sweep().await;
            }
        });
        info!(account = %args.subjects.account(), signed = args.signer.is_some(), "dispatcher started");
        Ok(DispatcherState { tasks: vec![serve, events, sweeper], service: Some(service) })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        _state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::TaskEnded(name) => Err(ActorProcessingErr::from(format!("dispatcher task {name} ended"))),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        crate::stop_service("dispatcher", &state.tasks, state.service.take()).await;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn store_err(e: RunStoreError) -> WireError {
    match e {
        RunStoreError::Contended(_) => WireError::conflict(e.to_string()),
        _ => WireError::unavailable(e.to_string()),
    }
}

/// What the dispatcher keeps in memory about a run that has not ended (rebuilt from the store
/// on start, or adopted from the store when this instance applies an event of a run another
/// instance dispatched).
#[derive(Debug, Clone, Default)]
struct ActiveRun {
    cancel_requested: bool,
    /// Hosts of the run.
    hosts_total: u64,
    next_check_ms: u64,
    /// Earliest retry noted while a check was under way (the check must not push it later).
    wake_ms: Option<u64>,
    /// Host → the attempt whose work order the commands stream stored (durable from there on:
    /// the host's command consumer delivers it, now or when the host comes back) and its
    /// stream sequence (a cancel withdraws an order not taken yet).
    delivered: HashMap<String, (u32, u64)>,
    /// Host → the last record (and its revision) this instance read or wrote: updates
    /// compare-and-set against it without reading first; another writer makes the first try
    /// fail and the record is read again.
    hosts: HashMap<String, KnownHost>,
    /// The run record and its revision as this instance last wrote it (same use).
    record: Option<(RunRecord, u64)>,
    /// How many of `hosts` are in a terminal state.
    ended: usize,
}

impl ActiveRun {
    fn new(hosts: HashMap<String, KnownHost>) -> Self {
        let ended = hosts.values().filter(|k| k.0.status.is_terminal()).count();
        ActiveRun { hosts, ended, ..ActiveRun::default() }
    }

    /// Remembers a host record, keeping `ended` right.
    fn put_host(&mut self, k: KnownHost) {
        let now_ended = k.0.status.is_terminal();
        let was_ended = self.hosts.insert(k.0.host_id.clone(), k).is_some_and(|old| old.0.status.is_terminal());
        match (was_ended, now_ended) {
            (false, true) => self.ended += 1,
            (true, false) => self.ended = self.ended.saturating_sub(1),
            _ => {}
        }
    }

    /// Remembers `k` unless a newer revision of its record is remembered already.
    fn put_newer(&mut self, k: KnownHost) {
        if self.hosts.get(&k.0.host_id).is_none_or(|c| c.1 < k.1) {
            self.put_host(k);
        }
    }

    /// Whether every host of the run is known here and ended.
    fn all_ended(&self) -> bool {
        self.hosts.len() as u64 >= self.hosts_total && self.ended >= self.hosts.len()
    }
}

/// Host counts changes not yet written to the run record, per status (see [`StatusCounts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CountsDelta([i64; 6]);

impl CountsDelta {
    fn slot(s: RunStatus) -> usize {
        match s {
            RunStatus::Pending | RunStatus::Unknown => 0,
            RunStatus::Running => 1,
            RunStatus::Success => 2,
            RunStatus::Failure => 3,
            RunStatus::Timeout => 4,
            RunStatus::Canceled => 5,
        }
    }

    fn moved(&mut self, from: RunStatus, to: RunStatus) {
        self.0[Self::slot(from)] -= 1;
        self.0[Self::slot(to)] += 1;
    }

    fn merge(&mut self, other: CountsDelta) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn apply(&self, c: &mut StatusCounts) {
        let fields = [&mut c.pending, &mut c.running, &mut c.success, &mut c.failure, &mut c.timeout, &mut c.canceled];
        for (f, d) in fields.into_iter().zip(self.0) {
            *f = f.saturating_add_signed(d);
        }
    }
}

struct Core {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    store: RunStore,
    signer: Option<JobSigner>,
    redeliver_after_ms: u64,
    active: Mutex<HashMap<String, ActiveRun>>,
    /// Count changes of host transitions this instance wrote, flushed into run records by the
    /// sweeper (one compare-and-set per run per tick, whichever instance wrote the host).
    deltas: Mutex<HashMap<String, CountsDelta>>,
    /// Runs this instance applied events of without holding them (dispatched by another hub
    /// instance): the sweeper adopts them so deadlines and retries are enforced here too.
    adopt: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        lock(&self.active)
    }

    async fn load_active(&self) -> Result<(), RunStoreError> {
        let runs = self.store.runs().await?;
        let mut n = 0;
        for run in runs.into_iter().filter(|r| !r.status.is_terminal()) {
            self.hold(&run).await?;
            n += 1;
        }
        if n > 0 {
            info!(runs = n, "dispatcher resumed active runs");
        }
        Ok(())
    }

    /// Takes a run this instance did not dispatch (on start, or adopted): reads its hosts,
    /// checks it at once, and recounts it from its host records (count changes of a stopped
    /// instance may have been lost).
    async fn hold(&self, run: &RunRecord) -> Result<(), RunStoreError> {
        let hosts = self.store.hosts_with_revisions(&run.run_id).await?;
        let cache: HashMap<String, KnownHost> = hosts.iter().map(|k| (k.0.host_id.clone(), k.clone())).collect();
        self.active().entry(run.run_id.clone()).or_insert_with(|| ActiveRun {
            cancel_requested: run.cancel_requested,
            hosts_total: run.hosts_total,
            ..ActiveRun::new(cache)
        });
        self.settle_counted(&run.run_id, &hosts).await?;
        Ok(())
    }

    async fn answer(self: Arc<Self>, name: &'static str, req: async_nats::service::Request) {
        let enc = Encoding::from_headers(req.message.headers.as_ref());
        let sent = match name {
            "dispatch" => rpc::serve(&req, |r: RunRequest| self.dispatch(r)).await,
            "status" => rpc::serve(&req, |r: RunStatusRequest| self.status(r)).await,
            "cancel" => rpc::serve(&req, |r: RunCancelRequest| self.cancel(r)).await,
            "list" => rpc::serve(&req, |r: RunListRequest| self.list(r)).await,
            other => rpc::respond::<()>(&req, enc, Err(WireError::not_found(format!("no endpoint {other}")))).await,
        };
        if let Err(e) = sent {
            debug!(endpoint = name, error = %e, "dispatcher reply not sent");
        }
    }

    async fn targets(&self, req: &RunRequest, explicit: Vec<HostId>) -> Result<Vec<HostId>, WireError> {
        if !explicit.is_empty() {
            return Ok(explicit);
        }
        let selector: Selector = req.selector.parse().map_err(|e| WireError::invalid(format!("bad selector: {e}")))?;
        let records: Vec<(String, HostRecord)> =
            store::read_latest(&self.js, HOSTS_BUCKET, &host_registry_filter(self.subjects.account()))
                .await
                .map_err(store_err)?;
        let mut hosts: Vec<HostId> = records
            .into_iter()
            .filter(|(_, r)| r.online && selector.matches(&r.labels))
            .filter_map(|(_, r)| HostId::parse(&r.host_id).ok())
            .collect();
        hosts.sort();
        if hosts.is_empty() {
            return Err(WireError::invalid(format!("selector {:?} matches no connected host", req.selector)));
        }
        Ok(hosts)
    }

    async fn dispatch(self: &Arc<Self>, req: RunRequest) -> Result<RunAccepted, WireError> {
        let explicit = req.validate()?;
        let idem =
            (!req.idempotency_key.is_empty()).then(|| hex(&Sha256::digest(req.idempotency_key.as_bytes())[..16]));
        if let Some(d) = &idem {
            if let Some(existing) = self.store.lookup_idempotency(d).await.map_err(store_err)? {
                return self.existing(existing).await;
            }
        }
        let hosts = self.targets(&req, explicit).await?;
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let timeout = req.timeout();
        let attempts = u64::from(req.retry.attempts());
        let (signature, key_id) = match &self.signer {
            Some(s) => (s.sign(&req.job), s.key_id().to_owned()),
            None => (String::new(), String::new()),
        };
        let run = RunRecord {
            run_id: run_id.clone(),
            status: RunStatus::Pending,
            job_digest: hex(&job_digest(&req.job)),
            job: req.job.clone(),
            signature,
            key_id,
            labels: req.labels.clone(),
            selector: req.selector.clone(),
            idempotency_key: req.idempotency_key.clone(),
            timeout_ms: timeout,
            retry: req.retry,
            hosts_total: hosts.len() as u64,
            counts: StatusCounts { pending: hosts.len() as u64, ..StatusCounts::default() },
            cancel_requested: false,
            created_at: crate::now_rfc3339(),
            created_ms: now,
            deadline_ms: now + attempts * timeout + attempts.saturating_sub(1) * req.retry.backoff_ms,
            finished_at: None,
        };
        let records: Vec<HostRun> = hosts
            .iter()
            .map(|h| HostRun {
                run_id: run_id.clone(),
                host_id: h.to_string(),
                status: RunStatus::Pending,
                attempt: 1,
                max_attempts: req.retry.attempts(),
                backoff_ms: req.retry.backoff_ms,
                timeout_ms: timeout,
                not_before_ms: now,
                deadline_ms: now + timeout,
                ..HostRun::default()
            })
            .collect();
        let orders: Vec<WorkOrder> = records.iter().map(|h| self.order(&run, h)).collect();
        let mut run_rev = None;
        // The stream's acknowledgements of a small run's orders, awaited after the answer.
        let mut acks = None;
        let revisions = match &idem {
            // Without a key nothing can collide (the run id is new): the run and host records
            // are written together, one round trip for all, and a small run's work orders are
            // published beside them rather than after (one JetStream write less on the round
            // trip). A host may so report before its record is written: its events are offered
            // again until the record is there (see `follow_events`).
            None => {
                let inline = orders.len() <= INLINE_ORDERS;
                let early = if inline { orders.clone() } else { Vec::new() };
                // The host records go first: a quick host's events need them, not the run
                // record (the two are written one after the other by the bucket's stream).
                let (created, published) = futures::join!(
                    async {
                        futures::try_join!(self.store.create_hosts(&records), self.store.create_run_revision(&run))
                    },
                    publish_few(&self.js, &self.subjects, early),
                );
                let refused = match created {
                    Ok((revisions, Some(rev))) => {
                        run_rev = Some(rev);
                        Ok(revisions)
                    }
                    Ok((_, None)) => Err(WireError::unavailable(format!("run id {run_id} taken; try again"))),
                    Err(e) => Err(store_err(e)),
                };
                match refused {
                    Ok(revisions) => {
                        acks = inline.then_some(published);
                        revisions
                    }
                    Err(e) => {
                        // The records are not (all) there: take back the orders already sent.
                        self.take_back(published.await).await;
                        return Err(e);
                    }
                }
            }
            // With a key the key is claimed first, so a lost race leaves no host records.
            Some(d) => {
                self.store.create_run(&run).await.map_err(store_err)?;
                if let Some(existing) = self.store.claim_idempotency(d, &run_id).await.map_err(store_err)? {
                    if existing != run_id {
                        let _ = self.store.delete_run(&run_id).await;
                        return self.existing(existing).await;
                    }
                }
                self.store.create_hosts(&records).await.map_err(store_err)?
            }
        };
        self.active().insert(
            run_id.clone(),
            ActiveRun {
                hosts_total: run.hosts_total,
                next_check_ms: now + self.redeliver_after_ms.min(timeout),
                record: run_rev.map(|rev| (run.clone(), rev)),
                ..ActiveRun::new(records.iter().cloned().zip(revisions).map(|k| (k.0.host_id.clone(), k)).collect())
            },
        );
        if lock(&self.deltas).contains_key(&run_id) {
            // A host reported before the run was held here (its order went out beside the
            // record writes): catch up from the store so the run settles now, not at a tick.
            let (core, id) = (self.clone(), run_id.clone());
            tokio::spawn(async move { core.catch_up(&id).await });
        }
        info!(run_id = %run_id, hosts = hosts.len(), kind = req.job.kind.as_str(), "run dispatched");
        // The stream's acknowledgements are awaited after the reply; a large run publishes
        // after it too.
        let core = self.clone();
        let id = run_id.clone();
        if let Some(acks) = acks {
            tokio::spawn(async move {
                let delivered = acks.await;
                core.mark_delivered(&id, delivered);
            });
        } else if orders.len() <= INLINE_ORDERS {
            let acks = publish_few(&self.js, &self.subjects, orders).await;
            tokio::spawn(async move {
                let delivered = acks.await;
                core.mark_delivered(&id, delivered);
            });
        } else {
            tokio::spawn(async move {
                let delivered = deliver_all(core.js.clone(), core.subjects.clone(), orders).await;
                core.mark_delivered(&id, delivered);
            });
        }
        Ok(RunAccepted { run_id, existing: false, hosts: hosts.iter().map(ToString::to_string).collect() })
    }

    fn mark_delivered(&self, run_id: &str, delivered: Vec<Stored>) {
        if let Some(a) = self.active().get_mut(run_id) {
            for ((host, attempt), seq) in delivered {
                a.delivered.insert(host, (attempt, seq));
            }
        }
    }

    /// Deletes the stored work orders of hosts that have not started (a cancel): a host that
    /// is away must not find them when it comes back. The sequence is known when this
    /// instance stored the order; otherwise the host's commands are looked through for the
    /// order's command id. An order the host already took is gone from its reach anyway (the
    /// stop order covers it).
    async fn withdraw_work(&self, pending: &[HostRun]) {
        if pending.is_empty() {
            return;
        }
        let stream = match self.js.get_stream(HOST_COMMANDS_STREAM).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "work orders not withdrawn: commands stream unavailable");
                return;
            }
        };
        for h in pending {
            let Ok(host) = HostId::parse(&h.host_id) else { continue };
            let known = self
                .active()
                .get(&h.run_id)
                .and_then(|a| a.delivered.get(&h.host_id).copied())
                .filter(|(attempt, _)| *attempt == h.attempt)
                .map(|(_, seq)| seq);
            let seq = match known {
                Some(seq) => Some(seq),
                None => find_work_command(&stream, &self.subjects.host_command(&host), &h.run_id, h.attempt).await,
            };
            if let Some(seq) = seq {
                match stream.delete_message(seq).await {
                    Ok(_) => debug!(run_id = %h.run_id, host_id = %h.host_id, seq, "work order withdrawn"),
                    Err(e) => {
                        debug!(run_id = %h.run_id, host_id = %h.host_id, error = %e, "work order not withdrawn (taken or gone)")
                    }
                }
            }
        }
    }

    /// Reads a held run's host records afresh, keeps the newer ones and settles the run when
    /// every host ended.
    async fn catch_up(self: &Arc<Self>, run_id: &str) {
        match self.store.hosts_with_revisions(run_id).await {
            Ok(hosts) => {
                if let Some(a) = self.active().get_mut(run_id) {
                    hosts.into_iter().for_each(|k| a.put_newer(k));
                }
                self.settle_if_ended(run_id);
            }
            Err(e) => debug!(run_id = %run_id, error = %e, "host records not read; the run's next check settles it"),
        }
    }

    /// Deletes work orders this instance stored for a run that was not accepted after all (its
    /// records could not be written). A host that took one meanwhile finds no record for its
    /// events; they are dropped.
    async fn take_back(&self, stored: Vec<Stored>) {
        if stored.is_empty() {
            return;
        }
        match self.js.get_stream(HOST_COMMANDS_STREAM).await {
            Ok(stream) => {
                for ((host, _), seq) in stored {
                    if let Err(e) = stream.delete_message(seq).await {
                        debug!(host_id = %host, seq, error = %e, "work order of a refused run not taken back");
                    }
                }
            }
            Err(e) => warn!(error = %e, "work orders of a refused run not taken back: commands stream unavailable"),
        }
    }

    async fn existing(&self, run_id: String) -> Result<RunAccepted, WireError> {
        let hosts = self.store.hosts(&run_id).await.map_err(store_err)?;
        Ok(RunAccepted { run_id, existing: true, hosts: hosts.into_iter().map(|h| h.host_id).collect() })
    }

    fn order(&self, run: &RunRecord, h: &HostRun) -> WorkOrder {
        WorkOrder {
            run_id: run.run_id.clone(),
            host_id: h.host_id.clone(),
            attempt: h.attempt,
            job: run.job.clone(),
            signature: run.signature.clone(),
            key_id: run.key_id.clone(),
            timeout_ms: h.deadline_ms.saturating_sub(now_ms().max(h.not_before_ms)).max(1),
            labels: run.labels.clone(),
        }
    }

    async fn status(&self, req: RunStatusRequest) -> Result<RunView, WireError> {
        let run = self
            .store
            .run(&req.run_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| WireError::not_found(format!("no run {:?}", req.run_id)))?;
        let mut hosts = self.store.hosts(&run.run_id).await.map_err(store_err)?;
        let limit = if req.host_limit == 0 { 500 } else { req.host_limit as usize };
        let truncated = hosts.len() > limit;
        hosts.truncate(limit);
        let max_events = if req.max_events == 0 { 200 } else { req.max_events as usize };
        let mut views = Vec::with_capacity(hosts.len());
        for (i, h) in hosts.into_iter().enumerate() {
            let events = if req.events && i < 100 {
                match HostId::parse(&h.host_id) {
                    Ok(host) => self
                        .store
                        .events(&host, &h.run_id, h.attempt, h.first_event_stream_seq, req.after_seq, max_events)
                        .await
                        .map_err(store_err)?,
                    Err(_) => Vec::new(),
                }
            } else {
                Vec::new()
            };
            views.push(HostRunView { run: h, events });
        }
        Ok(RunView { run, hosts: views, hosts_truncated: truncated })
    }

    async fn list(&self, req: RunListRequest) -> Result<RunList, WireError> {
        let mut runs = self.store.runs().await.map_err(store_err)?;
        runs.retain(|r| {
            req.status.is_none_or(|s| r.status == s) && req.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
        });
        runs.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.run_id.cmp(&a.run_id)));
        runs.truncate(if req.limit == 0 { 100 } else { req.limit as usize });
        for r in &mut runs {
            r.job.playbook = String::new();
        }
        Ok(RunList { runs })
    }

    async fn cancel(&self, req: RunCancelRequest) -> Result<RunCancelResult, WireError> {
        let run = self
            .store
            .run(&req.run_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| WireError::not_found(format!("no run {:?}", req.run_id)))?;
        if run.status.is_terminal() {
            return Err(WireError::conflict(format!("run {} already finished: {}", run.run_id, run.status)));
        }
        self.store
            .update_run(&run.run_id, |r| {
                let changed = !r.cancel_requested;
                r.cancel_requested = true;
                changed
            })
            .await
            .map_err(store_err)?;
        if let Some(a) = self.active().get_mut(&run.run_id) {
            a.cancel_requested = true;
        }
        let hosts = self.store.hosts(&run.run_id).await.map_err(store_err)?;
        let open: Vec<HostRun> = hosts.into_iter().filter(|h| !h.status.is_terminal()).collect();
        let pending: Vec<HostRun> = open.iter().filter(|h| h.status == RunStatus::Pending).cloned().collect();
        self.withdraw_work(&pending).await;
        let stops = futures::stream::iter(
            open.into_iter()
                .map(|h| {
                    let client = self.client.clone();
                    let subjects = self.subjects.clone();
                    async move {
                        let ack = match HostId::parse(&h.host_id) {
                            Ok(host) => {
                                let order = StopOrder {
                                    run_id: h.run_id.clone(),
                                    host_id: h.host_id.clone(),
                                    status: RunStatus::Canceled,
                                    reason: "canceled on request".into(),
                                };
                                rpc::request::<_, StopAck>(
                                    &client,
                                    subjects.run_stop(&host),
                                    &order,
                                    Duration::from_secs(3),
                                )
                                .await
                                .ok()
                            }
                            Err(_) => None,
                        };
                        (h, ack)
                    }
                    .boxed()
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
        let mut result = RunCancelResult { run_id: run.run_id.clone(), ..RunCancelResult::default() };
        for (h, ack) in stops {
            let reason = match &ack {
                Some(StopAck { finished: Some(_), .. }) => continue,
                Some(StopAck { stopped: true, .. }) => {
                    result.confirmed.push(h.host_id.clone());
                    "canceled on request; host confirmed its process group was killed"
                }
                Some(_) if h.status == RunStatus::Pending => {
                    result.canceled_pending.push(h.host_id.clone());
                    "canceled on request before it started"
                }
                Some(_) => {
                    result.confirmed.push(h.host_id.clone());
                    "canceled on request; host reports nothing running"
                }
                None if h.status == RunStatus::Pending => {
                    result.canceled_pending.push(h.host_id.clone());
                    "canceled on request before it started (host unreachable)"
                }
                None => {
                    result.unconfirmed.push(h.host_id.clone());
                    "canceled on request; host did not confirm"
                }
            };
            if let Ok(host) = HostId::parse(&h.host_id) {
                let now = crate::now_rfc3339();
                let (ms, reason) = (now_ms(), reason.to_owned());
                if let Err(e) = self.update_host(&h.run_id, &host, |x| lifecycle::cancel(x, &reason, ms, &now)).await {
                    warn!(run_id = %h.run_id, host_id = %h.host_id, error = %e, "cancel not recorded");
                }
            }
        }
        let hosts = self.store.hosts_with_revisions(&run.run_id).await.map_err(store_err)?;
        let run = self.settle_counted(&run.run_id, &hosts).await.map_err(store_err)?;
        result.status = run.map_or(RunStatus::Canceled, |r| r.status);
        info!(run_id = %result.run_id, status = %result.status, "run canceled");
        Ok(result)
    }

    /// Updates one host record (compare-and-set against the remembered record when there is
    /// one) and notes the transition: the remembered record, the count change for the run
    /// record, an earlier check for a retry, adoption of a run this instance does not hold.
    async fn update_host<F>(&self, run_id: &str, host: &HostId, f: F) -> Result<Option<HostChange>, RunStoreError>
    where
        F: FnMut(&mut HostRun) -> bool,
    {
        let known = self.active().get(run_id).and_then(|a| a.hosts.get(host.as_str()).cloned());
        let change = self.store.update_host(run_id, host, known, f).await?;
        if let Some(c) = &change {
            self.note(run_id, c);
        }
        Ok(change)
    }

    fn note(&self, run_id: &str, c: &HostChange) {
        let (before, after) = (&c.before, &c.after);
        if before.status != after.status {
            lock(&self.deltas).entry(run_id.to_owned()).or_default().moved(before.status, after.status);
        }
        let held = {
            let mut active = self.active();
            match active.get_mut(run_id) {
                Some(a) => {
                    a.put_newer((after.clone(), c.revision));
                    let retry = after.status == RunStatus::Pending
                        && (before.status != RunStatus::Pending || before.attempt != after.attempt);
                    if retry {
                        a.next_check_ms = a.next_check_ms.min(after.not_before_ms);
                        a.wake_ms = Some(a.wake_ms.map_or(after.not_before_ms, |w| w.min(after.not_before_ms)));
                    }
                    true
                }
                None => false,
            }
        };
        if !held && !after.status.is_terminal() {
            lock(&self.adopt).insert(run_id.to_owned());
        }
    }

    /// Writes the count changes noted for a run into its run record. A run whose counts say
    /// every host ended is only declared ended once its host records confirm it (from memory
    /// when this instance knows every host ended, else read from the store).
    async fn flush(&self, run_id: &str, delta: CountsDelta) -> Result<(), RunStoreError> {
        // This instance knows every host ended (terminal states never change): one write.
        let ended_here: Option<Vec<KnownHost>> =
            self.active().get(run_id).and_then(|a| a.all_ended().then(|| a.hosts.values().cloned().collect()));
        if let Some(hosts) = ended_here {
            self.settle_counted(run_id, &hosts).await?;
            return Ok(());
        }
        let mut ended = false;
        let run = self
            .store
            .update_run(run_id, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                let mut counts = r.counts;
                delta.apply(&mut counts);
                let status = counts.aggregate(r.hosts_total, r.cancel_requested);
                ended = status.is_terminal();
                let status = if ended { RunStatus::Running } else { status };
                let changed = r.counts != counts || r.status != status;
                r.counts = counts;
                r.status = status;
                changed
            })
            .await?;
        let Some(run) = run else {
            if dispatched_within(run_id, RECORD_WAIT) {
                // A host reported while the run record was still being written (its order
                // went out beside the record writes): keep the counts for the next tick.
                lock(&self.deltas).entry(run_id.to_owned()).or_default().merge(delta);
            } else {
                self.active().remove(run_id);
            }
            return Ok(());
        };
        if run.status.is_terminal() {
            self.forget(run_id);
        } else if ended {
            let hosts = self.store.hosts_with_revisions(run_id).await?;
            self.settle_counted(run_id, &hosts).await?;
        }
        Ok(())
    }

    /// Stores the counts of `hosts` (every host record of the run) as the run's counts and
    /// status; ends the run when every host ended. Count changes noted here so far are
    /// included and dropped.
    /// Settles a run at once when this instance knows every host ended (one write against the
    /// remembered run record), instead of at the next tick: the ticks' batches of run-record
    /// writes slowed the round trips of the runs in flight beside them. A failed write is
    /// retried by the run's next check.
    fn settle_if_ended(self: &Arc<Self>, run_id: &str) {
        let hosts: Option<Vec<KnownHost>> =
            self.active().get(run_id).and_then(|a| a.all_ended().then(|| a.hosts.values().cloned().collect()));
        let Some(hosts) = hosts else { return };
        let (core, run_id) = (self.clone(), run_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = core.settle_counted(&run_id, &hosts).await {
                debug!(run_id = %run_id, error = %e, "ended run not settled; its next check retries");
            }
        });
    }

    async fn settle_counted(&self, run_id: &str, hosts: &[KnownHost]) -> Result<Option<RunRecord>, RunStoreError> {
        let mut counts = StatusCounts::default();
        for (h, _) in hosts {
            counts.add(h.status);
        }
        lock(&self.deltas).remove(run_id);
        let now = crate::now_rfc3339();
        let known = self.active().get(run_id).and_then(|a| a.record.clone());
        let updated = self
            .store
            .update_run_known(run_id, known, |r| {
                if r.status.is_terminal() {
                    return false;
                }
                let status = counts.aggregate(r.hosts_total, r.cancel_requested);
                let changed = r.counts != counts || r.status != status;
                r.counts = counts;
                r.status = status;
                if status.is_terminal() {
                    r.finished_at = Some(now.clone());
                }
                changed
            })
            .await?;
        if let (Some(u), Some(a)) = (&updated, self.active().get_mut(run_id)) {
            a.record = Some(u.clone());
        }
        let run = updated.map(|u| u.0);
        match &run {
            Some(r) if r.status.is_terminal() => {
                if self.forget(run_id) {
                    info!(run_id = %run_id, status = %r.status, "run ended");
                }
            }
            Some(_) => {}
            None => {
                self.forget(run_id);
            }
        }
        Ok(run)
    }

    /// Drops what this instance holds of an ended run; whether it held it.
    fn forget(&self, run_id: &str) -> bool {
        lock(&self.deltas).remove(run_id);
        self.active().remove(run_id).is_some()
    }

    async fn follow_events(
        self: &Arc<Self>,
        consumer: consumer::Consumer<consumer::pull::Config>,
    ) -> Result<(), String> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut chunks = messages.ready_chunks(2000);
        while let Some(chunk) = chunks.next().await {
            let mut acks = Vec::with_capacity(chunk.len());
            let mut by_host: BTreeMap<(String, String), Vec<(RunEvent, u64)>> = BTreeMap::new();
            for m in chunk {
                let m = m.map_err(|e| e.to_string())?;
                let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                if let Ok(ev) = codec::decode::<RunEvent>(Encoding::MsgPack, &m.payload) {
                    let matters =
                        ev.seq == 1 || matches!(ev.kind, EventKind::Start | EventKind::Last | EventKind::Artifact);
                    // A host may publish on its own event subject only: an event naming another
                    // host is not that host's word.
                    let own = m.subject.as_str().rsplit('.').next() == Some(ev.host_id.as_str());
                    if matters && !own {
                        warn!(subject = %m.subject, run_id = %ev.run_id, host_id = %ev.host_id, "run event names another host than its subject; ignored");
                    }
                    if matters && own {
                        let key = (ev.run_id.clone(), ev.host_id.clone());
                        by_host.entry(key.clone()).or_default().push((ev, stream_seq));
                        acks.push((Some(key), m));
                        continue;
                    }
                }
                acks.push((None, m));
            }
            let updates = futures::stream::iter(
                by_host
                    .into_iter()
                    .map(|((run_id, host), evs)| {
                        async move {
                            let Ok(host) = HostId::parse(&host) else { return None };
                            let now = crate::now_rfc3339();
                            let ms = now_ms();
                            let apply = |h: &mut HostRun| {
                                let mut changed = false;
                                for (ev, seq) in &evs {
                                    changed |= lifecycle::apply_event(h, ev, *seq, ms, &now);
                                }
                                changed
                            };
                            let mut r = self.update_host(&run_id, &host, apply).await;
                            // A young run's record may be a write away (its orders went out
                            // beside the record writes): look again a few times before the
                            // events are offered again later.
                            for _ in 0..RECORD_LOOKS {
                                if !matches!(r, Ok(None)) || !dispatched_within(&run_id, RECORD_WAIT) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                r = self.update_host(&run_id, &host, apply).await;
                            }
                            match r {
                                Ok(Some(c)) => {
                                    if c.after.status.is_terminal() {
                                        self.settle_if_ended(&run_id);
                                    }
                                    None
                                }
                                Ok(None) if dispatched_within(&run_id, RECORD_WAIT) => {
                                    // Its work order was published beside the records (see
                                    // `dispatch`): the record is still being written.
                                    debug!(run_id = %run_id, host_id = %host, "events before their host record; offered again");
                                    Some((run_id, host.to_string()))
                                }
                                Ok(None) => {
                                    debug!(run_id = %run_id, host_id = %host, "events of an unknown run ignored");
                                    None
                                }
                                Err(e) => {
                                    warn!(run_id = %run_id, host_id = %host, error = %e, "run events not applied");
                                    None
                                }
                            }
                        }
                        .boxed()
                    })
                    .collect::<Vec<_>>(),
            )
            .buffer_unordered(256)
            .filter_map(|again| async move { again })
            .collect::<HashSet<(String, String)>>();
            let again = updates.await;
            // Explicit acknowledgements: the consumer is shared by every hub instance, so one
            // instance must not acknowledge what another is still applying.
            for (key, m) in acks {
                let result = if key.is_some_and(|k| again.contains(&k)) {
                    // Backing off per delivery: a record that never comes (a refused run whose
                    // order a host took anyway) costs a few redeliveries, not hundreds.
                    let delivered = m.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 7);
                    let delay = RECORD_RETRY * 2u32.pow(u32::try_from(delivered - 1).unwrap_or(0));
                    m.ack_with(jetstream::AckKind::Nak(Some(delay))).await
                } else {
                    m.ack().await
                };
                if let Err(e) = result {
                    warn!(error = %e, "run event not acknowledged");
                }
            }
        }
        Err("run events stream ended".into())
    }

    async fn sweep(&self) {
        let adopt: Vec<String> = lock(&self.adopt).drain().collect();
        for run_id in adopt {
            if self.active().contains_key(&run_id) {
                continue;
            }
            match self.store.run(&run_id).await {
                Ok(Some(run)) if !run.status.is_terminal() => {
                    debug!(run_id = %run_id, "adopting a run dispatched by another instance");
                    if let Err(e) = self.hold(&run).await {
                        warn!(run_id = %run_id, error = %e, "run not adopted");
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(run_id = %run_id, error = %e, "run not adopted"),
            }
        }
        let deltas: Vec<(String, CountsDelta)> = lock(&self.deltas).drain().collect();
        // One run after the other: a burst of run-record writes every tick would delay the
        // round trips of runs in flight (measured: p99 up by half).
        for (run_id, delta) in deltas {
            if delta == CountsDelta::default() {
                continue;
            }
            if let Err(e) = self.flush(&run_id, delta).await {
                warn!(run_id = %run_id, error = %e, "run counts not written; retrying");
                lock(&self.deltas).entry(run_id).or_default().merge(delta);
            }
        }
        let now = now_ms();
        let due: Vec<String> =
            self.active().iter().filter(|(_, a)| a.next_check_ms <= now).map(|(id, _)| id.clone()).collect();
        for run_id in due {
            if let Err(e) = self.check(&run_id).await {
                warn!(run_id = %run_id, error = %e, "run check failed");
            }
        }
    }

    /// Deadlines, retries and re-deliveries of one run.
    async fn check(&self, run_id: &str) -> Result<(), RunStoreError> {
        let Some(run) = self.store.run(run_id).await? else {
            self.forget(run_id);
            return Ok(());
        };
        if run.status.is_terminal() {
            self.forget(run_id);
            return Ok(());
        }
        let now = now_ms();
        let known = {
            let mut active = self.active();
            let Some(a) = active.get_mut(run_id) else { return Ok(()) };
            a.cancel_requested |= run.cancel_requested;
            a.wake_ms = None;
            // A pending host whose work order is not stored yet may have been started through
            // another instance: read the records afresh before sending anything.
            let due = |h: &HostRun| {
                h.status == RunStatus::Pending
                    && now >= h.not_before_ms
                    && a.delivered.get(&h.host_id).is_none_or(|(n, _)| *n != h.attempt)
            };
            let fresh_enough = a.hosts.len() as u64 >= run.hosts_total
                && (run.cancel_requested || !a.hosts.values().any(|k| due(&k.0)));
            fresh_enough.then(|| a.hosts.values().map(|k| k.0.clone()).collect())
        };
        let hosts: Vec<HostRun> = match known {
            Some(h) => h,
            None => {
                let hosts = self.store.hosts_with_revisions(run_id).await?;
                if let Some(a) = self.active().get_mut(run_id) {
                    hosts.iter().for_each(|k| a.put_newer(k.clone()));
                }
                hosts.into_iter().map(|k| k.0).collect()
            }
        };
        let mut next = u64::MAX;
        let mut to_deliver = Vec::new();
        let mut open = 0usize;
        for h in hosts {
            if h.status.is_terminal() {
                continue;
            }
            let Ok(host) = HostId::parse(&h.host_id) else { continue };
            if now >= h.deadline_ms {
                let stamp = crate::now_rfc3339();
                if let Some(c) = self.update_host(run_id, &host, |x| lifecycle::expire(x, now, &stamp)).await? {
                    if c.before.status == RunStatus::Running && c.after.status != RunStatus::Running {
                        let order = StopOrder {
                            run_id: run_id.to_owned(),
                            host_id: h.host_id.clone(),
                            status: RunStatus::Timeout,
                            reason: "deadline passed".into(),
                        };
                        let (client, subject) = (self.client.clone(), self.subjects.run_stop(&host));
                        tokio::spawn(async move {
                            let _ = rpc::request::<_, StopAck>(&client, subject, &order, Duration::from_secs(2)).await;
                        });
                    }
                    if !c.after.status.is_terminal() {
                        open += 1;
                        next = next.min(c.after.not_before_ms).min(c.after.deadline_ms);
                    }
                }
                continue;
            }
            open += 1;
            next = next.min(h.deadline_ms);
            if h.status == RunStatus::Pending && !run.cancel_requested {
                if now < h.not_before_ms {
                    next = next.min(h.not_before_ms);
                    continue;
                }
                let stored = self.active().get(run_id).and_then(|a| a.delivered.get(&h.host_id).map(|d| d.0));
                if stored != Some(h.attempt) {
                    // Not stored yet (a failed publish, a new attempt, or a run picked up after
                    // a restart: publishing again is harmless, the stream and the host both
                    // drop duplicates).
                    to_deliver.push(self.order(&run, &h));
                    next = next.min(now + self.redeliver_after_ms);
                }
            }
        }
        if !to_deliver.is_empty() {
            debug!(run_id = %run_id, hosts = to_deliver.len(), "delivering work orders");
            let delivered = deliver_all(self.js.clone(), self.subjects.clone(), to_deliver).await;
            self.mark_delivered(run_id, delivered);
        }
        if open == 0 {
            // Every host ended as far as this instance knows: make sure the run record says so
            // (count changes of another instance may never come).
            let hosts = self.store.hosts_with_revisions(run_id).await?;
            self.settle_counted(run_id, &hosts).await?;
        }
        if let Some(a) = self.active().get_mut(run_id) {
            let next = if next == u64::MAX { now + self.redeliver_after_ms } else { next };
            a.next_check_ms = a.wake_ms.take().map_or(next, |w| w.min(next));
        }
        Ok(())
    }
}

/// How long after its dispatch a run's events may arrive before its host records exist (its
/// work orders are published beside the record writes); such events are offered again.
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// How often, 1 ms apart, events that arrived before their host record look for it again
/// before they are offered again after [`RECORD_RETRY`].
const RECORD_LOOKS: usize = 5;

/// The first redelivery delay of events that arrived before their host record (doubling per
/// delivery, up to 64 × this).
const RECORD_RETRY: Duration = Duration::from_millis(20);

/// Whether `run_id` (a UUIDv7 of its dispatch time) was dispatched within `within` of now; a
/// run id of another form never was.
fn dispatched_within(run_id: &str, within: Duration) -> bool {
    let Some((secs, nanos)) = uuid::Uuid::try_parse(run_id).ok().and_then(|u| u.get_timestamp()).map(|t| t.to_unix())
    else {
        return false;
    };
    let at = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    std::time::SystemTime::now().duration_since(at).map_or(true, |age| age <= within)
}

/// Work orders of at most this many hosts are published before the caller's answer, from the
/// request's own task (one task hop less on a small run's round trip); larger runs publish on
/// a task of their own after the answer.
const INLINE_ORDERS: usize = 16;

/// One work order as its `run` host command: the (host, attempt) it delivers, subject, headers
/// (`Nats-Msg-Id` per run, host and attempt) and payload; it expires at the attempt's deadline.
fn work_command(
    subjects: &Subjects,
    o: WorkOrder,
    now: time::OffsetDateTime,
) -> Option<((String, u32), String, async_nats::HeaderMap, bytes::Bytes)> {
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let host = HostId::parse(&o.host_id).ok()?;
    let key = (o.host_id.clone(), o.attempt);
    let command_id = run_work_command_id(&o.run_id, o.attempt);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, run_work_msg_id(&o.run_id, &host, o.attempt).as_str());
    headers.insert(COMMAND_ID_HEADER, command_id.as_str());
    let expires = now + time::Duration::milliseconds(i64::try_from(o.timeout_ms).unwrap_or(i64::MAX / 2));
    let cmd = HostCommand {
        command_id,
        host_id: o.host_id.clone(),
        action: CommandAction::Run,
        worker: String::new(),
        issued_at: fmt(now),
        expires_at: Some(fmt(expires)),
        work: Some(o),
    };
    match codec::encode(Encoding::MsgPack, &cmd) {
        Ok(payload) => Some((key, subjects.host_command(&host), headers, payload)),
        Err(e) => {
            warn!(host_id = %key.0, error = %e, "work order not encoded");
            None
        }
    }
}

/// A work order the commands stream stored: (host, attempt) and its stream sequence.
type Stored = ((String, u32), u64);

/// Waits for the commands stream's acknowledgement of one published work order (a duplicate's
/// acknowledgement carries the sequence of the copy stored first).
async fn stored(
    key: (String, u32),
    published: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
) -> Option<Stored> {
    let result = match published {
        Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(seq) => Some((key, seq)),
        Err(e) => {
            debug!(host_id = %key.0, error = %e, "work order not stored");
            None
        }
    }
}

/// The stream sequence of the work order of (run, attempt) among one host's commands, if it
/// is still stored.
async fn find_work_command(
    stream: &jetstream::stream::Stream,
    subject: &str,
    run_id: &str,
    attempt: u32,
) -> Option<u64> {
    let want = run_work_command_id(run_id, attempt);
    let mut next = 1;
    // A host's commands of the stream's retention (a few per run at most).
    loop {
        let msg = stream.direct_get_next_for_subject(subject, Some(next)).await.ok()?;
        let id = msg.headers.get(COMMAND_ID_HEADER).map(|v| v.as_str().to_owned());
        if id.as_deref() == Some(want.as_str()) {
            return Some(msg.sequence);
        }
        next = msg.sequence + 1;
    }
}

/// Publishes a few work orders at once without waiting for the stream; the returned future
/// waits for the acknowledgements and answers the orders stored.
async fn publish_few(
    js: &jetstream::Context,
    subjects: &Subjects,
    orders: Vec<WorkOrder>,
) -> impl std::future::Future<Output = Vec<Stored>> + Send + 'static {
    let now = time::OffsetDateTime::now_utc();
    let mut pending = Vec::with_capacity(orders.len());
    for o in orders {
        if let Some((key, subject, headers, payload)) = work_command(subjects, o, now) {
            pending.push((key, js.publish_with_headers(subject, headers, payload).await));
        }
    }
    async move {
        let mut out = Vec::with_capacity(pending.len());
        for (key, published) in pending {
            out.extend(stored(key, published).await);
        }
        out
    }
}

/// Stores work orders as `run` host commands (durable delivery through the host's command
/// consumer), many publishes in flight; returns the (host, attempt) pairs whose order the
/// commands stream acknowledged, with the stream sequences. An order is stored once per (run, host, attempt) within the
/// stream's dedupe window, however often it is published.
async fn deliver_all(js: jetstream::Context, subjects: Subjects, orders: Vec<WorkOrder>) -> Vec<Stored> {
    let now = time::OffsetDateTime::now_utc();
    // Within the client's limit of unacknowledged publishes (5,000).
    futures::stream::iter(orders.into_iter().filter_map(|o| work_command(&subjects, o, now)).map(
        |(key, subject, headers, payload)| {
            let js = js.clone();
            async move { stored(key, js.publish_with_headers(subject, headers, payload).await).await }
        },
    ))
    .buffer_unordered(2048)
    .filter_map(|x| async move { x })
    .collect()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_age_comes_from_the_run_id() {
        let fresh = uuid::Uuid::now_v7().simple().to_string();
        assert!(dispatched_within(&fresh, RECORD_WAIT));
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        let since = hour_ago.duration_since(std::time::UNIX_EPOCH).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        let old = uuid::Uuid::new_v7(ts).simple().to_string();
        assert!(!dispatched_within(&old, RECORD_WAIT));
        assert!(dispatched_within(&old, Duration::from_secs(7200)));
        // Not a v7 id, or not an id at all: never young.
        assert!(!dispatched_within(&uuid::Uuid::new_v4().simple().to_string(), RECORD_WAIT));
        assert!(!dispatched_within("run-1", RECORD_WAIT));
    }
}
