//! What each request does to the leader's state. The loop applies `lease`, `renew`, `mine` and
//! `release` (and spec changes) to the view it owns, collecting each change for the journal
//! entry of the commit; `leases` (operator listing) and `submit` (results) read the view under
//! a short lock beside the loop. A result is accepted only for the holder and epoch in memory,
//! which a runtime can only know from a durable reply; accepted results are stored per host as
//! segments ([`crate::results`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_nats::jetstream;
use steward_subjects::api::lease::{
    JournalLease, LeaseRequest, LeasesReply, LeasesRequest, MineRequest, Refusal, ReleaseReply, ReleaseRequest,
    RenewReply, RenewRequest, RuntimeSession,
};
use steward_subjects::api::result::{
    ResultRecord, SubmitOutcome, SubmitReply, SubmitRequest, SubmitStatus, MAX_SUBMIT_BATCH,
};
use steward_subjects::codec::Encoding;
use steward_subjects::streams::{read_output, OutputReadError, OUTPUTS_STREAM};
use steward_subjects::subject::{result_output_object, OutputRef};
use steward_subjects::token::{validate, HostId, RuntimeId, TokenError, TokenKind};
use steward_subjects::{trace, Subjects, WireError};
use tracing::Instrument;

use super::api::Op;
use super::api::{LeaseReplyOut, LeasedOut, MineReplyOut, Out, SpecRef};
use super::commit::Commit;
use super::identity::{claim, FenceCounters, FenceRefusal, Identities};
use super::notices::NoticeEvent;
use super::state::{LeaseView, NotHeld, RowFilter, SpecEntry};
use super::{LeaseConfig, LeaseError};
use crate::results::store::{store_host_results, Watermarks};
use crate::{duration_ms, now_ms};

/// Full outputs looked up at once while checking one submit request.
const OUTPUT_CHECKS: usize = 8;

/// What the loop is asked to do.
pub(super) enum Input {
    Lease(LeaseRequest, Encoding, async_nats::service::Request),
    Renew(RenewRequest, Encoding, async_nats::service::Request),
    Mine(MineRequest, Encoding, async_nats::service::Request),
    Release(ReleaseRequest, Encoding, async_nats::service::Request),
    SpecUpsert(String, SpecEntry),
    SpecRemoved(String),
    StepDown(LeaseError),
}

/// The state shared by the loop and the side endpoints (`leases`, `submit`).
pub(super) struct Shared {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) subjects: Subjects,
    pub(super) config: LeaseConfig,
    pub(super) view: Mutex<LeaseView>,
    /// Parsers of the caller's identity off the per-identity subjects.
    pub(super) identities: Identities,
    /// What the fence refused.
    pub(super) fence: FenceCounters,
    /// Each runtime's stored watermark (the last outbox position it has stored).
    pub(super) watermarks: Watermarks,
    /// The account's hub metrics (grants, renewals, journal appends, results).
    pub(super) metrics: crate::metrics::AccountMetrics,
    /// Trace context of the latest spec change the feed brought (only while tracing is on):
    /// the next notices continue it.
    pub(super) spec_trace: Mutex<Option<trace::Context>>,
}

impl Shared {
    pub(super) fn view(&self) -> MutexGuard<'_, LeaseView> {
        // A panic while holding the lock cannot leave the view half-updated in a way that
        // matters more than losing the service, so a poisoned lock is taken over.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn ttl_ms(&self) -> u64 {
        duration_ms(self.config.ttl)
    }
}

fn refusal(spec: &str, epoch: u64, why: NotHeld) -> Refusal {
    let (current_epoch, reason) = match why {
        NotHeld::Removed => (0, "removed"),
        NotHeld::NotHolder(e) => (e, "not_holder"),
        NotHeld::StaleEpoch(e) => (e, "stale_epoch"),
    };
    Refusal { spec: spec.to_owned(), epoch, current_epoch, reason: reason.into() }
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

impl Shared {
    /// Applies one input to the view, collecting journal changes, replies and notices.
    pub(super) fn apply(&self, view: &mut LeaseView, input: Input, now: u64, c: &mut Commit) -> Result<(), LeaseError> {
        match input {
            Input::Lease(r, enc, req) => {
                let out = Out::of(self.lease(view, &r, now, c), Out::Lease);
                c.replies.push((req, enc, out));
            }
            Input::Renew(r, enc, req) => {
                let out = Out::of(self.renew(view, &r, now, c), Out::Renew);
                c.replies.push((req, enc, out));
            }
            Input::Mine(r, enc, req) => {
                let out = Out::of(self.mine(view, &r), Out::Mine);
                c.replies.push((req, enc, out));
            }
            Input::Release(r, enc, req) => {
                let out = Out::of(self.release(view, &r, now, c), Out::Release);
                c.replies.push((req, enc, out));
            }
            Input::SpecUpsert(id, spec) => match view.upsert_spec(&id, spec, now, true) {
                Some(h) => c.notices.push(NoticeEvent::Changed(h, id)),
                None => c.notices.push(NoticeEvent::Available),
            },
            Input::SpecRemoved(id) => {
                if let Some((holder, cleared)) = view.remove_spec(&id) {
                    c.entry.leases.push(cleared);
                    c.notices.push(NoticeEvent::Removed(holder, id));
                }
            }
            Input::StepDown(reason) => return Err(reason),
        }
        Ok(())
    }

    fn touch_session(
        &self,
        view: &mut LeaseView,
        runtime: &RuntimeId,
        (host, labels): (&str, &BTreeMap<String, String>),
        now: u64,
        always: bool,
        c: &mut Commit,
    ) -> u64 {
        let needs = always
            || view.session(runtime.as_str()).is_none_or(|s| {
                s.record.expires_at_ms < now + self.ttl_ms() / 2 || s.record.labels != *labels || s.record.host != host
            });
        if !needs {
            return view.session(runtime.as_str()).map_or(0, |s| s.record.expires_at_ms);
        }
        let record = RuntimeSession {
            runtime: runtime.to_string(),
            host: host.to_owned(),
            labels: labels.clone(),
            expires_at_ms: now + self.ttl_ms(),
            renewed_at_ms: now,
        };
        let expires = record.expires_at_ms;
        view.set_session(record.clone(), now);
        c.add_session(record);
        expires
    }

    fn lease(
        &self,
        view: &mut LeaseView,
        req: &LeaseRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<LeaseReplyOut, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let host = optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        self.touch_session(view, &runtime, (&req.host, &req.labels), now, false, c);
        let held = u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX);
        let budget = req.max.min(self.config.max_batch).min(self.config.per_runtime_cap.saturating_sub(held));
        let host = host.as_ref().map(HostId::as_str);
        let grants = view.grant(runtime.as_str(), host, &req.labels, budget as usize, now);
        self.metrics.lease_grants(grants.len());
        let mut granted = Vec::with_capacity(grants.len());
        for g in grants {
            if let Some(spec) = view.spec(&g.spec) {
                granted.push(LeasedOut { spec: SpecRef(spec.spec.clone(), spec.raw.clone()), epoch: g.epoch });
            }
            c.entry.leases.push(JournalLease { spec: g.spec.clone(), holder: runtime.to_string(), epoch: g.epoch });
            if let Some(prev) = g.previous {
                c.notices.push(NoticeEvent::Revoked(prev, g.spec));
            }
        }
        Ok(LeaseReplyOut {
            granted,
            held: u32::try_from(view.held_count(runtime.as_str())).unwrap_or(u32::MAX),
            cap: self.config.per_runtime_cap,
            ttl_ms: self.ttl_ms(),
            more: view.has_free_for(host, &req.labels),
        })
    }

    fn renew(
        &self,
        view: &mut LeaseView,
        req: &RenewRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<RenewReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        optional_host(&req.host)?;
        valid_labels(&req.labels)?;
        let expires_at_ms = self.touch_session(view, &runtime, (&req.host, &req.labels), now, true, c);
        let mut renewed = 0u32;
        let mut refused = Vec::new();
        for item in &req.held {
            match view.check_held(&item.spec, runtime.as_str(), item.epoch) {
                Ok(()) => renewed += 1,
                Err(why) => refused.push(refusal(&item.spec, item.epoch, why)),
            }
        }
        self.metrics.lease_renewals(renewed);
        Ok(RenewReply { renewed, refused, ttl_ms: self.ttl_ms(), expires_at_ms })
    }

    fn mine(&self, view: &LeaseView, req: &MineRequest) -> Result<MineReplyOut, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let specs = view
            .held_by(runtime.as_str())
            .into_iter()
            .filter_map(|id| {
                let lease = view.lease(&id)?;
                let spec = view.spec(&id)?;
                Some(LeasedOut { spec: SpecRef(spec.spec.clone(), spec.raw.clone()), epoch: lease.epoch })
            })
            .collect();
        Ok(MineReplyOut { specs, ttl_ms: self.ttl_ms() })
    }

    fn release(
        &self,
        view: &mut LeaseView,
        req: &ReleaseRequest,
        now: u64,
        c: &mut Commit,
    ) -> Result<ReleaseReply, WireError> {
        let runtime = RuntimeId::parse(&req.runtime)?;
        let mut reply = ReleaseReply::default();
        for item in &req.specs {
            match view.release(&item.spec, runtime.as_str(), item.epoch, now) {
                Ok(cleared) => {
                    c.entry.leases.push(cleared);
                    reply.released.push(item.spec.clone());
                }
                Err(why) => reply.refused.push(refusal(&item.spec, item.epoch, why)),
            }
        }
        if !reply.released.is_empty() {
            c.notices.push(NoticeEvent::Available);
        }
        Ok(reply)
    }

    pub(super) fn leases(&self, req: &LeasesRequest) -> Result<LeasesReply, WireError> {
        if let Some(r) = &req.runtime {
            validate(TokenKind::RuntimeId, r)?;
        }
        let limit = if req.limit == 0 { 1000 } else { req.limit as usize };
        let now = now_ms();
        let view = self.view();
        let filter =
            RowFilter { runtime: req.runtime.as_deref(), spec: req.spec.as_deref(), unassigned: req.unassigned };
        let (rows, total) = view.rows(filter, limit, now);
        Ok(LeasesReply {
            rows,
            total,
            specs: view.spec_count() as u64,
            runtimes: view.live_runtimes(now) as u64,
            sessions: if req.sessions { view.sessions() } else { Vec::new() },
            fence: self.fence.stats(),
        })
    }

    /// Stores the results of `req` that its caller (the identity of `subject`) may submit: each
    /// must name that runtime and host (or none) and hold its spec at its epoch. All accepted
    /// results are filed under the subject's host.
    pub(super) async fn submit(&self, mut req: SubmitRequest, subject: &str) -> Result<SubmitReply, WireError> {
        if req.results.len() > MAX_SUBMIT_BATCH {
            return Err(WireError::invalid(format!(
                "{} results in one request, at most {MAX_SUBMIT_BATCH} allowed",
                req.results.len()
            )));
        }
        let who = self.identities.acting(Op::Submit, subject)?;
        let host = HostId::parse(who.host)?;
        let runtime = RuntimeId::parse(who.runtime)?;
        // A result naming another runtime or host is foreign; an empty field takes the subject's.
        let foreign: Vec<Option<String>> = req
            .results
            .iter_mut()
            .map(|r| {
                let owned =
                    claim(&mut r.runtime, who.runtime, "runtime").and_then(|()| claim(&mut r.host, who.host, "host"));
                owned.err().map(|e| format!("{}: {}", e.code.as_str(), e.message))
            })
            .collect();
        let mut outcomes: Vec<SubmitOutcome> = Vec::with_capacity(req.results.len());
        let mut accepted: Vec<(usize, &ResultRecord)> = Vec::with_capacity(req.results.len());
        let checked: Vec<Result<(), Refused>> = req
            .results
            .iter()
            .zip(foreign)
            .map(|(r, foreign)| match foreign {
                Some(reason) => Err(Refused::Foreign(reason)),
                None => self.fenced(r),
            })
            .collect();
        // The outputs named by results that passed are looked up a few at a time (one direct
        // get each, up to 1 MiB: the bound keeps a request naming many from flooding memory).
        let host_ref = &host;
        let mut outputs: Vec<Result<(), Refused>> = Vec::with_capacity(checked.len());
        let pairs: Vec<(&ResultRecord, &Result<(), Refused>)> = req.results.iter().zip(&checked).collect();
        for chunk in pairs.chunks(OUTPUT_CHECKS) {
            outputs.extend(
                futures::future::join_all(chunk.iter().map(|(r, c)| async move {
                    match c {
                        Ok(()) => self.output_owned(host_ref, r).await,
                        Err(_) => Ok(()),
                    }
                }))
                .await,
            );
        }
        // What is stored must be a prefix of what the runtime sent (its stored watermark answers
        // everything below it `duplicate`): after the first result to retry, accepted ones wait.
        let mut waiting: Option<String> = None;
        for (i, ((r, checked), output)) in req.results.iter().zip(checked).zip(outputs).enumerate() {
            let mut outcome = SubmitOutcome { key: r.idempotency_key(), ..SubmitOutcome::default() };
            match checked.and(output) {
                Ok(()) if waiting.is_some() => {
                    outcome.status = SubmitStatus::Retry;
                    outcome.reason =
                        format!("unavailable: an earlier result waits ({})", waiting.clone().unwrap_or_default());
                }
                Ok(()) => accepted.push((i, r)),
                Err(Refused::Unavailable(reason)) => {
                    outcome.status = SubmitStatus::Retry;
                    waiting.get_or_insert_with(|| reason.clone());
                    outcome.reason = reason;
                }
                Err(refused) => {
                    let reason = refused.to_string();
                    self.fence.refused(refused.counter(), who.host, who.runtime, &reason);
                    outcome.status = SubmitStatus::Refused;
                    outcome.reason = reason;
                }
            }
            outcomes.push(outcome);
        }
        let mut duplicates = 0;
        let who = (&host, &runtime, req.incarnation.as_str());
        let span = trace::span(|| tracing::info_span!("results.store", results = accepted.len()));
        let stored =
            store_host_results(&self.js, &self.subjects, &self.watermarks, who, accepted).instrument(span).await;
        for stored in stored {
            duplicates += u64::from(stored.status == SubmitStatus::Duplicate);
            let o = &mut outcomes[stored.index];
            o.status = stored.status;
            o.stream_seq = stored.stream_seq;
            o.reason = stored.reason;
        }
        self.fence.duplicates(duplicates);
        for o in &outcomes {
            self.metrics.result(o.status);
        }
        Ok(SubmitReply { outcomes })
    }
}

/// Why a submitted result is refused (answered as `<code>: <why>` in its outcome), or not
/// checked yet (`Unavailable`, answered `retry`).
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The result names another runtime or host than its caller (already `<code>: <why>`).
    #[error("{0}")]
    Foreign(String),
    /// A malformed result.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The runtime does not hold the spec at the result's epoch.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The result names a full output that is not its caller's.
    #[error("forbidden: {0}")]
    ForeignOutput(String),
    /// The full output the result names could not be looked up now.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Refused {
    /// The fence counter a refusal goes to.
    fn counter(&self) -> FenceRefusal {
        match self {
            Refused::Foreign(_) => FenceRefusal::ForeignResult,
            Refused::Invalid(_) => FenceRefusal::InvalidResult,
            Refused::Conflict(_) => FenceRefusal::StaleResult,
            Refused::ForeignOutput(_) | Refused::Unavailable(_) => FenceRefusal::ForeignOutput,
        }
    }
}

impl Shared {
    /// Whether a result (already checked to name its caller) is well formed and its runtime
    /// holds its spec at its epoch.
    fn fenced(&self, r: &ResultRecord) -> Result<(), Refused> {
        let invalid = |e: TokenError| Refused::Invalid(e.to_string());
        validate(TokenKind::Name, &r.spec).map_err(invalid)?;
        if r.seq == 0 || r.epoch == 0 {
            return Err(Refused::Invalid("epoch and seq must be positive".into()));
        }
        let view = self.view();
        let lease = view.lease(&r.spec).cloned().unwrap_or_default();
        if lease.holder != r.runtime || lease.epoch != r.epoch {
            return Err(Refused::Conflict(format!(
                "stale epoch: spec {} is at epoch {} held by {:?}, result carries epoch {} from {}",
                r.spec, lease.epoch, lease.holder, r.epoch, r.runtime
            )));
        }
        Ok(())
    }

    /// Whether the full output a result names (if any) was stored by its caller's host: a
    /// stream reference must name a message of the outputs stream on `result.output.<host>`;
    /// an object reference (older runtimes) must be the result's own object name.
    async fn output_owned(&self, host: &HostId, r: &ResultRecord) -> Result<(), Refused> {
        let Some(named) = r.output_ref.as_deref() else { return Ok(()) };
        match OutputRef::parse(named) {
            None => Err(Refused::Invalid(format!("output_ref {named:?} is neither out:<seq> nor an object name"))),
            Some(OutputRef::Object(name)) => {
                let own = result_output_object(self.subjects.account(), &r.spec, r.epoch, r.seq);
                if name == own {
                    Ok(())
                } else {
                    Err(Refused::ForeignOutput(format!("output_ref {name:?} is not this result's object {own:?}")))
                }
            }
            Some(OutputRef::Stream(seq)) => match read_output(&self.js, seq).await {
                Ok((subject, _)) if self.subjects.parse_result_output(&subject).as_ref() == Some(host) => Ok(()),
                Ok((subject, _)) => {
                    Err(Refused::ForeignOutput(format!("output {seq} was stored on {subject}, not by host {host}")))
                }
                Err(OutputReadError::NotFound(_)) => {
                    Err(Refused::ForeignOutput(format!("no output {seq} in {OUTPUTS_STREAM}")))
                }
                Err(e @ OutputReadError::Unavailable { .. }) => Err(Refused::Unavailable(e.to_string())),
            },
        }
    }
}
