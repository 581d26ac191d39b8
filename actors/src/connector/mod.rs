//! The connector: the hub side of host presence and host commands.
//!
//! Every connector instance subscribes to all heartbeats of its account with a plain
//! subscription (no queue group: each instance must see every heartbeat to judge presence). A
//! heartbeat is decoded and validated on the subscription task; a malformed one is dropped and
//! counted and never reaches the actor. A host is marked offline when no heartbeat came for 1.5
//! of its announced intervals (checked every `sweep_every`, so within two intervals), and at
//! once on the `leaving` heartbeat of a clean shutdown. Every transition is an event (`online`,
//! `offline`, `changed`) on the `STEWARD_HOST_EVENTS` stream.
//!
//! Layout: this file is the presence actor ([`ConnectorMsg`], [`ConnectorArgs`],
//! [`ConnectorState`], [`Connector`], the typed [`ConnectorHandle`]); `registry` writes the host
//! records and events to JetStream off the actor; `api` serves the `steward-connector` micro
//! service; [`client`] is its typed client ([`client::ConnectorClient`]).

mod api;
pub mod client;
mod registry;
mod stall;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::api::host::{ConnectorStats, Heartbeat, HostEvent, HostEventKind, HostRecord};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::selector::Selector;
use steward_subjects::streams::HOSTS_BUCKET;
use steward_subjects::subject::ParsedSubject;
use steward_subjects::{HostId, Subjects};
use tracing::{debug, info, warn};

use self::registry::Write;
use crate::tasks::TaskSet;
use crate::ActorsError;

/// Shortest heartbeat interval the connector honours (shorter announcements are raised to it).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest heartbeat interval the connector honours.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Interval assumed when a heartbeat announces none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest `wait_ms` of `host.send`.
pub const MAX_SEND_WAIT: Duration = Duration::from_secs(60);
/// Longest `timeout_ms` of `host.ensure_worker`.
pub const MAX_ENSURE_TIMEOUT: Duration = Duration::from_secs(120);
/// `timeout_ms` of `host.ensure_worker` when none is given.
pub const DEFAULT_ENSURE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the last heartbeat a host is declared offline, as a fraction of its
/// interval: 3/2, so with the sweep period added it is offline within two intervals.
fn offline_after(interval: Duration) -> Duration {
    interval.saturating_mul(3) / 2
}

/// Arguments of the connector.
#[derive(Debug, Clone)]
pub struct ConnectorArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// How often presence is checked.
    pub sweep_every: Duration,
    /// Longest time an online host's registry record goes without a refresh of `last_seen`.
    pub refresh_every: Duration,
}

impl ConnectorArgs {
    /// Defaults: sweep every 250 ms, refresh every 60 s.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        ConnectorArgs {
            client,
            subjects,
            sweep_every: Duration::from_millis(250),
            refresh_every: Duration::from_secs(60),
        }
    }
}

/// Messages of the connector.
pub enum ConnectorMsg {
    /// A validated heartbeat.
    Heartbeat(Box<Heartbeat>, HostId),
    /// Time to check presence (sent by the sweep timer at this instant).
    Sweep(Instant),
    /// One host's record.
    Status(HostId, RpcReplyPort<Option<HostRecord>>),
    /// Hosts matching a selector and online state, in host id order.
    List(Selector, Option<bool>, RpcReplyPort<Vec<HostRecord>>),
    /// Counters.
    Stats(RpcReplyPort<ConnectorStats>),
    /// Records the configuration revision a host applied (the config manager's write path, so
    /// the connector's record and the registry never disagree).
    SetAppliedRevision(HostId, u64, RpcReplyPort<bool>),
    /// A background task ended (subscription or service closed): restart through the supervisor.
    TaskEnded(&'static str),
}

/// Counters shared with the subscription and writer tasks.
#[derive(Debug, Default)]
struct Counters {
    heartbeats: AtomicU64,
    malformed: AtomicU64,
    registry_writes: AtomicU64,
    registry_write_errors: AtomicU64,
    events: AtomicU64,
}

struct Tracked {
    record: HostRecord,
    last_seen: Instant,
    last_write: Instant,
    interval: Duration,
    /// Sequence number of the last heartbeat seen (0: none since this instance loaded it).
    last_seq: u64,
}

/// State of the connector.
pub struct ConnectorState {
    hosts: HashMap<String, Tracked>,
    writer: tokio::sync::mpsc::UnboundedSender<Write>,
    counters: Arc<Counters>,
    refresh_every: Duration,
    tasks: TaskSet<ConnectorMsg>,
    /// The registry writer: drained on stop (not aborted), so queued writes reach the bucket.
    write_loop: Option<tokio::task::JoinHandle<()>>,
    service: Option<async_nats::service::Service>,
    /// Tells a connector that was not reading (frozen, starved, far behind) from hosts gone quiet.
    stall: stall::StallGuard,
}

/// The connector actor.
#[derive(Debug, Default)]
pub struct Connector;

impl Actor for Connector {
    type Msg = ConnectorMsg;
    type State = ConnectorState;
    type Arguments = ConnectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectorMsg>,
        args: ConnectorArgs,
    ) -> Result<ConnectorState, ActorProcessingErr> {
        let js = jetstream::new(args.client.clone());
        let kv = js
            .get_key_value(HOSTS_BUCKET)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot open bucket {HOSTS_BUCKET}: {e}")))?;
        let hosts = registry::load(&kv, &args.subjects).await?;
        info!(account = %args.subjects.account(), hosts = hosts.len(), "host registry loaded");

        let counters = Arc::new(Counters::default());
        let (writer, rx) = tokio::sync::mpsc::unbounded_channel();
        let write_loop =
            tokio::spawn(registry::write_loop(kv, js.clone(), args.subjects.clone(), rx, counters.clone()));
        let mut tasks = TaskSet::new(myself.clone(), ConnectorMsg::TaskEnded);
        subscribe_heartbeats(&args, &mut tasks, counters.clone()).await?;
        api::subscribe_applied(&args, &mut tasks).await?;
        let service = api::start(&args, js, &mut tasks).await?;
        tasks.adopt(myself.send_interval(args.sweep_every, || ConnectorMsg::Sweep(Instant::now())));
        Ok(ConnectorState {
            hosts,
            writer,
            counters,
            refresh_every: args.refresh_every,
            tasks,
            write_loop: Some(write_loop),
            service: Some(service),
            stall: stall::StallGuard::new(args.sweep_every, Instant::now()),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConnectorMsg>,
        msg: ConnectorMsg,
        state: &mut ConnectorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectorMsg::Heartbeat(hb, host) => state.heartbeat(*hb, host),
            ConnectorMsg::Sweep(sent) => state.sweep(sent),
            ConnectorMsg::Status(host, reply) => {
                let _ = reply.send(state.hosts.get(host.as_str()).map(|t| state.exact(t)));
            }
            ConnectorMsg::List(selector, online, reply) => {
                let mut out: Vec<HostRecord> = state
                    .hosts
                    .values()
                    .filter(|t| online.is_none_or(|o| t.record.online == o) && selector.matches(&t.record.labels))
                    .map(|t| state.exact(t))
                    .collect();
                out.sort_by(|a, b| a.host_id.cmp(&b.host_id));
                let _ = reply.send(out);
            }
            ConnectorMsg::Stats(reply) => {
                let c = &state.counters;
                let _ = reply.send(ConnectorStats {
                    heartbeats: c.heartbeats.load(Ordering::Relaxed),
                    malformed: c.malformed.load(Ordering::Relaxed),
                    hosts: state.hosts.len() as u64,
                    online: state.hosts.values().filter(|t| t.record.online).count() as u64,
                    registry_writes: c.registry_writes.load(Ordering::Relaxed),
                    registry_write_errors: c.registry_write_errors.load(Ordering::Relaxed),
                    events: c.events.load(Ordering::Relaxed),
                });
            }
            ConnectorMsg::SetAppliedRevision(host, revision, reply) => {
                let found = match state.hosts.get_mut(host.as_str()) {
                    Some(t) => {
                        t.record.applied_revision = Some(revision);
                        t.last_write = Instant::now();
                        let record = t.record.clone();
                        state.put(record);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
            ConnectorMsg::TaskEnded(what) => return Err(crate::tasks::ended("connector", what)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectorMsg>,
        state: &mut ConnectorState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.stop("connector", state.service.take()).await;
        // The writer task ends once its channel is closed and drained.
        if let Some(writer) = state.write_loop.take() {
            let (closed, _) = tokio::sync::mpsc::unbounded_channel();
            state.writer = closed;
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
        Ok(())
    }
}

impl ConnectorState {
    /// The record with the exact `last_seen` the connector knows (the registry copy may lag by
    /// up to the refresh period).
    fn exact(&self, t: &Tracked) -> HostRecord {
        let mut r = t.record.clone();
        if r.online {
            r.last_seen = exact_last_seen(t);
        }
        r
    }

    fn put(&mut self, record: HostRecord) {
        let _ = self.writer.send(Write::Put(record));
    }

    /// Publishes a transition caused by heartbeat `seq` of the record's incarnation (for
    /// missed heartbeats: the last one seen). Every connector instance sees every heartbeat and
    /// judges the same transition, so its message id is made of what caused it, not of this
    /// instance: the events stream stores it once however many instances publish it.
    fn event(&mut self, kind: HostEventKind, reason: &str, record: &HostRecord, seq: u64) {
        let id = format!("{}.{}.{seq}.{}", record.host_id, record.incarnation, kind.as_str());
        let event = HostEvent {
            kind,
            host_id: record.host_id.clone(),
            at: crate::now_rfc3339(),
            reason: reason.to_owned(),
            record: record.clone(),
        };
        info!(host_id = %record.host_id, event = kind.as_str(), reason, "host event");
        let _ = self.writer.send(Write::Event(event, id));
    }

    fn heartbeat(&mut self, hb: Heartbeat, host: HostId) {
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let now_s = crate::now_rfc3339();
        let interval = match hb.interval_ms {
            0 => DEFAULT_INTERVAL,
            ms => Duration::from_millis(ms).clamp(MIN_INTERVAL, MAX_INTERVAL),
        };
        let fresh = |hb: &Heartbeat, previous: Option<&HostRecord>| HostRecord {
            host_id: host.to_string(),
            online: !hb.leaving,
            connected_since: (!hb.leaving).then(|| now_s.clone()),
            last_seen: now_s.clone(),
            labels: hb.labels.clone(),
            facts: hb.facts.clone(),
            workers: hb.workers.clone(),
            available_workers: hb.available_workers.clone(),
            draining: hb.draining,
            agent_version: hb.agent_version.clone(),
            incarnation: hb.incarnation,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            offline_reason: hb.leaving.then(|| "clean shutdown".to_owned()),
            applied_revision: previous.and_then(|p| p.applied_revision),
        };
        let Some(t) = self.hosts.get_mut(host.as_str()) else {
            let record = fresh(&hb, None);
            self.hosts.insert(
                host.to_string(),
                Tracked { record: record.clone(), last_seen: now, last_write: now, interval, last_seq: hb.seq },
            );
            self.put(record.clone());
            if hb.leaving {
                self.event(HostEventKind::Offline, "clean shutdown", &record, hb.seq);
            } else {
                self.event(HostEventKind::Online, "first heartbeat", &record, hb.seq);
            }
            return;
        };
        t.last_seen = now;
        t.interval = interval;
        t.last_seq = hb.seq;
        let was_online = t.record.online;
        if hb.leaving {
            if !was_online {
                return;
            }
            let mut record = fresh(&hb, Some(&t.record));
            record.connected_since = None;
            t.record = record.clone();
            t.last_write = now;
            self.put(record.clone());
            self.event(HostEventKind::Offline, "clean shutdown", &record, hb.seq);
            return;
        }
        if !was_online {
            let reason = match &t.record.offline_reason {
                Some(r) => format!("back after {r}"),
                None => "back".to_owned(),
            };
            let record = fresh(&hb, Some(&t.record));
            t.record = record.clone();
            t.last_write = now;
            self.put(record.clone());
            self.event(HostEventKind::Online, &reason, &record, hb.seq);
            return;
        }
        let old = &t.record;
        let changed = what_changed(old, &hb, interval);
        let restarted = old.incarnation != hb.incarnation;
        if changed.is_empty() && !restarted {
            if now.duration_since(t.last_write) >= self.refresh_every {
                t.record.last_seen = now_s;
                t.last_write = now;
                let record = t.record.clone();
                self.put(record);
            }
            return;
        }
        let connected_since = if restarted { Some(now_s.clone()) } else { old.connected_since.clone() };
        let mut record = fresh(&hb, Some(old));
        record.connected_since = connected_since;
        t.record = record.clone();
        t.last_write = now;
        let reason = if restarted {
            let mut r = "agent restarted".to_owned();
            for c in &changed {
                r.push_str(", ");
                r.push_str(c);
                r.push_str(" changed");
            }
            r
        } else {
            format!("{} changed", changed.join(", "))
        };
        self.put(record.clone());
        self.event(HostEventKind::Changed, &reason, &record, hb.seq);
    }

    /// Marks offline the hosts whose last heartbeat is older than their bound, as of `sent`,
    /// when the timer sent this sweep: heartbeats that came before it are ahead of it in the
    /// mailbox, so a connector whose mailbox lags judges on what it has read. After a stall
    /// (the process frozen or starved: the timer itself was late) nobody is judged until the
    /// connector has had as long again to read the heartbeats that waited meanwhile.
    fn sweep(&mut self, sent: Instant) {
        let now = Instant::now();
        let verdict = self.stall.observe(sent, now);
        if let Some(stalled) = verdict.stalled {
            warn!(
                stalled_ms = u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX),
                hosts = self.hosts.len(),
                "connector stalled: heartbeats were not read meanwhile; no host is marked offline until it has caught up"
            );
        }
        if let Some(lag) = verdict.behind {
            warn!(
                lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
                hosts = self.hosts.len(),
                "connector behind its heartbeats: it cannot keep up with the rate they arrive at; presence is judged on what it has read"
            );
        }
        let Some(at) = verdict.judge_at else { return };
        let mut gone = Vec::new();
        for t in self.hosts.values_mut() {
            if t.record.online && at.saturating_duration_since(t.last_seen) > offline_after(t.interval) {
                let last_seen = exact_last_seen(t);
                t.record.online = false;
                t.record.connected_since = None;
                t.record.last_seen = last_seen;
                t.record.offline_reason = Some("missed heartbeats".to_owned());
                t.last_write = now;
                gone.push((t.record.clone(), t.last_seq));
            }
        }
        for (record, seq) in gone {
            self.put(record.clone());
            self.event(HostEventKind::Offline, "missed heartbeats", &record, seq);
        }
    }
}

/// The fields of a host's record a heartbeat changes, named for the `changed` event's reason.
fn what_changed(old: &HostRecord, hb: &Heartbeat, interval: Duration) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.labels != hb.labels {
        changed.push("labels");
    }
    if old.workers != hb.workers {
        changed.push("workers");
    }
    if old.available_workers != hb.available_workers {
        changed.push("available workers");
    }
    if old.facts != hb.facts {
        changed.push("facts");
    }
    if old.agent_version != hb.agent_version {
        changed.push("agent version");
    }
    if old.draining != hb.draining {
        changed.push("drain state");
    }
    if old.interval_ms != u64::try_from(interval.as_millis()).unwrap_or(u64::MAX) {
        changed.push("heartbeat interval");
    }
    changed
}

/// `last_seen` as RFC 3339, from the instant of the last heartbeat.
fn exact_last_seen(t: &Tracked) -> String {
    let ago = time::Duration::try_from(t.last_seen.elapsed()).unwrap_or_default();
    time::OffsetDateTime::now_utc()
        .checked_sub(ago)
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.record.last_seen.clone())
}

/// Subscribes to every heartbeat of the account (plain subscription: every connector instance
/// must see every heartbeat) and hands the valid ones to the actor.
async fn subscribe_heartbeats(
    args: &ConnectorArgs,
    tasks: &mut TaskSet<ConnectorMsg>,
    counters: Arc<Counters>,
) -> Result<(), ActorProcessingErr> {
    let mut heartbeats = args
        .client
        .subscribe(args.subjects.host_heartbeat_all())
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to heartbeats: {e}")))?;
    let me = tasks.actor().clone();
    tasks.spawn("heartbeat subscription", async move {
        while let Some(msg) = heartbeats.next().await {
            match decode_heartbeat(&msg) {
                Ok((hb, host)) => {
                    if me.cast(ConnectorMsg::Heartbeat(Box::new(hb), host)).is_err() {
                        return;
                    }
                }
                Err(reason) => {
                    let n = counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    debug!(subject = %msg.subject, reason = %reason, malformed = n, "malformed heartbeat dropped");
                }
            }
        }
    });
    Ok(())
}

/// Why a heartbeat was dropped (logged at debug level and counted as malformed).
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The subject is not a Steward subject.
    #[error(transparent)]
    Subject(#[from] steward_subjects::subject::SubjectError),
    /// The subject names no host.
    #[error("heartbeat subject has no host token")]
    NoHost,
    /// The payload does not decode (or is too large).
    #[error(transparent)]
    Decode(#[from] steward_subjects::codec::CodecError),
    /// The heartbeat's fields are invalid or its host id does not match the subject.
    #[error(transparent)]
    Invalid(#[from] steward_subjects::api::host::HeartbeatFieldError),
}

/// Decodes and validates a heartbeat.
///
/// # Errors
/// [`HeartbeatError`] naming why the heartbeat is not taken.
fn decode_heartbeat(msg: &async_nats::Message) -> Result<(Heartbeat, HostId), HeartbeatError> {
    let parsed = ParsedSubject::parse(msg.subject.as_str())?;
    let target = parsed.target.ok_or(HeartbeatError::NoHost)?;
    let enc = Encoding::from_headers(msg.headers.as_ref());
    let hb: Heartbeat = codec::decode_limited(enc, &msg.payload, 64 * 1024)?;
    let host = hb.validate(target.as_str())?;
    Ok((hb, host))
}

/// Typed handle in front of the connector actor.
#[derive(Debug, Clone)]
pub struct ConnectorHandle {
    actor: ActorRef<ConnectorMsg>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl ConnectorHandle {
    /// Starts a connector (unsupervised; the process supervisor uses [`Connector`] directly).
    ///
    /// # Errors
    /// [`ActorsError::Spawn`] when the bucket cannot be opened or the subscriptions fail.
    pub async fn start(args: ConnectorArgs) -> Result<(Self, tokio::task::JoinHandle<()>), ActorsError> {
        let (actor, join) = Actor::spawn(None, Connector, args).await.map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok((ConnectorHandle { actor }, join))
    }

    /// Wraps a running connector.
    #[must_use]
    pub fn from_ref(actor: ActorRef<ConnectorMsg>) -> Self {
        ConnectorHandle { actor }
    }

    /// One host's record (`None` if the host never announced itself).
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the connector is gone.
    pub async fn status(&self, host: &HostId) -> Result<Option<HostRecord>, ActorsError> {
        let host = host.clone();
        crate::call(&self.actor, move |r| ConnectorMsg::Status(host, r), CALL_TIMEOUT).await
    }

    /// Hosts matching `selector` and, if given, the online state.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the connector is gone.
    pub async fn list(&self, selector: Selector, online: Option<bool>) -> Result<Vec<HostRecord>, ActorsError> {
        crate::call(&self.actor, move |r| ConnectorMsg::List(selector, online, r), CALL_TIMEOUT).await
    }

    /// Counters.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the connector is gone.
    pub async fn stats(&self) -> Result<ConnectorStats, ActorsError> {
        crate::call(&self.actor, ConnectorMsg::Stats, CALL_TIMEOUT).await
    }

    /// Records the configuration revision a host applied; `false` when the host is unknown.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the connector is gone.
    pub async fn set_applied_revision(&self, host: &HostId, revision: u64) -> Result<bool, ActorsError> {
        let host = host.clone();
        crate::call(&self.actor, move |r| ConnectorMsg::SetAppliedRevision(host, revision, r), CALL_TIMEOUT).await
    }

    /// Stops the connector and waits for it.
    pub async fn stop(&self) {
        let _ = self.actor.stop_and_wait(Some("stop".into()), Some(Duration::from_secs(5))).await;
    }
}
