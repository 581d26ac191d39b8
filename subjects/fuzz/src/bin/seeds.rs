//! Writes the seed corpus: valid encodings (MessagePack and JSON) of every message kind each
//! fuzz target covers, prefixed with the selector byte that picks the kind, plus the demo
//! configuration and a set of selectors.
//!
//! `cargo run --manifest-path subjects/fuzz/Cargo.toml --bin seeds -- DIR` (or the `seeds` binary
//! `cargo fuzz build` leaves in `subjects/fuzz/target/*/release/`)
//! (then `cargo fuzz cmin` folds them into `corpus/`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use steward_actors::signing::OrderBinding;
use steward_actors::spec_signing::sign_specs;
use steward_fuzz::{selector_byte, signer, ACCOUNT, EVENTS, HOST, REQUESTS, WORK_ORDERS};
use steward_subjects::api::{config, dead_letter, health, host, jobspec, lease, result, run};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::spec::resolve_attestation;
use steward_subjects::config::{parse_document, TargetKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Out {
    dir: PathBuf,
    n: usize,
}

impl Out {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
        let dir = self.dir.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        self.n += 1;
        Ok(())
    }

    /// `value` read as a `T` (so the field names are checked by a round trip), then written in
    /// both encodings behind the selector byte of `kind`.
    fn typed<T: DeserializeOwned + Serialize>(
        &mut self,
        target: &str,
        kinds: &[&str],
        kind: &str,
        value: Value,
    ) -> Res<()> {
        let typed: T = serde_json::from_value(value.clone())?;
        let back = serde_json::to_value(&typed)?;
        check_fields(kind, &value, &back)?;
        self.encoded(target, kinds, kind, &typed)
    }

    fn encoded<T: Serialize>(&mut self, target: &str, kinds: &[&str], kind: &str, v: &T) -> Res<()> {
        let index = kinds.iter().position(|k| *k == kind).ok_or(format!("unknown kind {kind}"))?;
        for (enc, ext) in [(Encoding::MsgPack, "mp"), (Encoding::Json, "json")] {
            let mut bytes = vec![selector_byte(index, enc)];
            bytes.extend_from_slice(&codec::encode(enc, v)?);
            self.write(target, &format!("{}-{}.{ext}", kind.replace('.', "_"), self.n), &bytes)?;
        }
        Ok(())
    }
}

/// Every field named in the seed text must survive the round trip (a misspelt field would be
/// dropped silently by `#[serde(default)]` types and the seed would test less than it says).
fn check_fields(kind: &str, given: &Value, back: &Value) -> Res<()> {
    if let (Some(g), Some(b)) = (given.as_object(), back.as_object()) {
        for (k, v) in g {
            let Some(bv) = b.get(k) else { return Err(format!("{kind}: field {k} is not a field of the type").into()) };
            check_fields(kind, v, bv)?;
        }
    }
    Ok(())
}

fn job_command() -> Value {
    json!({"kind": "command", "command": ["sh", "-c", "uptime"]})
}

fn requests(o: &mut Out) -> Res<()> {
    let k = REQUESTS;
    let t = "requests";
    let doc = fs::read_to_string(demo_path())?;
    o.typed::<config::ApplyRequest>(
        t,
        k,
        "config.apply",
        json!({"document": doc, "label": "v2", "author": "ops", "if_revision": 3}),
    )?;
    o.typed::<config::ApplyRequest>(
        t,
        k,
        "config.apply",
        json!({"document": "{\"version\":1}", "label": "", "author": "a"}),
    )?;
    o.typed::<config::PlanRequest>(t, k, "config.plan", json!({"document": "{\"version\":1,\"services\":[]}"}))?;
    o.typed::<config::GetRequest>(t, k, "config.get", json!({"revision": 7}))?;
    o.typed::<config::PlaybookGetRequest>(
        t,
        k,
        "config.playbook",
        json!({"reference": format!("sha256:{}", "ab".repeat(32))}),
    )?;
    o.typed::<config::PlaybookStoreRequest>(
        t,
        k,
        "config.store_playbook",
        json!({"content": "- hosts: all\n  tasks: []\n"}),
    )?;
    o.typed::<config::HistoryRequest>(
        t,
        k,
        "config.history",
        json!({"since": "2026-01-01T00:00:00Z", "until": "2026-12-31T23:59:59Z", "label": "v", "author": "ops", "limit": 20, "before": 9}),
    )?;
    o.typed::<config::DiffRequest>(t, k, "config.diff", json!({"from": 1, "to": 2}))?;
    o.typed::<config::RollbackRequest>(
        t,
        k,
        "config.rollback",
        json!({"revision": 2, "author": "ops", "label": "back", "if_revision": 3}),
    )?;
    o.typed::<health::HealthRequest>(t, k, "health.status", json!({}))?;
    o.typed::<host::AppliedRevisionRequest>(t, k, "host.applied", json!({"host_id": HOST, "revision": 4}))?;
    o.typed::<host::HostStatusRequest>(t, k, "host.status", json!({"host_id": HOST}))?;
    o.typed::<host::HostListRequest>(
        t,
        k,
        "host.list",
        json!({"selector": "env=prod,role in (web,db),!drain", "online": true}),
    )?;
    o.typed::<host::SendCommandRequest>(
        t,
        k,
        "host.send",
        json!({"host_id": HOST, "action": "install_worker", "worker": "playbook", "ttl_ms": 30000, "wait_ms": 1000}),
    )?;
    o.typed::<host::CommandOutcomeRequest>(t, k, "host.outcome", json!({"host_id": HOST, "command_id": "c-1"}))?;
    o.typed::<host::EnsureWorkerRequest>(
        t,
        k,
        "host.ensure_worker",
        json!({"host_id": HOST, "worker": "playbook", "timeout_ms": 5000}),
    )?;
    o.typed::<jobspec::JobSpecListRequest>(
        t,
        k,
        "jobspec.list",
        json!({"kind": "host", "target": HOST, "limit": 100, "after": "0123456789abcdef0123456789abcdef"}),
    )?;
    o.typed::<jobspec::ExplainRequest>(t, k, "jobspec.explain", json!({"id": "0123456789abcdef0123456789abcdef"}))?;
    o.typed::<jobspec::RenderStatusRequest>(t, k, "jobspec.status", json!({}))?;
    o.typed::<lease::LeaseRequest>(
        t,
        k,
        "lease.lease",
        json!({"runtime": "rt-1", "host": HOST, "labels": {"env": "prod"}, "max": 64}),
    )?;
    o.typed::<lease::RenewRequest>(
        t,
        k,
        "lease.renew",
        json!({"runtime": "rt-1", "host": HOST, "labels": {"env": "prod"}, "held": [{"spec": "0123456789abcdef0123456789abcdef", "epoch": 3}]}),
    )?;
    o.typed::<lease::MineRequest>(t, k, "lease.mine", json!({"runtime": "rt-1"}))?;
    o.typed::<lease::ReleaseRequest>(
        t,
        k,
        "lease.release",
        json!({"runtime": "rt-1", "specs": [{"spec": "0123456789abcdef0123456789abcdef", "epoch": 3}]}),
    )?;
    o.typed::<lease::LeasesRequest>(
        t,
        k,
        "lease.leases",
        json!({"runtime": "rt-1", "unassigned": true, "limit": 10, "spec": "0123456789abcdef0123456789abcdef", "sessions": true}),
    )?;
    o.typed::<result::SubmitRequest>(t, k, "result.submit", json!({"results": [result_record(1), result_record(2)]}))?;
    o.typed::<run::RunRequest>(
        t,
        k,
        "run.dispatch",
        json!({"hosts": [HOST, "web-2"], "job": job_command(), "labels": {"ticket": "ops-1"}, "timeout_ms": 60000,
               "idempotency_key": "k-1", "retry": {"max_attempts": 3, "backoff_ms": 500}}),
    )?;
    o.typed::<run::RunRequest>(
        t,
        k,
        "run.dispatch",
        json!({"selector": "env=prod", "job": {"kind": "playbook", "playbook": "- hosts: all\n  tasks: []\n"}}),
    )?;
    o.typed::<run::RunStatusRequest>(
        t,
        k,
        "run.status",
        json!({"run_id": "r-1", "events": true, "after_seq": 4, "max_events": 100, "host_limit": 10}),
    )?;
    o.typed::<run::RunCancelRequest>(t, k, "run.cancel", json!({"run_id": "r-1"}))?;
    o.typed::<run::RunListRequest>(
        t,
        k,
        "run.list",
        json!({"status": "failure", "labels": {"ticket": "ops-1"}, "limit": 5}),
    )?;
    // An empty payload is a request without parameters.
    for (i, _) in REQUESTS.iter().enumerate() {
        o.write(t, &format!("empty-{i}"), &[selector_byte(i, Encoding::MsgPack)])?;
    }
    Ok(())
}

fn result_record(seq: u64) -> Value {
    json!({"spec": "0123456789abcdef0123456789abcdef", "epoch": 2, "seq": seq, "runtime": "rt-1", "host": HOST,
           "content_hash": "fedcba9876543210fedcba9876543210", "executor": "command", "started_at_ms": 1_700_000_000_000u64,
           "ended_at_ms": 1_700_000_000_250u64, "status": "ok", "error_kind": "", "message": "fine", "exit_code": 0,
           "metrics": {"load": 0.25}, "output": "up 3 days", "output_truncated": false, "output_ref": null})
}

fn work_order() -> Res<run::WorkOrder> {
    let mut o: run::WorkOrder = serde_json::from_value(json!({
        "run_id": "r-1", "host_id": HOST, "attempt": 1, "job": job_command(), "timeout_ms": 60000,
        "labels": {"ticket": "ops-1"}, "deadline_ms": 4_102_444_800_000u64
    }))?;
    let s = signer();
    o.signature = s.sign_order(&OrderBinding {
        account: ACCOUNT,
        host_id: HOST,
        run_id: &o.run_id,
        attempt: o.attempt,
        deadline_ms: o.deadline_ms,
        job: &o.job,
    });
    o.key_id = s.key_id().to_owned();
    Ok(o)
}

fn work_orders(o: &mut Out) -> Res<()> {
    let (t, k) = ("work_orders", WORK_ORDERS);
    let order = work_order()?;
    o.encoded(t, k, "work_order", &order)?;
    let mut playbook = order.clone();
    playbook.job =
        serde_json::from_value(json!({"kind": "playbook", "playbook_ref": format!("sha256:{}", "cd".repeat(32))}))?;
    o.encoded(t, k, "work_order", &playbook)?;
    o.typed::<run::StopOrder>(
        t,
        k,
        "stop_order",
        json!({"run_id": "r-1", "host_id": HOST, "status": "canceled", "reason": "operator"}),
    )?;
    let mut cmd: host::HostCommand = serde_json::from_value(json!({
        "command_id": "c-1", "host_id": HOST, "action": "run", "worker": "playbook",
        "issued_at": "2026-12-07T12:00:00Z", "expires_at": "2026-12-07T12:01:00Z"
    }))?;
    o.encoded(t, k, "host_command", &cmd)?;
    cmd.work = Some(order);
    o.encoded(t, k, "host_command", &cmd)?;
    Ok(())
}

fn events(o: &mut Out) -> Res<()> {
    let (t, k) = ("events", EVENTS);
    o.typed::<run::RunEvent>(
        t,
        k,
        "run_event",
        json!({"run_id": "r-1", "host_id": HOST, "attempt": 1, "seq": 3, "kind": "task", "at": "2026-12-07T12:00:00Z",
               "stdout": "PLAY [all]", "event": "runner_on_ok", "play": "all", "task": "ping", "task_host": HOST,
               "changed": true, "detail": "ok"}),
    )?;
    o.typed::<run::RunEvent>(
        t,
        k,
        "run_event",
        json!({"run_id": "r-1", "host_id": HOST, "attempt": 1, "seq": 9, "kind": "last", "at": "2026-12-07T12:00:01Z",
               "status": "success", "exit_code": 0, "reason": "",
               "artifact": {"store": "STEWARD_ARTIFACTS", "name": "runs/r-1/web-1/1", "size": 1024, "sha256": "00"}}),
    )?;
    o.typed::<host::HostEvent>(
        t,
        k,
        "host_event",
        json!({"kind": "online", "host_id": HOST, "at": "2026-12-07T12:00:00Z", "reason": "heartbeat"}),
    )?;
    o.typed::<host::CommandReply>(
        t,
        k,
        "command_reply",
        json!({"command_id": "c-1", "host_id": HOST, "action": "install_worker", "status": "ok", "message": "started",
               "workers": {"playbook": "running"}, "draining": false, "incarnation": 5, "replied_at": "2026-12-07T12:00:00Z"}),
    )?;
    o.typed::<lease::ChangeNotice>(
        t,
        k,
        "change_notice",
        json!({"runtime": "rt-1", "changed": ["0123456789abcdef0123456789abcdef"], "removed": [], "revoked": ["fedcba9876543210fedcba9876543210"]}),
    )?;
    o.typed::<lease::AvailableNotice>(t, k, "available_notice", json!({"unassigned": 12}))?;
    o.typed::<config::ConfigChanged>(t, k, "config_changed", json!({"account": ACCOUNT, "revision": {"revision": 4, "parent": 3, "hash": "ab", "author": "ops", "label": "v4", "origin": "cli", "created_at": "2026-12-07T12:00:00Z"}}))?;
    let idx = EVENTS.iter().position(|e| *e == "dead_letter").ok_or("dead_letter")?;
    let dl: dead_letter::DeadLetter = serde_json::from_value(json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver", "timestamp": "2026-12-07T12:00:00Z", "stream": "STEWARD_RESULTS",
        "consumer": "store", "stream_seq": 42, "deliveries": 18
    }))?;
    let mut b = vec![selector_byte(idx, Encoding::Json)];
    b.extend_from_slice(&serde_json::to_vec(&dl)?);
    o.write(t, "dead_letter-1.json", &b)?;
    let mut b = vec![selector_byte(idx, Encoding::Json)];
    b.extend_from_slice(
        br#"{"type":"io.nats.jetstream.advisory.v1.terminated","id":"x","timestamp":"2026-12-07T12:00:00Z","stream":"S","consumer":"c","consumer_seq":3,"stream_seq":7,"deliveries":2,"reason":"bad payload","domain":"hub"}"#,
    );
    o.write(t, "dead_letter-2.json", &b)?;
    Ok(())
}

fn heartbeats(o: &mut Out) -> Res<()> {
    let hb: host::Heartbeat = serde_json::from_value(json!({
        "host_id": HOST, "labels": {"env": "prod", "role": "web"}, "agent_version": "0.1.0",
        "facts": {"hostname": "web-1", "os": "linux", "arch": "x86_64"}, "workers": {"playbook": "running"}, "available_workers": {"playbook": "/usr/bin/steward-worker"},
        "draining": false, "interval_ms": 5000, "seq": 17, "incarnation": 3, "leaving": false
    }))?;
    let subject = format!("steward.v1.{ACCOUNT}.host.heartbeat.{HOST}");
    for (enc, ext) in [(Encoding::MsgPack, "mp"), (Encoding::Json, "json")] {
        let mut b = vec![selector_byte(0, enc)];
        b.extend_from_slice(subject.as_bytes());
        b.push(0);
        b.extend_from_slice(&codec::encode(enc, &hb)?);
        o.write("heartbeats", &format!("heartbeat.{ext}"), &b)?;
    }
    Ok(())
}

fn result_segments(o: &mut Out) -> Res<()> {
    let one: result::ResultRecord = serde_json::from_value(result_record(1))?;
    let seg = result::ResultSegment { results: vec![one.clone(), serde_json::from_value(result_record(2))?] };
    let mut b = vec![1u8];
    b.extend_from_slice(&rmp_serde::to_vec_named(&seg)?);
    o.write("result_segments", "segment.mp", &b)?;
    let mut b = vec![0u8];
    b.extend_from_slice(&rmp_serde::to_vec_named(&one)?);
    o.write("result_segments", "single.mp", &b)?;
    Ok(())
}

fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo.json")
}

fn job_specs_and_config(o: &mut Out) -> Res<()> {
    let text = fs::read(demo_path())?;
    o.write("config", "demo.json", &text)?;
    let doc = parse_document(&text).map_err(|e| format!("demo.json does not parse: {e:?}"))?;
    let mut specs = Vec::new();
    for att in &doc.attestations {
        let Ok(tpl) = resolve_attestation(&doc, att) else { continue };
        specs.push(tpl.spec(ACCOUNT, TargetKind::Host, HOST, 3));
        specs.push(tpl.spec(ACCOUNT, TargetKind::Pool, "pool-1", 3));
    }
    sign_specs(&signer(), &mut specs);
    for (i, s) in specs.iter().enumerate() {
        o.write("job_specs", &format!("spec-{i}.mp"), &rmp_serde::to_vec_named(s)?)?;
    }
    Ok(())
}

fn selectors(o: &mut Out) -> Res<()> {
    let all = [
        "env=prod",
        "env==prod,role!=db",
        "role in (web,db),zone notin (eu-2)",
        "!drain,env",
        " env = prod , tier in ( a , b ) ",
        "",
    ];
    for (i, s) in all.iter().enumerate() {
        o.write("selector", &format!("selector-{i}"), s.as_bytes())?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let dir = std::env::args().nth(1).map(PathBuf::from).ok_or("usage: seeds OUT_DIR")?;
    let mut o = Out { dir, n: 0 };
    requests(&mut o)?;
    work_orders(&mut o)?;
    events(&mut o)?;
    heartbeats(&mut o)?;
    result_segments(&mut o)?;
    job_specs_and_config(&mut o)?;
    selectors(&mut o)?;
    println!("{} seed files written to {}", o.n, o.dir.display());
    Ok(())
}
