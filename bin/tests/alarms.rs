//! Alarms end to end on real processes (`nats-server`, `steward server`, `steward edge`, the
//! CLI): a check reads its metric from a file the test writes, so the test decides when the
//! rule breaches; transitions are read back with `steward alarm ID -o json`, notifications
//! from the `alarm.notify` subject and from a webhook server inside the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::alarm::AlarmEvent;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

mod common;

use common::{json, steward};

const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
const HOST: &str = "web-01";

/// A test fleet: NATS, a hub, one edge labelled `role=web`.
struct Fleet {
    nats: NatsServer,
    url: String,
    tmp: tempfile::TempDir,
    secret: String,
    public: String,
    hubs: Vec<tokio::process::Child>,
    edge: Option<tokio::process::Child>,
}

impl Fleet {
    async fn start(name: &str, hub_args: &[&str]) -> Fleet {
        let nats = NatsServer::start(ServerOptions::named(name)).await.unwrap();
        let url = nats.client_url();
        let tmp = tempfile::tempdir().unwrap();
        let f = steward_actors::signing::JobSigner::init_dir(&tmp.path().join("keys")).unwrap();
        let mut fleet = Fleet {
            nats,
            url,
            secret: f.secret.display().to_string(),
            public: f.public.display().to_string(),
            tmp,
            hubs: Vec::new(),
            edge: None,
        };
        fleet.spawn_hub(hub_args);
        fleet.spawn_edge();
        fleet.wait_online().await;
        fleet
    }

    fn spawn_hub(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.tmp.path().join(format!("hub-{}.log", self.hubs.len()))).unwrap();
        let hub = steward(&self.url)
            .args(["server", "--signing-key", &self.secret, "--leader-ttl", "2s"])
            .args(extra)
            .env("STEWARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hubs.push(hub);
    }

    fn spawn_edge(&mut self) {
        let data = self.tmp.path().join(HOST);
        let log = std::fs::File::create(self.tmp.path().join("edge.log")).unwrap();
        let edge = steward(&self.url)
            .args(["edge", "--host-id", HOST, "--labels", "role=web", "--heartbeat-ms", "300"])
            .args(["--data", data.to_str().unwrap(), "--trusted-key", &self.public])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.edge = Some(edge);
    }

    async fn wait_online(&self) {
        eventually(WAIT, POLL, || async {
            let v = json(&self.url, &["hosts", "--online"]).await?;
            if v.as_array().is_some_and(|a| a.iter().any(|h| h["host_id"] == HOST)) {
                Ok(())
            } else {
                Err(format!("{HOST} not online: {v}"))
            }
        })
        .await
        .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    async fn apply(&self, doc: &str) {
        let file = self.path("doc.json");
        std::fs::write(&file, doc).unwrap();
        eventually(WAIT, POLL, || async { json(&self.url, &["apply", "-f", file.to_str().unwrap()]).await })
            .await
            .unwrap();
    }

    async fn alarm(&self, id: &str) -> Result<serde_json::Value, String> {
        json(&self.url, &["alarm", id, "--limit", "1000"]).await
    }

    /// Waits until `id`'s timeline has a transition `kind` after transition number `after`.
    async fn wait_for(&self, id: &str, kind: &str, after: u64) -> serde_json::Value {
        eventually(WAIT, POLL, || async {
            let a = self.alarm(id).await?;
            let found = a["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["kind"] == kind && e["n"].as_u64().unwrap() > after)
                .cloned();
            found.ok_or_else(|| format!("no {kind} after {after} yet: {}", kinds(&a).join(",")))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stored results of the check whose metric file is `file` with `used` = `value`.
    async fn results_with(&self, metric: &str, value: f64) -> usize {
        let v = json(&self.url, &["results", "--host", HOST, "--limit", "100000"]).await.unwrap();
        v.as_array().unwrap().iter().filter(|r| r["metrics"][metric].as_f64() == Some(value)).count()
    }
}

fn kinds(alarm: &serde_json::Value) -> Vec<String> {
    alarm["timeline"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
}

fn set(path: &Path, metric: &str, value: f64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{{\"{metric}\": {value}}}\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// One request the webhook server received: its `Steward-Event-Id` and body.
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// An HTTP server that answers 500 to its first `fail_first` requests and 200 afterwards,
/// recording every request it accepted.
async fn webhook_server(fail_first: usize) -> (String, Received, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let attempts = Arc::new(Mutex::new(0usize));
    let (r, a) = (received.clone(), attempts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (r, a) = (r.clone(), a.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut headers = BTreeMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                loop {
                    line.clear();
                    reader.read_line(&mut line).await.unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).await.unwrap();
                let n = {
                    let mut a = a.lock().unwrap();
                    *a += 1;
                    *a
                };
                let status = if n <= fail_first { "500 Internal Server Error" } else { "200 OK" };
                if n > fail_first {
                    let id = headers.get("steward-event-id").cloned().unwrap_or_default();
                    r.lock().unwrap().push((id, serde_json::from_slice(&body).unwrap()));
                }
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let mut stream = reader.into_inner();
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, received, attempts)
}

/// A document with one check `disk` on `role=web` hosts reading `file` every second, and
/// `rules` as its alarm rules.
fn document(file: &Path, rules: &serde_json::Value) -> String {
    serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": [{"id": "read", "executor": {"kind": "command", "argv": ["cat", file]}, "interval": "1s", "timeout": "1s"}],
        "attestations": [{"id": "disk", "assessment": "read", "component": "web"}],
        "alarms": rules,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_fires_after_n_breaches_clears_past_its_clear_threshold_and_notifies() {
    let (hook, received, attempts) = webhook_server(1).await;
    let mut fleet = Fleet::start("alarms-fire", &["--alarm-webhook", &hook]).await;
    let nats = async_nats::connect(&fleet.url).await.unwrap();
    let mut notes = nats.subscribe("steward.v1.acme.alarm.notify.>").await.unwrap();
    let file = fleet.path("used.json");
    set(&file, "used", 50.0);
    let rules = serde_json::json!([{
        "id": "full", "check": "disk", "severity": "critical",
        "when": {"metric": "used", "op": "gt", "value": 90.0},
        "clear": {"metric": "used", "op": "lt", "value": 80.0},
        "breaches": {"n": 3, "of": 3}
    }]);
    fleet.apply(&document(&file, &rules)).await;
    let id = format!("{HOST}.disk.full");
    eventually(WAIT, POLL, || async {
        let n = fleet.results_with("used", 50.0).await;
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} results"))
        }
    })
    .await
    .unwrap();
    assert!(fleet.alarm(&id).await.is_err(), "no alarm before any breach");

    set(&file, "used", 95.0);
    let firing = fleet.wait_for(&id, "firing", 0).await;
    // It fired on the third breaching result, not before.
    let breaches = fleet.results_with("used", 95.0).await;
    assert!(breaches >= 3, "fired after {breaches} breaching results");
    let cause_key = firing["cause"]["key"].as_str().unwrap().to_owned();
    assert_eq!(firing["alarm"]["firing"], true);
    assert_eq!(firing["alarm"]["severity"], "critical");
    assert_eq!(firing["notify"], true);
    assert_eq!(firing["cause"]["metrics"]["used"], 95.0);

    // The notification on NATS.
    let note = tokio::time::timeout(WAIT, notes.next()).await.unwrap().unwrap();
    assert_eq!(note.subject.as_str(), format!("steward.v1.acme.alarm.notify.critical.{id}"));
    let ev: AlarmEvent =
        steward_subjects::codec::decode(steward_subjects::codec::Encoding::MsgPack, &note.payload).unwrap();
    assert_eq!(ev.kind.as_str(), "firing");

    // Acknowledged with author and comment.
    let acked = json(&fleet.url, &["ack", &id, "--comment", "looking", "--author", "ana"]).await.unwrap();
    assert_eq!(acked["ack"]["author"], "ana");
    let ack = fleet.wait_for(&id, "acknowledged", 1).await;
    assert_eq!(ack["by"], "ana");
    assert_eq!(ack["detail"], "looking");

    // Inside the hysteresis band (80..90): stays firing.
    set(&file, "used", 85.0);
    eventually(WAIT, POLL, || async {
        let n = fleet.results_with("used", 85.0).await;
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} results at 85"))
        }
    })
    .await
    .unwrap();
    let a = fleet.alarm(&id).await.unwrap();
    assert_eq!(a["alarm"]["firing"], true, "{:?}", kinds(&a));
    // Below the clear threshold: resolved, the ack cleared.
    set(&file, "used", 70.0);
    let resolved = fleet.wait_for(&id, "resolved", 2).await;
    assert_eq!(resolved["cause"]["metrics"]["used"], 70.0);
    assert!(resolved["alarm"]["ack"].is_null());
    assert_eq!(kinds(&fleet.alarm(&id).await.unwrap()), ["firing", "acknowledged", "resolved"]);

    // The webhook got every notifying transition once (after one refused attempt), in order.
    eventually(WAIT, POLL, || async {
        let got: Vec<String> = received.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        if got.len() >= 3 {
            Ok(got)
        } else {
            Err(format!("webhook got {got:?}"))
        }
    })
    .await
    .unwrap();
    let got = received.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, [format!("{id}:1"), format!("{id}:2"), format!("{id}:3")]);
    assert_eq!(got[0].1["cause"]["key"], cause_key);
    assert!(*attempts.lock().unwrap() >= 4, "the first attempt was refused and retried");

    // `steward alarms --state firing` is empty now, `--state ok` lists it.
    let firing_now = json(&fleet.url, &["alarms", "--state", "firing"]).await.unwrap();
    assert_eq!(firing_now.as_array().unwrap().len(), 0);
    let ok = json(&fleet.url, &["alarms", "--state", "ok", "--selector", "role=web"]).await.unwrap();
    assert_eq!(ok[0]["id"], id);
    // Acknowledging a resolved alarm is refused.
    assert!(json(&fleet.url, &["ack", &id]).await.unwrap_err().contains("not firing"));
    // The alarms bucket mirrors the alarm as its last transition left it.
    let kv = async_nats::jetstream::new(nats.clone()).get_key_value("steward_alarms").await.unwrap();
    eventually(WAIT, POLL, || async {
        let v = kv.get(format!("acme.alarm.{id}")).await.map_err(|e| e.to_string())?.ok_or("no record")?;
        let a: steward_subjects::api::alarm::AlarmRecord =
            steward_subjects::codec::decode(steward_subjects::codec::Encoding::MsgPack, &v)
                .map_err(|e| e.to_string())?;
        if a.n == 3 && !a.firing {
            Ok(())
        } else {
            Err(format!("bucket has n={} firing={}", a.n, a.firing))
        }
    })
    .await
    .unwrap();
    drop(fleet.hubs.drain(..));
    fleet.nats.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_stops_notifications_not_state_and_expires_on_time() {
    let mut fleet = Fleet::start("alarms-silence", &[]).await;
    let nats = async_nats::connect(&fleet.url).await.unwrap();
    let mut notes = nats.subscribe("steward.v1.acme.alarm.notify.>").await.unwrap();
    let file = fleet.path("used.json");
    set(&file, "used", 10.0);
    let rules = serde_json::json!([{"id": "full", "when": {"metric": "used", "op": "gt", "value": 90.0}}]);
    fleet.apply(&document(&file, &rules)).await;
    let id = format!("{HOST}.disk.full");

    let s = json(&fleet.url, &["silence", "add", "--selector", "role=web", "--for", "8s", "--comment", "maint"])
        .await
        .unwrap();
    let silence_id = s["id"].as_str().unwrap().to_owned();
    let listed = json(&fleet.url, &["silence", "list"]).await.unwrap();
    assert!(listed.as_array().unwrap().iter().any(|x| x["id"] == silence_id.as_str()));
    // The evaluator reads silences every second: let it see this one before the breach.
    tokio::time::sleep(Duration::from_secs(2)).await;

    set(&file, "used", 99.0);
    let firing = fleet.wait_for(&id, "firing", 0).await;
    assert_eq!(firing["notify"], false, "silenced: no notification");
    assert_eq!(firing["alarm"]["silenced_by"][0], silence_id.as_str());
    // The silence ends while the alarm still fires: unsilenced, and that is announced.
    let unsilenced = fleet.wait_for(&id, "unsilenced", 1).await;
    assert_eq!(unsilenced["notify"], true);
    let since = firing["at_ms"].as_u64().unwrap();
    let ended = unsilenced["at_ms"].as_u64().unwrap();
    assert!(ended >= s["expires_ms"].as_u64().unwrap(), "not before the expiry");
    assert!(ended > since);
    let note = tokio::time::timeout(WAIT, notes.next()).await.unwrap().unwrap();
    let ev: AlarmEvent =
        steward_subjects::codec::decode(steward_subjects::codec::Encoding::MsgPack, &note.payload).unwrap();
    assert_eq!(ev.kind.as_str(), "unsilenced", "the silenced firing was not notified");
    let listed = json(&fleet.url, &["silence", "list"]).await.unwrap();
    assert!(listed.as_array().unwrap().is_empty(), "expired silences are not listed: {listed}");

    // Expire-on-resolve: a new silence ends when the alarm it covers resolves.
    let s2 = json(&fleet.url, &["silence", "add", "--host", HOST, "--for", "1h", "--expire-on-resolve"]).await.unwrap();
    let s2_id = s2["id"].as_str().unwrap().to_owned();
    fleet.wait_for(&id, "silenced", 2).await;
    set(&file, "used", 10.0);
    let resolved = fleet.wait_for(&id, "resolved", 3).await;
    assert_eq!(resolved["notify"], false);
    eventually(WAIT, POLL, || async {
        let all = json(&fleet.url, &["silence", "list", "--all"]).await?;
        let s = all.as_array().unwrap().iter().find(|x| x["id"] == s2_id.as_str()).cloned().unwrap();
        if s["ended"].as_str().is_some_and(|e| e.contains("resolved")) {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .unwrap();
    // Bad silences are refused with a reason.
    let err = json(&fleet.url, &["silence", "add", "--for", "1h"]).await.unwrap_err();
    assert!(err.contains("would silence everything"), "{err}");
    let err = json(&fleet.url, &["silence", "add", "--selector", "a in (", "--for", "1h"]).await.unwrap_err();
    assert!(err.contains("selector"), "{err}");
    drop(fleet.hubs.drain(..));
    fleet.nats.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_is_detected_and_its_end_sends_the_resolve_and_a_silent_host_goes_stale() {
    let mut fleet = Fleet::start("alarms-flap", &[]).await;
    let dir = fleet.path("flap");
    std::fs::create_dir_all(&dir).unwrap();
    let mode = dir.join("mode");
    std::fs::write(&mode, "flap").unwrap();
    // Alternates 1, 0, 1, ... while the mode file says `flap`, then stays at 0.
    let script = format!(
        "if [ \"$(cat {m})\" = flap ]; then if [ -f {t} ]; then rm {t}; echo '{{\"v\": 1}}'; else touch {t}; echo '{{\"v\": 0}}'; fi; else echo '{{\"v\": 0}}'; fi",
        m = mode.display(),
        t = dir.join("toggle").display()
    );
    let doc = serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": [
            {"id": "toggle", "executor": {"kind": "command", "argv": ["sh", "-c", script]}, "interval": "1s", "timeout": "1s"},
            {"id": "true", "executor": {"kind": "command", "argv": ["true"]}, "interval": "1s", "timeout": "1s"}
        ],
        "attestations": [
            {"id": "svc", "assessment": "toggle", "component": "web"},
            {"id": "alive", "assessment": "true", "component": "web"}
        ],
        "alarms": [
            {"id": "up", "check": "svc", "when": {"metric": "v", "op": "gt", "value": 0.5},
             "flapping": {"start": 40.0, "stop": 20.0}},
            {"id": "silent", "check": "alive", "stale_after": 3, "severity": "critical"}
        ]
    });
    fleet.apply(&doc.to_string()).await;
    let flap = format!("{HOST}.svc.up");
    let started = fleet.wait_for(&flap, "flapping_started", 0).await;
    assert_eq!(started["notify"], true);
    assert_eq!(started["alarm"]["flapping"], true);
    let pct: f64 = started["detail"].as_str().unwrap().trim_end_matches("% state change").parse().unwrap();
    assert!(pct >= 40.0, "{pct}");
    // While flapping, firing and resolving go on in the timeline, unannounced.
    let n = started["n"].as_u64().unwrap();
    let later = fleet.wait_for(&flap, "firing", n).await;
    assert_eq!(later["notify"], false);
    std::fs::write(&mode, "low").unwrap();
    let ended = fleet.wait_for(&flap, "flapping_ended", n).await;
    assert_eq!(ended["notify"], true, "the end of flapping is announced");
    assert_eq!(ended["alarm"]["firing"], false, "and it carries the resolve");
    let timeline = fleet.alarm(&flap).await.unwrap();
    assert_eq!(kinds(&timeline).iter().filter(|k| *k == "flapping_started").count(), 1);
    // Transitions are numbered without gaps.
    let ns: Vec<u64> = timeline["timeline"].as_array().unwrap().iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (1..=ns.len() as u64).collect::<Vec<_>>());

    // Staleness: the edge stops reporting.
    let silent = format!("{HOST}.alive.silent");
    assert!(fleet.alarm(&silent).await.is_err());
    let mut edge = fleet.edge.take().unwrap();
    edge.kill().await.unwrap();
    let stale = fleet.wait_for(&silent, "firing", 0).await;
    assert_eq!(stale["alarm"]["reason"], "stale");
    assert!(stale["alarm"]["message"].as_str().unwrap().contains("no result for"));
    fleet.spawn_edge();
    let back = fleet.wait_for(&silent, "resolved", 1).await;
    assert!(back["cause"]["key"].is_string(), "resolved by a result: {back}");
    drop(fleet.hubs.drain(..));
    fleet.nats.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_with_a_bad_metric_name_or_selector_is_refused_with_its_json_pointer() {
    let fleet = Fleet::start("alarms-invalid", &[]).await;
    let file = fleet.path("used.json");
    let rules = serde_json::json!([
        {"id": "ok", "when": {"metric": "used", "value": 1.0}},
        {"id": "bad-metric", "when": {"metric": "used percent", "value": 1.0}},
        {"id": "bad-selector", "selector": "role in (web", "when": {"status": ["fail"]}},
        {"id": "bad-check", "check": "nope", "when": {"status": ["bogus"]}, "breaches": {"n": 5, "of": 3}}
    ]);
    let doc = fleet.path("bad.json");
    std::fs::write(&doc, document(&file, &rules)).unwrap();
    let out = steward(&fleet.url).args(["apply", "-f", doc.to_str().unwrap()]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for pointer in [
        "/alarms/1/when/metric",
        "/alarms/2/selector",
        "/alarms/3/check",
        "/alarms/3/when/status/0",
        "/alarms/3/breaches",
    ] {
        assert!(err.contains(pointer), "{pointer} missing in: {err}");
    }
    assert!(!err.contains("/alarms/0"), "{err}");
    // Nothing was stored.
    let history = json(&fleet.url, &["history"]).await.unwrap();
    assert_eq!(history["total"], 0, "{history}");
}

/// Every transition of `id`'s timeline names the result that caused it: with a check that
/// alternates 1, 0, 1, ... and a rule that fires on 1, every stored result from the first 1 on
/// causes exactly one transition. Returns (cause keys in timeline order, expected keys).
async fn causes_and_expected(fleet: &Fleet, id: &str) -> (Vec<String>, Vec<String>) {
    let a = fleet.alarm(id).await.unwrap();
    let timeline = a["timeline"].as_array().unwrap();
    let ns: Vec<u64> = timeline.iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (1..=ns.len() as u64).collect::<Vec<_>>(), "{id}: numbered without gaps or repeats");
    let causes: Vec<String> = timeline.iter().map(|e| e["cause"]["key"].as_str().unwrap().to_owned()).collect();
    let spec = timeline[0]["cause"]["spec"].as_str().unwrap();
    let results = json(&fleet.url, &["results", "--spec", spec, "--limit", "100000"]).await.unwrap();
    let results = results.as_array().unwrap();
    let first = results.iter().position(|r| r["metrics"]["v"].as_f64() == Some(1.0)).unwrap();
    let expected = results[first..]
        .iter()
        .map(|r| format!("{}:{}:{}", r["spec"].as_str().unwrap(), r["epoch"], r["seq"]))
        .collect();
    (causes, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_evaluating_hub_loses_and_repeats_no_transition() {
    const CHECKS: usize = 6;
    let mut fleet = Fleet::start("alarms-kill", &[]).await;
    let dir = fleet.path("toggles");
    std::fs::create_dir_all(&dir).unwrap();
    let mut assessments = Vec::new();
    let mut attestations = Vec::new();
    for i in 0..CHECKS {
        let t = dir.join(format!("t{i}"));
        let script = format!(
            "if [ -f {t} ]; then rm {t}; echo '{{\"v\": 1}}'; else touch {t}; echo '{{\"v\": 0}}'; fi",
            t = t.display()
        );
        assessments.push(serde_json::json!({"id": format!("a{i}"), "executor": {"kind": "command", "argv": ["sh", "-c", script]}, "interval": "1s", "timeout": "1s"}));
        attestations
            .push(serde_json::json!({"id": format!("svc{i}"), "assessment": format!("a{i}"), "component": "web"}));
    }
    let doc = serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": assessments,
        "attestations": attestations,
        "alarms": [{"id": "up", "when": {"metric": "v", "op": "gt", "value": 0.5}}]
    });
    fleet.apply(&doc.to_string()).await;
    let ids: Vec<String> = (0..CHECKS).map(|i| format!("{HOST}.svc{i}.up")).collect();
    // The first hub evaluates; a second one stands by.
    for id in &ids {
        fleet.wait_for(id, "resolved", 0).await;
    }
    fleet.spawn_hub(&[]);
    // Mid-stream (about CHECKS transitions a second): pause the evaluating hub. The lease
    // leadership moves to the standby after its 2 s TTL, results are stored again and
    // delivered to the paused evaluator, which never acknowledges them; then SIGKILL it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut first = fleet.hubs.remove(0);
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_secs(7)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for id in &ids {
            let a = fleet.alarm(id).await.unwrap();
            v.push(a["alarm"]["n"].as_u64().unwrap());
        }
        v
    };
    // The standby takes over and keeps going.
    for (id, n) in ids.iter().zip(&before) {
        fleet.wait_for(id, "firing", n + 2).await;
    }
    // Stop the checks, let the evaluator drain, then compare every timeline with the results.
    let mut edge = fleet.edge.take().unwrap();
    edge.kill().await.unwrap();
    for id in &ids {
        let (causes, expected) = eventually(WAIT, POLL, || async {
            let (c, e) = causes_and_expected(&fleet, id).await;
            if c.len() == e.len() {
                Ok((c, e))
            } else {
                Err(format!("{id}: {} transitions for {} results", c.len(), e.len()))
            }
        })
        .await
        .unwrap();
        assert_eq!(causes, expected, "{id}: one transition per result, in order, none lost or repeated");
        assert!(causes.len() > 6, "{id}: {} transitions", causes.len());
    }
    // The successor resumed after its predecessor's acknowledged floor.
    let log = std::fs::read_to_string(fleet.path("hub-1.log")).unwrap();
    assert!(log.contains("resumes after the acknowledged floor"));
    drop(fleet.hubs.drain(..));
    fleet.nats.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_judges_the_first_result_of_its_own_revision() {
    // A check that runs every 10 minutes fails on its first run, right after the apply that
    // brings both the check and its rule: the evaluator must judge that result by the new
    // revision's rules, not by the ones it read on its last tick.
    let mut fleet = Fleet::start("alarms-first", &[]).await;
    let doc = serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": [{"id": "broken", "executor": {"kind": "command", "argv": ["false"]}, "interval": "10m", "timeout": "5s"}],
        "attestations": [{"id": "svc", "assessment": "broken", "component": "web"}],
        "alarms": [{"id": "down", "check": "svc", "when": {"status": ["fail"]}}]
    });
    fleet.apply(&doc.to_string()).await;
    let firing = fleet.wait_for(&format!("{HOST}.svc.down"), "firing", 0).await;
    assert_eq!(firing["cause"]["status"], "fail");
    drop(fleet.hubs.drain(..));
    fleet.nats.stop().await;
}
