#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash test of the runtime store: a child process (this test binary re-run in writer mode)
//! enqueues and acknowledges results as fast as it can and is killed with SIGKILL mid-write;
//! the store must reopen, hold every result the child reported as committed and not acked,
//! and keep per-spec sequence numbers contiguous.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use steward_storage::runtime::{CachedSpec, RuntimeStore};
use steward_subjects::api::result::ResultRecord;
use steward_subjects::config::JobSpec;

const CHILD_ENV: &str = "STEWARD_RUNTIME_CRASH_CHILD";

/// Writer mode: only does something when started by `killed_mid_write_loses_nothing_committed`.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let store = RuntimeStore::open(&PathBuf::from(path)).unwrap();
    let mut round = 0u64;
    loop {
        round += 1;
        let batch: Vec<ResultRecord> = (0..4)
            .map(|i| ResultRecord {
                spec: format!("s{}", (round + i) % 5),
                epoch: 1,
                output: "x".repeat(200),
                ..Default::default()
            })
            .collect();
        let stored = store.enqueue(batch).unwrap();
        let spec = CachedSpec {
            spec: JobSpec { id: format!("s{}", round % 7), ..JobSpec::default() },
            epoch: round,
            confirmed_at_ms: 0,
        };
        store.put_specs(&[spec]).unwrap();
        // Acknowledge the oldest of this batch, keep the rest.
        store.ack(&[stored[0].id]).unwrap();
        // Committed: report the ids still in the outbox.
        let kept: Vec<String> = stored[1..].iter().map(|p| p.id.to_string()).collect();
        println!("committed {}", kept.join(","));
    }
}

#[test]
fn killed_mid_write_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut committed: Vec<u64> = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while committed.len() < 600 {
        let line = lines.next().expect("writer ended early").unwrap();
        if let Some(ids) = line.strip_prefix("committed ") {
            committed.extend(ids.split(',').map(|s| s.parse::<u64>().unwrap()));
        }
    }
    // Mid-write: the writer never pauses between transactions.
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    let _ = child.wait();
    drop(lines);

    let store = RuntimeStore::open(&path).unwrap();
    let pending = store.pending(usize::MAX).unwrap();
    let ids: std::collections::BTreeSet<u64> = pending.iter().map(|p| p.id).collect();
    for id in &committed {
        assert!(ids.contains(id), "committed result {id} lost");
    }
    // Outbox ids ascend and per-spec sequences are contiguous over everything ever enqueued:
    // the kept ones are a subset, so they must at least be strictly increasing per spec.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for p in &pending {
        let prev = last.insert(p.record.spec.clone(), p.record.seq).unwrap_or(0);
        assert!(p.record.seq > prev, "sequence of {} went from {prev} to {}", p.record.spec, p.record.seq);
    }
    // The store is still writable and continues the sequences.
    let next = store.enqueue(vec![ResultRecord { spec: "s0".into(), epoch: 1, ..Default::default() }]).unwrap();
    assert!(next[0].record.seq > last.get("s0").copied().unwrap_or(0));
    assert!(next[0].id > *ids.iter().max().unwrap());
    assert!(!store.specs().unwrap().is_empty());
}
