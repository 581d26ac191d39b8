//! Smoke run of the fuzz targets in `subjects/fuzz` so they keep building and keep accepting
//! their corpus: the fuzz crate is built with plain `cargo build` (stable Rust, no sanitizer,
//! no cargo-fuzz; its own target folder `target/fuzz-smoke`), then each libFuzzer binary runs
//! every committed corpus input of its target once (libFuzzer's run-these-files mode). A target
//! that panics, aborts or hangs on a committed input fails the test.
//!
//! The real fuzzing run is `deploy/dev fuzz [TARGET] [RUNS]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The target names: the `fuzz_targets/*.rs` files.
fn targets(fuzz: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fuzz.join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn corpus(fuzz: &Path, target: &str) -> Vec<PathBuf> {
    let dir = fuzz.join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("target {target} has no committed corpus at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_builds_and_runs_its_committed_corpus() {
    let root = root();
    let fuzz = root.join("subjects").join("fuzz");
    let target_dir = root.join("target").join("fuzz-smoke");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--locked", "--bins", "--manifest-path"])
        .arg(fuzz.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("cargo runs");
    assert!(
        built.success(),
        "the fuzz crate does not build (after a dependency change in the workspace, refresh its lock file: \
         cargo tree --manifest-path subjects/fuzz/Cargo.toml --offline)"
    );

    let names = targets(&fuzz);
    let expected =
        ["config", "events", "heartbeats", "job_specs", "requests", "result_segments", "selector", "work_orders"];
    assert_eq!(names, expected, "fuzz targets changed: update this list and the corpus");
    for name in &names {
        let files = corpus(&fuzz, name);
        assert!(!files.is_empty(), "target {name} has an empty corpus");
        let bin = target_dir.join("debug").join(name);
        // Files (not folders) as arguments: libFuzzer runs each once and does not fuzz.
        // `-timeout` turns a hang into a failure.
        let out = Command::new(&bin).arg("-timeout=60").args(&files).output().expect("fuzz target runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "target {name} failed on its corpus:\n{stderr}");
        let executed = stderr.lines().filter(|l| l.starts_with("Executed ")).count();
        assert_eq!(executed, files.len(), "target {name} did not run every corpus file:\n{stderr}");
    }
}
