//! Runs each held spec on its interval: one task per spec, started when the spec is held (and
//! restarted when its epoch or content changes), canceled when it is dropped or when a pool
//! spec's lease can no longer be trusted. Each finished run goes to the actor as a result.

use std::time::Duration;

use ractor::ActorRef;
use steward_storage::runtime::CachedSpec;
use steward_subjects::config::{JobSpec, TargetKind};
use steward_subjects::subject::result_host_of;

use super::executor::{self, cancel_pair, CancelHandle, ExecError, ExecSettings, RunContext};
use super::result::result_record;
use super::{RuntimeMsg, RuntimeState};
use crate::now_ms;

/// Shortest interval a spec is run at (guards against a zero interval).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(super) struct Running {
    epoch: u64,
    content_hash: String,
    cancel: CancelHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// Starts runs for held specs that are not running (or whose epoch or content changed), and
/// stops pool specs whose lease has not been confirmed within the TTL.
pub(super) fn reschedule(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    let trusted = now_ms() < state.confirmed_at_ms.saturating_add(state.ttl_ms);
    let wanted: Vec<CachedSpec> =
        state.held.values().filter(|c| c.spec.target.kind == TargetKind::Host || trusted).cloned().collect();
    let keep: std::collections::HashSet<&str> = wanted.iter().map(|c| c.spec.id.as_str()).collect();
    state.running.retain(|id, r| {
        keep.contains(id.as_str())
            && state.held.get(id).is_some_and(|c| c.epoch == r.epoch && c.spec.content_hash == r.content_hash)
    });
    for c in wanted {
        if state.running.contains_key(&c.spec.id) {
            continue;
        }
        let (cancel, signal) = cancel_pair();
        let ctx = SpecCtx {
            runtime: state.args.runtime.to_string(),
            host: result_host_of(state.args.host.as_ref(), &state.args.runtime),
            settings: state.settings.clone(),
            me: myself.clone(),
        };
        let (epoch, content_hash) = (c.epoch, c.spec.content_hash.clone());
        let id = c.spec.id.clone();
        let task = tokio::spawn(run_spec(ctx, c.spec, c.epoch, signal));
        state.running.insert(id, Running { epoch, content_hash, cancel, task });
    }
}

pub(super) struct SpecCtx {
    pub(super) runtime: String,
    pub(super) host: String,
    settings: ExecSettings,
    me: ActorRef<RuntimeMsg>,
}

fn jitter(max: Duration) -> Duration {
    let nanos = u64::from(uuid::Uuid::new_v4().as_fields().0);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(nanos % max_ms)
}

async fn run_spec(ctx: SpecCtx, spec: JobSpec, epoch: u64, cancel: executor::Cancel) {
    let interval = Duration::from_millis(spec.interval_ms).max(MIN_INTERVAL);
    let timeout = Duration::from_millis(spec.timeout_ms).clamp(MIN_INTERVAL, interval.max(MIN_INTERVAL) * 10);
    let exec = executor::build(&spec.executor, &ctx.settings);
    // Spread the first runs of many specs over up to one interval (at most 1 s).
    tokio::time::sleep(jitter(interval.min(Duration::from_secs(1)))).await;
    let mut next = tokio::time::Instant::now();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started_at_ms = now_ms();
        let outcome = match &exec {
            Ok(e) => e.run(RunContext { timeout, cancel: cancel.clone() }).await,
            Err(e) => Err(ExecError::Command(executor::CommandError::Spawn {
                program: spec.executor.kind().to_owned(),
                reason: e.to_string(),
            })),
        };
        if matches!(outcome, Err(ExecError::Canceled)) {
            return;
        }
        let record = result_record(&ctx, &spec, epoch, started_at_ms, outcome);
        if ctx.me.cast(RuntimeMsg::RunDone(Box::new(record))).is_err() {
            return;
        }
        // Next run one interval after the previous start, with up to 10% jitter.
        next += interval + jitter(interval / 10);
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}
