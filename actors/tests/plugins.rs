#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]
//! The `command` executor with `"convention": "plugin"` against the real check plugins of
//! Debian's `monitoring-plugins-basic` (installed by `deploy/dev test`): exit codes become
//! pass/warn/fail/unknown, the status line the message, performance data metrics with units.

use std::path::{Path, PathBuf};
use std::time::Duration;

use steward_actors::runtime::executor::{self, Cancel, ExecSettings, Observation, RunContext};
use steward_subjects::api::result::ResultStatus;
use steward_subjects::config::{CommandExecutor, Executor as Spec, OutputConvention};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn plugin(name: &str) -> PathBuf {
    let path = Path::new(PLUGINS).join(name);
    assert!(
        path.is_file(),
        "{} is missing: install Debian's monitoring-plugins-basic (`deploy/dev test` does)",
        path.display()
    );
    path
}

async fn run(argv: &[&str]) -> Observation {
    let spec = Spec::Command(CommandExecutor {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        convention: OutputConvention::Plugin,
        ..CommandExecutor::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let exec = executor::build(&spec, &ExecSettings::in_dir(dir.path())).unwrap();
    exec.run(RunContext { timeout: Duration::from_secs(30), cancel: Cancel::never() }).await.unwrap()
}

fn p(name: &str) -> String {
    plugin(name).display().to_string()
}

#[tokio::test]
async fn exit_codes_are_states() {
    let ok = run(&[&p("check_dummy"), "0", "all good"]).await;
    assert_eq!((ok.state, ok.passed, ok.message.as_str()), (Some(ResultStatus::Pass), true, "OK: all good"));
    let warn = run(&[&p("check_dummy"), "1", "a bit off"]).await;
    assert_eq!((warn.state, warn.passed), (Some(ResultStatus::Warn), false));
    let crit = run(&[&p("check_dummy"), "2", "down"]).await;
    assert_eq!(crit.state, Some(ResultStatus::Fail));
    let unknown = run(&[&p("check_dummy"), "3", "no idea"]).await;
    assert_eq!((unknown.state, unknown.message.as_str()), (Some(ResultStatus::Unknown), "UNKNOWN: no idea"));
    // Outside the convention: unknown, not a pass or a fail.
    let odd = run(&["sh", "-c", "echo weird; exit 7"]).await;
    assert_eq!((odd.state, odd.exit_code), (Some(ResultStatus::Unknown), Some(7)));
}

#[tokio::test]
async fn procs_load_and_disk_give_metrics() {
    // More than one process always runs: a warning the machine is sure to give.
    let procs = run(&[&p("check_procs"), "-w", "1", "-c", "1000000"]).await;
    assert_eq!(procs.state, Some(ResultStatus::Warn), "{}", procs.message);
    assert!(procs.message.starts_with("PROCS WARNING"), "{}", procs.message);
    assert!(procs.metrics["procs"] > 1.0, "{:?}", procs.metrics);
    let load = run(&[&p("check_load"), "-w", "1000,1000,1000", "-c", "2000,2000,2000"]).await;
    assert_eq!(load.state, Some(ResultStatus::Pass), "{}", load.message);
    for m in ["load1", "load5", "load15"] {
        assert!(load.metrics[m] >= 0.0, "{:?}", load.metrics);
    }
    assert!(load.metrics.contains_key("duration_ms"));
    let disk = run(&[&p("check_disk"), "-w", "0%", "-c", "0%", "-p", "/"]).await;
    assert_eq!(disk.state, Some(ResultStatus::Pass), "{}", disk.message);
    assert!(disk.metrics["/"] > 0.0, "{:?}", disk.metrics);
    assert_eq!(disk.units.get("/").map(String::as_str), Some("B"), "{:?}", disk.units);
}

/// A one-shot-per-connection HTTP server on loopback; its port.
async fn http_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = "steward plugin test";
                let reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_http_against_servers_the_test_starts() {
    let port = http_server().await;
    let tcp = run(&[&p("check_tcp"), "-H", "127.0.0.1", "-p", &port.to_string()]).await;
    assert_eq!(tcp.state, Some(ResultStatus::Pass), "{}", tcp.message);
    assert!(tcp.metrics.contains_key("time"), "{:?}", tcp.metrics);
    assert_eq!(tcp.units.get("time").map(String::as_str), Some("s"));
    let http = run(&[&p("check_http"), "-H", "127.0.0.1", "-p", &port.to_string(), "-u", "/", "-s", "steward"]).await;
    assert_eq!(http.state, Some(ResultStatus::Pass), "{}", http.message);
    assert!(http.message.starts_with("HTTP OK"), "{}", http.message);
    assert!(http.metrics["size"] > 0.0, "{:?}", http.metrics);
    assert_eq!(http.units.get("size").map(String::as_str), Some("B"));
    // A string the page does not hold: CRITICAL.
    let missing = run(&[&p("check_http"), "-H", "127.0.0.1", "-p", &port.to_string(), "-s", "absent"]).await;
    assert_eq!(missing.state, Some(ResultStatus::Fail), "{}", missing.message);
    // A closed port: CRITICAL, not an executor error (the plugin ran and said so).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = run(&[&p("check_tcp"), "-H", "127.0.0.1", "-p", &closed.to_string()]).await;
    assert_eq!(refused.state, Some(ResultStatus::Fail), "{}", refused.message);
}

#[tokio::test]
async fn exit_code_convention_is_unchanged() {
    let spec = Spec::Command(CommandExecutor {
        argv: vec!["sh".into(), "-c".into(), "echo 'x | a=1'; exit 1".into()],
        ..CommandExecutor::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let obs = executor::build(&spec, &ExecSettings::in_dir(dir.path()))
        .unwrap()
        .run(RunContext { timeout: Duration::from_secs(10), cancel: Cancel::never() })
        .await
        .unwrap();
    assert_eq!((obs.state, obs.passed, obs.message.as_str()), (None, false, "exit 1"));
    assert!(!obs.metrics.contains_key("a"), "no perfdata parsing without the plugin convention");
}
