//! `--metrics` end to end: `steward server`, `steward edge` and `steward runtime` each serve
//! `/metrics` on a port they pick (`127.0.0.1:0`, read back from their log); after real work
//! (a configuration whose checks run on the edge and the runtime, three runs on the edge) each
//! endpoint is scraped and parsed with the OpenMetrics parser of the `prometheus_client`
//! Python package, and the counters must have moved with the work done; a NATS restart then
//! shows as a disconnect and a reconnect of each connection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const HOST: &str = "web-01";

/// A host check on `web-01` (passes) and a pool check on zone `a` (fails), each every second.
const DOCUMENT: &str = r#"{
  "controls": [{"id": "c1"}],
  "components": [
    {"id": "web", "selector": "role=web", "controls": ["c1"]},
    {"id": "site", "selector": "", "controls": ["c1"]}
  ],
  "assessments": [
    {"id": "disk", "executor": {"kind": "command", "argv": ["echo", "disk"]}, "interval": "1s", "timeout": "1s"},
    {"id": "probe", "executor": {"kind": "command", "argv": ["false"]}, "interval": "1s", "timeout": "1s"}
  ],
  "attestations": [
    {"id": "host-disk", "assessment": "disk", "component": "web", "controls": ["c1"]},
    {"id": "zone-probe", "assessment": "probe", "component": "site", "controls": ["c1"], "pool": "zone-a"}
  ],
  "pools": [{"id": "zone-a", "selector": "zone=a"}]
}"#;

/// Parses OpenMetrics text with `prometheus_client.openmetrics.parser` (strict: it refuses a
/// body without `# EOF`, a malformed sample or a bad type) and prints every sample as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// One parsed sample.
#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of one scrape.
#[derive(Debug)]
struct Scrape(Vec<Sample>);

impl Scrape {
    /// Sum of the samples named `name` whose labels include every pair of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether a sample named `name` with `labels` exists.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.0.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn family_type(&self, family: &str) -> Option<&str> {
        self.0.iter().find(|s| s.family == family).map(|s| s.kind.as_str())
    }
}

fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).kill_on_drop(true);
    c
}

/// Starts `steward ARGS --metrics 127.0.0.1:0` and returns it with the address its log (JSON
/// lines) says it serves metrics on; the rest of its log is drained on a task.
async fn spawn_with_metrics(url: &str, args: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let mut child = steward(url)
        .args(["--log-format", "json"])
        .args(args)
        .args(["--metrics", "127.0.0.1:0"])
        .env("STEWARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let field = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["metrics_addr"].as_str().map(|a| a.parse::<SocketAddr>().unwrap()));
            if let Some(addr) = field {
                return addr;
            }
        }
        panic!("steward {args:?} ended without serving metrics");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// `GET path` over HTTP/1.1; returns (status line, headers lower-cased, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, BTreeMap<String, String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned())).collect();
    (status, headers, body.to_owned())
}

/// Scrapes `/metrics` of `addr` and parses it with the Python parser.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let mut py = tokio::process::Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (deploy/dev test installs prometheus_client)");
    let mut stdin = py.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = py.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape (pip install prometheus_client if it is missing): {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    Scrape(serde_json::from_slice(&out.stdout).unwrap())
}

async fn json(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = steward(url).args(["-o", "json"]).args(args).output().await.unwrap();
    if !out.status.success() {
        return Err(format!("steward {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("steward {args:?}: not JSON ({e})"))
}

/// The hub's signing key pair under `dir`.
fn keys(dir: &Path) -> (String, String) {
    let f = steward_actors::signing::JobSigner::init_dir(&dir.join("keys")).unwrap();
    (f.secret.display().to_string(), f.public.display().to_string())
}

/// Runs `program args` on the edge and waits for the run's end; answers its run id and status.
async fn run_on_edge(url: &str, program: &str, args: &[&str]) -> (String, String) {
    let mut argv = vec!["run", "--hosts", HOST, "--wait", "--", program];
    argv.extend_from_slice(args);
    let view = json(url, &argv).await.unwrap_or_else(|e| panic!("{e}"));
    (view["run"]["run_id"].as_str().unwrap().to_owned(), view["run"]["status"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_count_the_work_of_hub_edge_and_runtime() {
    let mut nats = NatsServer::start(ServerOptions::named("metrics")).await.unwrap();
    let url = nats.client_url();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keys(tmp.path());
    let (_hub, hub_addr) = spawn_with_metrics(&url, &["server", "--signing-key", &secret]).await;
    let edge_data = tmp.path().join(HOST).display().to_string();
    let edge_args = ["edge", "--host-id", HOST, "--labels", "role=web", "--heartbeat-ms", "200", "--data", &edge_data];
    let (_edge, edge_addr) = spawn_with_metrics(&url, &[&edge_args[..], &["--trusted-key", &public]].concat()).await;
    let rt_data = tmp.path().join("rt-a").display().to_string();
    let (_runtime, rt_addr) = spawn_with_metrics(
        &url,
        &["runtime", "--id", "rt-a", "--labels", "zone=a", "--trusted-key", &public, "--data", &rt_data],
    )
    .await;

    // Another path is not found.
    let (status, _, _) = http_get(hub_addr, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    eventually(WAIT, POLL, || async {
        let v = json(&url, &["hosts", "--online"]).await?;
        if v.as_array().is_some_and(|a| a.iter().any(|h| h["host_id"] == HOST)) {
            Ok(())
        } else {
            Err(format!("{HOST} not online: {v}"))
        }
    })
    .await
    .unwrap();
    let doc = tmp.path().join("doc.json");
    std::fs::write(&doc, DOCUMENT).unwrap();
    eventually(WAIT, POLL, || async {
        json(&url, &["apply", "--label", "metrics", "-f", doc.to_str().unwrap()]).await
    })
    .await
    .unwrap();

    // Three runs: two succeed, one fails (the dispatcher may need a moment after start-up).
    let first =
        eventually(WAIT, POLL, || async { json(&url, &["run", "--hosts", HOST, "--wait", "--", "echo", "one"]).await })
            .await
            .unwrap();
    assert_eq!(first["run"]["status"], "success", "{first:#}");
    let (_, second) = run_on_edge(&url, "echo", &["two"]).await;
    assert_eq!(second, "success");
    let out =
        steward(&url).args(["-o", "json", "run", "--hosts", HOST, "--wait", "--", "false"]).output().await.unwrap();
    let failed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["run"]["status"], "failure", "{failed:#}");

    // Results of both checks are stored.
    let stored = eventually(WAIT, POLL, || async {
        let v = json(&url, &["results", "--limit", "100000"]).await?;
        let all = v.as_array().cloned().unwrap_or_default();
        let of = |runtime: &str| all.iter().filter(|r| r["runtime"] == runtime).count();
        if of(HOST) >= 3 && of("rt-a") >= 3 {
            Ok(all)
        } else {
            Err(format!("{} results so far", all.len()))
        }
    })
    .await
    .unwrap();
    let seen = |runtime: &str| stored.iter().filter(|r| r["runtime"] == runtime).count() as f64;

    // The hub: runs by state, results stored, leases, journal, consumers, connection events.
    let hub = eventually(WAIT, POLL, || async {
        let s = scrape(hub_addr).await;
        let acme = |state: &str| s.sum("steward_runs_total", &[("account", "acme"), ("state", state)]);
        let lag = s.has("steward_consumer_pending_messages", &[("account", "acme"), ("stream", "STEWARD_RUN_EVENTS")])
            && s.has("steward_consumer_pending_messages", &[("account", "acme"), ("stream", "STEWARD_CONFIG_EVENTS")]);
        if acme("pending") >= 3.0 && acme("success") >= 2.0 && acme("failure") >= 1.0 && lag {
            Ok(s)
        } else {
            Err(format!("runs by state / consumer lag not there yet: {:?}", s.0.len()))
        }
    })
    .await
    .unwrap();
    let runs = |state: &str| hub.sum("steward_runs_total", &[("account", "acme"), ("state", state)]);
    assert_eq!((runs("pending"), runs("success"), runs("failure")), (3.0, 2.0, 1.0));
    assert_eq!(runs("timeout") + runs("canceled"), 0.0);
    let results_stored = hub.sum("steward_results_total", &[("account", "acme"), ("outcome", "stored")]);
    assert!(results_stored >= seen(HOST) + seen("rt-a"), "stored {results_stored}, seen {}", stored.len());
    assert!(hub.sum("steward_lease_grants_total", &[("account", "acme")]) >= 2.0);
    assert!(hub.has("steward_lease_renewals_total", &[("account", "acme")]));
    assert!(hub.sum("steward_lease_journal_appends_total", &[("account", "acme")]) >= 2.0);
    assert!(
        hub.sum("steward_nats_connection_events_total", &[("connection", "steward-hub"), ("event", "connected")])
            >= 1.0
    );
    assert_eq!(hub.family_type("steward_runs"), Some("counter"));
    assert_eq!(hub.family_type("steward_consumer_pending_messages"), Some("gauge"));

    // The hub's current check values (telemetry): the host check passes on web-01, the pool
    // check fails on the runtime that ran it.
    let values = eventually(WAIT, POLL, || async {
        let s = scrape(hub_addr).await;
        let status = |host: &str, check: &str, status: &str| {
            s.sum("steward_check_status", &[("account", "acme"), ("host", host), ("check", check), ("status", status)])
        };
        if status(HOST, "host-disk", "pass") == 1.0 && status("rt-a", "zone-probe", "fail") == 1.0 {
            Ok(s)
        } else {
            Err("current check statuses not there yet".to_owned())
        }
    })
    .await
    .unwrap();
    let status_sum = values.sum("steward_check_status", &[("host", HOST), ("check", "host-disk")]);
    assert_eq!(status_sum, 1.0, "one status at a time");
    assert!(values.has("steward_check_last_result_timestamp_seconds", &[("host", HOST), ("check", "host-disk")]));
    assert_eq!(values.sum("steward_telemetry_writer", &[("account", "acme")]), 1.0);
    assert!(values.sum("steward_telemetry_points_total", &[("account", "acme")]) >= 6.0);
    assert_eq!(values.family_type("steward_check_status"), Some("gauge"));

    // The edge: its checks (all pass), their durations, its outbox.
    let edge = scrape(edge_addr).await;
    let edge_checks =
        edge.sum("steward_checks_total", &[("runtime", HOST), ("executor", "command"), ("status", "pass")]);
    assert!(edge_checks >= seen(HOST), "edge ran {edge_checks} checks, {} results of it stored", seen(HOST));
    assert_eq!(edge.sum("steward_checks_total", &[("runtime", HOST), ("status", "fail")]), 0.0);
    let durations = edge.sum("steward_check_duration_seconds_count", &[("runtime", HOST), ("executor", "command")]);
    assert!(durations >= edge_checks, "{durations} durations for {edge_checks} checks");
    assert!(edge.has("steward_check_duration_seconds_bucket", &[("runtime", HOST), ("le", "+Inf")]));
    assert_eq!(edge.family_type("steward_check_duration_seconds"), Some("histogram"));
    assert!(edge.has("steward_outbox_depth", &[("runtime", HOST)]));
    assert!(edge.has("steward_outbox_oldest_age_seconds", &[("runtime", HOST)]));
    assert!(edge.sum("steward_nats_connection_events_total", &[("event", "connected")]) >= 2.0);

    // The standalone runtime: its pool check fails every time.
    let rt = scrape(rt_addr).await;
    let rt_fail = rt.sum("steward_checks_total", &[("runtime", "rt-a"), ("status", "fail")]);
    assert!(rt_fail >= seen("rt-a"), "rt-a ran {rt_fail} failing checks, {} results of it stored", seen("rt-a"));
    assert_eq!(rt.sum("steward_checks_total", &[("runtime", "rt-a"), ("status", "pass")]), 0.0);
    assert!(rt.has("steward_outbox_depth", &[("runtime", "rt-a")]));
    eprintln!(
        "hub: runs pending/success/failure {}/{}/{}, results stored {results_stored} (seen {}), grants {}, journal \
         appends {}; edge: {edge_checks} checks passed; rt-a: {rt_fail} checks failed",
        runs("pending"),
        runs("success"),
        runs("failure"),
        stored.len(),
        hub.sum("steward_lease_grants_total", &[]),
        hub.sum("steward_lease_journal_appends_total", &[]),
    );

    // A NATS restart: every connection of the hub and the edge counts a disconnect and a
    // reconnect.
    nats.restart().await.unwrap();
    for (addr, connection) in [(hub_addr, "steward-hub".to_owned()), (edge_addr, format!("steward-edge-{HOST}"))] {
        eventually(WAIT, POLL, || async {
            let s = scrape(addr).await;
            let count = |event: &str| {
                s.sum("steward_nats_connection_events_total", &[("connection", &connection), ("event", event)])
            };
            if count("disconnected") >= 1.0 && count("reconnected") >= 1.0 && count("connected") == 1.0 {
                Ok(())
            } else {
                Err(format!("{connection}: {} disconnects, {} reconnects", count("disconnected"), count("reconnected")))
            }
        })
        .await
        .unwrap();
    }
}
