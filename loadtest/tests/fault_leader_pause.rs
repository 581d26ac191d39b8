//! Short version of the `leader_pause` fault scenario: the lease leader (one of two real
//! `steward server`s) is frozen with SIGSTOP beyond its lock TTL while runtimes work, then
//! resumed; the other hub takes over, no check runs in two runtimes at once, no epoch has two
//! holders, the old leader writes nothing after the takeover and its fence is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn a_frozen_lease_leader_is_replaced_and_its_writes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_steward-loadtest"))
        .args(["faults", "leader_pause", "--quick", "--report"])
        .arg(&path)
        .env("STEWARD_BIN", env!("CARGO_BIN_EXE_steward-loadtest").replace("steward-loadtest", "steward"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let r = &report["faults"][0];
    let x = &r["extra"];
    for counter in ["lost", "duplicates", "double_leases", "double_executions", "runs_not_ended"] {
        assert_eq!(r["check"][counter], 0, "{counter}: {r:#}");
    }
    // The fault happened: the leader process was really stopped, then ran again, and the other
    // hub took the lock over (a newer generation, another instance, another process).
    assert_eq!(x["process_was_stopped"], true, "{r:#}");
    assert_eq!(x["process_running_again"], true, "{r:#}");
    let (old, new) = (&x["old_leader"], &x["new_leader"]);
    assert!(new["generation"].as_u64().unwrap() > old["generation"].as_u64().unwrap(), "{r:#}");
    assert_ne!(new["instance"], old["instance"], "{r:#}");
    assert_ne!(new["process"], x["paused_process"], "{r:#}");
    // Its writes are refused: nothing of its generation in the journal after the takeover, it
    // stepped down once resumed, and an append under its fence is refused by JetStream.
    assert_eq!(x["journal_writes_of_old_generation_after_takeover"], 0, "{r:#}");
    assert!(!x["old_leader_step_downs"].as_array().unwrap().is_empty(), "{r:#}");
    assert!(x["fence_probe"].as_str().unwrap().contains("refused"), "{r:#}");
    // Work flowed before, during and after.
    assert!(x["acked_before_pause"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["acked_after_resume"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["executions_before_pause"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["executions_after_resume"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["recovery_ms"].is_number(), "the new leader served: {r:#}");
}
