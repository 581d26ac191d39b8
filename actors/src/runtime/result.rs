//! Turns a run's observation into its result record: pass/warn/fail/unknown from the executor
//! and the thresholds (a `warn` limit makes a passing run `warn`), and the output. A run keeps up to [`MAX_STORED_OUTPUT`] bytes of output; the
//! result carries the first [`MAX_INLINE_OUTPUT`] bytes inline, and the whole output, when
//! longer, travels beside it to the outbox, which stores it in the outputs stream (`output_ref`).

use steward_subjects::api::result::{ResultRecord, ResultStatus, MAX_INLINE_OUTPUT, MAX_STORED_OUTPUT};
use steward_subjects::config::{Comparison, JobSpec, Threshold};

use super::executor::{ExecError, Observation};
use super::schedule::SpecCtx;
use crate::now_ms;
use crate::spec_signing::SpecRefusal;

fn breached(t: &Threshold, value: f64, limit: f64) -> bool {
    match t.op {
        Comparison::Gt => value > limit,
        Comparison::Ge => value >= limit,
        Comparison::Lt => value < limit,
        Comparison::Le => value <= limit,
    }
}

fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

/// The output of a run: (inline head, whether anything was cut, the whole output when it is
/// longer than the inline head). The whole is stdout then stderr, at most
/// [`MAX_STORED_OUTPUT`] bytes.
fn output_of(obs: &Observation) -> (String, bool, Option<Vec<u8>>) {
    let mut full = obs.stdout.bytes.clone();
    if !obs.stderr.bytes.is_empty() {
        if !full.is_empty() && !full.ends_with(b"\n") {
            full.push(b'\n');
        }
        full.extend_from_slice(&obs.stderr.bytes);
    }
    let mut truncated = obs.stdout.truncated || obs.stderr.truncated;
    if full.len() > MAX_STORED_OUTPUT {
        full.truncate(MAX_STORED_OUTPUT);
        truncated = true;
    }
    if full.len() <= MAX_INLINE_OUTPUT {
        return (String::from_utf8_lossy(&full).into_owned(), truncated, None);
    }
    // The head is cut from the raw bytes first so a huge output is not converted whole.
    let head = String::from_utf8_lossy(&full[..full.len().min(MAX_INLINE_OUTPUT + 4)]).into_owned();
    let (inline, _) = cut(&head, MAX_INLINE_OUTPUT);
    (inline, true, Some(full))
}

/// The result reporting that `spec` was refused before it ran (nothing was executed).
pub(super) fn refusal_record(ctx: &SpecCtx, spec: &JobSpec, epoch: u64, why: &SpecRefusal) -> ResultRecord {
    let now = now_ms();
    ResultRecord {
        status: ResultStatus::Error,
        error_kind: "refused".into(),
        message: why.to_string(),
        ..base_record(ctx, spec, epoch, now, now)
    }
}

/// What every result of `spec` at `epoch` carries: who ran what, and when.
fn base_record(ctx: &SpecCtx, spec: &JobSpec, epoch: u64, started_at_ms: u64, ended_at_ms: u64) -> ResultRecord {
    ResultRecord {
        spec: spec.id.clone(),
        epoch,
        seq: 0,
        runtime: ctx.runtime.clone(),
        host: ctx.host.clone(),
        content_hash: spec.content_hash.clone(),
        executor: spec.executor.kind().to_owned(),
        started_at_ms,
        ended_at_ms,
        ..ResultRecord::default()
    }
}

/// The status of a run that produced `obs`: the state the check reported (a plugin's exit
/// code) or pass/fail, then the thresholds: a `fail` limit fails it, a `warn` limit makes a
/// passing run `warn`. Also says which limits were breached.
fn status_of(obs: &Observation, thresholds: &[Threshold]) -> (ResultStatus, Vec<String>) {
    let mut status = obs.state.unwrap_or(if obs.passed { ResultStatus::Pass } else { ResultStatus::Fail });
    let mut notes = Vec::new();
    for t in thresholds {
        let Some(v) = obs.metrics.get(&t.metric).copied() else { continue };
        if t.fail.is_some_and(|l| breached(t, v, l)) {
            status = ResultStatus::Fail;
            notes.push(format!("{} = {v} breaches fail limit", t.metric));
        } else if t.warn.is_some_and(|l| breached(t, v, l)) {
            if status == ResultStatus::Pass {
                status = ResultStatus::Warn;
            }
            notes.push(format!("{} = {v} breaches warn limit", t.metric));
        }
    }
    (status, notes)
}

pub(super) fn result_record(
    ctx: &SpecCtx,
    spec: &JobSpec,
    epoch: u64,
    started_at_ms: u64,
    outcome: Result<Observation, ExecError>,
) -> (ResultRecord, Option<Vec<u8>>) {
    let mut r = base_record(ctx, spec, epoch, started_at_ms, now_ms());
    let mut full = None;
    match outcome {
        Ok(obs) => {
            let notes;
            (r.status, notes) = status_of(&obs, &spec.thresholds);
            r.message = obs.message.clone();
            r.exit_code = obs.exit_code;
            if !notes.is_empty() {
                r.message = format!("{}; {}", r.message, notes.join("; "));
            }
            (r.output, r.output_truncated, full) = output_of(&obs);
            r.metrics = obs.metrics;
            r.units = obs.units;
        }
        Err(ExecError::Timeout { after, partial }) => {
            r.status = ResultStatus::Timeout;
            r.error_kind = "timeout".into();
            r.message = format!("timed out after {after:?}");
            (r.output, r.output_truncated, full) = output_of(&partial);
            r.metrics = partial.metrics;
        }
        Err(e) => {
            r.status = ResultStatus::Error;
            r.error_kind = e.kind().to_owned();
            r.message = e.to_string();
        }
    }
    (r, full)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::runtime::executor::Captured;

    fn obs(stdout: &[u8], stderr: &[u8], truncated: bool) -> Observation {
        Observation {
            stdout: Captured { bytes: stdout.to_vec(), truncated, total: stdout.len() as u64 },
            stderr: Captured { bytes: stderr.to_vec(), truncated: false, total: stderr.len() as u64 },
            ..Observation::default()
        }
    }

    #[test]
    fn thresholds_warn_and_fail_on_top_of_the_reported_state() {
        let t = |warn, fail| Threshold { metric: "load1".into(), op: Comparison::Gt, warn, fail };
        let with = |passed, state, load: f64| Observation {
            passed,
            state,
            metrics: [("load1".to_owned(), load)].into(),
            ..Observation::default()
        };
        let th = [t(Some(4.0), Some(8.0))];
        assert_eq!(status_of(&with(true, None, 1.0), &th).0, ResultStatus::Pass);
        let (s, notes) = status_of(&with(true, None, 5.0), &th);
        assert_eq!((s, notes.len()), (ResultStatus::Warn, 1));
        assert_eq!(status_of(&with(true, None, 9.0), &th).0, ResultStatus::Fail);
        // A warn limit does not soften a failure or hide an unknown state.
        assert_eq!(status_of(&with(false, None, 5.0), &th).0, ResultStatus::Fail);
        assert_eq!(status_of(&with(false, Some(ResultStatus::Unknown), 5.0), &th).0, ResultStatus::Unknown);
        assert_eq!(status_of(&with(false, Some(ResultStatus::Warn), 1.0), &th).0, ResultStatus::Warn);
        // A metric the run did not give is not judged.
        assert_eq!(
            status_of(&with(true, None, 1.0), &[Threshold { metric: "x".into(), ..t(Some(0.0), None) }]).0,
            ResultStatus::Pass
        );
    }

    #[test]
    fn short_output_stays_inline_only() {
        let (inline, cut, full) = output_of(&obs(b"out", b"err\n", false));
        assert_eq!(inline, "out\nerr\n");
        assert!(!cut);
        assert_eq!(full, None);
    }

    #[test]
    fn long_output_keeps_a_valid_inline_head_and_the_whole() {
        // Three-byte characters: the 4096-byte cut falls inside one.
        let text = "€".repeat(3000);
        let (inline, cut, full) = output_of(&obs(text.as_bytes(), b"", false));
        assert!(cut);
        assert!(inline.len() <= MAX_INLINE_OUTPUT && inline.len() > MAX_INLINE_OUTPUT - 3);
        assert!(text.starts_with(&inline));
        assert_eq!(full.unwrap(), text.as_bytes());
    }

    #[test]
    fn output_is_bounded_and_executor_truncation_is_reported() {
        let big = vec![b'a'; MAX_STORED_OUTPUT];
        let (_, cut, full) = output_of(&obs(&big, b"tail", false));
        assert!(cut);
        assert_eq!(full.unwrap().len(), MAX_STORED_OUTPUT);
        let (_, cut, full) = output_of(&obs(b"x", b"", true));
        assert!(cut, "the executor dropped bytes");
        assert_eq!(full, None);
    }
}
