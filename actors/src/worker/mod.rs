//! The edge's run worker: takes work orders for its host on `run.work.<host>` and stop orders on
//! `run.stop.<host>` (plain subscriptions: host-targeted), runs each job ([`job`]) with its own
//! process group ([`crate::process_group`]) and streams job event data ([`events`]) to the hub.
//!
//! Work orders are taken once per (run, attempt): a redelivered order is acknowledged as a
//! duplicate and not run again. A stop kills the job's process group and is answered once no
//! process of the job is left; a stop for a run not (yet) here is remembered, so a late work
//! order for it is refused.

pub mod events;
pub mod job;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::api::run::{RunStatus, StopAck, StopOrder, WorkAck, WorkOrder};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::envelope::WireError;
use steward_subjects::rpc;
use steward_subjects::{trace, HostId, Subjects};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::spec_signing::TrustedKeys;
use crate::tasks::TaskSet;
use crate::{connect_with, ActorsError, ConnectOptions};
use job::{JobContext, JobOutcome, StopAs};

/// Runs remembered as finished or stopped (for duplicate and late orders).
const REMEMBERED: usize = 4096;

/// Arguments of a run worker.
#[derive(Debug, Clone)]
pub struct RunWorkerArgs {
    /// How to reach NATS (the leaf, for an edge site).
    pub connect: ConnectOptions,
    /// Account subjects.
    pub subjects: Subjects,
    /// This host.
    pub host_id: HostId,
    /// The hub key to trust; `None` refuses every job with a clear reason.
    pub verifier: Option<TrustedKeys>,
    /// JetStream domain of the hub (`Some("hub")` when connected through a leaf node with its
    /// own JetStream domain).
    pub hub_domain: Option<String>,
    /// Folder for per-job scratch files.
    pub work_dir: PathBuf,
    /// The `ansible-playbook` program (name looked up in `PATH`, or a path).
    pub ansible_playbook: PathBuf,
}

/// Messages of the run worker.
pub enum RunWorkerMsg {
    /// A work order arrived.
    Work(async_nats::Message),
    /// A stop order arrived.
    Stop(async_nats::Message),
    /// A job's processes are gone.
    ProcessGone {
        /// Run id.
        run_id: String,
        /// Attempt.
        attempt: u32,
        /// Outcome.
        outcome: JobOutcome,
    },
    /// A job finished (events flushed).
    Done {
        /// Run id.
        run_id: String,
        /// Attempt.
        attempt: u32,
    },
    /// The runs currently running here.
    Running(RpcReplyPort<Vec<(String, u32)>>),
    /// A subscription ended.
    Closed,
}

struct RunningJob {
    attempt: u32,
    stop: watch::Sender<Option<StopAs>>,
    outcome: Option<JobOutcome>,
    waiting: Vec<(String, Encoding)>,
}

/// State of the run worker.
pub struct RunWorkerState {
    client: async_nats::Client,
    ctx: JobContext,
    jobs: HashMap<String, RunningJob>,
    taken: HashSet<(String, u32)>,
    taken_order: VecDeque<(String, u32)>,
    finished: HashMap<String, RunStatus>,
    finished_order: VecDeque<String>,
    tasks: TaskSet<RunWorkerMsg>,
}

/// The run worker actor.
#[derive(Debug, Default)]
pub struct RunWorker;

impl Actor for RunWorker {
    type Msg = RunWorkerMsg;
    type State = RunWorkerState;
    type Arguments = RunWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunWorkerMsg>,
        args: RunWorkerArgs,
    ) -> Result<RunWorkerState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.work_dir)
            .map_err(|e| ActorProcessingErr::from(format!("cannot create {}: {e}", args.work_dir.display())))?;
        // Replies (the playbook fetch) come to the host's own inbox prefix, the only one a host
        // identity may subscribe to.
        let inbox = args.subjects.host_inbox_prefix(&args.host_id);
        let client =
            connect_with(&args.connect, &format!("steward-worker-{}", args.host_id), |o| o.custom_inbox_prefix(inbox))
                .await?;
        let js = match &args.hub_domain {
            Some(d) => jetstream::with_domain(client.clone(), d),
            None => jetstream::new(client.clone()),
        };
        // Plain subscriptions: these subjects name this host; no other instance may take them.
        let work = client.subscribe(args.subjects.run_work(&args.host_id)).await?;
        let stop = client.subscribe(args.subjects.run_stop(&args.host_id)).await?;
        client.flush().await?;
        let me = myself.clone();
        let mut tasks = TaskSet::new(myself, |_| RunWorkerMsg::Closed);
        tasks.spawn("subscriptions", async move {
            let mut work = work.map(RunWorkerMsg::Work);
            let mut stop = stop.map(RunWorkerMsg::Stop);
            loop {
                let msg = tokio::select! {
                    m = stop.next() => m,
                    m = work.next() => m,
                };
                match msg {
                    Some(m) => {
                        if me.cast(m).is_err() {
                            return;
                        }
                    }
                    None => break,
                }
            }
        });
        info!(host_id = %args.host_id, trusted_keys = ?args.verifier.as_ref().map(TrustedKeys::key_ids), "run worker started");
        let ctx = JobContext {
            js,
            subjects: args.subjects,
            host: args.host_id,
            verifier: args.verifier,
            work_dir: args.work_dir,
            ansible_playbook: args.ansible_playbook,
        };
        Ok(RunWorkerState {
            client,
            ctx,
            jobs: HashMap::new(),
            taken: HashSet::new(),
            taken_order: VecDeque::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            tasks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunWorkerMsg>,
        msg: RunWorkerMsg,
        state: &mut RunWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RunWorkerMsg::Work(m) => on_work(&myself, state, m).await,
            RunWorkerMsg::Stop(m) => on_stop(state, m).await,
            RunWorkerMsg::ProcessGone { run_id, attempt, outcome } => {
                if let Some(job) = state.jobs.get_mut(&run_id).filter(|j| j.attempt == attempt) {
                    job.outcome = Some(outcome.clone());
                    let ack = StopAck { stopped: true, finished: None, message: outcome.reason.clone() };
                    for (reply, enc) in std::mem::take(&mut job.waiting) {
                        answer(&state.client, reply, enc, Ok(ack.clone())).await;
                    }
                }
            }
            RunWorkerMsg::Done { run_id, attempt } => {
                if let Some(job) = state.jobs.remove(&run_id) {
                    if job.attempt != attempt {
                        state.jobs.insert(run_id, job);
                    } else {
                        let status = job.outcome.map_or(RunStatus::Failure, |o| o.status);
                        remember_finished(state, run_id, status);
                    }
                }
            }
            RunWorkerMsg::Running(reply) => {
                let _ = reply.send(state.jobs.iter().map(|(r, j)| (r.clone(), j.attempt)).collect());
            }
            RunWorkerMsg::Closed => {
                return Err(ActorProcessingErr::from(format!("run worker subscriptions of {} closed", state.ctx.host)))
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RunWorkerMsg>,
        state: &mut RunWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        for job in state.jobs.values() {
            let _ = job.stop.send(Some(StopAs(RunStatus::Canceled)));
        }
        Ok(())
    }
}

fn remember_finished(state: &mut RunWorkerState, run_id: String, status: RunStatus) {
    if state.finished.insert(run_id.clone(), status).is_none() {
        state.finished_order.push_back(run_id);
    }
    while state.finished_order.len() > REMEMBERED {
        if let Some(old) = state.finished_order.pop_front() {
            state.finished.remove(&old);
        }
    }
}

async fn answer<T: serde::Serialize>(
    client: &async_nats::Client,
    reply: String,
    enc: Encoding,
    result: Result<T, WireError>,
) {
    let payload: Bytes = rpc::encode_reply(enc, result);
    if let Err(e) = client.publish_with_headers(reply, enc.headers(), payload).await {
        debug!(error = %e, "worker reply not sent");
    }
}

async fn on_work(myself: &ActorRef<RunWorkerMsg>, state: &mut RunWorkerState, m: async_nats::Message) {
    let Some(reply) = m.reply.as_ref().map(ToString::to_string) else {
        debug!("work order without reply subject ignored");
        return;
    };
    let enc = Encoding::from_headers(m.headers.as_ref());
    let order: WorkOrder = match codec::decode(enc, &m.payload) {
        Ok(o) => o,
        Err(e) => return answer::<WorkAck>(&state.client, reply, enc, Err(e.into())).await,
    };
    if order.host_id != state.ctx.host.as_str() {
        let e = WireError::invalid(format!("work order for host {:?} reached host {}", order.host_id, state.ctx.host));
        return answer::<WorkAck>(&state.client, reply, enc, Err(e)).await;
    }
    let key = (order.run_id.clone(), order.attempt);
    if state.taken.contains(&key) {
        let ack = WorkAck { accepted: true, duplicate: true, message: "already taken".into() };
        return answer(&state.client, reply, enc, Ok(ack)).await;
    }
    if let Some(status) = state.finished.get(&order.run_id).filter(|s| **s == RunStatus::Canceled) {
        let ack = WorkAck { accepted: false, duplicate: false, message: format!("run was stopped here ({status})") };
        return answer(&state.client, reply, enc, Ok(ack)).await;
    }
    if let Some(old) = state.jobs.get(&order.run_id) {
        // A newer attempt supersedes an older one still running (the hub gave up on it).
        let _ = old.stop.send(Some(StopAs(RunStatus::Timeout)));
    }
    state.taken.insert(key.clone());
    state.taken_order.push_back(key);
    while state.taken_order.len() > REMEMBERED {
        if let Some(old) = state.taken_order.pop_front() {
            state.taken.remove(&old);
        }
    }
    let (stop_tx, stop_rx) = watch::channel(None);
    state.jobs.insert(
        order.run_id.clone(),
        RunningJob { attempt: order.attempt, stop: stop_tx, outcome: None, waiting: Vec::new() },
    );
    answer(&state.client, reply, enc, Ok(WorkAck { accepted: true, duplicate: false, message: "taken".into() })).await;
    let ctx = state.ctx.clone();
    let me = myself.clone();
    let (run_id, attempt) = (order.run_id.clone(), order.attempt);
    // The job (and its events) continue the work order's trace while tracing is on.
    let span = trace::hop(
        m.headers.as_ref(),
        || tracing::info_span!("worker.job", otel.kind = "server", run_id = %run_id, attempt),
    );
    let job = async move {
        let me2 = me.clone();
        let (r2, a2) = (run_id.clone(), attempt);
        job::execute(ctx, order, stop_rx, move |o| {
            let _ = me2.cast(RunWorkerMsg::ProcessGone { run_id: r2, attempt: a2, outcome: o.clone() });
        })
        .await;
        let _ = me.cast(RunWorkerMsg::Done { run_id, attempt });
    };
    tokio::spawn(job.instrument(span));
}

async fn on_stop(state: &mut RunWorkerState, m: async_nats::Message) {
    let reply = m.reply.as_ref().map(ToString::to_string);
    let enc = Encoding::from_headers(m.headers.as_ref());
    let order: StopOrder = match codec::decode(enc, &m.payload) {
        Ok(o) => o,
        Err(e) => {
            if let Some(reply) = reply {
                answer::<StopAck>(&state.client, reply, enc, Err(e.into())).await;
            }
            return;
        }
    };
    let status = if order.status.is_terminal() { order.status } else { RunStatus::Canceled };
    let ack = if let Some(job) = state.jobs.get_mut(&order.run_id) {
        if let Some(outcome) = &job.outcome {
            Some(StopAck { stopped: false, finished: Some(outcome.status), message: "already ended".into() })
        } else {
            let _ = job.stop.send(Some(StopAs(status)));
            if let Some(reply) = reply.clone() {
                job.waiting.push((reply, enc));
            }
            None
        }
    } else if let Some(done) = state.finished.get(&order.run_id) {
        Some(StopAck { stopped: false, finished: Some(*done), message: "already ended".into() })
    } else {
        remember_finished(state, order.run_id.clone(), RunStatus::Canceled);
        Some(StopAck { stopped: false, finished: None, message: "not running here; it will not start".into() })
    };
    if let (Some(ack), Some(reply)) = (ack, reply) {
        answer(&state.client, reply, enc, Ok(ack)).await;
    } else if state.jobs.contains_key(&order.run_id) {
        warn!(run_id = %order.run_id, host_id = %state.ctx.host, "stopping run");
    }
}

/// Typed handle in front of a run worker.
#[derive(Debug, Clone)]
pub struct RunWorkerHandle {
    actor: ActorRef<RunWorkerMsg>,
}

impl RunWorkerHandle {
    /// Wraps a run worker reference.
    #[must_use]
    pub fn new(actor: ActorRef<RunWorkerMsg>) -> Self {
        RunWorkerHandle { actor }
    }

    /// Runs currently running on this host, with their attempts.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the worker is gone.
    pub async fn running(&self) -> Result<Vec<(String, u32)>, ActorsError> {
        crate::call(&self.actor, RunWorkerMsg::Running, std::time::Duration::from_secs(2)).await
    }
}
