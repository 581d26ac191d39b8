//! The short version of fault scenario `leaf_cut` (`steward-loadtest faults leaf_cut --quick
//! --auth`): real `steward server` and `steward edge --leaf-remote` processes in JWT mode,
//! every edge's leaf link cut for 10 s by the proxy, one edge SIGKILLed and restarted while cut
//! off. Asserts the report is clean (nothing lost, nothing stored twice, sequences contiguous)
//! and that the fault really happened: nothing was stored while the link was cut, the edges
//! kept executing checks during the cut and those results were stored after it, the killed
//! edge's outbox kept what it held and the restarted edge went on producing results. Counts
//! only, no timing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Command;

#[test]
fn leaf_link_cut_with_an_edge_killed_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_steward-loadtest"))
        .args(["faults", "leaf_cut", "--quick", "--auth", "--report"])
        .arg(&path)
        .env("STEWARD_BIN", env!("CARGO_BIN_EXE_steward-loadtest").replace("steward-loadtest", "steward"))
        .env("STEWARD_FAULTS_KEEP", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!("no report ({e}): {stdout}\n{stderr}"),
    };
    let r = &report["faults"][0];
    let extra = &r["extra"];
    let why = |what: &str| format!("{what}\n{stdout}\n{}\n{stderr}", serde_json::to_string_pretty(r).unwrap());
    assert!(out.status.success(), "{}", why("the scenario failed or is not clean"));
    assert_eq!(r["name"], "leaf_cut");
    for counter in ["lost", "duplicates", "double_executions", "double_leases"] {
        assert_eq!(r["check"][counter], 0, "{}", why(counter));
    }
    let acked = r["acked"].as_u64().unwrap();
    assert!(acked > 0 && r["stored"].as_u64().unwrap() >= acked, "{}", why("expected results missing"));
    assert!(extra["seq_gaps"].as_array().unwrap().is_empty(), "{}", why("sequence gaps"));
    assert_eq!(extra["stored_during_cut"], 0, "{}", why("results stored while the link was cut"));
    assert!(extra["proxy"]["dropped_at_cut"].as_u64().unwrap() >= 1, "{}", why("the cut dropped no connection"));
    assert!(extra["executed_during_cut"].as_u64().unwrap() > 0, "{}", why("nothing executed during the cut"));
    assert!(
        extra["produced_during_cut_stored_after"].as_u64().unwrap() > 0,
        "{}",
        why("no result of the cut stored after it")
    );
    assert!(
        extra["killed_outbox_survivors"].as_u64().unwrap() > 0,
        "{}",
        why("the killed edge's outbox lost its results")
    );
    assert!(extra["killed_after_restart"].as_u64().unwrap() > 0, "{}", why("the restarted edge produced nothing"));
    assert_eq!(extra["recovered_within_deadline"], true, "{}", why("the backlog was not stored"));
}
