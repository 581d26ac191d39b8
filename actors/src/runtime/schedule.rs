//! Runs each held spec on its interval: one task per spec, started when the spec is held and
//! verifies against the trusted keys (restarted when its epoch or stored form changes), canceled
//! when it is dropped or when a pool spec's lease can no longer be trusted. Each finished run
//! goes to the actor as a result; a refused spec's refusal goes as an `error` result instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use steward_storage::runtime::CachedSpec;
use steward_subjects::config::{JobSpec, TargetKind};
use steward_subjects::subject::result_host_of;
use steward_subjects::{trace, HostId};
use tracing::{warn, Instrument};

use super::executor::{self, cancel_pair, CancelHandle, ExecError, ExecSettings, RunContext};
use super::result::{refusal_record, result_record};
use super::{RuntimeMsg, RuntimeState};
use crate::now_ms;

/// Shortest interval a spec is run at (guards against a zero interval).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(super) struct Running {
    epoch: u64,
    spec: JobSpec,
    cancel: CancelHandle,
    task: tokio::task::JoinHandle<()>,
    recheck: Arc<tokio::sync::Notify>,
}

impl Running {
    /// Runs the spec now: the wait for its next run ends at once (a run in progress is
    /// followed by another right away).
    pub(super) fn recheck(&self) {
        self.recheck.notify_one();
    }
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
        keep.contains(id.as_str()) && state.held.get(id).is_some_and(|c| c.epoch == r.epoch && c.spec == r.spec)
    });
    state
        .refused_specs
        .retain(|id, (epoch, spec)| state.held.get(id).is_some_and(|c| c.epoch == *epoch && c.spec == *spec));
    for c in wanted {
        if state.running.contains_key(&c.spec.id) {
            continue;
        }
        let ctx = SpecCtx {
            runtime: state.args.runtime.to_string(),
            host: result_host_of(state.args.host.as_ref(), &state.args.runtime),
            settings: state.settings.clone(),
            me: myself.clone(),
            drain_trace: state.drain_trace.clone(),
        };
        if !admit(state, &ctx, &c) {
            continue;
        }
        let (cancel, signal) = cancel_pair();
        let (epoch, spec) = (c.epoch, c.spec.clone());
        let id = c.spec.id.clone();
        let traced = state.spec_traces.remove(&id);
        let recheck = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run_spec(ctx, c.spec, c.epoch, signal, traced, recheck.clone()));
        state.running.insert(id, Running { epoch, spec, cancel, task, recheck });
    }
    if !state.spec_traces.is_empty() {
        let held = &state.held;
        state.spec_traces.retain(|id, _| held.contains_key(id));
    }
}

/// Whether `c` verifies against the trusted keys; a spec version refused for the first time is
/// counted, logged and reported as an `error` result (once per version and epoch).
fn admit(state: &mut RuntimeState, ctx: &SpecCtx, c: &CachedSpec) -> bool {
    if state.refused_specs.get(&c.spec.id).is_some_and(|(epoch, spec)| c.epoch == *epoch && c.spec == *spec) {
        return false;
    }
    let account = state.args.subjects.account().as_str();
    let host = state.args.host.as_ref().map(HostId::as_str);
    let Err(why) = state.args.trusted.verify_cached(&c.spec, account, host, &mut state.verified_roots) else {
        return true;
    };
    warn!(runtime = %state.args.runtime, spec = %c.spec.id, epoch = c.epoch, reason = %why, "job spec refused");
    state.status.specs_refused += 1;
    state.refused_specs.insert(c.spec.id.clone(), (c.epoch, c.spec.clone()));
    let record = refusal_record(ctx, &c.spec, c.epoch, &why);
    let _ = ctx.me.cast(RuntimeMsg::RunDone(Box::new((record, None))));
    false
}

pub(super) struct SpecCtx {
    pub(super) runtime: String,
    pub(super) host: String,
    settings: ExecSettings,
    me: ActorRef<RuntimeMsg>,
    /// Where a traced first run leaves its context for the next drain (while tracing is on).
    drain_trace: Arc<Mutex<Option<trace::Context>>>,
}

fn jitter(max: Duration) -> Duration {
    let nanos = u64::from(uuid::Uuid::new_v4().as_fields().0);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(nanos % max_ms)
}

/// Runs `spec` on its interval until canceled, and at once when `recheck` is notified. The
/// first run continues `traced` (the sync that brought the spec) while tracing is on, and
/// leaves its own context for the drain that submits its result.
async fn run_spec(
    ctx: SpecCtx,
    spec: JobSpec,
    epoch: u64,
    cancel: executor::Cancel,
    traced: Option<trace::Context>,
    recheck: Arc<tokio::sync::Notify>,
) {
    let mut traced = traced;
    let interval = Duration::from_millis(spec.interval_ms).max(MIN_INTERVAL);
    let timeout = Duration::from_millis(spec.timeout_ms).clamp(MIN_INTERVAL, interval.max(MIN_INTERVAL) * 10);
    let exec = executor::build(&spec.executor, &ctx.settings);
    // Spread the first runs of many specs over up to one interval (at most 1 s).
    tokio::select! {
        () = tokio::time::sleep(jitter(interval.min(Duration::from_secs(1)))) => {}
        () = recheck.notified() => {}
    }
    let mut next = tokio::time::Instant::now();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started_at_ms = now_ms();
        let span = match traced.take() {
            Some(cx) => trace::follow(Some(&cx), || tracing::info_span!("runtime.check", spec = %spec.id, epoch)),
            None => tracing::Span::none(),
        };
        let run = async {
            match &exec {
                Ok(e) => e.run(RunContext { timeout, cancel: cancel.clone() }).await,
                Err(e) => Err(ExecError::Command(executor::CommandError::Spawn {
                    program: spec.executor.kind().to_owned(),
                    reason: e.to_string(),
                })),
            }
        };
        let outcome = run.instrument(span.clone()).await;
        if let Some(cx) = trace::context_of_span(&span) {
            *ctx.drain_trace.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx);
        }
        drop(span);
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
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = recheck.notified() => next = tokio::time::Instant::now(),
        }
    }
}
