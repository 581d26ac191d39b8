//! The correctness counters are themselves tested on recorded histories.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use steward_loadtest::checker::{check, parse_jsonl, Event};

#[test]
fn recorded_anomalies_are_each_reported() {
    let history = parse_jsonl(include_str!("fixtures/history-anomalies.jsonl")).unwrap();
    let r = check(&history);
    assert_eq!(r.double_leases, 1, "{r:?}");
    assert_eq!(r.lost, 1, "{r:?}");
    assert_eq!(r.duplicates, 1, "{r:?}");
    assert!(r.examples.iter().any(|e| e.contains("spec s2") && e.contains("at once")), "{r:?}");
    assert!(r.examples.iter().any(|e| e.contains("item r2") && e.contains("never stored")), "{r:?}");
    assert!(r.examples.iter().any(|e| e.contains("item r3") && e.contains("2 times")), "{r:?}");
    assert!(!r.is_clean());
}

#[test]
fn a_clean_history_is_clean() {
    // Back-to-back leases (one ends when the next begins) and stored-but-never-acked items
    // (an ack lost on the way back) are not anomalies.
    let r = check(&parse_jsonl(include_str!("fixtures/history-clean.jsonl")).unwrap());
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn one_epoch_granted_twice_is_a_double_lease() {
    let ev = |holder: &str, at| Event::LeaseGranted { spec: "s".into(), holder: holder.into(), epoch: 7, at };
    let r = check(&[ev("a", 1), ev("b", 2)]);
    assert!(r.double_leases >= 1, "{r:?}");
}

#[test]
fn malformed_history_lines_are_reported_with_their_line() {
    let err = parse_jsonl("{\"type\":\"item_acked\",\"key\":\"a\"}\n{oops}\n").unwrap_err();
    assert!(err.starts_with("line 2"), "{err}");
}

#[test]
fn overlapping_executions_by_two_runtimes_are_double_executions() {
    let start = |rt: &str, at| Event::ExecStarted { spec: "s".into(), runtime: rt.into(), at };
    let end = |rt: &str, at| Event::ExecEnded { spec: "s".into(), runtime: rt.into(), at };
    // a runs 10..20, b runs 20..30 (back to back): clean.
    let clean = check(&[start("a", 10), end("a", 20), start("b", 20), end("b", 30)]);
    assert!(clean.is_clean(), "{clean:?}");
    // b starts at 15 while a still runs: one double execution.
    let r = check(&[start("a", 10), start("b", 15), end("a", 20), end("b", 30)]);
    assert_eq!(r.double_executions, 1, "{r:?}");
    assert!(r.examples.iter().any(|e| e.contains("executed by a and b at once")), "{r:?}");
    // An execution that never ended overlaps everything after it.
    let r = check(&[start("a", 10), start("b", 50), end("b", 60)]);
    assert_eq!(r.double_executions, 1, "{r:?}");
    // One runtime's own consecutive runs never count.
    let r = check(&[start("a", 10), end("a", 20), start("a", 20), end("a", 30)]);
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn a_run_started_and_never_ended_is_reported() {
    let r = check(&[
        Event::RunStarted { run: "r1".into() },
        Event::RunStarted { run: "r2".into() },
        Event::RunEnded { run: "r1".into(), state: "success".into() },
    ]);
    assert_eq!(r.runs_not_ended, 1, "{r:?}");
    assert!(r.examples.iter().any(|e| e.contains("run r2")), "{r:?}");
}
