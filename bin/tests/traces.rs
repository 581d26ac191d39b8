//! OpenTelemetry traces across processes, end to end: an OTLP/HTTP receiver inside the test
//! (protobuf `ExportTraceServiceRequest`s on `POST /v1/traces`, decoded with the
//! `opentelemetry-proto` messages) collects the spans of a `steward server` hub, a `steward edge`
//! agent and the CLI, each a real process exporting with its own service name, and the test
//! follows the parent links of one trace from the result stored back to `steward apply`, and
//! from the run's events applied back to `steward run`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const HOST: &str = "web-01";

const DOCUMENT: &str = r#"{
  "controls": [{"id": "c1"}],
  "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
  "assessments": [{"id": "disk", "executor": {"kind": "command", "argv": ["echo", "disk"]}, "interval": "1s", "timeout": "1s"}],
  "attestations": [{"id": "host-disk", "assessment": "disk", "component": "web", "controls": ["c1"]}],
  "alarms": [{"id": "seen", "check": "host-disk", "when": {"status": ["pass"]}}]
}"#;

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// A minimal OTLP/HTTP receiver: HTTP/1.1 with keep-alive, `Content-Length` bodies, every
/// request answered 200 with an empty body; the spans of `/v1/traces` posts are kept.
async fn receiver() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans: Spans = Arc::default();
    let keep = spans.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let spans = keep.clone();
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    read.read_exact(&mut body).await.unwrap();
                    if request_line.starts_with("POST /v1/traces ") {
                        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                        spans.lock().unwrap().extend(decode(req));
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, spans)
}

fn decode(req: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace: s.trace_id,
                    id: s.span_id,
                    parent: s.parent_span_id,
                });
            }
        }
    }
    out
}

fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT").kill_on_drop(true);
    c
}

fn check(out: &Output, what: &str) -> serde_json::Value {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}: exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null)
}

/// The span named `name` of `service` whose ancestors are, in order from its parent up,
/// `chain` (service, name) pairs: the span and the chain's spans all in one trace, the last of
/// the chain its root. Answers what is missing while the spans are still arriving.
fn find_chain(spans: &[Span], leaf: (&str, &str), chain: &[(&str, &str)]) -> Result<Vec<Span>, String> {
    let by_id: HashMap<(&[u8], &[u8]), &Span> =
        spans.iter().map(|s| ((s.trace.as_slice(), s.id.as_slice()), s)).collect();
    let mut best = String::from("no leaf span yet");
    for s in spans.iter().filter(|s| (s.service.as_str(), s.name.as_str()) == leaf) {
        // Ancestors of the leaf, parent first, up to the trace's root.
        let mut ancestors = Vec::new();
        let mut at = s;
        while !at.parent.is_empty() {
            match by_id.get(&(at.trace.as_slice(), at.parent.as_slice())) {
                Some(p) => {
                    ancestors.push(*p);
                    at = p;
                }
                None => break,
            }
        }
        let named: Vec<(&str, &str)> = ancestors.iter().map(|a| (a.service.as_str(), a.name.as_str())).collect();
        // The chain's spans appear in this order among the ancestors, and the last is the root.
        let mut want = chain.iter();
        let mut next = want.next();
        for n in &named {
            if Some(n) == next {
                next = want.next();
            }
        }
        if next.is_none() && at.parent.is_empty() && named.last() == chain.last() {
            let mut found = vec![s.clone()];
            found.extend(ancestors.into_iter().cloned());
            return Ok(found);
        }
        best = format!("{leaf:?} has ancestors {named:?} (wanted {chain:?} in order, rooted)");
    }
    Err(best)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_apply_and_a_run_across_cli_hub_and_edge() {
    let (otlp, spans) = receiver().await;
    let nats = NatsServer::start(ServerOptions::named("traces")).await.unwrap();
    let url = nats.client_url();
    let tmp = tempfile::tempdir().unwrap();
    let keys = check(
        &steward(&url)
            .args(["-o", "json", "keys", "init", "--dir"])
            .arg(tmp.path().join("keys"))
            .output()
            .await
            .unwrap(),
        "keys init",
    );
    let (secret, public) = (keys["secret"].as_str().unwrap(), keys["public"].as_str().unwrap());

    // The hub and the edge export through OTEL_EXPORTER_OTLP_ENDPOINT, with a short batch delay.
    let quiet = |c: &mut tokio::process::Command| {
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp).env("OTEL_BSP_SCHEDULE_DELAY", "200");
        c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    let _hub = quiet(steward(&url).args(["server", "--signing-key", secret]));
    let _edge = quiet(
        steward(&url)
            .args(["edge", "--host-id", HOST, "--labels", "role=web", "--heartbeat-ms", "200", "--trusted-key", public])
            .arg("--data")
            .arg(tmp.path().join(HOST)),
    );
    // Helper commands below export nothing (no endpoint).
    eventually(WAIT, POLL, || async {
        let out = steward(&url).args(["-o", "json", "hosts", "--online"]).output().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if v.as_array().is_some_and(|a| a.iter().any(|h| h["host_id"] == HOST)) {
            Ok(())
        } else {
            Err(format!("{HOST} not online: {v}"))
        }
    })
    .await
    .unwrap();

    // `steward apply` with the flag: config manager → renderer → notice → edge runtime → result
    // → alarm evaluation.
    let doc = tmp.path().join("doc.json");
    std::fs::write(&doc, DOCUMENT).unwrap();
    eventually(WAIT, POLL, || async {
        let out = steward(&url).args(["--otlp-endpoint", &otlp, "apply", "-f"]).arg(&doc).output().await.unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .unwrap();
    let apply = eventually(WAIT, POLL, || async {
        let got = spans.lock().unwrap().clone();
        find_chain(
            &got,
            ("steward-hub", "alarm.evaluate"),
            &[
                ("steward-hub", "results.store"),
                ("steward-hub", "result.submit"),
                ("steward-edge", "results.drain"),
                ("steward-edge", "runtime.check"),
                ("steward-edge", "runtime.sync"),
                ("steward-hub", "jobspec.notice"),
                ("steward-hub", "render"),
                ("steward-hub", "config.apply"),
                ("steward-cli", "steward apply"),
            ],
        )
    })
    .await
    .unwrap();
    eprintln!("apply: {:?}", apply.iter().map(|s| (&s.service, &s.name)).collect::<Vec<_>>());
    let trace = apply[0].trace.clone();
    assert!(apply.iter().all(|s| s.trace == trace), "one trace id: {apply:#?}");

    // `steward run` through the environment: dispatcher → work order → edge worker → events.
    let out = eventually(WAIT, POLL, || async {
        let out = steward(&url)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
            .args(["-o", "json", "run", "--hosts", HOST, "--wait", "--command", "echo", "traced"])
            .output()
            .await
            .unwrap();
        if out.status.success() {
            Ok(out)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .unwrap();
    let view = check(&out, "run");
    assert_eq!(view["run"]["status"], "success", "{view:#}");
    let run = eventually(WAIT, POLL, || async {
        let got = spans.lock().unwrap().clone();
        find_chain(
            &got,
            ("steward-hub", "run.events"),
            &[
                ("steward-edge", "worker.job"),
                ("steward-edge", "edge.work_order"),
                ("steward-hub", "run.dispatch"),
                ("steward-cli", "steward run"),
            ],
        )
    })
    .await
    .unwrap();
    eprintln!("run: {:?}", run.iter().map(|s| (&s.service, &s.name)).collect::<Vec<_>>());
    let run_trace = run[0].trace.clone();
    assert!(run.iter().all(|s| s.trace == run_trace), "one trace id: {run:#?}");
    assert_ne!(run_trace, trace, "the run is a trace of its own");
    // Three processes took part in each trace.
    for chain in [&apply, &run] {
        let mut services: Vec<&str> = chain.iter().map(|s| s.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        assert_eq!(services, ["steward-cli", "steward-edge", "steward-hub"]);
    }
}
