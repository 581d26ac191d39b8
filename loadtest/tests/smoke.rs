//! `steward-loadtest --quick all` as a correctness smoke test: it starts its own nats-server,
//! runs every scenario small, and writes a JSON report with every field the harness promises.
//! Counters are checked (duplicates and lost are zero), timing never is.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn quick_all_writes_a_complete_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_steward-loadtest"))
        .args(["--quick", "all", "--report"])
        .arg(&path)
        .env("STEWARD_BIN", env!("CARGO_BIN_EXE_steward-loadtest").replace("steward-loadtest", "steward"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("raw.js_publish_async"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report["quick"], true);
    assert_eq!(report["topology"], "single");
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    let scenarios = report["scenarios"].as_array().unwrap();
    for name in steward_loadtest::scenarios::raw::MEASUREMENTS {
        assert!(scenarios.iter().any(|s| s["name"] == *name), "{name} missing");
    }
    for s in scenarios {
        for field in ["operations", "ops_per_sec", "errors", "duplicates", "lost", "elapsed_secs"] {
            assert!(s[field].is_number(), "{} lacks {field}: {s}", s["name"]);
        }
        assert!(s["operations"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["duplicates"], 0, "{s}");
        assert_eq!(s["lost"], 0, "{s}");
        assert!(s["nats"]["cpu_seconds"].is_number() && s["nats"]["peak_rss_bytes"].as_u64().unwrap() > 0, "{s}");
        if s["name"].as_str().unwrap().starts_with("raw.") {
            assert!(s["ceiling"].is_null());
        }
    }
    // Every non-raw scenario compares at least one of its measurements with the raw ceiling.
    let families: std::collections::BTreeSet<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap().split('.').next().unwrap())
        .filter(|f| *f != "raw")
        .collect();
    for family in families {
        assert!(
            scenarios
                .iter()
                .any(|s| s["name"].as_str().unwrap().split('.').next() == Some(family)
                    && s["ceiling"]["ratio"].is_number()),
            "{family} reports no ratio to the raw ceiling"
        );
    }
    let rr = scenarios.iter().find(|s| s["name"] == "raw.request_reply_serial").unwrap();
    for p in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        assert!(rr["latency"][p].as_f64().unwrap() > 0.0, "{rr}");
    }
}

#[test]
fn unknown_scenarios_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_steward-loadtest")).args(["--quick", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario \"nope\""));
}
