//! The per-host run state machine, as pure functions over [`HostRun`]:
//! `pending → running → success | failure | timeout | canceled`, with retries of `failure` and
//! `timeout` while attempts are left (each attempt recorded). Terminal states never change;
//! events of another attempt are ignored.

use steward_subjects::api::run::{Attempt, EventKind, HostRun, RunEvent, RunStatus, StatusCounts};

/// Applies one job event seen at `stream_seq`; returns whether the record changed.
pub fn apply_event(h: &mut HostRun, ev: &RunEvent, stream_seq: u64, now_ms: u64, now: &str) -> bool {
    if ev.attempt != h.attempt || h.status.is_terminal() {
        return false;
    }
    let mut changed = false;
    if h.status == RunStatus::Pending {
        h.status = RunStatus::Running;
        h.started_at = Some(if ev.at.is_empty() { now.to_owned() } else { ev.at.clone() });
        changed = true;
    }
    if h.first_event_stream_seq == 0 || (ev.seq == 1 && stream_seq < h.first_event_stream_seq) {
        h.first_event_stream_seq = stream_seq;
        changed = true;
    }
    if ev.seq > h.last_event_seq {
        h.last_event_seq = ev.seq;
        changed = true;
    }
    match ev.kind {
        EventKind::Artifact if ev.artifact.is_some() => {
            h.artifact.clone_from(&ev.artifact);
            changed = true;
        }
        EventKind::Last => {
            let status = match ev.status {
                Some(s) if s.is_terminal() => s,
                _ => RunStatus::Failure,
            };
            end_attempt(h, status, &ev.reason, ev.exit_code, now_ms, now);
            changed = true;
        }
        _ => {}
    }
    changed
}

/// Ends the current attempt with `status`; schedules a retry when the status is `failure` or
/// `timeout` and attempts are left.
pub fn end_attempt(h: &mut HostRun, status: RunStatus, reason: &str, exit_code: Option<i32>, now_ms: u64, now: &str) {
    h.attempts.push(Attempt {
        attempt: h.attempt,
        status,
        reason: reason.to_owned(),
        exit_code,
        started_at: h.started_at.clone(),
        finished_at: now.to_owned(),
    });
    h.exit_code = exit_code;
    let retry = matches!(status, RunStatus::Failure | RunStatus::Timeout) && h.attempt < h.max_attempts.max(1);
    if retry {
        h.attempt += 1;
        h.status = RunStatus::Pending;
        h.not_before_ms = now_ms + h.backoff_ms;
        h.deadline_ms = h.not_before_ms + h.timeout_ms;
        h.started_at = None;
        h.first_event_stream_seq = 0;
        h.last_event_seq = 0;
        h.artifact = None;
        h.reason = format!("attempt {} ended {status}: {reason}; retrying", h.attempt - 1);
    } else {
        h.status = status;
        h.finished_at = Some(now.to_owned());
        h.reason = reason.to_owned();
    }
}

/// Cancels a host run that has not ended; returns whether it changed.
pub fn cancel(h: &mut HostRun, reason: &str, now_ms: u64, now: &str) -> bool {
    if h.status.is_terminal() {
        return false;
    }
    let max = h.max_attempts;
    h.max_attempts = 0;
    end_attempt(h, RunStatus::Canceled, reason, None, now_ms, now);
    h.max_attempts = max;
    true
}

/// Ends a host run whose deadline passed as `timeout` (or retries it); returns whether it changed.
pub fn expire(h: &mut HostRun, now_ms: u64, now: &str) -> bool {
    if h.status.is_terminal() || now_ms < h.deadline_ms {
        return false;
    }
    let reason = match h.status {
        RunStatus::Running => "deadline passed while running; host did not report an end",
        _ => "deadline passed before the host started the run",
    };
    end_attempt(h, RunStatus::Timeout, reason, None, now_ms, now);
    true
}

/// Counts host runs per status.
#[must_use]
pub fn count(hosts: &[HostRun]) -> StatusCounts {
    let mut c = StatusCounts::default();
    for h in hosts {
        c.add(h.status);
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host(max_attempts: u32) -> HostRun {
        HostRun {
            run_id: "r".into(),
            host_id: "h".into(),
            attempt: 1,
            max_attempts,
            timeout_ms: 1000,
            backoff_ms: 50,
            deadline_ms: 1000,
            ..HostRun::default()
        }
    }

    fn ev(kind: EventKind, seq: u64, status: Option<RunStatus>) -> RunEvent {
        RunEvent { run_id: "r".into(), host_id: "h".into(), attempt: 1, seq, kind, status, ..RunEvent::default() }
    }

    #[test]
    fn start_then_last_success() {
        let mut h = host(1);
        assert!(apply_event(&mut h, &ev(EventKind::Start, 1, None), 10, 5, "t"));
        assert_eq!(h.status, RunStatus::Running);
        assert_eq!(h.first_event_stream_seq, 10);
        assert!(apply_event(&mut h, &ev(EventKind::Last, 3, Some(RunStatus::Success)), 12, 6, "t"));
        assert_eq!(h.status, RunStatus::Success);
        assert_eq!(h.attempts.len(), 1);
        // terminal is sticky: a late timeout or cancel changes nothing
        assert!(!expire(&mut h, 10_000, "t"));
        assert!(!cancel(&mut h, "x", 10_000, "t"));
        assert!(!apply_event(&mut h, &ev(EventKind::Last, 4, Some(RunStatus::Failure)), 13, 7, "t"));
    }

    #[test]
    fn failure_is_retried_and_attempts_recorded() {
        let mut h = host(2);
        apply_event(&mut h, &ev(EventKind::Last, 2, Some(RunStatus::Failure)), 3, 100, "t");
        assert_eq!(h.status, RunStatus::Pending);
        assert_eq!(h.attempt, 2);
        assert_eq!(h.not_before_ms, 150);
        assert_eq!(h.deadline_ms, 1150);
        // a late event of attempt 1 is ignored
        assert!(!apply_event(&mut h, &ev(EventKind::Start, 1, None), 4, 101, "t"));
        assert!(expire(&mut h, 1150, "t"));
        assert_eq!(h.status, RunStatus::Timeout);
        assert_eq!(h.attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [RunStatus::Failure, RunStatus::Timeout]);
    }

    #[test]
    fn cancel_never_retries() {
        let mut h = host(5);
        assert!(cancel(&mut h, "asked", 1, "t"));
        assert_eq!(h.status, RunStatus::Canceled);
        assert_eq!(h.max_attempts, 5);
    }

    #[test]
    fn deadline_only_after_it_passed() {
        let mut h = host(1);
        assert!(!expire(&mut h, 999, "t"));
        assert!(expire(&mut h, 1000, "t"));
        assert_eq!(h.status, RunStatus::Timeout);
    }
}
