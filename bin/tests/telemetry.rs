//! Telemetry history end to end, on a real nats-server and real `steward server` processes:
//! results are stored on `STEWARD_RESULTS` as the lease service stores them (segments of one
//! host), and the hub's telemetry writer turns them into raw points and 1-minute and 1-hour
//! rollups. The hub is killed with SIGKILL while it writes; after the restart every stored
//! result counts exactly once at every level, with the right min/max/avg/last per bucket. A
//! late batch (results an hour old) lands in the rollups as extra parts. Bad queries are refused
//! `invalid`; `steward metrics` draws a graph and prints JSON; `/metrics` shows the latest value
//! and status of the check (parsed with the `prometheus_client` Python package).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use steward_actors::telemetry::client::TelemetryClient;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::result::{ResultRecord, ResultSegment, ResultStatus, SEGMENT_HEADER};
use steward_subjects::api::telemetry::{TelemetryQuery, TelemetryReply};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{JobSpec, Provenance, SpecId, SpecTarget, TargetKind};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::streams::{JOBSPECS_BUCKET, RESULTS_STREAM, TELEMETRY_1H_STREAM, TELEMETRY_1M_STREAM};
use steward_subjects::subject::jobspec_key;
use steward_subjects::{AccountId, ErrorCode, HostId, RuntimeId, Subjects, Token, TokenKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);
const HOST: &str = "web-01";
const CHECK: &str = "disk-usage";
const SPEC: &str = "00112233445566778899aabbccddeeff";
const STEP: u64 = 10_000;
const HOUR: u64 = 3_600_000;

fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).kill_on_drop(true);
    c
}

/// Starts `steward server --metrics 127.0.0.1:0`; answers it with the metrics address its log
/// names (the rest of the log is drained on a task).
async fn hub(url: &str) -> (tokio::process::Child, SocketAddr) {
    let mut child = steward(url)
        .args(["--log-format", "json", "server", "--metrics", "127.0.0.1:0", "--leader-ttl", "2s"])
        .env("STEWARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v = serde_json::from_str::<serde_json::Value>(&line).ok();
            if let Some(a) = v.as_ref().and_then(|v| v["metrics_addr"].as_str()) {
                return a.parse::<SocketAddr>().unwrap();
            }
        }
        panic!("steward server ended without serving metrics");
    })
    .await
    .unwrap();
    // The writer's take-overs and redone steps, for whoever reads the test's output.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("telemetry") {
                eprintln!("hub: {line}");
            }
        }
    });
    (child, addr)
}

/// The spec the results name, so the writer files them under the check `disk-usage`.
async fn put_spec(js: &jetstream::Context, account: &AccountId) {
    let kv = eventually(WAIT, POLL, || async { js.get_key_value(JOBSPECS_BUCKET).await.map_err(|e| e.to_string()) })
        .await
        .unwrap();
    let spec = JobSpec {
        id: SPEC.to_owned(),
        account: account.to_string(),
        target: SpecTarget { kind: TargetKind::Host, id: HOST.to_owned() },
        interval_ms: STEP,
        provenance: Provenance { attestation: CHECK.to_owned(), assessment: "df".to_owned(), ..Provenance::default() },
        ..JobSpec::default()
    };
    let id: SpecId = SPEC.parse().unwrap();
    let key = jobspec_key(account, TargetKind::Host, &Token::parse(TokenKind::Name, HOST).unwrap(), &id);
    kv.put(key, codec::encode(Encoding::MsgPack, &spec).unwrap()).await.unwrap();
}

/// Result `i` of the model: every 10 s from `base`, `used` cycling through 0..97, one in 13 failing.
fn result(base: u64, i: u64) -> ResultRecord {
    ResultRecord {
        spec: SPEC.to_owned(),
        epoch: 1,
        seq: i + 1,
        runtime: HOST.to_owned(),
        host: HOST.to_owned(),
        executor: "command".to_owned(),
        started_at_ms: base + i * STEP - 5,
        ended_at_ms: base + i * STEP,
        status: if i % 13 == 0 { ResultStatus::Fail } else { ResultStatus::Pass },
        metrics: BTreeMap::from([("used".to_owned(), (i % 97) as f64)]),
        units: BTreeMap::from([("used".to_owned(), "%".to_owned())]),
        ..ResultRecord::default()
    }
}

/// Stores `results` on the results stream as segments of `per` (as the lease service does).
async fn store_results(js: &jetstream::Context, subjects: &Subjects, results: &[ResultRecord], per: usize) {
    let subject = subjects.result_put(&HostId::parse(HOST).unwrap(), &RuntimeId::parse(HOST).unwrap());
    for chunk in results.chunks(per) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(SEGMENT_HEADER, chunk.len().to_string().as_str());
        h.insert("Nats-Msg-Id", format!("{HOST}.{}", chunk[0].idempotency_key()).as_str());
        let payload = codec::encode(Encoding::MsgPack, &ResultSegment { results: chunk.to_vec() }).unwrap();
        js.publish_with_headers(subject.clone(), h, payload).await.unwrap().await.unwrap();
    }
}

/// Messages of the account's series in `stream`.
async fn stream_msgs(js: &jetstream::Context, stream: &str, filter: &str) -> u64 {
    let s = js.get_stream(stream).await.unwrap();
    let mut info = s.info_with_subjects(filter).await.unwrap();
    let mut n = 0;
    while let Some((_, count)) = futures::TryStreamExt::try_next(&mut info).await.unwrap() {
        n += count as u64;
    }
    n
}

async fn query(t: &TelemetryClient, from: u64, to: u64, step: u64) -> TelemetryReply {
    try_query(t, from, to, step).await.unwrap()
}

async fn try_query(t: &TelemetryClient, from: u64, to: u64, step: u64) -> Result<TelemetryReply, String> {
    let q = TelemetryQuery {
        host: HOST.into(),
        check: CHECK.into(),
        metric: None,
        from_ms: from,
        to_ms: to,
        step_ms: step,
    };
    t.query(&q).await.map_err(|e| e.to_string())
}

/// One bucket: (count, min, max, sum, last, failures).
type Row = (u64, f64, f64, f64, f64, u64);
/// Buckets by start.
type Buckets = BTreeMap<u64, Row>;

/// Per bucket of `width`, the model's results.
fn model(results: &[ResultRecord], width: u64) -> Buckets {
    let mut m: BTreeMap<u64, (Row, u64)> = BTreeMap::new();
    for r in results {
        let v = r.metrics["used"];
        let b = r.ended_at_ms - r.ended_at_ms % width;
        let (e, last_ts) = m.entry(b).or_insert(((0, f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0, 0), 0));
        e.0 += 1;
        e.1 = e.1.min(v);
        e.2 = e.2.max(v);
        e.3 += v;
        if r.ended_at_ms >= *last_ts {
            e.4 = v;
            *last_ts = r.ended_at_ms;
        }
        e.5 += u64::from(r.status == ResultStatus::Fail);
    }
    m.into_iter().map(|(b, (e, _))| (b, e)).collect()
}

/// The reply folded back into the model's shape.
fn folded(r: &TelemetryReply) -> Buckets {
    let used = r.metrics.iter().find(|m| m.metric == "used").map(|m| m.points.clone()).unwrap_or_default();
    let fails: BTreeMap<u64, u64> = r.statuses.iter().map(|s| (s.t_ms, s.counts.fail)).collect();
    used.iter()
        .map(|p| {
            (p.t_ms, (p.count, p.min, p.max, p.avg * p.count as f64, p.last, fails.get(&p.t_ms).copied().unwrap_or(0)))
        })
        .collect()
}

/// Waits until the 1-minute and 1-hour levels count `n` results over `[from, to)`.
async fn wait_counted(t: &TelemetryClient, from: u64, to: u64, n: u64) {
    eventually(WAIT, POLL, || async {
        let m = try_query(t, from, to, 60_000).await?;
        let h = try_query(t, from, to, HOUR).await?;
        let count = |r: &TelemetryReply| r.statuses.iter().map(|s| s.counts.total()).sum::<u64>();
        if count(&m) == n && count(&h) == n {
            Ok(())
        } else {
            Err(format!("1m counts {}, 1h counts {}, want {n}", count(&m), count(&h)))
        }
    })
    .await
    .unwrap();
}

fn assert_close(
    got: &BTreeMap<u64, (u64, f64, f64, f64, f64, u64)>,
    want: &BTreeMap<u64, (u64, f64, f64, f64, f64, u64)>,
) {
    assert_eq!(got.len(), want.len(), "buckets");
    for (b, w) in want {
        let g = got.get(b).unwrap_or_else(|| panic!("bucket {b} missing"));
        assert_eq!((g.0, g.1, g.2, g.4, g.5), (w.0, w.1, w.2, w.4, w.5), "bucket {b}");
        assert!((g.3 - w.3).abs() < 1e-6, "bucket {b}: sum {} vs {}", g.3, w.3);
    }
}

/// Parses `/metrics` of `addr` with the Python OpenMetrics parser: (name, labels, value) samples.
async fn scrape(addr: SocketAddr) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    let parser = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
print(json.dumps([[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))
"#;
    let mut py = tokio::process::Command::new("python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (deploy/dev test installs it)");
    py.stdin.take().unwrap().write_all(body.as_bytes()).await.unwrap();
    let out = py.wait_with_output().await.unwrap();
    assert!(out.status.success(), "parser refused the scrape: {}\n{body}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_kill_9_counts_late_points_and_is_queried_back() {
    let nats = NatsServer::start(ServerOptions::named("telemetry")).await.unwrap();
    let url = nats.client_url();
    let account = AccountId::parse("acme").unwrap();
    let subjects = Subjects::new(account.clone());
    let (mut first, _) = hub(&url).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    put_spec(&js, &account).await;
    let telemetry = TelemetryClient::new(client.clone(), subjects.clone());

    // Two hours of results, three hours ago: every bucket is closed when they arrive.
    let now = steward_actors::now_ms();
    let base = now - now % HOUR - 3 * HOUR;
    let all: Vec<ResultRecord> = (0..720).map(|i| result(base, i)).collect();
    store_results(&js, &subjects, &all[..300], 20).await;
    let m1_filter = subjects.telemetry_level_filter(steward_subjects::subject::TelemetryLevel::Minute);
    eventually(WAIT, POLL, || async {
        let n = stream_msgs(&js, TELEMETRY_1M_STREAM, &m1_filter).await;
        if n > 0 {
            Ok(())
        } else {
            Err("no 1-minute part yet".to_owned())
        }
    })
    .await
    .unwrap();
    // Kill -9 while the next results are being written.
    let writing = tokio::spawn({
        let (js, subjects, part) = (js.clone(), subjects.clone(), all[300..600].to_vec());
        async move { store_results(&js, &subjects, &part, 5).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    writing.await.unwrap();
    store_results(&js, &subjects, &all[600..], 20).await;
    let (_second, metrics_addr) = hub(&url).await;
    wait_counted(&telemetry, base, base + 2 * HOUR, 720).await;

    // Every result stored counts once, with the right aggregates, at every level.
    let stored = js.get_stream(RESULTS_STREAM).await.unwrap().info().await.unwrap().state.messages;
    let per_segment = 300 / 20 + 300 / 5 + 120 / 20;
    assert_eq!(stored, per_segment as u64, "segments stored on the results stream");
    let raw = query(&telemetry, base, base + 2 * HOUR, STEP).await;
    assert_eq!(raw.source, "raw");
    assert_close(&folded(&raw), &model(&all, STEP));
    let m = query(&telemetry, base, base + 2 * HOUR, 60_000).await;
    assert_eq!(m.source, "1m");
    assert_close(&folded(&m), &model(&all, 60_000));
    let h = query(&telemetry, base, base + 2 * HOUR, HOUR).await;
    assert_eq!(h.source, "1h");
    assert_close(&folded(&h), &model(&all, HOUR));
    let five = query(&telemetry, base, base + 2 * HOUR, 300_000).await;
    assert_close(&folded(&five), &model(&all, 300_000));
    assert_eq!(five.metrics[0].unit.as_deref(), Some("%"));

    // A late batch: 30 results from 25 minutes into the first hour, long after its buckets
    // were written.
    let late: Vec<ResultRecord> = (0..30)
        .map(|i| ResultRecord {
            seq: 10_000 + i,
            metrics: BTreeMap::from([("used".to_owned(), 500.0 + i as f64)]),
            ..result(base, 150 + i)
        })
        .collect();
    let parts_before = stream_msgs(&js, TELEMETRY_1M_STREAM, &m1_filter).await;
    store_results(&js, &subjects, &late, 30).await;
    wait_counted(&telemetry, base, base + 2 * HOUR, 750).await;
    let with_late: Vec<ResultRecord> = all.iter().chain(&late).cloned().collect();
    assert_close(&folded(&query(&telemetry, base, base + 2 * HOUR, 60_000).await), &model(&with_late, 60_000));
    assert_close(&folded(&query(&telemetry, base, base + 2 * HOUR, HOUR).await), &model(&with_late, HOUR));
    let parts_after = stream_msgs(&js, TELEMETRY_1M_STREAM, &m1_filter).await;
    assert_eq!(parts_after - parts_before, 5, "the late points of five minutes added one part to each");
    let h1_filter = subjects.telemetry_level_filter(steward_subjects::subject::TelemetryLevel::Hour);
    assert!(stream_msgs(&js, TELEMETRY_1H_STREAM, &h1_filter).await >= 3, "a late 1-hour part");

    // Bad queries are refused with what is wrong.
    let ok = TelemetryQuery {
        host: HOST.into(),
        check: CHECK.into(),
        metric: None,
        from_ms: base,
        to_ms: base + HOUR,
        step_ms: 60_000,
    };
    for (bad, says) in [
        (TelemetryQuery { host: "web.01".into(), ..ok.clone() }, "host"),
        (TelemetryQuery { check: "a*".into(), ..ok.clone() }, "check"),
        (TelemetryQuery { to_ms: base - 1, ..ok.clone() }, "must be after"),
        (TelemetryQuery { step_ms: 1, ..ok.clone() }, "smallest step"),
        (TelemetryQuery { step_ms: 1000, to_ms: base + 24 * HOUR, ..ok.clone() }, "at most"),
    ] {
        let e = telemetry.query(&bad).await.unwrap_err();
        assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{bad:?}: {e}");
        assert!(e.to_string().contains(says), "{bad:?}: {e}");
    }
    let listed = telemetry.series(HOST).await.unwrap();
    assert_eq!(listed.series.len(), 1);
    assert_eq!((listed.series[0].check.as_str(), listed.series[0].metrics.clone()), (CHECK, vec!["used".to_owned()]));
    assert_eq!(listed.series[0].raw_points, 750);

    // The CLI: a graph, and JSON with the same counts.
    let out = steward(&url).args(["metrics", HOST, "--since", "4h", "--step", "5m"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!("{HOST} {CHECK}")) && text.contains("used (%)") && text.contains("(750 values)"),
        "{text}"
    );
    assert!(text.chars().any(|c| ('▁'..='█').contains(&c)), "{text}");
    println!("{text}");
    let out = steward(&url)
        .args(["-o", "json", "metrics", HOST, CHECK, "--since", "4h", "--step", "1h"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["source"], "1h");
    let n: u64 = v[0]["metrics"][0]["points"].as_array().unwrap().iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(n, 750);
    let bad = steward(&url).args(["metrics", "web.01"]).output().await.unwrap();
    assert!(!bad.status.success());

    // `/metrics` of the hub that writes: the latest value and status of the check (the late
    // batch, older, does not replace it).
    let last = &all[719];
    let samples = eventually(WAIT, POLL, || async {
        let s = scrape(metrics_addr).await;
        if s.iter().any(|(n, l, _)| n == "steward_check_value" && l.get("check").map(String::as_str) == Some(CHECK)) {
            Ok(s)
        } else {
            Err("no steward_check_value yet".to_owned())
        }
    })
    .await
    .unwrap();
    let find = |name: &str, extra: (&str, &str)| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.get("host").map(String::as_str) == Some(HOST)
                    && l.get("check").map(String::as_str) == Some(CHECK)
                    && l.get(extra.0).map(String::as_str) == Some(extra.1)
            })
            .map(|s| s.2)
    };
    assert_eq!(find("steward_check_value", ("metric", "used")), Some(last.metrics["used"]));
    assert_eq!(find("steward_check_status", ("status", "pass")), Some(1.0));
    assert_eq!(find("steward_check_status", ("status", "fail")), Some(0.0));
    assert_eq!(
        find("steward_check_last_result_timestamp_seconds", ("account", "acme")),
        Some(last.ended_at_ms as f64 / 1000.0)
    );
    assert!(samples.iter().any(|(n, l, v)| n == "steward_telemetry_writer" && l["account"] == "acme" && *v == 1.0));
}

/// Storage cost and query speed (run with `--ignored --nocapture`): a day of results every 10 s
/// for four series, then the bytes each stream holds per series, the hub's CPU per result and
/// the latency of a 24 h query at a 1-minute step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints figures, takes a few minutes"]
async fn measure_storage_per_series_day_and_query_latency() {
    let nats = NatsServer::start(ServerOptions::named("telemetry-cost")).await.unwrap();
    let url = nats.client_url();
    let account = AccountId::parse("acme").unwrap();
    let subjects = Subjects::new(account.clone());
    let (hub_child, _) = hub(&url).await;
    let pid = hub_child.id().unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    put_spec(&js, &account).await;
    let telemetry = TelemetryClient::new(client.clone(), subjects.clone());
    let now = steward_actors::now_ms();
    let base = now - now % HOUR - 26 * HOUR;
    let series = 4u64;
    let per_day = 8640u64;
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    let cpu_before = cpu();
    let started = Instant::now();
    for s in 0..series {
        let host = format!("h{s}");
        let results: Vec<ResultRecord> = (0..per_day)
            .map(|i| ResultRecord { host: host.clone(), runtime: host.clone(), seq: i + 1, ..result(base, i) })
            .collect();
        let subject = subjects.result_put(&HostId::parse(&host).unwrap(), &RuntimeId::parse(&host).unwrap());
        for chunk in results.chunks(100) {
            let mut h = async_nats::HeaderMap::new();
            h.insert(SEGMENT_HEADER, chunk.len().to_string().as_str());
            h.insert("Nats-Msg-Id", format!("{host}.{}", chunk[0].idempotency_key()).as_str());
            let payload = codec::encode(Encoding::MsgPack, &ResultSegment { results: chunk.to_vec() }).unwrap();
            js.publish_with_headers(subject.clone(), h, payload).await.unwrap().await.unwrap();
        }
    }
    let total = series * per_day;
    eventually(Duration::from_secs(600), Duration::from_secs(1), || async {
        let mut n = 0;
        for s in 0..series {
            let q = TelemetryQuery {
                host: format!("h{s}"),
                check: CHECK.into(),
                metric: None,
                from_ms: base,
                to_ms: base + 24 * HOUR,
                step_ms: HOUR,
            };
            n += telemetry.query(&q).await.unwrap().statuses.iter().map(|s| s.counts.total()).sum::<u64>();
        }
        if n == total {
            Ok(())
        } else {
            Err(format!("{n} of {total} in 1h rollups"))
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let cpu_used = cpu() - cpu_before;
    for (name, stream) in
        [("raw", "STEWARD_TELEMETRY_RAW"), ("1m", "STEWARD_TELEMETRY_1M"), ("1h", "STEWARD_TELEMETRY_1H")]
    {
        let mut st = js.get_stream(stream).await.unwrap();
        let info = st.info().await.unwrap().clone();
        println!(
            "{name}: {} messages, {} bytes, {:.0} bytes per series per day, {:.1} bytes per message",
            info.state.messages,
            info.state.bytes,
            info.state.bytes as f64 / series as f64,
            info.state.bytes as f64 / info.state.messages.max(1) as f64
        );
    }
    let results_bytes = js.get_stream(RESULTS_STREAM).await.unwrap().info().await.unwrap().state.bytes;
    println!("results stream: {results_bytes} bytes for {total} results");
    println!(
        "hub: {total} results written through in {took:?}, hub CPU {cpu_used:.2} s = {:.1} µs per result",
        cpu_used * 1e6 / total as f64
    );
    let mut lat = Vec::new();
    let mut hub_side = Vec::new();
    for i in 0..200u64 {
        let q = TelemetryQuery {
            host: format!("h{}", i % series),
            check: CHECK.into(),
            metric: None,
            from_ms: base,
            to_ms: base + 24 * HOUR,
            step_ms: 60_000,
        };
        let t = Instant::now();
        let r = telemetry.query(&q).await.unwrap();
        lat.push(t.elapsed());
        hub_side.push(Duration::from_micros(r.took_us));
        assert_eq!(r.source, "1m");
        assert_eq!(r.metrics[0].points.len(), 1440);
    }
    lat.sort();
    hub_side.sort();
    println!("24 h at 1 min (1440 parts read): median {:?}, p99 {:?}, max {:?}", lat[100], lat[197], lat[199]);
    println!("  of which in the hub: median {:?}, p99 {:?}", hub_side[100], hub_side[197]);
}

/// `GET /metrics` of `addr`: the value of the first sample line starting with `prefix`.
async fn sample(addr: SocketAddr, prefix: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    raw.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Kill -9 of the writer while it writes a large flush (six hosts, two hours each, written as
/// one backlog): after the restart every host's series count each result exactly once at every
/// level, and the buckets of one host match the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cut_by_kill_9_is_completed_once() {
    let nats = NatsServer::start(ServerOptions::named("telemetry-flush")).await.unwrap();
    let url = nats.client_url();
    let account = AccountId::parse("acme").unwrap();
    let subjects = Subjects::new(account.clone());
    let (mut first, addr) = hub(&url).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    put_spec(&js, &account).await;
    let telemetry = TelemetryClient::new(client.clone(), subjects.clone());
    let now = steward_actors::now_ms();
    let base = now - now % HOUR - 3 * HOUR;
    let hosts: Vec<String> = (0..12).map(|i| format!("host-{i}")).collect();
    let per_host = |h: &str| -> Vec<ResultRecord> {
        (0..720).map(|i| ResultRecord { host: h.to_owned(), runtime: h.to_owned(), ..result(base, i) }).collect()
    };
    for h in &hosts {
        let subject = subjects.result_put(&HostId::parse(h).unwrap(), &RuntimeId::parse(h).unwrap());
        for chunk in per_host(h).chunks(60) {
            let mut hd = async_nats::HeaderMap::new();
            hd.insert(SEGMENT_HEADER, chunk.len().to_string().as_str());
            hd.insert("Nats-Msg-Id", format!("{h}.{}", chunk[0].idempotency_key()).as_str());
            let payload = codec::encode(Encoding::MsgPack, &ResultSegment { results: chunk.to_vec() }).unwrap();
            js.publish_with_headers(subject.clone(), hd, payload).await.unwrap().await.unwrap();
        }
    }
    // Kill as soon as the first 1-minute parts are stored (the flush of 1,440 parts is under
    // way; where exactly it is cut varies from run to run, the outcome must not).
    let m1_filter = subjects.telemetry_level_filter(steward_subjects::subject::TelemetryLevel::Minute);
    let seen = eventually(WAIT, Duration::from_millis(2), || async {
        match stream_msgs(&js, TELEMETRY_1M_STREAM, &m1_filter).await {
            0 => Err("no part yet".to_owned()),
            n => Ok(n),
        }
    })
    .await
    .unwrap();
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let written = sample(addr, "steward_telemetry_rollup_parts_total").await;
    eprintln!("killed the writer when {seen} 1-minute parts were stored (of 1440; metrics now {written:?})");
    let (_second, _) = hub(&url).await;
    for h in &hosts {
        eventually(WAIT, POLL, || async {
            let q = |step| TelemetryQuery {
                host: h.clone(),
                check: CHECK.into(),
                metric: None,
                from_ms: base,
                to_ms: base + 2 * HOUR,
                step_ms: step,
            };
            let count = |r: &TelemetryReply| r.statuses.iter().map(|s| s.counts.total()).sum::<u64>();
            let m = telemetry.query(&q(60_000)).await.map_err(|e| e.to_string())?;
            let hr = telemetry.query(&q(HOUR)).await.map_err(|e| e.to_string())?;
            let raw = telemetry.query(&q(STEP)).await.map_err(|e| e.to_string())?;
            match (count(&raw), count(&m), count(&hr)) {
                (720, 720, 720) => Ok(()),
                other => Err(format!("{h}: raw/1m/1h counts {other:?}")),
            }
        })
        .await
        .unwrap();
    }
    // Nothing more arrives later (a repeated part would show up as a count above 720).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let model_of = per_host(&hosts[0]);
    let q = |step| TelemetryQuery {
        host: hosts[0].clone(),
        check: CHECK.into(),
        metric: None,
        from_ms: base,
        to_ms: base + 2 * HOUR,
        step_ms: step,
    };
    assert_close(&folded(&telemetry.query(&q(60_000)).await.unwrap()), &model(&model_of, 60_000));
    assert_close(&folded(&telemetry.query(&q(HOUR)).await.unwrap()), &model(&model_of, HOUR));
}

/// Two hubs on one account: exactly one writes (`steward_telemetry_writer` is 1 on one of
/// them), both answer queries; when the writer is killed the other takes over and the history
/// stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_hubs_writes_and_the_other_takes_over() {
    let nats = NatsServer::start(ServerOptions::named("telemetry-two")).await.unwrap();
    let url = nats.client_url();
    let account = AccountId::parse("acme").unwrap();
    let subjects = Subjects::new(account.clone());
    let mut hubs = vec![hub(&url).await, hub(&url).await];
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    put_spec(&js, &account).await;
    let telemetry = TelemetryClient::new(client.clone(), subjects.clone());
    let now = steward_actors::now_ms();
    let base = now - now % HOUR - 3 * HOUR;
    let all: Vec<ResultRecord> = (0..360).map(|i| result(base, i)).collect();
    store_results(&js, &subjects, &all[..180], 30).await;
    wait_counted(&telemetry, base, base + HOUR, 180).await;
    let writers = |hubs: &[(tokio::process::Child, SocketAddr)]| {
        let addrs: Vec<SocketAddr> = hubs.iter().map(|h| h.1).collect();
        async move {
            let mut flags = Vec::new();
            for a in addrs {
                flags.push(sample(a, "steward_telemetry_writer{account=\"acme\"}").await.unwrap_or(0.0));
            }
            flags
        }
    };
    let flags = writers(&hubs).await;
    assert_eq!(flags.iter().sum::<f64>(), 1.0, "exactly one writer: {flags:?}");
    let writer = flags.iter().position(|f| *f == 1.0).unwrap();
    let (mut killed, _) = hubs.remove(writer);
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    store_results(&js, &subjects, &all[180..], 30).await;
    wait_counted(&telemetry, base, base + HOUR, 360).await;
    assert_eq!(writers(&hubs).await, vec![1.0], "the standby took over");
    assert_close(&folded(&query(&telemetry, base, base + HOUR, 60_000).await), &model(&all, 60_000));
}
