//! Telemetry history: every stored result becomes a raw point of its series (account, host,
//! check), and the points roll up into 1-minute and 1-hour buckets kept much longer, all in
//! JetStream; `telemetry.query` reads a series back at any step, and the hub's `/metrics`
//! shows the latest value of every check ([`crate::metrics::CheckValues`]).
//!
//! # Storage layout
//!
//! | stream | subject | one message per | kept (default) |
//! |---|---|---|---|
//! | `STEWARD_TELEMETRY_RAW` | `steward.v1.<a>.telemetry.raw.<host>.<check>` | result: a [`TelemetryPoint`] (time, status, every metric) | 48 h |
//! | `STEWARD_TELEMETRY_1M` | `steward.v1.<a>.telemetry.m1.<host>.<check>` | series and minute: a [`RollupPart`] (per metric min, max, sum, count, last; counts per status) | 30 days |
//! | `STEWARD_TELEMETRY_1H` | `steward.v1.<a>.telemetry.h1.<host>.<check>` | series and hour, the same shape | 400 days |
//!
//! A series is one subject per level, so reading one series is a filtered consumer that never
//! touches another series' messages. A bucket normally has one part; a result that reaches the
//! hub after its bucket was written (an edge back after an hour offline) adds a further part to
//! the same bucket, and readers merge the parts of a bucket: late points count, nothing stored
//! is rewritten. 1-hour parts are made from 1-minute parts (merging is exact: min of mins, sum of
//! sums, ...). The 1-minute retention of 30 days keeps a month of 1-minute graphs (the range
//! people zoom into) at about 30 x 1 440 parts per series; older ranges are served from the
//! 1-hour level, 60 times smaller.
//!
//! Cost per series per day, measured with one metric per check and a result every 10 s
//! (8 640 results a day, the stream's stored bytes read back; `docs/telemetry.md` has the
//! method): raw 1.73 MB (200 bytes a point), 1-minute 0.49 MB (341 bytes a part), 1-hour
//! 8.3 KB (347 bytes a part). JetStream's per-message overhead (subject, the `Nats-Msg-Id`
//! header, sequence, time) is about half of each message; named MessagePack fields most of the
//! rest. So with the default retention one series holds about 3.5 MB raw, 14.7 MB of 1-minute
//! parts and 3.3 MB of 1-hour parts, about 21 MB in all (times the replicas on a cluster).
//!
//! # Writing: one writer per account, exact across `kill -9`
//!
//! Every hub runs this component; one of them holds the writer lock (the checkpoint record
//! `<account>.writer` in `steward_telemetry`, written with compare-and-set, naming the instance
//! and an expiry) and is the only one that reads the account's durable results consumer
//! (`telemetry-<account>`) and writes. The others wait for the lock to expire: a killed writer
//! is replaced after `lock_ttl`. A writer whose checkpoint write is refused (another took over)
//! stops at once. See [`writer`] for how each step stays exact across a crash.
//!
//! Layout: [`writer`] the writer loop and its recovery, [`rollup`] one level in memory, [`store`]
//! the JetStream I/O, [`api`] the endpoints (`telemetry.query`, `telemetry.series`), [`client`]
//! the typed client, [`query`] the reading and step aggregation.
//!
//! [`TelemetryPoint`]: steward_subjects::api::telemetry::TelemetryPoint
//! [`RollupPart`]: steward_subjects::api::telemetry::RollupPart

pub mod api;
pub mod client;
pub mod query;
mod rollup;
pub mod store;
pub mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::streams::TelemetryRetention;
use steward_subjects::Subjects;

use self::writer::{WriterCtx, WriterStats};
use crate::tasks::TaskSet;
use crate::ActorsError;

/// Settings of the telemetry component.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// How long each level is kept (also given to `ensure`).
    pub retention: TelemetryRetention,
    /// How often closed buckets are written.
    pub flush_every: Duration,
    /// How long after a minute ends its bucket is written (results still on their way).
    pub grace_minute: Duration,
    /// How long after an hour ends its bucket is written (its last 1-minute parts included).
    pub grace_hour: Duration,
    /// How long the writer lock outlives its last write: a standby hub takes over this long
    /// after the writer stopped.
    pub lock_ttl: Duration,
    /// Most (host, check) pairs exposed on `/metrics` (`steward_check_*`).
    pub max_exposed: usize,
    /// Most metrics per check exposed on `/metrics`.
    pub max_metrics: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            retention: TelemetryRetention::default(),
            flush_every: Duration::from_secs(5),
            grace_minute: Duration::from_secs(15),
            grace_hour: Duration::from_secs(120),
            lock_ttl: Duration::from_secs(15),
            max_exposed: 20_000,
            max_metrics: 32,
        }
    }
}

/// Arguments of the telemetry component.
#[derive(Debug, Clone)]
pub struct TelemetryArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account.
    pub subjects: Subjects,
    /// Settings.
    pub config: TelemetryConfig,
}

/// What the writer of this hub has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStatus {
    /// Whether this hub writes the account's telemetry now.
    pub writing: bool,
    /// Raw points stored since start.
    pub points: u64,
    /// Rollup parts stored since start.
    pub parts: u64,
    /// Stream sequence of `STEWARD_RESULTS` written up to.
    pub done_seq: u64,
    /// Times this hub took the writer lock.
    pub takeovers: u64,
}

/// Messages of the telemetry actor.
pub enum TelemetryMsg {
    /// The writer's status.
    Status(RpcReplyPort<WriterStatus>),
    /// A background task ended.
    TaskEnded(&'static str),
}

/// State of the telemetry actor.
pub struct TelemetryState {
    stats: Arc<WriterStats>,
    tasks: TaskSet<TelemetryMsg>,
    service: Option<async_nats::service::Service>,
}

/// The telemetry actor: the endpoints and the writer loop on tasks beside it.
#[derive(Debug, Default)]
pub struct Telemetry;

impl Actor for Telemetry {
    type Msg = TelemetryMsg;
    type State = TelemetryState;
    type Arguments = TelemetryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TelemetryMsg>,
        args: TelemetryArgs,
    ) -> Result<TelemetryState, ActorProcessingErr> {
        let mut tasks = TaskSet::new(myself.clone(), TelemetryMsg::TaskEnded);
        let service = api::start_service(&args, &mut tasks).await?;
        let stats = Arc::new(WriterStats::default());
        let ctx = WriterCtx {
            client: args.client.clone(),
            subjects: args.subjects.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            config: args.config.clone(),
            stats: stats.clone(),
            values: crate::metrics::global().check_values(args.subjects.account()),
        };
        tasks.spawn("writer", writer::run(ctx));
        Ok(TelemetryState { stats, tasks, service: Some(service) })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TelemetryMsg>,
        msg: TelemetryMsg,
        state: &mut TelemetryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TelemetryMsg::Status(reply) => {
                let s = &state.stats;
                let _ = reply.send(WriterStatus {
                    writing: s.writing.load(Ordering::Relaxed),
                    points: s.points.load(Ordering::Relaxed),
                    parts: s.parts.load(Ordering::Relaxed),
                    done_seq: s.done_seq.load(Ordering::Relaxed),
                    takeovers: s.takeovers.load(Ordering::Relaxed),
                });
            }
            TelemetryMsg::TaskEnded(what) => return Err(crate::tasks::ended("telemetry", what)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TelemetryMsg>,
        state: &mut TelemetryState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.stop("telemetry", state.service.take()).await;
        Ok(())
    }
}

/// Typed handle in front of the telemetry actor.
#[derive(Debug, Clone)]
pub struct TelemetryHandle {
    actor: ActorRef<TelemetryMsg>,
}

impl TelemetryHandle {
    /// Wraps a running telemetry actor.
    #[must_use]
    pub fn new(actor: ActorRef<TelemetryMsg>) -> Self {
        TelemetryHandle { actor }
    }

    /// What this hub's writer has done.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the actor is gone.
    pub async fn status(&self) -> Result<WriterStatus, ActorsError> {
        crate::call(&self.actor, TelemetryMsg::Status, Duration::from_secs(5)).await
    }
}
