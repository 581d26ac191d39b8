#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `steward` binary end to end for signed job specs: `steward server --signing-key` renders
//! signed specs, `steward runtime --host web-01 --trusted-key` runs them; the same spec tampered
//! in the spec bucket (its command changed to create a marker file) is never run, and the refusal
//! shows in `steward jobspecs --explain`.

use std::process::Stdio;
use std::time::Duration;

use steward_actors::renderer::client::JobSpecClient;
use steward_actors::signing::JobSigner;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::HostRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec};
use steward_subjects::streams::{self, Replicas, HOSTS_BUCKET, JOBSPECS_BUCKET};
use steward_subjects::subject::host_registry_key;
use steward_subjects::{AccountId, HostId, Subjects};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

const DOCUMENT: &str = r#"{
  "controls": [{"id": "c1"}],
  "components": [{"id": "web", "selector": "role=web", "controls": ["c1"]}],
  "assessments": [{"id": "disk", "executor": {"kind": "command", "argv": ["echo", "disk"]}, "interval": "1s", "timeout": "1s"}],
  "attestations": [
    {"id": "host-disk", "assessment": "disk", "component": "web", "controls": ["c1"]},
    {"id": "host-disk-2", "assessment": "disk", "component": "web", "controls": ["c1"]}
  ]
}"#;

fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).kill_on_drop(true);
    c
}

async fn json(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = steward(url).args(["-o", "json"]).args(args).output().await.unwrap();
    if !out.status.success() {
        return Err(format!("steward {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("steward {args:?}: not JSON ({e})"))
}

/// Waits until `jobspecs --explain id` shows a last run for which `f` holds.
async fn explained<F: Fn(&serde_json::Value) -> bool>(url: &str, id: &str, what: &str, f: F) -> serde_json::Value {
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let e = json(url, &["jobspecs", "--explain", id]).await?;
        if f(&e["last_run"]) {
            Ok(e)
        } else {
            Err(format!("{what}: {e}"))
        }
    })
    .await
    .unwrap()
}

fn spawn(cmd: &mut tokio::process::Command) -> tokio::process::Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_tampered_in_the_bucket_is_refused_and_explained() {
    let server = NatsServer::single(ServerOptions::named("spec-signing-cli")).await.unwrap();
    let url = server.client_url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let account = AccountId::parse("acme").unwrap();
    let rec = HostRecord {
        host_id: "web-01".into(),
        labels: [("role".to_owned(), "web".to_owned())].into(),
        ..HostRecord::default()
    };
    let registry = js.get_key_value(HOSTS_BUCKET).await.unwrap();
    let key = host_registry_key(&account, &HostId::parse("web-01").unwrap());
    registry.put(key, codec::encode(Encoding::MsgPack, &rec).unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = JobSigner::init_dir(&dir.path().join("keys")).unwrap();

    let mut hub = spawn(steward(&url).arg("server").arg("--signing-key").arg(&keys.secret));
    let api = JobSpecClient::new(client.clone(), Subjects::new(account.clone()));
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        api.status().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, DOCUMENT).unwrap();
    let out = steward(&url).args(["apply", "-f"]).arg(&doc).output().await.unwrap();
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let listed = eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let v = json(&url, &["jobspecs"]).await?;
        if v["specs"].as_array().map_or(0, Vec::len) == 2 {
            Ok(v)
        } else {
            Err(format!("specs: {v}"))
        }
    })
    .await
    .unwrap();
    for spec in listed["specs"].as_array().unwrap() {
        assert!(spec["signature"]["key_id"] == keys.key_id.as_str(), "rendered specs are signed: {spec}");
    }
    let spec = listed["specs"].as_array().unwrap().iter().find(|s| s["provenance"]["attestation"] == "host-disk");
    let id = spec.unwrap()["id"].as_str().unwrap().to_owned();

    let runtime = spawn(
        steward(&url)
            .args(["runtime", "--id", "web-01", "--host", "web-01", "--trusted-key"])
            .arg(&keys.public)
            .arg("--data")
            .arg(dir.path().join("rt")),
    );
    explained(&url, &id, "the signed spec runs", |r| r["status"] == "pass").await;

    // Anyone allowed to write the spec bucket rewrites the command; the signature stays.
    let e = json(&url, &["jobspecs", "--explain", &id]).await.unwrap();
    let specs = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    let store_key = e["key"].as_str().unwrap().to_owned();
    let mut stored: JobSpec = codec::decode(Encoding::MsgPack, &specs.get(&store_key).await.unwrap().unwrap()).unwrap();
    let marker = dir.path().join("tampered-ran");
    let script = format!("touch {}", marker.display());
    stored.executor =
        Executor::Command(CommandExecutor { argv: vec!["sh".into(), "-c".into(), script], ..Default::default() });
    specs.put(&store_key, codec::encode(Encoding::MsgPack, &stored).unwrap()).await.unwrap();

    let e = explained(&url, &id, "the tampered spec is refused", |r| r["status"] == "error").await;
    let message = e["last_run"]["message"].as_str().unwrap();
    assert_eq!(message, "refused: the job spec does not match its signature (tampered after signing)");
    let out = steward(&url).args(["jobspecs", "--explain", &id]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refused: the job spec does not match its signature"), "{text}");
    // The runtime decides before it starts a run; refused, the run never starts.
    assert!(!marker.exists(), "the tampered command was executed");

    // The hub restarts with a new signing key: it signs every spec again with it (the untouched
    // one, whose content did not change, too), and the runtime, which does not trust that key
    // yet, refuses them.
    hub.kill().await.unwrap();
    let new_keys = JobSigner::init_dir(&dir.path().join("new-keys")).unwrap();
    let _hub = spawn(steward(&url).arg("server").arg("--signing-key").arg(&new_keys.secret));
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let v = json(&url, &["jobspecs"]).await?;
        let specs = v["specs"].as_array().cloned().unwrap_or_default();
        if specs.len() == 2 && specs.iter().all(|s| s["signature"]["key_id"] == new_keys.key_id.as_str()) {
            Ok(())
        } else {
            Err(format!("not all re-signed yet: {v}"))
        }
    })
    .await
    .unwrap();
    let unknown =
        format!("refused: the job spec is signed by key {}, which this runtime does not trust", new_keys.key_id);
    explained(&url, &id, "the new key is not trusted yet", |r| {
        r["message"].as_str().is_some_and(|m| m.starts_with(&unknown))
    })
    .await;
    drop(runtime);
}
