//! Validation reports every problem of a document at once, each with its JSON pointer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use steward_subjects::config::spec::{resolve_attestation, SpecId};
use steward_subjects::config::{parse_document, Executor, TargetKind};

fn pointers(doc: &str) -> Vec<(String, String)> {
    let errs = parse_document(doc.as_bytes()).unwrap_err();
    errs.into_iter().map(|d| (d.pointer, d.reason)).collect()
}

fn has(errs: &[(String, String)], pointer: &str, needle: &str) -> bool {
    errs.iter().any(|(p, r)| p == pointer && r.contains(needle))
}

#[test]
fn every_problem_is_reported_with_its_pointer() {
    let doc = r#"{
      "version": 1,
      "bogus": true,
      "controls": [
        {"id": "c1", "parameters": {"max": 5}},
        {"id": "c1"},
        {"id": "bad.id"},
        {"title": "no id"}
      ],
      "components": [
        {"id": "web", "selector": "env in (prod", "controls": ["c1", "nope"]}
      ],
      "assessments": [
        {"id": "a1", "executor": {"kind": "command", "argv": ["check", "{{control.missing}}"]}, "interval": "5x", "timeout": "10s"},
        {"id": "a2", "executor": {"kind": "http", "url": "ftp://x", "method": "FETCH"}, "interval": "10s", "timeout": "20s"},
        {"id": "a3", "executor": {"kind": "tcp", "host": "", "port": 0}},
        {"id": "a4", "executor": {"kind": "smoke"}},
        {"id": "a5", "executor": {"kind": "command", "argv": ["x"]}, "thresholds": [{"metric": "m", "warn": 10, "fail": 5}]}
      ],
      "attestations": [
        {"id": "t1", "assessment": "a1", "component": "web", "controls": ["c1"]},
        {"id": "t2", "assessment": "ghost", "component": "web", "pool": "nowhere"}
      ]
    }"#;
    let errs = pointers(doc);
    assert!(has(&errs, "/bogus", "unknown field"), "{errs:#?}");
    assert!(has(&errs, "/controls/1/id", "duplicate id"), "{errs:#?}");
    assert!(has(&errs, "/controls/2/id", "'.'"), "{errs:#?}");
    assert!(has(&errs, "/controls/3", "missing field `id`"), "{errs:#?}");
    assert!(has(&errs, "/components/0/selector", "selector"), "{errs:#?}");
    assert!(has(&errs, "/components/0/controls/1", "unknown control"), "{errs:#?}");
    assert!(has(&errs, "/assessments/0/interval", "unit"), "{errs:#?}");
    assert!(has(&errs, "/assessments/0/executor/argv/1", "missing"), "{errs:#?}");
    assert!(has(&errs, "/assessments/1/executor/url", "http://"), "{errs:#?}");
    assert!(has(&errs, "/assessments/1/executor/method", "FETCH"), "{errs:#?}");
    assert!(has(&errs, "/assessments/1/timeout", "longer than the interval"), "{errs:#?}");
    assert!(has(&errs, "/assessments/2/executor/host", "empty"), "{errs:#?}");
    assert!(has(&errs, "/assessments/2/executor/port", "1-65535"), "{errs:#?}");
    assert!(has(&errs, "/assessments/3", "smoke"), "{errs:#?}");
    assert!(has(&errs, "/assessments/4/thresholds/0", "past the fail limit"), "{errs:#?}");
    assert!(has(&errs, "/attestations/1/assessment", "unknown assessment"), "{errs:#?}");
    assert!(has(&errs, "/attestations/1/pool", "unknown pool"), "{errs:#?}");
    assert!(errs.len() >= 17, "{errs:#?}");
}

#[test]
fn malformed_json_and_limits_are_refused() {
    assert!(has(&pointers("{"), "", "not valid JSON"));
    assert!(has(&pointers("[]"), "", "JSON object"));
    assert!(has(&pointers(r#"{"version": 2}"#), "/version", "not supported"));
    assert!(has(&pointers(r#"{"controls": {}}"#), "/controls", "array"));
    let big = format!(r#"{{"description": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    assert!(has(&pointers(&big), "", "at most"));
    let many: Vec<String> = (0..10_001).map(|i| format!(r#"{{"id":"p{i}"}}"#)).collect();
    assert!(has(&pointers(&format!(r#"{{"pools": [{}]}}"#, many.join(","))), "/pools", "at most 10000"));
}

#[test]
fn substitutions_resolve_from_attested_controls_only() {
    let doc = r#"{
      "controls": [
        {"id": "a", "parameters": {"n": 3, "shared": "x"}},
        {"id": "b", "parameters": {"shared": "y", "flag": true}}
      ],
      "components": [{"id": "all", "controls": ["a", "b"]}],
      "assessments": [
        {"id": "q", "executor": {"kind": "command", "argv": ["run", "{{control.n}}", "{{ control.b.shared }}", "{{control.flag}}"]}},
        {"id": "amb", "executor": {"kind": "command", "argv": ["{{control.shared}}"]}}
      ],
      "attestations": [
        {"id": "ok", "assessment": "q", "component": "all"},
        {"id": "ambiguous", "assessment": "amb", "component": "all"}
      ]
    }"#;
    let errs = pointers(doc);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(has(&errs, "/assessments/1/executor/argv/0", "ambiguous"), "{errs:#?}");

    let fixed = doc.replace(r#""{{control.shared}}""#, r#""{{control.a.shared}}""#);
    let parsed = parse_document(fixed.as_bytes()).unwrap();
    let t = resolve_attestation(&parsed, &parsed.attestations[0]).unwrap();
    match &t.executor {
        Executor::Command(c) => assert_eq!(c.argv, ["run", "3", "y", "true"]),
        other => panic!("{other:?}"),
    }
    // Ids are deterministic and depend on account, attestation and target only.
    let id = SpecId::derive("acme", "ok", TargetKind::Host, "web-1");
    assert_eq!(id, SpecId::derive("acme", "ok", TargetKind::Host, "web-1"));
    assert_ne!(id, SpecId::derive("other", "ok", TargetKind::Host, "web-1"));
    assert_ne!(id, SpecId::derive("acme", "ok", TargetKind::Pool, "web-1"));
    assert_eq!(id.to_string().parse::<SpecId>().unwrap(), id);
}
