//! The connector: the hub side of host presence and host commands.
//!
//! - **Presence.** Every connector instance subscribes to all heartbeats of its account with a
//!   plain subscription (no queue group: each instance must see every heartbeat to judge
//!   presence). A heartbeat is decoded and validated on the subscription task; a malformed one
//!   (undecodable, hostile tokens, host id not matching the subject) is dropped and counted and
//!   never reaches the actor. A host is marked offline when no heartbeat came for 1.5 of its
//!   announced intervals (checked every `sweep_every`, so within two intervals), and at once on
//!   the `leaving` heartbeat of a clean shutdown.
//! - **Registry.** The record of each host lives in the KV bucket `steward_hosts` under
//!   `<account>.<host>`. It is written on every change and refreshed at least every
//!   `refresh_every` while a host is online, so 10,000 steady hosts cost a trickle of writes,
//!   not one per heartbeat. On start the connector loads the account's records; hosts recorded
//!   online get a fresh grace period instead of being declared offline at once.
//! - **Events.** Every transition is an event (`online`, `offline`, `changed`) on the
//!   `STEWARD_HOST_EVENTS` stream, published after the registry write it describes. Its
//!   message id is made of what caused it (host, incarnation, heartbeat sequence, kind), so
//!   the transition every instance judges alike is stored once, not once per instance.
//! - **API.** A `steward-connector` micro service; every endpoint is in the micro queue group
//!   (any instance may answer): `host.status`, `host.list`, `host.send`, `host.ensure_worker`,
//!   `host.outcome`, `host.stats`. `host.applied` (a host's applied configuration revision) is
//!   a plain subscription instead: every instance applies it to the records it keeps and
//!   answers; the caller takes the first answer. [`ConnectorClient`] is the typed client.
//!
//! Registry writes and event publishes run on a writer task fed by a channel, so the actor never
//! waits on JetStream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::service::ServiceExt;
use async_nats::HeaderMap;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::api::host::{
    AppliedRevisionRequest, AppliedRevisionResult, CommandAction, CommandOutcomeRequest, CommandReply, CommandStatus,
    ConnectorStats, EnsureWorkerRequest, EnsureWorkerResult, Heartbeat, HostCommand, HostEvent, HostEventKind,
    HostList, HostListRequest, HostRecord, HostStatusRequest, SendCommandRequest, SendCommandResult, COMMAND_ID_HEADER,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::selector::Selector;
use steward_subjects::streams::{HOSTS_BUCKET, HOST_COMMANDS_STREAM};
use steward_subjects::subject::{host_registry_key, service_name, ParsedSubject};
use steward_subjects::token::{validate, TokenKind};
use steward_subjects::{ErrorCode, HostId, Subjects, WireError, STEWARD_VERSION};
use tracing::{debug, info, warn};

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
    /// Time to check presence.
    Sweep,
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

enum Write {
    Put(HostRecord),
    /// An event and what identifies it (its `Nats-Msg-Id` without the account).
    Event(HostEvent, String),
}

/// State of the connector.
pub struct ConnectorState {
    hosts: HashMap<String, Tracked>,
    writer: tokio::sync::mpsc::UnboundedSender<Write>,
    counters: Arc<Counters>,
    refresh_every: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    service: Option<async_nats::service::Service>,
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
        let hosts = load_registry(&kv, &args.subjects).await?;
        info!(account = %args.subjects.account(), hosts = hosts.len(), "host registry loaded");

        let counters = Arc::new(Counters::default());
        let (writer, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(write_loop(kv, js.clone(), args.subjects.clone(), rx, counters.clone()))];

        // Plain subscription: every connector instance must see every heartbeat.
        let mut heartbeats = args
            .client
            .subscribe(args.subjects.host_heartbeat_all())
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to heartbeats: {e}")))?;
        let me = myself.clone();
        let c = counters.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = heartbeats.next().await {
                match decode_heartbeat(&msg) {
                    Ok((hb, host)) => {
                        if me.cast(ConnectorMsg::Heartbeat(Box::new(hb), host)).is_err() {
                            return;
                        }
                    }
                    Err(reason) => {
                        let n = c.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        debug!(subject = %msg.subject, reason = %reason, malformed = n, "malformed heartbeat dropped");
                    }
                }
            }
            let _ = me.cast(ConnectorMsg::TaskEnded("heartbeat subscription"));
        }));

        // Plain subscription too: every instance keeps the applied revision in its records, so
        // none writes an older one back on its next refresh.
        let mut applied = args
            .client
            .subscribe(args.subjects.host_applied())
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to applied revisions: {e}")))?;
        let (me, client) = (myself.clone(), args.client.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = applied.next().await {
                let Some(reply) = msg.reply.clone() else { continue };
                let (result, enc) = match rpc::decode_request::<AppliedRevisionRequest>(&msg) {
                    Ok((r, enc)) => {
                        let result = match HostId::parse(&r.host_id) {
                            Ok(host) => crate::call(
                                &me,
                                move |port| ConnectorMsg::SetAppliedRevision(host, r.revision, port),
                                CALL_TIMEOUT,
                            )
                            .await
                            .map(|recorded| AppliedRevisionResult { recorded })
                            .map_err(unavailable),
                            Err(e) => Err(WireError::from(e)),
                        };
                        (result, enc)
                    }
                    Err((e, enc)) => (Err(e), enc),
                };
                let payload = rpc::encode_reply(enc, result);
                if let Err(e) = client.publish_with_headers(reply, enc.headers(), payload).await {
                    debug!(error = %e, "applied-revision reply not sent");
                }
            }
            let _ = me.cast(ConnectorMsg::TaskEnded("applied-revision subscription"));
        }));

        let service = start_api(&args, &myself, js, &mut tasks).await?;
        let ticker = myself.send_interval(args.sweep_every, || ConnectorMsg::Sweep);
        Ok(ConnectorState {
            hosts,
            writer,
            counters,
            refresh_every: args.refresh_every,
            tasks,
            ticker: Some(ticker),
            service: Some(service),
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
            ConnectorMsg::Sweep => state.sweep(),
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
            ConnectorMsg::TaskEnded(what) => return Err(ActorProcessingErr::from(format!("connector {what} ended"))),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectorMsg>,
        state: &mut ConnectorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        if let Some(service) = state.service.take() {
            if let Err(e) = service.stop().await {
                debug!(error = %e, "connector service did not stop cleanly");
            }
        }
        // The writer task ends once its channel is closed and drained; the others are aborted.
        if let Some((writer, rest)) = state.tasks.split_first_mut() {
            for t in rest {
                t.abort();
            }
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

    fn sweep(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for t in self.hosts.values_mut() {
            if t.record.online && now.duration_since(t.last_seen) > offline_after(t.interval) {
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

/// `last_seen` as RFC 3339, from the instant of the last heartbeat.
fn exact_last_seen(t: &Tracked) -> String {
    let ago = time::Duration::try_from(t.last_seen.elapsed()).unwrap_or_default();
    time::OffsetDateTime::now_utc()
        .checked_sub(ago)
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.record.last_seen.clone())
}

/// Decodes and validates a heartbeat; the reason on failure is for the debug log.
fn decode_heartbeat(msg: &async_nats::Message) -> Result<(Heartbeat, HostId), String> {
    let parsed = ParsedSubject::parse(msg.subject.as_str()).map_err(|e| e.to_string())?;
    let target = parsed.target.ok_or_else(|| "heartbeat subject has no host token".to_owned())?;
    let enc = Encoding::from_headers(msg.headers.as_ref());
    let hb: Heartbeat = codec::decode_limited(enc, &msg.payload, 64 * 1024).map_err(|e| e.to_string())?;
    let host = hb.validate(target.as_str())?;
    Ok((hb, host))
}

async fn load_registry(kv: &kv::Store, subjects: &Subjects) -> Result<HashMap<String, Tracked>, ActorProcessingErr> {
    let prefix = format!("{}.", subjects.account());
    let mut keys = kv.keys().await.map_err(|e| ActorProcessingErr::from(format!("cannot list host registry: {e}")))?;
    let mut hosts = HashMap::new();
    let now = Instant::now();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ActorProcessingErr::from(format!("cannot list host registry: {e}")))?;
        let Some(host) = key.strip_prefix(&prefix) else { continue };
        let Ok(host) = HostId::parse(host) else { continue };
        let Some(bytes) = kv.get(key.as_str()).await.map_err(|e| ActorProcessingErr::from(e.to_string()))? else {
            continue;
        };
        match codec::decode::<HostRecord>(Encoding::MsgPack, &bytes) {
            Ok(record) => {
                let interval = match record.interval_ms {
                    0 => DEFAULT_INTERVAL,
                    ms => Duration::from_millis(ms).clamp(MIN_INTERVAL, MAX_INTERVAL),
                };
                hosts.insert(
                    host.to_string(),
                    Tracked { record, last_seen: now, last_write: now, interval, last_seq: 0 },
                );
            }
            Err(e) => warn!(key = %key, error = %e, "unreadable host record skipped"),
        }
    }
    Ok(hosts)
}

async fn write_loop(
    kv: kv::Store,
    js: jetstream::Context,
    subjects: Subjects,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Write>,
    counters: Arc<Counters>,
) {
    const BATCH: usize = 1024;
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        // Last record per host wins; puts land before the events that describe them.
        let mut puts: BTreeMap<String, HostRecord> = BTreeMap::new();
        let mut events = Vec::new();
        for w in buf.drain(..) {
            match w {
                Write::Put(r) => {
                    puts.insert(r.host_id.clone(), r);
                }
                Write::Event(e, id) => events.push((e, id)),
            }
        }
        let writes = futures::stream::iter(puts.into_values())
            .map(|record| {
                let kv = kv.clone();
                let subjects = subjects.clone();
                async move {
                    let Ok(host) = HostId::parse(&record.host_id) else { return Err("bad host id".to_owned()) };
                    let key = host_registry_key(subjects.account(), &host);
                    let bytes = codec::encode(Encoding::MsgPack, &record).map_err(|e| e.to_string())?;
                    kv.put(key, bytes).await.map(|_| ()).map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for r in writes {
            match r {
                Ok(()) => counters.registry_writes.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(error = %e, "host registry write failed");
                    counters.registry_write_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        let mut acks = Vec::with_capacity(events.len());
        for (e, id) in events {
            let Ok(host) = HostId::parse(&e.host_id) else { continue };
            let Ok(payload) = codec::encode(Encoding::MsgPack, &e) else { continue };
            let mut headers = HeaderMap::new();
            let id = format!("host-event.{}.{id}", subjects.account());
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            match js.publish_with_headers(subjects.host_event(&host), headers, payload).await {
                Ok(ack) => acks.push(ack),
                Err(err) => warn!(host_id = %host, error = %err, "host event not published"),
            }
        }
        for ack in acks {
            match ack.await {
                Ok(_) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => warn!(error = %err, "host event not stored"),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    List,
    Send,
    EnsureWorker,
    Outcome,
    Stats,
}

async fn start_api(
    args: &ConnectorArgs,
    myself: &ActorRef<ConnectorMsg>,
    js: jetstream::Context,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let s = &args.subjects;
    let service = args
        .client
        .service_builder()
        .description("steward host registry, presence and host commands")
        .metadata(HashMap::from([("account".to_owned(), s.account().to_string())]))
        .start(service_name("connector"), STEWARD_VERSION)
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot register connector service: {e}")))?;
    // Every endpoint is in the micro queue group: any connector instance may answer.
    let mut streams = Vec::new();
    for (name, subject, kind) in [
        ("status", s.host_status(), Endpoint::Status),
        ("list", s.host_list(), Endpoint::List),
        ("send", s.host_send(), Endpoint::Send),
        ("ensure_worker", s.host_ensure_worker(), Endpoint::EnsureWorker),
        ("outcome", s.host_outcome(), Endpoint::Outcome),
        ("stats", s.host_stats(), Endpoint::Stats),
    ] {
        let ep = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot add connector endpoint {name}: {e}")))?;
        streams.push(ep.map(move |r| (kind, r)).boxed());
    }
    let api = Api {
        handle: ConnectorHandle { actor: myself.clone() },
        client: args.client.clone(),
        js,
        subjects: args.subjects.clone(),
    };
    let me = myself.clone();
    tasks.push(tokio::spawn(async move {
        let mut requests = futures::stream::select_all(streams);
        while let Some((kind, req)) = requests.next().await {
            let api = api.clone();
            // One task per request: ensure-worker and send may wait for seconds.
            tokio::spawn(async move { api.answer(kind, req).await });
        }
        let _ = me.cast(ConnectorMsg::TaskEnded("api service"));
    }));
    Ok(service)
}

#[derive(Clone)]
struct Api {
    handle: ConnectorHandle,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
}

fn unavailable(e: ActorsError) -> WireError {
    WireError::unavailable(e.to_string())
}

impl Api {
    async fn answer(&self, kind: Endpoint, req: async_nats::service::Request) {
        let enc = Encoding::from_headers(req.message.headers.as_ref());
        let sent = match kind {
            Endpoint::Status => {
                let r = match rpc::decode_request::<HostStatusRequest>(&req.message) {
                    Ok((r, _)) => self.status(r).await,
                    Err((e, _)) => Err(e),
                };
                rpc::respond(&req, enc, r).await
            }
            Endpoint::List => {
                let r = match rpc::decode_request::<HostListRequest>(&req.message) {
                    Ok((r, _)) => self.list(r).await,
                    Err((e, _)) => Err(e),
                };
                rpc::respond(&req, enc, r).await
            }
            Endpoint::Send => {
                let r = match rpc::decode_request::<SendCommandRequest>(&req.message) {
                    Ok((r, _)) => self.send(r).await,
                    Err((e, _)) => Err(e),
                };
                rpc::respond(&req, enc, r).await
            }
            Endpoint::EnsureWorker => {
                let r = match rpc::decode_request::<EnsureWorkerRequest>(&req.message) {
                    Ok((r, _)) => self.ensure_worker(r).await,
                    Err((e, _)) => Err(e),
                };
                rpc::respond(&req, enc, r).await
            }
            Endpoint::Outcome => {
                let r = match rpc::decode_request::<CommandOutcomeRequest>(&req.message) {
                    Ok((r, _)) => self.outcome(r).await,
                    Err((e, _)) => Err(e),
                };
                rpc::respond(&req, enc, r).await
            }
            Endpoint::Stats => {
                let r = self.handle.stats().await.map_err(unavailable);
                rpc::respond(&req, enc, r).await
            }
        };
        if let Err(e) = sent {
            debug!(error = %e, "connector reply not sent");
        }
    }

    async fn known(&self, host: &HostId) -> Result<HostRecord, WireError> {
        self.handle
            .status(host)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| WireError::not_found(format!("host {host} is not registered")))
    }

    async fn status(&self, r: HostStatusRequest) -> Result<HostRecord, WireError> {
        let host = HostId::parse(&r.host_id)?;
        self.known(&host).await
    }

    async fn list(&self, r: HostListRequest) -> Result<HostList, WireError> {
        let selector = Selector::parse(&r.selector).map_err(|e| WireError::invalid(e.to_string()))?;
        let hosts = self.handle.list(selector, r.online).await.map_err(unavailable)?;
        Ok(HostList { hosts })
    }

    async fn send(&self, r: SendCommandRequest) -> Result<SendCommandResult, WireError> {
        let host = r.validate()?;
        self.known(&host).await?;
        let wait = Duration::from_millis(r.wait_ms).min(MAX_SEND_WAIT);
        let ttl = (r.ttl_ms > 0).then(|| Duration::from_millis(r.ttl_ms));
        let (cmd, sequence, replies) = self.publish_command(&host, r.action, &r.worker, ttl, !wait.is_zero()).await?;
        let reply = match replies {
            Some(sub) => wait_reply(sub, &cmd.command_id, wait).await,
            None => None,
        };
        Ok(SendCommandResult { command_id: cmd.command_id, sequence, reply })
    }

    /// Stores a command in the commands stream; subscribes to the host's replies first when
    /// asked, so a quick reply is not missed.
    async fn publish_command(
        &self,
        host: &HostId,
        action: CommandAction,
        worker: &str,
        ttl: Option<Duration>,
        want_reply: bool,
    ) -> Result<(HostCommand, u64, Option<async_nats::Subscriber>), WireError> {
        let now = time::OffsetDateTime::now_utc();
        let fmt =
            |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let cmd = HostCommand {
            command_id: uuid::Uuid::now_v7().simple().to_string(),
            host_id: host.to_string(),
            action,
            worker: worker.to_owned(),
            issued_at: fmt(now),
            expires_at: ttl.map(|d| fmt(now + time::Duration::try_from(d).unwrap_or(time::Duration::MAX))),
            work: None,
        };
        let replies = if want_reply {
            Some(
                self.client
                    .subscribe(self.subjects.host_reply(host))
                    .await
                    .map_err(|e| WireError::unavailable(format!("cannot subscribe to replies: {e}")))?,
            )
        } else {
            None
        };
        let payload = codec::encode(Encoding::MsgPack, &cmd)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, cmd.command_id.as_str());
        headers.insert(COMMAND_ID_HEADER, cmd.command_id.as_str());
        let ack = self
            .js
            .publish_with_headers(self.subjects.host_command(host), headers, payload)
            .await
            .map_err(|e| WireError::unavailable(format!("cannot queue command: {e}")))?
            .await
            .map_err(|e| WireError::unavailable(format!("command not stored: {e}")))?;
        info!(host_id = %host, command_id = %cmd.command_id, action = action.as_str(), "command queued");
        Ok((cmd, ack.sequence, replies))
    }

    async fn outcome(&self, r: CommandOutcomeRequest) -> Result<CommandReply, WireError> {
        let host = HostId::parse(&r.host_id)?;
        validate(TokenKind::Name, &r.command_id)?;
        let not_found =
            || WireError::not_found(format!("no reply recorded for command {} of host {host}", r.command_id));
        let stream = self
            .js
            .get_stream(HOST_COMMANDS_STREAM)
            .await
            .map_err(|e| WireError::unavailable(format!("cannot open {HOST_COMMANDS_STREAM}: {e}")))?;
        let filter = self.subjects.host_reply(&host);
        if stream.get_last_raw_message_by_subject(&filter).await.is_err() {
            return Err(not_found());
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| WireError::unavailable(format!("cannot read replies: {e}")))?;
        let mut messages =
            consumer.messages().await.map_err(|e| WireError::unavailable(format!("cannot read replies: {e}")))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(Ok(msg))) = next else { return Err(not_found()) };
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
                if reply.command_id == r.command_id {
                    return Ok(reply);
                }
            }
            if pending == 0 {
                return Err(not_found());
            }
        }
    }

    async fn ensure_worker(&self, r: EnsureWorkerRequest) -> Result<EnsureWorkerResult, WireError> {
        let started = Instant::now();
        let host = HostId::parse(&r.host_id)?;
        validate(TokenKind::Name, &r.worker)?;
        let timeout = match r.timeout_ms {
            0 => DEFAULT_ENSURE_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_ENSURE_TIMEOUT),
        };
        let record = self.known(&host).await?;
        if let Some(version) = record.workers.get(&r.worker) {
            return Ok(EnsureWorkerResult {
                worker: r.worker,
                version: version.clone(),
                already_present: true,
                command_id: None,
                waited_ms: 0,
            });
        }
        if record.online && !record.available_workers.is_empty() && !record.available_workers.contains_key(&r.worker) {
            return Err(WireError::invalid(format!(
                "host {host} cannot install worker {:?}: not in its catalog (available: {})",
                r.worker,
                record.available_workers.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let (cmd, _, replies) =
            self.publish_command(&host, CommandAction::InstallWorker, &r.worker, Some(timeout), true).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut replies = replies.map(|s| s.boxed());
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let state = match self.handle.status(&host).await {
                        Ok(Some(r)) if r.online => "online",
                        Ok(Some(_)) => "offline",
                        _ => "unknown",
                    };
                    return Err(WireError::new(ErrorCode::Timeout, format!(
                        "worker {:?} did not appear on host {host} within {} ms (host is {state}; the install command {} stays queued until it expires)",
                        r.worker, timeout.as_millis(), cmd.command_id
                    )));
                }
                msg = async {
                    match replies.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match msg {
                        Some(msg) => {
                            if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
                                if reply.command_id == cmd.command_id && reply.status != CommandStatus::Ok {
                                    return Err(WireError::invalid(format!(
                                        "host {host} cannot install worker {:?}: {} ({})",
                                        r.worker, reply.message, reply.status.as_str()
                                    )));
                                }
                            }
                        }
                        None => replies = None,
                    }
                }
                _ = poll.tick() => {
                    if let Ok(Some(rec)) = self.handle.status(&host).await {
                        if let Some(version) = rec.workers.get(&r.worker) {
                            return Ok(EnsureWorkerResult {
                                worker: r.worker,
                                version: version.clone(),
                                already_present: false,
                                command_id: Some(cmd.command_id),
                                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            });
                        }
                    }
                }
            }
        }
    }
}

async fn wait_reply(mut sub: async_nats::Subscriber, command_id: &str, wait: Duration) -> Option<CommandReply> {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
            if reply.command_id == command_id {
                return Some(reply);
            }
        }
    }
    None
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

/// Typed client of the connector API, for any process with a NATS connection (CLI, config
/// manager, dispatcher).
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), steward_subjects::rpc::RequestError> {
/// use steward_actors::connector::ConnectorClient;
/// use steward_subjects::{AccountId, Subjects};
/// let api = ConnectorClient::new(client, Subjects::new(AccountId::parse("acme").unwrap()));
/// for host in api.list("env=prod", Some(true)).await?.hosts {
///     println!("{} online since {:?}", host.host_id, host.connected_since);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectorClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl ConnectorClient {
    /// A client for the account of `subjects`.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        ConnectorClient { client, subjects, timeout: rpc::DEFAULT_TIMEOUT }
    }

    /// One host's record.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` for an unknown host, `Remote(Invalid)` for a bad id.
    pub async fn status(&self, host_id: &str) -> Result<HostRecord, RequestError> {
        let req = HostStatusRequest { host_id: host_id.to_owned() };
        rpc::request(&self.client, self.subjects.host_status(), &req, self.timeout).await
    }

    /// Hosts matching a selector (empty = all) and online state.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for a bad selector.
    pub async fn list(&self, selector: &str, online: Option<bool>) -> Result<HostList, RequestError> {
        let req = HostListRequest { selector: selector.to_owned(), online };
        rpc::request(&self.client, self.subjects.host_list(), &req, self.timeout).await
    }

    /// Queues a durable command and waits up to `req.wait_ms` for the reply.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` for an unknown host.
    pub async fn send(&self, req: &SendCommandRequest) -> Result<SendCommandResult, RequestError> {
        let timeout = self.timeout + Duration::from_millis(req.wait_ms).min(MAX_SEND_WAIT);
        rpc::request(&self.client, self.subjects.host_send(), req, timeout).await
    }

    /// Installs a worker and waits until the registry shows it.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Timeout)` when the worker did not appear in time,
    /// `Remote(Invalid)` when the host cannot install it.
    pub async fn ensure_worker(
        &self,
        host_id: &str,
        worker: &str,
        timeout: Duration,
    ) -> Result<EnsureWorkerResult, RequestError> {
        let req = EnsureWorkerRequest {
            host_id: host_id.to_owned(),
            worker: worker.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let wait = if timeout.is_zero() { DEFAULT_ENSURE_TIMEOUT } else { timeout.min(MAX_ENSURE_TIMEOUT) };
        rpc::request(&self.client, self.subjects.host_ensure_worker(), &req, wait + self.timeout).await
    }

    /// The recorded reply of a command.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` while no reply is recorded.
    pub async fn outcome(&self, host_id: &str, command_id: &str) -> Result<CommandReply, RequestError> {
        let req = CommandOutcomeRequest { host_id: host_id.to_owned(), command_id: command_id.to_owned() };
        rpc::request(&self.client, self.subjects.host_outcome(), &req, self.timeout + Duration::from_secs(5)).await
    }

    /// Counters of the answering connector instance.
    ///
    /// # Errors
    /// [`RequestError`].
    pub async fn stats(&self) -> Result<ConnectorStats, RequestError> {
        rpc::request(&self.client, self.subjects.host_stats(), &(), self.timeout).await
    }

    /// Records the configuration revision a host applied, with every connector instance (the
    /// first answer is returned; `recorded: false` when that instance does not know the host).
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for a bad host id.
    pub async fn set_applied_revision(
        &self,
        host_id: &str,
        revision: u64,
    ) -> Result<AppliedRevisionResult, RequestError> {
        let req = AppliedRevisionRequest { host_id: host_id.to_owned(), revision };
        rpc::request(&self.client, self.subjects.host_applied(), &req, self.timeout).await
    }
}
