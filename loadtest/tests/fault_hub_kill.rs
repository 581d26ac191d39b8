//! Short version of the `hub_kill` fault scenario: the real `steward server` is SIGKILLed under
//! lease, result and dispatch load and started again; nothing acknowledged is lost or stored
//! twice, no check runs in two runtimes at once, every run ends. Counts, never timings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn a_killed_and_restarted_hub_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_steward-loadtest"))
        .args(["faults", "hub_kill", "--quick", "--report"])
        .arg(&path)
        .env("STEWARD_BIN", env!("CARGO_BIN_EXE_steward-loadtest").replace("steward-loadtest", "steward"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let r = &report["faults"][0];
    let x = &r["extra"];
    // Clean.
    for counter in ["lost", "duplicates", "double_leases", "double_executions", "runs_not_ended"] {
        assert_eq!(r["check"][counter], 0, "{counter}: {r:#}");
    }
    assert_eq!(x["real_sequence_gaps"], 0, "{r:#}");
    assert_eq!(x["real_duplicates"], 0, "{r:#}");
    assert_eq!(x["epochs_not_growing"], 0, "{r:#}");
    // The fault happened: the hub process was gone, and came back (a second leader takeover).
    assert_eq!(x["hub_killed"], true, "{r:#}");
    assert!(x["leader_takeovers"].as_u64().unwrap() >= 2, "{r:#}");
    assert!(x["submit_unanswered"].as_u64().unwrap() > 0, "submits went unanswered while the hub was away: {r:#}");
    // Load flowed before and after it: results acknowledged and stored, runs ended, checks run.
    assert!(x["acked_before_fault"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["acked_after_fault"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["acked"].as_u64().unwrap() > 0 && r["stored"].as_u64().unwrap() >= r["acked"].as_u64().unwrap(), "{r:#}");
    assert!(x["runs_ended_before_fault"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["runs_ended_after_recovery"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["real_results_stored"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["recovery_ms"].is_number(), "the hub served again: {r:#}");
}
