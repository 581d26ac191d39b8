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
