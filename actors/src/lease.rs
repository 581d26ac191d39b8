//! The lease service (hub side): leases job specs to assessment runtimes and accepts their
//! results, as the NATS micro service `steward-lease`.
//!
//! Endpoints (micro endpoints, so all in the micro queue group: any hub instance answers, and
//! instances share the lease state through the `steward_leases` bucket):
//! `jobspec.lease`, `jobspec.renew`, `jobspec.mine`, `jobspec.release`, `jobspec.leases` and
//! `result.submit`. Notices go out on `jobspec.notice.<runtime>` and `jobspec.available`.
//!
//! Every state change is a compare-and-set write of one key of `steward_leases`
//! (`Nats-Expected-Last-Subject-Sequence`), pipelined: a grant of ten specs is ten writes in
//! flight at once. A write that finds another revision lost a race with another hub instance;
//! the spec is re-read and another one offered. The service follows `steward_jobspecs` (what
//! exists, what changed) and `steward_leases` (what other instances wrote) with ordered
//! consumers; see [`crate::lease_state`] for the in-memory view and its rules.
//!
//! Results are fenced: a result is stored only when its runtime holds its spec at its epoch;
//! accepted results go to `STEWARD_RESULTS` with `Nats-Msg-Id` = `<spec>:<epoch>:<seq>`, so a
//! result sent twice within the dedupe window is stored once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use async_nats::service::ServiceExt;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_subjects::api::lease::{
    AvailableNotice, ChangeNotice, LeaseRecord, LeaseReply, LeaseRequest, LeasedSpec, LeasesReply, LeasesRequest,
    MineReply, MineRequest, Refusal, ReleaseReply, ReleaseRequest, RenewReply, RenewRequest, RuntimeSession,
};
use steward_subjects::api::result::{SubmitOutcome, SubmitReply, SubmitRequest, SubmitStatus, MAX_SUBMIT_BATCH};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::JobSpec;
use steward_subjects::streams::{JOBSPECS_BUCKET, LEASES_BUCKET};
use steward_subjects::subject::{
    jobspec_account_filter, kv_subject, lease_account_filter, lease_session_key, lease_spec_key, parse_lease_key,
    service_name, LeaseKey,
};
use steward_subjects::token::{validate, HostId, RuntimeId, TokenKind};
use steward_subjects::{rpc, Subjects, WireError, STEWARD_VERSION};
use tracing::{debug, info, warn};

use crate::lease_state::{LeaseView, PlannedGrant, SpecEntry};

/// Header JetStream checks for compare-and-set on a subject.
const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
/// Header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";
/// KV operation header (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";
/// How often pending notices are flushed.
const NOTICE_FLUSH: Duration = Duration::from_millis(50);
/// Compare-and-set attempts for a session write before giving up.
const SESSION_ATTEMPTS: usize = 4;

/// Settings of the lease service.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease time-to-live: a runtime that does not renew within it loses its specs.
    pub ttl: Duration,
    /// Most specs granted by one `lease` request.
    pub max_batch: u32,
    /// Most specs one runtime may hold.
    pub per_runtime_cap: u32,
    /// How often expired sessions are looked for.
    pub sweep: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(15),
            max_batch: 100,
            per_runtime_cap: 10_000,
            sweep: Duration::from_millis(200),
        }
    }
}

/// Arguments of the lease service.
#[derive(Debug, Clone)]
pub struct LeaseArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account served.
    pub subjects: Subjects,
    /// Settings.
    pub config: LeaseConfig,
}

/// Messages of the lease service.
#[derive(Debug)]
pub enum LeaseMsg {
    /// A background task (endpoint, watch) ended: restart the service.
    TaskEnded(String),
}

/// State of the lease service.
pub struct LeaseState {
    service: Option<async_nats::service::Service>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The lease service actor.
#[derive(Debug, Default)]
pub struct LeaseService;

impl Actor for LeaseService {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(&self, myself: ActorRef<LeaseMsg>, args: LeaseArgs) -> Result<LeaseState, ActorProcessingErr> {
        let js = jetstream::new(args.client.clone());
        let hub = Arc::new(Hub::new(args.client.clone(), js.clone(), args.subjects.clone(), args.config.clone()));
        let mut tasks = Vec::new();

        // Follow both buckets; serve only once both snapshots are in.
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
        for (bucket, filter, is_specs) in [
            (JOBSPECS_BUCKET, jobspec_account_filter(args.subjects.account()), true),
            (LEASES_BUCKET, lease_account_filter(args.subjects.account()), false),
        ] {
            let stream = js
                .get_stream(format!("KV_{bucket}"))
                .await
                .map_err(|e| ActorProcessingErr::from(format!("cannot open bucket {bucket}: {e}")))?;
            let (hub, me, ready) = (hub.clone(), myself.clone(), ready_tx.clone());
            let client = args.client.clone();
            tasks.push(tokio::spawn(async move {
                let r = follow(&client, &stream, bucket, &filter, ready, |key, rev, deleted, value| {
                    if is_specs {
                        hub.on_spec(key, deleted, value);
                    } else {
                        hub.on_lease_key(key, rev, deleted, value);
                    }
                })
                .await;
                let reason = match r {
                    Ok(()) => format!("watch of {bucket} ended"),
                    Err(e) => format!("watch of {bucket} failed: {e}"),
                };
                let _ = me.cast(LeaseMsg::TaskEnded(reason));
            }));
        }
        drop(ready_tx);
        for _ in 0..2 {
            if ready_rx.recv().await.is_none() {
                for t in &tasks {
                    t.abort();
                }
                return Err(ActorProcessingErr::from("lease state could not be loaded"));
            }
        }

        let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
        hub.set_notices(notice_tx);
        tasks.push(tokio::spawn(notices(hub.clone(), notice_rx)));
        tasks.push(tokio::spawn(sweeper(hub.clone())));

        let service = args
            .client
            .service_builder()
            .description("steward job-spec leases and results")
            .metadata(HashMap::from([("account".to_owned(), args.subjects.account().to_string())]))
            .start(service_name("lease"), STEWARD_VERSION)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot register lease service: {e}")))?;
        let s = &args.subjects;
        for (name, subject, op) in [
            ("lease", s.jobspec_lease(), Op::Lease),
            ("renew", s.jobspec_renew(), Op::Renew),
            ("mine", s.jobspec_mine(), Op::Mine),
            ("release", s.jobspec_release(), Op::Release),
            ("leases", s.jobspec_leases(), Op::Leases),
            ("submit", s.result_submit(), Op::Submit),
        ] {
            let mut endpoint = service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(|e| ActorProcessingErr::from(format!("cannot add lease endpoint {name}: {e}")))?;
            let (hub, me) = (hub.clone(), myself.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(req) = endpoint.next().await {
                    let hub = hub.clone();
                    tokio::spawn(async move { hub.serve(op, req).await });
                }
                let _ = me.cast(LeaseMsg::TaskEnded(format!("endpoint {name} closed")));
            }));
        }
        info!(account = %args.subjects.account(), specs = hub.view().spec_count(), "lease service started");
        Ok(LeaseState { service: Some(service), tasks })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaseMsg>,
        msg: LeaseMsg,
        _state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaseMsg::TaskEnded(reason) => Err(ActorProcessingErr::from(reason)),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<LeaseMsg>, state: &mut LeaseState) -> Result<(), ActorProcessingErr> {
        crate::stop_service("lease", &state.tasks, state.service.take()).await;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Lease,
    Renew,
    Mine,
    Release,
    Leases,
    Submit,
}

/// Milliseconds since the Unix epoch (the hub clock every lease time is measured on).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum NoticeEvent {
    Changed(String, String),
    Removed(String, String),
    Revoked(String, String),
    Available,
}

struct Hub {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    config: LeaseConfig,
    view: Mutex<LeaseView>,
    notices: Mutex<Option<tokio::sync::mpsc::UnboundedSender<NoticeEvent>>>,
}

fn cas_headers(expected: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
    h
}

fn valid_labels(labels: &BTreeMap<String, String>) -> Result<(), WireError> {
    for (k, v) in labels {
        validate(TokenKind::LabelKey, k)?;
        validate(TokenKind::LabelValue, v)?;
    }
    Ok(())
}

fn optional_host(host: &str) -> Result<Option<HostId>, WireError> {
    if host.is_empty() {
        Ok(None)
    } else {
        Ok(Some(HostId::parse(host)?))
    }
}

impl Hub {
    fn new(client: async_nats::Client, js: jetstream::Context, subjects: Subjects, config: LeaseConfig) -> Self {
        Hub { client, js, subjects, config, view: Mutex::new(LeaseView::default()), notices: Mutex::new(None) }
    }

    fn view(&self) -> MutexGuard<'_, LeaseView> {
        // A panic while holding the lock cannot leave the view half-updated in a way that
        // matters more than losing the service, so a poisoned lock is taken over.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_notices(&self, tx: tokio::sync::mpsc::UnboundedSender<NoticeEvent>) {
        *self.notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    }

    fn notify(&self, e: NoticeEvent) {
        if let Some(tx) = self.notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            let _ = tx.send(e);
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    // ---- following the buckets ----

    fn on_spec(&self, key: &str, deleted: bool, value: &[u8]) {
        let Some(id) = key.rsplit('.').next().map(str::to_owned) else { return };
        let now = now_ms();
        if deleted {
            let removed = self.view().remove_spec(&id);
            if let Some((holder, lease)) = removed {
                self.notify(NoticeEvent::Removed(holder.clone(), id.clone()));
                // Clear the holder so the epoch survives but nobody holds a removed spec.
                let record =
                    LeaseRecord { spec: id.clone(), holder: String::new(), epoch: lease.epoch, granted_at_ms: now };
                let hub_key = lease_spec_key(self.subjects.account(), &id);
                let (js, expected) = (self.js.clone(), lease.revision);
                tokio::spawn(async move {
                    if let Ok(payload) = codec::encode(Encoding::MsgPack, &record) {
                        if let Ok(ack) = js
                            .publish_with_headers(kv_subject(LEASES_BUCKET, &hub_key), cas_headers(expected), payload)
                            .await
                        {
                            let _ = ack.await;
                        }
                    }
                });
            }
            return;
        }
        let spec: JobSpec = match codec::decode_limited(Encoding::MsgPack, value, usize::MAX) {
            Ok(s) => s,
            Err(e) => {
                warn!(key, error = %e, "undecodable job spec skipped");
                return;
            }
        };
        let entry = SpecEntry::new(&spec, Bytes::copy_from_slice(value));
        let holder = self.view().upsert_spec(&id, entry, now);
        match holder {
            Some(h) => self.notify(NoticeEvent::Changed(h, id)),
            None => self.notify(NoticeEvent::Available),
        }
    }

    fn on_lease_key(&self, key: &str, revision: u64, deleted: bool, value: &[u8]) {
        let now = now_ms();
        match parse_lease_key(self.subjects.account(), key) {
            Some(LeaseKey::Spec(id)) if !deleted => {
                if self.view().has_lease_revision(id, revision) {
                    return;
                }
                if let Ok(record) = codec::decode_limited::<LeaseRecord>(Encoding::MsgPack, value, usize::MAX) {
                    self.view().apply_lease(id, &record, revision, now);
                }
            }
            Some(LeaseKey::Session(_)) if !deleted => {
                if let Ok(record) = codec::decode_limited::<RuntimeSession>(Encoding::MsgPack, value, usize::MAX) {
                    self.view().apply_session(record, revision, now);
                }
            }
            _ => {}
        }
    }

    async fn refresh_lease(&self, spec: &str) {
        let key = lease_spec_key(self.subjects.account(), spec);
        let Ok(kv) = self.js.get_key_value(LEASES_BUCKET).await else { return };
        if let Ok(Some(entry)) = kv.entry(&key).await {
            if let Ok(record) = codec::decode_limited::<LeaseRecord>(Encoding::MsgPack, &entry.value, usize::MAX) {
                self.view().apply_lease(spec, &record, entry.revision, now_ms());
            }
        }
    }

    async fn refresh_session(&self, runtime: &RuntimeId) {
        let key = lease_session_key(self.subjects.account(), runtime);
        let Ok(kv) = self.js.get_key_value(LEASES_BUCKET).await else { return };
        if let Ok(Some(entry)) = kv.entry(&key).await {
            if let Ok(record) = codec::decode_limited::<RuntimeSession>(Encoding::MsgPack, &entry.value, usize::MAX) {
                self.view().apply_session(record, entry.revision, now_ms());
            }
        }
    }

    // ---- serving ----

    async fn serve(&self, op: Op, req: async_nats::service::Request) {
        let r = match op {
            Op::Lease => self.answer(&req, |r| self.lease(r)).await,
            Op::Renew => self.answer(&req, |r| self.renew(r)).await,
            Op::Mine => self.answer(&req, |r| async move { self.mine(&r) }).await,
            Op::Release => self.answer(&req, |r| self.release(r)).await,
            Op::Leases => self.answer(&req, |r| async move { self.leases(&r) }).await,
            Op::Submit => self.answer(&req, |r| self.submit(r)).await,
        };
        if let Err(e) = r {
            debug!(error = %e, "lease reply not sent");
        }
    }

    async fn answer<Req, Resp, F, Fut>(
        &self,
        req: &async_nats::service::Request,
        f: F,
    ) -> Result<(), async_nats::PublishError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, WireError>>,
    {
        match rpc::decode_request::<Req>(&req.message) {
            Ok((r, enc)) => {
                let result = f(r).await;
                rpc::respond(req, enc, result).await
            }
            Err((e, enc)) => rpc::respond::<()>(req, enc, Err(e)).await,
        }
    }

    /// Writes the runtime's session (expiry now + TTL) with compare-and-set, retrying after
    /// re-reading when another instance wrote it meanwhile.
    async fn write_session(
        &self,
        runtime: &RuntimeId,
        host: Option<&HostId>,
        labels: &BTreeMap<String, String>,
    ) -> Result<RuntimeSession, WireError> {
        let key = lease_session_key(self.subjects.account(), runtime);
        for _ in 0..SESSION_ATTEMPTS {
            let now = now_ms();
            let expected = self.view().session(runtime.as_str()).map_or(0, |s| s.revision);
            let record = RuntimeSession {
                runtime: runtime.to_string(),
                host: host.map(ToString::to_string).unwrap_or_default(),
                labels: labels.clone(),
                expires_at_ms: now + self.ttl_ms(),
                renewed_at_ms: now,
            };
            let payload = codec::encode(Encoding::MsgPack, &record).map_err(WireError::from)?;
            let ack = self
                .js
                .publish_with_headers(kv_subject(LEASES_BUCKET, &key), cas_headers(expected), payload)
                .await
                .map_err(|e| WireError::unavailable(format!("cannot write session: {e}")))?;
            match ack.await {
                Ok(ack) => {
                    self.view().commit_session(record.clone(), ack.sequence);
                    return Ok(record);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => self.refresh_session(runtime).await,
                Err(e) => return Err(WireError::unavailable(format!("session write not acknowledged: {e}"))),
            }
        }
        Err(WireError::unavailable("session is being written concurrently; try again"))
    }

    async fn lease(&self, req: LeaseRequest) -> Result<LeaseReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let host = optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        let now = now_ms();
        let (needs_session, budget) = {
            let view = self.view();
            let s = view.session(runtime.as_str());
            let needs = s.is_none_or(|s| {
                s.record.expires_at_ms < now + self.ttl_ms() / 2
                    || s.record.labels != req.labels
                    || s.record.host != req.host
            });
            let held = u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX);
            (needs, req.max.min(self.config.max_batch).min(self.config.per_runtime_cap.saturating_sub(held)))
        };
        if needs_session {
            self.write_session(&runtime, host.as_ref(), &req.labels).await?;
        }
        let mut granted = Vec::new();
        // A lost race (another instance granted a candidate first) is retried with other
        // candidates a few times.
        for _ in 0..3 {
            let want = (budget as usize).saturating_sub(granted.len());
            if want == 0 {
                break;
            }
            let plan = self.view().plan_grants(
                runtime.as_str(),
                host.as_ref().map(HostId::as_str),
                &req.labels,
                want,
                now_ms(),
            );
            if plan.is_empty() {
                break;
            }
            let lost = self.write_grants(plan, &mut granted).await;
            if lost == 0 {
                break;
            }
        }
        let view = self.view();
        let specs: Vec<LeasedSpec> = granted
            .iter()
            .filter_map(|g: &PlannedGrant| {
                let raw = view.spec(&g.spec)?.raw.clone();
                let spec = codec::decode_limited::<JobSpec>(Encoding::MsgPack, &raw, usize::MAX).ok()?;
                Some(LeasedSpec { spec, epoch: g.record.epoch })
            })
            .collect();
        Ok(LeaseReply {
            granted: specs,
            held: u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX),
            cap: self.config.per_runtime_cap,
            ttl_ms: self.ttl_ms(),
            more: view.has_free_for(host.as_ref().map(HostId::as_str), &req.labels),
        })
    }

    /// Writes planned grants (pipelined compare-and-set); returns how many lost a race.
    async fn write_grants(&self, plan: Vec<PlannedGrant>, granted: &mut Vec<PlannedGrant>) -> usize {
        let mut acks = FuturesOrdered::new();
        let mut failed = Vec::new();
        for g in plan {
            let key = lease_spec_key(self.subjects.account(), &g.spec);
            let sent = match codec::encode(Encoding::MsgPack, &g.record) {
                Ok(payload) => self
                    .js
                    .publish_with_headers(kv_subject(LEASES_BUCKET, &key), cas_headers(g.expected), payload)
                    .await
                    .ok(),
                Err(_) => None,
            };
            match sent {
                Some(ack) => acks.push_back(async move { (g, ack.await) }),
                None => failed.push(g.spec),
            }
        }
        let mut lost = Vec::new();
        while let Some((g, r)) = acks.next().await {
            match r {
                Ok(ack) => {
                    self.view().commit_grant(&g, ack.sequence);
                    if let Some(prev) = &g.previous {
                        self.notify(NoticeEvent::Revoked(prev.clone(), g.spec.clone()));
                    }
                    granted.push(g);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => lost.push(g.spec),
                Err(_) => failed.push(g.spec),
            }
        }
        let now = now_ms();
        for spec in &failed {
            self.view().abort_grant(spec, now);
        }
        for spec in &lost {
            self.view().abort_grant(spec, now);
            self.refresh_lease(spec).await;
        }
        lost.len()
    }

    async fn renew(&self, req: RenewRequest) -> Result<RenewReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let host = optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        let session = self.write_session(&runtime, host.as_ref(), &req.labels).await?;
        let view = self.view();
        let mut renewed = 0u32;
        let mut refused = Vec::new();
        for item in &req.held {
            let current = view.lease(&item.spec).cloned().unwrap_or_default();
            if view.spec(&item.spec).is_none() {
                refused.push(Refusal {
                    spec: item.spec.clone(),
                    epoch: item.epoch,
                    current_epoch: 0,
                    reason: "removed".into(),
                });
            } else if current.holder != runtime.as_str() {
                refused.push(Refusal {
                    spec: item.spec.clone(),
                    epoch: item.epoch,
                    current_epoch: current.epoch,
                    reason: "not_holder".into(),
                });
            } else if current.epoch != item.epoch {
                refused.push(Refusal {
                    spec: item.spec.clone(),
                    epoch: item.epoch,
                    current_epoch: current.epoch,
                    reason: "stale_epoch".into(),
                });
            } else {
                renewed += 1;
            }
        }
        Ok(RenewReply { renewed, refused, ttl_ms: self.ttl_ms(), expires_at_ms: session.expires_at_ms })
    }

    fn mine(&self, req: &MineRequest) -> Result<MineReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let view = self.view();
        let specs = view
            .held_by(runtime.as_str())
            .into_iter()
            .filter_map(|id| {
                let lease = view.lease(&id)?;
                let raw = &view.spec(&id)?.raw;
                let spec = codec::decode_limited::<JobSpec>(Encoding::MsgPack, raw, usize::MAX).ok()?;
                Some(LeasedSpec { spec, epoch: lease.epoch })
            })
            .collect();
        Ok(MineReply { specs, ttl_ms: self.ttl_ms() })
    }

    async fn release(&self, req: ReleaseRequest) -> Result<ReleaseReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let mut reply = ReleaseReply::default();
        let mut acks = FuturesOrdered::new();
        let now = now_ms();
        for item in &req.specs {
            let expected = self.view().begin_release(&item.spec, runtime.as_str(), item.epoch);
            let Some(expected) = expected else {
                let current = self.view().lease(&item.spec).map_or(0, |l| l.epoch);
                reply.refused.push(Refusal {
                    spec: item.spec.clone(),
                    epoch: item.epoch,
                    current_epoch: current,
                    reason: "not_holder".into(),
                });
                continue;
            };
            let record =
                LeaseRecord { spec: item.spec.clone(), holder: String::new(), epoch: item.epoch, granted_at_ms: now };
            let key = lease_spec_key(self.subjects.account(), &item.spec);
            let payload = codec::encode(Encoding::MsgPack, &record).map_err(WireError::from)?;
            match self.js.publish_with_headers(kv_subject(LEASES_BUCKET, &key), cas_headers(expected), payload).await {
                Ok(ack) => {
                    let spec = item.spec.clone();
                    acks.push_back(async move { (spec, ack.await) });
                }
                Err(_) => self.view().abort_grant(&item.spec, now),
            }
        }
        while let Some((spec, r)) = acks.next().await {
            match r {
                Ok(ack) => {
                    self.view().commit_release(&spec, runtime.as_str(), ack.sequence, now_ms());
                    reply.released.push(spec);
                }
                Err(_) => {
                    self.view().abort_grant(&spec, now_ms());
                    self.refresh_lease(&spec).await;
                    reply.refused.push(Refusal { spec, reason: "conflict".into(), ..Refusal::default() });
                }
            }
        }
        if !reply.released.is_empty() {
            self.notify(NoticeEvent::Available);
        }
        Ok(reply)
    }

    fn leases(&self, req: &LeasesRequest) -> Result<LeasesReply, WireError> {
        if let Some(r) = &req.runtime {
            validate(TokenKind::RuntimeId, r)?;
        }
        let limit = if req.limit == 0 { 1000 } else { req.limit as usize };
        let now = now_ms();
        let view = self.view();
        let (rows, total) = view.rows(req.runtime.as_deref(), req.unassigned, limit, now);
        Ok(LeasesReply { rows, total, specs: view.spec_count() as u64, runtimes: view.live_runtimes(now) as u64 })
    }

    async fn submit(&self, req: SubmitRequest) -> Result<SubmitReply, WireError> {
        if req.results.len() > MAX_SUBMIT_BATCH {
            return Err(WireError::invalid(format!(
                "{} results in one request, at most {MAX_SUBMIT_BATCH} allowed",
                req.results.len()
            )));
        }
        let mut outcomes: Vec<SubmitOutcome> = Vec::with_capacity(req.results.len());
        let mut acks = FuturesOrdered::new();
        for (i, r) in req.results.iter().enumerate() {
            let key = r.idempotency_key();
            let checked = (|| -> Result<HostId, (String, &'static str)> {
                validate(TokenKind::Name, &r.spec).map_err(|e| (e.to_string(), "invalid"))?;
                validate(TokenKind::RuntimeId, &r.runtime).map_err(|e| (e.to_string(), "invalid"))?;
                let host = HostId::parse(&r.host).map_err(|e| (e.to_string(), "invalid"))?;
                if r.seq == 0 || r.epoch == 0 {
                    return Err(("epoch and seq must be positive".into(), "invalid"));
                }
                let view = self.view();
                let lease = view.lease(&r.spec).cloned().unwrap_or_default();
                if lease.holder != r.runtime || lease.epoch != r.epoch {
                    return Err((
                        format!(
                            "stale epoch: spec {} is at epoch {} held by {:?}, result carries epoch {} from {}",
                            r.spec, lease.epoch, lease.holder, r.epoch, r.runtime
                        ),
                        "conflict",
                    ));
                }
                Ok(host)
            })();
            outcomes.push(SubmitOutcome { key: key.clone(), ..SubmitOutcome::default() });
            match checked {
                Err((reason, code)) => {
                    outcomes[i].status = SubmitStatus::Refused;
                    outcomes[i].reason = format!("{code}: {reason}");
                }
                Ok(host) => {
                    let payload = match codec::encode(Encoding::MsgPack, r) {
                        Ok(p) => p,
                        Err(e) => {
                            outcomes[i].status = SubmitStatus::Refused;
                            outcomes[i].reason = format!("invalid: {e}");
                            continue;
                        }
                    };
                    let mut h = HeaderMap::new();
                    h.insert(MSG_ID, key.as_str());
                    match self.js.publish_with_headers(self.subjects.result_put(&host), h, payload).await {
                        Ok(ack) => acks.push_back(async move { (i, ack.await) }),
                        Err(e) => outcomes[i].reason = format!("unavailable: {e}"),
                    }
                }
            }
        }
        while let Some((i, r)) = acks.next().await {
            match r {
                Ok(ack) => {
                    outcomes[i].status = if ack.duplicate { SubmitStatus::Duplicate } else { SubmitStatus::Stored };
                    outcomes[i].stream_seq = ack.sequence;
                }
                Err(e) => outcomes[i].reason = format!("unavailable: {e}"),
            }
        }
        Ok(SubmitReply { outcomes })
    }
}

/// Follows the latest value of every key of a KV bucket under `filter` with an ordered
/// consumer, calling `apply(key, revision, deleted, value)` for each; sends on `ready` once the
/// snapshot of existing keys has been applied.
async fn follow<F>(
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    bucket: &str,
    filter: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    mut apply: F,
) -> Result<(), String>
where
    F: FnMut(&str, u64, bool, &[u8]),
{
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: kv_subject(bucket, filter),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut snapshot = consumer.cached_info().num_pending;
    let mut ready = Some(ready);
    if snapshot == 0 {
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
    }
    let prefix = kv_subject(bucket, "");
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let Ok(info) = msg.info() else { continue };
        let revision = info.stream_sequence;
        let key = msg.subject.as_str().strip_prefix(prefix.as_str()).unwrap_or_default().to_owned();
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        apply(&key, revision, deleted, &msg.payload);
        if ready.is_some() {
            snapshot = snapshot.saturating_sub(1);
            if snapshot == 0 || info.pending == 0 {
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
            }
        }
    }
    Ok(())
}

async fn notices(hub: Arc<Hub>, mut rx: tokio::sync::mpsc::UnboundedReceiver<NoticeEvent>) {
    let mut pending: BTreeMap<String, ChangeNotice> = BTreeMap::new();
    let mut available = false;
    let mut tick = tokio::time::interval(NOTICE_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = rx.recv() => {
                let Some(e) = e else { return };
                let (runtime, spec, which) = match e {
                    NoticeEvent::Available => { available = true; continue; }
                    NoticeEvent::Changed(r, s) => (r, s, 0),
                    NoticeEvent::Removed(r, s) => (r, s, 1),
                    NoticeEvent::Revoked(r, s) => (r, s, 2),
                };
                let n = pending.entry(runtime.clone()).or_insert_with(|| ChangeNotice { runtime, ..ChangeNotice::default() });
                match which {
                    0 => n.changed.push(spec),
                    1 => n.removed.push(spec),
                    _ => n.revoked.push(spec),
                }
            }
            _ = tick.tick() => {
                for (runtime, notice) in std::mem::take(&mut pending) {
                    let Ok(rt) = RuntimeId::parse(&runtime) else { continue };
                    if let Ok(payload) = codec::encode(Encoding::MsgPack, &notice) {
                        if let Err(e) = hub.client.publish(hub.subjects.jobspec_notice(&rt), payload).await {
                            debug!(runtime = %rt, error = %e, "notice not sent");
                        }
                    }
                }
                if std::mem::take(&mut available) {
                    let unassigned = hub.view().free_estimate();
                    if unassigned > 0 {
                        if let Ok(payload) = codec::encode(Encoding::MsgPack, &AvailableNotice { unassigned }) {
                            let _ = hub.client.publish(hub.subjects.jobspec_available(), payload).await;
                        }
                    }
                }
            }
        }
    }
}

async fn sweeper(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(hub.config.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let freed = hub.view().sweep(now_ms());
        if freed > 0 {
            debug!(freed, "expired leases freed");
            hub.notify(NoticeEvent::Available);
        }
    }
}
