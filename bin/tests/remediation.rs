//! Remediation end to end on real processes (`nats-server`, `steward server`, `steward edge`,
//! the CLI). Where only the guards are under test, the test appends `firing` transitions to the
//! alarm store itself, as the evaluator would (the runs then target hosts that never connect, so
//! they stay in flight); the re-check test runs the whole path: a check fails, the evaluator
//! fires, the remediation's playbook fixes the condition on the edge, the re-check resolves it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use steward_actors::alarms::store::{AlarmStore, AlarmStoreError};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::alarm::{AlarmEvent, AlarmRecord, Cause, TransitionKind};
use steward_subjects::{AccountId, Subjects};

mod common;

use common::{json, steward};

const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);

/// NATS and `hubs` hub processes.
struct Fleet {
    nats: NatsServer,
    url: String,
    tmp: tempfile::TempDir,
    public: String,
    hubs: Vec<tokio::process::Child>,
    edges: Vec<tokio::process::Child>,
}

impl Fleet {
    async fn start(name: &str, hubs: usize) -> Fleet {
        let nats = NatsServer::start(ServerOptions::named(name)).await.unwrap();
        let url = nats.client_url();
        let tmp = tempfile::tempdir().unwrap();
        let keys = steward_actors::signing::JobSigner::init_dir(&tmp.path().join("keys")).unwrap();
        let mut fleet =
            Fleet { nats, url, public: keys.public.display().to_string(), tmp, hubs: Vec::new(), edges: Vec::new() };
        for i in 0..hubs {
            let log = std::fs::File::create(fleet.tmp.path().join(format!("hub-{i}.log"))).unwrap();
            let hub = steward(&fleet.url)
                .args(["server", "--signing-key", keys.secret.to_str().unwrap(), "--leader-ttl", "2s"])
                .env("STEWARD_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            fleet.hubs.push(hub);
        }
        // The remediation endpoints answer once the service (and its consumer) is up.
        eventually(WAIT, POLL, || async { json(&fleet.url, &["remediations"]).await }).await.unwrap();
        fleet
    }

    fn spawn_edge(&mut self, host: &str) {
        let data = self.tmp.path().join(host);
        let log = std::fs::File::create(self.tmp.path().join(format!("edge-{host}.log"))).unwrap();
        let edge = steward(&self.url)
            .args(["edge", "--host-id", host, "--labels", "role=web", "--heartbeat-ms", "300"])
            .args(["--data", data.to_str().unwrap(), "--trusted-key", &self.public])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.edges.push(edge);
    }

    /// The last lines of every process log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.tmp.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                out.push_str(&format!("--- {name}\n{tail}\n"));
            }
        }
        out
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    async fn apply(&self, doc: &serde_json::Value) {
        let file = self.path("doc.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        eventually(WAIT, POLL, || async { json(&self.url, &["apply", "-f", file.to_str().unwrap()]).await })
            .await
            .unwrap();
    }

    async fn store(&self) -> (async_nats::Client, AlarmStore) {
        let client = async_nats::connect(&self.url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let store = AlarmStore::open(&js, &Subjects::new(AccountId::parse("acme").unwrap())).await.unwrap();
        (client, store)
    }

    async fn remediations(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["remediations"];
        all.extend_from_slice(args);
        json(&self.url, &all).await.unwrap().as_array().unwrap().clone()
    }

    async fn stop(mut self) {
        drop(self.edges.drain(..));
        drop(self.hubs.drain(..));
        self.nats.stop().await;
    }
}

/// A document with one check `disk` on `role=web` hosts (running `argv` every `interval`), the
/// alarm rules `alarms` and the remediation rules `remediations`.
fn document(
    argv: &[&str],
    interval: &str,
    alarms: serde_json::Value,
    remediations: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": [{"id": "probe", "executor": {"kind": "command", "argv": argv}, "interval": interval, "timeout": "5s"}],
        "attestations": [{"id": "disk", "assessment": "probe", "component": "web"}],
        "alarms": alarms,
        "remediations": remediations,
    })
}

/// Appends a transition of `kind` to the alarm `<host>.disk.<rule>` as the evaluator would (the
/// alarm record after it, numbered one up); the transition's number.
async fn transition(store: &AlarmStore, host: &str, rule: &str, kind: TransitionKind) -> u64 {
    let id = format!("{host}.disk.{rule}");
    loop {
        let (seq, last) = store.last(&id).await.unwrap();
        let mut alarm = last.map_or_else(
            || AlarmRecord {
                id: id.clone(),
                host: host.to_owned(),
                check: "disk".to_owned(),
                rule: rule.to_owned(),
                labels: BTreeMap::from([("role".to_owned(), "web".to_owned())]),
                ..AlarmRecord::default()
            },
            |e| e.alarm,
        );
        alarm.n += 1;
        alarm.firing = kind == TransitionKind::Firing;
        let ev = AlarmEvent {
            kind,
            n: alarm.n,
            at_ms: steward_actors::now_ms(),
            alarm,
            cause: Some(Cause { spec: "disk-spec".to_owned(), ..Cause::default() }),
            notify: true,
            detail: String::new(),
            by: "test".to_owned(),
            seq: 0,
        };
        match store.append(&ev, seq).await {
            Ok(_) => return ev.n,
            Err(AlarmStoreError::Conflict(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The kinds of `alarm_id`'s transitions, oldest first.
async fn kinds(client: &async_nats::Client, store: &AlarmStore, alarm_id: &str) -> Vec<String> {
    let t = store.timeline(client, alarm_id, 1000).await.unwrap();
    t.iter().map(|e| e.kind.as_str().to_owned()).collect()
}

/// Waits until `f` holds for the remediations listed with `args`; returns them.
async fn wait_remediations(
    fleet: &Fleet,
    args: &[&str],
    f: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    eventually(WAIT, POLL, || async {
        let list = fleet.remediations(args).await;
        if f(&list) {
            Ok(list)
        } else {
            Err(format!("remediations now: {}", serde_json::Value::Array(list)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn count(list: &[serde_json::Value], state: &str) -> usize {
    list.iter().filter(|r| r["state"] == state).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_hosts_alarming_at_once_start_exactly_the_cap_and_hold_the_rest_across_a_hub_kill() {
    // Two hubs share the alarm transitions: the cap holds between them, and across a kill.
    let mut fleet = Fleet::start("remediation-cap", 2).await;
    let alarms = serde_json::json!([{"id": "full", "check": "disk", "when": {"status": ["fail"]}}]);
    let remediations = serde_json::json!([{
        "id": "clean", "alarm": "full", "check": "disk", "selector": "role=web",
        "action": {"kind": "command", "argv": ["true"]},
        "max_in_flight": 5, "max_per_hour": 1000, "cooldown": "0s"
    }]);
    fleet.apply(&document(&["true"], "1m", alarms, remediations)).await;
    let (client, store) = fleet.store().await;
    let hosts: Vec<String> = (0..100).map(|i| format!("h{i:03}")).collect();
    let appends = hosts.iter().map(|h| transition(&store, h, "full", TransitionKind::Firing));
    let started = std::time::Instant::now();
    futures::future::join_all(appends).await;
    // One hub dies (SIGKILL) while they decide: what it had taken comes back to the other, and
    // still no remediation starts twice or is noted twice.
    fleet.hubs[0].start_kill().unwrap();

    let list = wait_remediations(&fleet, &[], |l| l.len() == 100 && count(l, "starting") == 0).await;
    eprintln!("100 firings decided in {:?} (one of two hubs killed meanwhile)", started.elapsed());
    assert_eq!(count(&list, "running"), 5, "exactly the cap started");
    assert_eq!(count(&list, "held"), 95);
    for r in list.iter().filter(|r| r["state"] == "held") {
        assert_eq!(r["reason"], "5/5 in flight", "{r}");
        assert!(r["run_id"].as_str().unwrap().is_empty());
    }
    // Each started remediation is a normal run, labelled, visible in `steward runs`.
    let runs = json(&fleet.url, &["runs", "--label", "remediation=clean", "--limit", "1000"]).await.unwrap();
    let runs = runs["runs"].as_array().unwrap();
    let mut started_ids: Vec<&str> =
        list.iter().filter(|r| r["state"] == "running").map(|r| r["run_id"].as_str().unwrap()).collect();
    started_ids.sort_unstable();
    let mut run_ids = Vec::new();
    for r in runs {
        let id = r["run_id"].as_str().unwrap();
        if started_ids.contains(&id) {
            run_ids.push(id);
            continue;
        }
        // A run record the killed hub's dispatcher wrote before it could claim the idempotency
        // key (the dispatcher's orphan, not a second remediation): it has no host run, so
        // nothing was or will be sent to any host.
        let view = json(&fleet.url, &["run-status", id]).await.unwrap();
        assert!(view["hosts"].as_array().unwrap().is_empty(), "a second run that targets hosts: {view}");
        eprintln!("orphan run record left by the killed dispatcher: {id}");
    }
    run_ids.sort_unstable();
    assert_eq!(run_ids, started_ids, "{runs:?}");
    let runs: Vec<&serde_json::Value> =
        runs.iter().filter(|r| run_ids.contains(&r["run_id"].as_str().unwrap())).collect();
    for r in runs {
        assert_eq!(r["labels"]["alarm-check"], "disk");
        assert_eq!(r["labels"]["alarm-rule"], "full");
        assert_eq!(r["labels"]["alarm-firing"], "1");
    }
    // Every alarm's timeline says what happened to it, once.
    let (mut started, mut held) = (0, 0);
    for h in &hosts {
        let id = format!("{h}.disk.full");
        let k = kinds(&client, &store, &id).await;
        match k.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["firing", "remediation_started"] => started += 1,
            ["firing", "remediation_held"] => held += 1,
            other => panic!("{id}: {other:?}"),
        }
        let (_, last) = store.last(&id).await.unwrap();
        let last = last.unwrap();
        assert_eq!(last.by, "remediation");
        assert!(last.detail.starts_with(&format!("clean@{id}#1: ")), "{}", last.detail);
    }
    assert_eq!((started, held), (5, 95));
    // A viewer-style filter works.
    assert_eq!(fleet.remediations(&["--state", "held"]).await.len(), 95);
    assert!(json(&fleet.url, &["remediations", "--state", "bogus"]).await.unwrap_err().contains("unknown state"));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_cooldown_hourly_cap_and_runner_pool_guards_hold_with_their_reasons() {
    let fleet = Fleet::start("remediation-guards", 1).await;
    let alarms = serde_json::json!([
        {"id": "gated", "check": "disk", "when": {"status": ["fail"]}},
        {"id": "cool", "check": "disk", "when": {"status": ["fail"]}},
        {"id": "pooled", "check": "disk", "when": {"status": ["fail"]}},
        {"id": "often", "check": "disk", "when": {"status": ["fail"]}}
    ]);
    let remediations = serde_json::json!([
        {"id": "ask", "alarm": "gated", "action": {"kind": "command", "argv": ["true"]}, "approval": true},
        {"id": "once", "alarm": "cool", "action": {"kind": "command", "argv": ["true"]}, "cooldown": "1h"},
        {"id": "elsewhere", "alarm": "pooled", "action": {"kind": "command", "argv": ["true"]}, "runner": "pool=fixers"},
        {"id": "capped", "alarm": "often", "action": {"kind": "command", "argv": ["true"]}, "max_per_hour": 2, "max_in_flight": 10}
    ]);
    // Bad remediation rules are refused with their JSON pointers.
    let bad = serde_json::json!([
        {"id": "r0", "alarm": "nope", "action": {"kind": "command", "argv": ["true"]}},
        {"id": "r1", "alarm": "cool", "action": {"kind": "command", "argv": ["true"]}, "cooldown": "soon"},
        {"id": "r2", "alarm": "cool", "action": {"kind": "command", "argv": ["true"]}, "runner": "pool in ("},
        {"id": "r3", "alarm": "cool", "action": {"kind": "command", "argv": ["true"]}, "max_in_flight": 0},
        {"id": "r4", "alarm": "cool"}
    ]);
    let file = fleet.path("bad.json");
    std::fs::write(&file, document(&["true"], "1m", alarms.clone(), bad).to_string()).unwrap();
    let err = json(&fleet.url, &["apply", "-f", file.to_str().unwrap()]).await.unwrap_err();
    for pointer in [
        "/remediations/0/alarm",
        "/remediations/1/cooldown",
        "/remediations/2/runner",
        "/remediations/3/max_in_flight",
        "/remediations/4/action",
    ] {
        assert!(err.contains(pointer), "{pointer} missing in: {err}");
    }
    fleet.apply(&document(&["true"], "1m", alarms, remediations)).await;
    let (client, store) = fleet.store().await;

    // Approval: held with the reason, started by `steward remediation approve`.
    transition(&store, "a1", "gated", TransitionKind::Firing).await;
    let held = wait_remediations(&fleet, &["--rule", "ask"], |l| l.len() == 1).await;
    assert_eq!(held[0]["state"], "held");
    assert_eq!(held[0]["reason"], "waiting for approval");
    let id = held[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "ask@a1.disk.gated#1");
    let approved = json(&fleet.url, &["remediation", "approve", &id, "--author", "ana"]).await.unwrap();
    assert_eq!(approved["state"], "running", "{approved}");
    assert_eq!(approved["approved_by"], "ana");
    let run_id = approved["run_id"].as_str().unwrap().to_owned();
    assert!(!run_id.is_empty());
    let run = json(&fleet.url, &["run-status", &run_id]).await.unwrap();
    assert_eq!(run["run"]["labels"]["remediation"], "ask");
    assert_eq!(kinds(&client, &store, "a1.disk.gated").await, ["firing", "remediation_held", "remediation_started"]);
    let (_, last) = store.last("a1.disk.gated").await.unwrap();
    assert_eq!(last.unwrap().detail, format!("{id}: run {run_id} on a1 (approved by ana)"));
    // Approving again is refused: it is not held any more; an unknown id is not found.
    let err = json(&fleet.url, &["remediation", "approve", &id]).await.unwrap_err();
    assert!(err.contains("is running"), "{err}");
    let err = json(&fleet.url, &["remediation", "approve", "nope@x.y.z#1"]).await.unwrap_err();
    assert!(err.contains("no remediation"), "{err}");

    // Cooldown: the first firing starts, a second firing of the same host within the hour is
    // held until the cooldown ends; another host is not affected.
    transition(&store, "c1", "cool", TransitionKind::Firing).await;
    wait_remediations(&fleet, &["--rule", "once"], |l| count(l, "running") == 1).await;
    transition(&store, "c1", "cool", TransitionKind::Resolved).await;
    let second = transition(&store, "c1", "cool", TransitionKind::Firing).await;
    transition(&store, "c2", "cool", TransitionKind::Firing).await;
    let list = wait_remediations(&fleet, &["--rule", "once"], |l| l.len() == 3 && count(l, "starting") == 0).await;
    let again = list.iter().find(|r| r["id"] == format!("once@c1.disk.cool#{second}")).unwrap();
    assert_eq!(again["state"], "held");
    assert!(again["reason"].as_str().unwrap().starts_with("cooldown until "), "{again}");
    let other = list.iter().find(|r| r["host"] == "c2").unwrap();
    assert_eq!(other["state"], "running", "{other}");
    let k = kinds(&client, &store, "c1.disk.cool").await;
    assert_eq!(k, ["firing", "remediation_started", "resolved", "firing", "remediation_held"]);
    // A remediation whose runner pool has no connected host is not started, and says why.
    transition(&store, "p1", "pooled", TransitionKind::Firing).await;
    let pooled = wait_remediations(&fleet, &["--rule", "elsewhere"], |l| count(l, "finished") == 1).await;
    assert_eq!(pooled[0]["outcome"], "not started: no connected runner matches \"pool=fixers\"", "{}", pooled[0]);
    assert_eq!(kinds(&client, &store, "p1.disk.pooled").await, ["firing", "remediation_finished"]);
    // The hourly cap: two starts, the third held.
    for h in ["o1", "o2", "o3"] {
        transition(&store, h, "often", TransitionKind::Firing).await;
    }
    let capped = wait_remediations(&fleet, &["--rule", "capped"], |l| l.len() == 3 && count(l, "starting") == 0).await;
    assert_eq!(count(&capped, "running"), 2);
    let third = capped.iter().find(|r| r["state"] == "held").unwrap();
    assert_eq!(third["reason"], "hourly cap 2 reached");
    // Approving it does not bypass the cooldown.
    let err = json(&fleet.url, &["remediation", "approve", again["id"].as_str().unwrap()]).await.unwrap_err();
    assert!(err.contains("still held: cooldown until"), "{err}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_after_a_remediation_resolves_the_alarm() {
    let mut fleet = Fleet::start("remediation-recheck", 1).await;
    let host = "web-01";
    fleet.spawn_edge(host);
    let marker = fleet.path("fixed");
    let marker_s = marker.to_str().unwrap().to_owned();
    // The alarm rule `missing` fires on any failing check of the host; `canary` shows the
    // evaluator has loaded the rules and knows the specs (a result it evaluates before loading
    // a new revision's rules is judged by the old ones).
    let alarms = serde_json::json!([
        {"id": "missing", "selector": "role=web", "when": {"status": ["fail"]}},
        {"id": "canary", "check": "canary", "when": {"metric": "v", "op": "gt", "value": 0.5}}
    ]);
    // The remediation is a playbook kept on the hub: stored in the playbook store, sent signed
    // by reference, fetched and run by the edge's worker with ansible-playbook.
    let book = fleet.path("fix.yml");
    std::fs::write(
        &book,
        format!(
            "- name: create the marker\n  hosts: all\n  gather_facts: false\n  tasks:\n    - name: marker\n      ansible.builtin.copy:\n        dest: \"{marker_s}\"\n        content: \"fixed\\n\"\n"
        ),
    )
    .unwrap();
    let remediations = serde_json::json!([{
        "id": "create", "alarm": "missing", "selector": "role=web",
        "action": {"kind": "playbook", "url": book.to_str().unwrap()}, "timeout": "2m"
    }]);
    let mut doc = serde_json::json!({
        "controls": [{"id": "c1"}],
        "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
        "assessments": [{"id": "one", "executor": {"kind": "command", "argv": ["echo", "{\"v\": 1}"]}, "interval": "1s", "timeout": "1s"}],
        "attestations": [{"id": "canary", "assessment": "one", "component": "web"}],
        "alarms": alarms,
        "remediations": remediations,
    });
    fleet.apply(&doc).await;
    let (client, store) = fleet.store().await;
    let canary = format!("{host}.canary.canary");
    eventually(WAIT, POLL, || async {
        let k = kinds(&client, &store, &canary).await;
        if k.is_empty() {
            Err("canary not firing yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    // Now the check that fails until the marker exists; it runs every 10 minutes, so only the
    // re-check can see the fix within the test.
    doc["assessments"].as_array_mut().unwrap().push(serde_json::json!(
        {"id": "probe", "executor": {"kind": "command", "argv": ["test", "-f", marker_s]}, "interval": "10m", "timeout": "5s"}
    ));
    doc["attestations"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": "disk", "assessment": "probe", "component": "web"}));
    fleet.apply(&doc).await;
    let id = format!("{host}.disk.missing");
    eventually(WAIT, POLL, || async {
        let k = kinds(&client, &store, &id).await;
        if k.iter().any(|k| k == "resolved") {
            Ok(k)
        } else {
            Err(format!("timeline so far: {k:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "fixed\n", "the playbook ran on the edge");
    let k = kinds(&client, &store, &id).await;
    assert_eq!(k, ["firing", "remediation_started", "remediation_finished", "resolved"], "{k:?}");
    let t = store.timeline(&client, &id, 100).await.unwrap();
    assert!(t[2].detail.ends_with(" success"), "{}", t[2].detail);
    // The resolve came from a fresh result of the check, and the remediation is marked as
    // having cleared the alarm.
    let fresh = t[3].cause.as_ref().unwrap();
    assert_eq!(fresh.status.map(|s| s.as_str()), Some("pass"), "{:?}", t[3]);
    assert_ne!(fresh.key, t[0].cause.as_ref().unwrap().key);
    assert!(fresh.ended_at_ms >= t[2].at_ms, "the passing result came after the remediation ended");
    let list = wait_remediations(&fleet, &[], |l| l.len() == 1 && l[0]["cleared"] == true).await;
    assert_eq!(list[0]["state"], "finished");
    assert_eq!(list[0]["outcome"], "success");
    fleet.stop().await;
}
