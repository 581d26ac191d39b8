//! The systemd units in `deploy/systemd/`: each passes `systemd-analyze verify` with no
//! complaint at all (verify exits 0 on unknown keys and bad values, so any line it prints is a
//! failure), keeps its hardening, and its `ExecStart` line, expanded with the example
//! environment file, is a command line `steward` accepts. `verify` checks that the `ExecStart`
//! binary exists, so the units are verified as installed copies whose `/usr/bin/steward` and
//! `/usr/bin/nats-server` point at the binaries the tests use; nothing else in them changes.
//! A wrong unit (unknown key, bad value, missing binary) is shown to fail the same check.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use steward::cli::{Cli, Command as Sub};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(units_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The unit as installed on this machine: the packaged binary paths replaced by the built ones.
fn installed(text: &str) -> String {
    let nats = steward_deploy::find_nats_server().unwrap();
    text.replace("/usr/bin/steward", STEWARD).replace("/usr/bin/nats-server", &nats.display().to_string())
}

/// `systemd-analyze verify` on units written to a fresh folder under their own names: `Ok` only
/// when it exits 0 and prints nothing.
fn verify(units: &[(&str, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]);
    for (name, text) in units {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        cmd.arg(path);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("systemd-analyze (package systemd) cannot run: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("systemd-analyze verify ({}): {said}", out.status))
    }
}

const UNITS: [&str; 4] =
    ["steward-hub.service", "steward-edge.service", "steward-leaf.service", "steward-node.service"];

#[test]
fn units_verify_clean() {
    let units: Vec<(&str, String)> = UNITS.iter().map(|n| (*n, installed(&unit(n)))).collect();
    verify(&units).unwrap();
}

#[test]
fn the_privileged_edge_drop_in_verifies_on_top_of_the_edge_unit() {
    // A drop-in's settings come after the unit's: appended, they verify as one file.
    let combined = unit("steward-edge.service") + "\n" + &unit("steward-edge-privileged.conf.example");
    verify(&[("steward-edge.service", installed(&combined))]).unwrap();
}

#[test]
fn verify_catches_wrong_units() {
    let hub = installed(&unit("steward-hub.service"));
    let wrong = [
        ("an unknown key", hub.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")),
        ("a bad value", hub.replace("ProtectSystem=strict", "ProtectSystem=strictly")),
        ("a missing binary", hub.replace(STEWARD, "/nonexistent/steward")),
    ];
    for (what, text) in wrong {
        assert_ne!(text, hub, "the {what} case changed nothing");
        let err = verify(&[("steward-hub.service", text)]).expect_err(what);
        assert!(err.contains("steward-hub.service"), "{what}: {err}");
    }
}

#[test]
fn units_keep_their_hardening() {
    for name in UNITS {
        let text = unit(name);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for required in [
            "User=steward",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "Restart=on-failure",
            "CapabilityBoundingSet=",
        ] {
            assert!(lines.contains(&required), "{name} lacks {required}");
        }
        let writable: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("ReadWritePaths=")).collect();
        assert_eq!(writable.len(), 1, "{name}: one ReadWritePaths line");
        assert!(writable[0].split_whitespace().all(|p| p.starts_with("/var/lib/steward")), "{name}: {writable:?}");
    }
}

/// `KEY=VALUE` lines of an environment file (comments and blank lines skipped).
fn env_file(name: &str) -> BTreeMap<String, String> {
    unit(name)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{name}: not KEY=VALUE: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The unit's `ExecStart` as systemd runs it: `${VAR}` is one word, `$VAR` splits on spaces.
fn exec_start(unit_name: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let text = unit(unit_name);
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        if let Some(var) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            words.push(env.get(var).unwrap_or_else(|| panic!("{unit_name}: {var} not in the example")).clone());
        } else if let Some(var) = word.strip_prefix('$') {
            let value = env.get(var).unwrap_or_else(|| panic!("{unit_name}: {var} not in the example"));
            words.extend(value.split_whitespace().map(str::to_owned));
        } else {
            words.push(word.to_owned());
        }
    }
    words
}

#[test]
fn exec_start_lines_are_commands_steward_accepts() {
    let hub = exec_start("steward-hub.service", &env_file("hub.env.example"));
    assert_eq!(hub[0], "/usr/bin/steward");
    let cli = Cli::try_parse_from(&hub).unwrap_or_else(|e| panic!("{hub:?}: {e}"));
    let Sub::Server(args) = cli.command else { panic!("hub unit does not run `steward server`: {hub:?}") };
    assert_eq!(args.replicas, 3);
    assert!(args.signing_key.is_some());

    let edge = exec_start("steward-edge.service", &env_file("edge.env.example"));
    let cli = Cli::try_parse_from(&edge).unwrap_or_else(|e| panic!("{edge:?}: {e}"));
    let Sub::Edge(args) = cli.command else { panic!("edge unit does not run `steward edge`: {edge:?}") };
    assert_eq!(args.host_id.as_str(), "web-01");

    // The node unit runs `steward node` on the example node file, which steward accepts.
    let node = exec_start("steward-node.service", &BTreeMap::new());
    let cli = Cli::try_parse_from(&node).unwrap_or_else(|e| panic!("{node:?}: {e}"));
    let Sub::Node(mut args) = cli.command else { panic!("node unit does not run `steward node`: {node:?}") };
    assert_eq!(args.config.as_deref(), Some(std::path::Path::new("/etc/steward/node.json")));
    args.config = Some(units_dir().join("node.json.example"));
    let config =
        steward::commands::node::NodeConfig::load(&args).unwrap_or_else(|e| panic!("node.json.example: {e:#}"));
    assert!(config.data.starts_with("/var/lib/steward"), "the node's data is in its ReadWritePaths");
    assert_eq!(config.replicas(), steward_subjects::streams::Replicas::Three);

    // Every other variable the examples set is one the steward command reads.
    for (file, role, known) in [
        ("hub.env.example", "server", &["STEWARD_SERVER_ARGS"][..]),
        ("edge.env.example", "edge", &["STEWARD_HOST_ID", "STEWARD_EDGE_ARGS"][..]),
    ] {
        let help = Command::new(STEWARD).env_clear().args([role, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for key in env_file(file).keys().filter(|k| !known.contains(&k.as_str())) {
            assert!(help.contains(&format!("env: {key}=")), "{file}: `steward {role}` does not read {key}");
        }
    }
}

#[test]
fn units_score_low_exposure_in_systemd_analyze_security() {
    // `systemd-analyze security` rates a unit's exposure from 0 (locked down) to 10 (wide open)
    // and fails above `--threshold`, given in tenths: hub and leaf at most 2.0, the edge (whose
    // runs start other programs, so no system-call filter) at most 4.0.
    let dir = tempfile::tempdir().unwrap();
    for (name, tenths) in [
        ("steward-hub.service", 20),
        ("steward-node.service", 20),
        ("steward-leaf.service", 20),
        ("steward-edge.service", 40),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, installed(&unit(name))).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", &format!("--threshold={tenths}")])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let overall = said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
        assert!(out.status.success(), "{name}: {overall} (limit {tenths} tenths)\n{said}");
        assert!(!overall.is_empty(), "{name}: no exposure level in {said}");
    }
}
