//! The dispatcher's micro service `steward-dispatcher`: `run.dispatch`, `run.status`,
//! `run.cancel` and `run.list`. Endpoints subscribe in the service's queue group, so any hub
//! instance may answer; each request is answered on a task of its own.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ractor::ActorProcessingErr;
use sha2::{Digest, Sha256};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::run::{
    HostRun, HostRunView, RunAccepted, RunCancelRequest, RunCancelResult, RunList, RunListRequest, RunRecord,
    RunRequest, RunStatus, RunStatusRequest, RunView, StatusCounts, StopAck, StopOrder, WorkOrder,
};
use steward_subjects::codec::Encoding;
use steward_subjects::envelope::WireError;
use steward_subjects::rpc;
use steward_subjects::selector::Selector;
use steward_subjects::streams::HOSTS_BUCKET;
use steward_subjects::subject::host_registry_filter;
use steward_subjects::HostId;
use tracing::{debug, info, warn};

use super::delivery::{deliver_all, publish_few, Stored, INLINE_ORDERS};
use super::runs::{lock, ActiveRun, Core};
use super::store::{self, RunStoreError};
use super::{lifecycle, DispatcherArgs, DispatcherMsg};
use crate::now_ms;
use crate::signing::{hex, job_digest};
use crate::tasks::TaskSet;

/// Registers the service and answers its requests on a task of `tasks` (named "service", so the
/// actor learns when the endpoints' subscriptions end).
pub(super) async fn serve(
    args: &DispatcherArgs,
    core: Arc<Core>,
    tasks: &mut TaskSet<DispatcherMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let description = "steward dispatcher: runs on hosts";
    let service = crate::start_account_service(&args.client, args.subjects.account(), "dispatcher", description)
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
    tasks.spawn("service", async move {
        while let Some((name, req)) = requests.next().await {
            let core = core.clone();
            tokio::spawn(async move { core.answer(name, req).await });
        }
    });
    Ok(service)
}

fn store_err(e: RunStoreError) -> WireError {
    match e {
        RunStoreError::Contended(_) => WireError::conflict(e.to_string()),
        _ => WireError::unavailable(e.to_string()),
    }
}

/// How a keyed write ended.
enum Keyed {
    /// The records were written: the host records' revisions.
    Written(Vec<u64>),
    /// The key was bound to this other run already.
    Existing(String),
}

impl Core {
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

    /// `run.dispatch`: resolves the targets, writes the run and host records, holds the run
    /// and sends the work orders (see [`super`] for the order of these steps).
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
        let now = now_ms();
        let (run, records) = self.new_run(&req, &hosts, now);
        let orders = self.orders(&run, &records).await;
        let (revisions, run_rev, acks) = match &idem {
            None => self.write_with_orders(&run, &records, &orders).await?,
            Some(d) => match self.write_keyed(d, &run, &records).await? {
                Keyed::Written(revisions) => (revisions, None, None),
                Keyed::Existing(existing) => return self.existing(existing).await,
            },
        };
        self.hold_new(&run, &records, revisions, run_rev, now);
        info!(run_id = %run.run_id, hosts = hosts.len(), kind = req.job.kind.as_str(), "run dispatched");
        self.send_orders(&run.run_id, orders, acks).await;
        Ok(RunAccepted { run_id: run.run_id, existing: false, hosts: hosts.iter().map(ToString::to_string).collect() })
    }

    /// The run record and the host records of a new run (a new UUIDv7 run id; every host
    /// pending at its first attempt).
    fn new_run(&self, req: &RunRequest, hosts: &[HostId], now: u64) -> (RunRecord, Vec<HostRun>) {
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let timeout = req.timeout();
        let attempts = u64::from(req.retry.attempts());
        // Each host's order is signed on its own (see `Core::orders`); the run names the key.
        let key_id = self.signer.as_ref().map(|s| s.key_id().to_owned()).unwrap_or_default();
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
        let run = RunRecord {
            run_id,
            status: RunStatus::Pending,
            job_digest: hex(&job_digest(&req.job)),
            job: req.job.clone(),
            signature: String::new(),
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
        (run, records)
    }

    /// Writes a run without an idempotency key: nothing can collide (the run id is new), so
    /// the run and host records are written together, one round trip for all, and a small
    /// run's work orders are published beside them rather than after (one JetStream write
    /// less on the round trip). A host may so report before its record is written: its events
    /// are offered again until the record is there (see `follow_events`). Answers the host
    /// records' revisions, the run record's, and the acknowledgements of the orders published
    /// (a small run's; awaited after the answer). A refused write takes the orders back.
    async fn write_with_orders(
        &self,
        run: &RunRecord,
        records: &[HostRun],
        orders: &[WorkOrder],
    ) -> Result<
        (Vec<u64>, Option<u64>, Option<impl std::future::Future<Output = Vec<Stored>> + Send + 'static>),
        WireError,
    > {
        let inline = orders.len() <= INLINE_ORDERS;
        let early = if inline { orders.to_vec() } else { Vec::new() };
        // The host records go first: a quick host's events need them, not the run record
        // (the two are written one after the other by the bucket's stream).
        let (created, published) = futures::join!(
            async { futures::try_join!(self.store.create_hosts(records), self.store.create_run_revision(run)) },
            publish_few(&self.js, &self.subjects, early),
        );
        let refused = match created {
            Ok((revisions, Some(rev))) => return Ok((revisions, Some(rev), inline.then_some(published))),
            Ok((_, None)) => WireError::unavailable(format!("run id {} taken; try again", run.run_id)),
            Err(e) => store_err(e),
        };
        // The records are not (all) there: take back the orders already sent.
        self.take_back(published.await).await;
        Err(refused)
    }

    /// Writes a run with an idempotency key: the run record, then the key is claimed, so a
    /// lost race leaves no host records (and the run record is removed); then the host
    /// records.
    async fn write_keyed(&self, digest: &str, run: &RunRecord, records: &[HostRun]) -> Result<Keyed, WireError> {
        self.store.create_run(run).await.map_err(store_err)?;
        if let Some(existing) = self.store.claim_idempotency(digest, &run.run_id).await.map_err(store_err)? {
            if existing != run.run_id {
                let _ = self.store.delete_run(&run.run_id).await;
                return Ok(Keyed::Existing(existing));
            }
        }
        Ok(Keyed::Written(self.store.create_hosts(records).await.map_err(store_err)?))
    }

    /// Holds a run just written, remembering its records and their revisions; events that
    /// came before (their orders went out beside the record writes) are caught up on a task.
    fn hold_new(
        self: &Arc<Self>,
        run: &RunRecord,
        records: &[HostRun],
        revisions: Vec<u64>,
        run_rev: Option<u64>,
        now: u64,
    ) {
        let run_id = &run.run_id;
        self.active().insert(
            run_id.clone(),
            ActiveRun {
                hosts_total: run.hosts_total,
                next_check_ms: now + self.redeliver_after_ms.min(run.timeout_ms),
                record: run_rev.map(|rev| (run.clone(), rev)),
                ..ActiveRun::new(records.iter().cloned().zip(revisions).map(|k| (k.0.host_id.clone(), k)).collect())
            },
        );
        if lock(&self.deltas).contains_key(run_id) {
            // A host reported before the run was held here (its order went out beside the
            // record writes): catch up from the store so the run settles now, not at a tick.
            let (core, id) = (self.clone(), run_id.clone());
            tokio::spawn(async move { core.catch_up(&id).await });
        }
    }

    /// Sends a held run's work orders unless they went out with the records (`acks`): a small
    /// run's from this task, a large run's from a task of its own. The stream's
    /// acknowledgements are awaited after the reply.
    async fn send_orders(
        self: &Arc<Self>,
        run_id: &str,
        orders: Vec<WorkOrder>,
        acks: Option<impl std::future::Future<Output = Vec<Stored>> + Send + 'static>,
    ) {
        let core = self.clone();
        let id = run_id.to_owned();
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
            // The orders carry the request's trace context while tracing is on.
            let span = steward_subjects::trace::span(tracing::Span::current);
            let deliver = async move {
                let delivered = deliver_all(core.js.clone(), core.subjects.clone(), orders).await;
                core.mark_delivered(&id, delivered);
            };
            tokio::spawn(tracing::Instrument::instrument(deliver, span));
        }
    }

    async fn existing(&self, run_id: String) -> Result<RunAccepted, WireError> {
        let hosts = self.store.hosts(&run_id).await.map_err(store_err)?;
        Ok(RunAccepted { run_id, existing: true, hosts: hosts.into_iter().map(|h| h.host_id).collect() })
    }

    /// The run record of `run_id`, or `not_found`.
    async fn run_record(&self, run_id: &str) -> Result<RunRecord, WireError> {
        self.store
            .run(run_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| WireError::not_found(format!("no run {run_id:?}")))
    }

    async fn status(&self, req: RunStatusRequest) -> Result<RunView, WireError> {
        let run = self.run_record(&req.run_id).await?;
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
        let run = self.run_record(&req.run_id).await?;
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
        let stops = self.stop_hosts(open).await;
        let mut result = RunCancelResult { run_id: run.run_id.clone(), ..RunCancelResult::default() };
        self.record_stops(&mut result, stops).await;
        let hosts = self.store.hosts_with_revisions(&run.run_id).await.map_err(store_err)?;
        let run = self.settle_counted(&run.run_id, &hosts).await.map_err(store_err)?;
        result.status = run.map_or(RunStatus::Canceled, |r| r.status);
        info!(run_id = %result.run_id, status = %result.status, "run canceled");
        Ok(result)
    }

    /// Sends the stop order to every open host of a canceled run, many at once; answers each
    /// host with its acknowledgement (`None`: unreachable or refused).
    async fn stop_hosts(&self, open: Vec<HostRun>) -> Vec<(HostRun, Option<StopAck>)> {
        futures::stream::iter(
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
        .await
    }

    /// Ends each stopped host's record as canceled, with the reason its acknowledgement gives,
    /// and sorts the hosts into confirmed, canceled before start, and unconfirmed.
    async fn record_stops(&self, result: &mut RunCancelResult, stops: Vec<(HostRun, Option<StopAck>)>) {
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
    }
}
