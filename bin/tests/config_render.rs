//! The `steward` binary end to end for configuration: `apply`/`plan`/`history`/`jobspecs` from
//! the command line, and renderer convergence after `kill -9` of `steward server` mid-render.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use steward_actors::renderer::client::JobSpecClient;
use steward_actors::renderer::render::{render, HostLabels};
use steward_actors::renderer::store::{scan_latest, SPEC_HASH_HEADER};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::HostRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::parse_document;
use steward_subjects::streams::{self, Replicas, HOSTS_BUCKET, JOBSPECS_BUCKET};
use steward_subjects::subject::host_registry_key;
use steward_subjects::subject::parse_jobspec_key;
use steward_subjects::{AccountId, HostId, Subjects};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const HOSTS: usize = 400;
const ATTESTATIONS: usize = 150;

fn document() -> String {
    let controls: Vec<String> =
        (0..10).map(|i| format!(r#"{{"id": "c{i}", "parameters": {{"limit": {i}}}}}"#)).collect();
    let ids: Vec<String> = (0..10).map(|i| format!(r#""c{i}""#)).collect();
    let assessments: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"id": "a{i}", "executor": {{"kind": "command", "argv": ["check", "{{{{control.c{i}.limit}}}}"]}}}}"#))
        .collect();
    let attestations: Vec<String> = (0..ATTESTATIONS)
        .map(|i| {
            format!(
                r#"{{"id": "t{i}", "assessment": "a{}", "component": "fleet", "controls": ["c{}"]}}"#,
                i % 10,
                i % 10
            )
        })
        .collect();
    format!(
        r#"{{"controls": [{}], "components": [{{"id": "fleet", "selector": "fleet=yes", "controls": [{}]}}], "assessments": [{}], "attestations": [{}]}}"#,
        controls.join(","),
        ids.join(","),
        assessments.join(","),
        attestations.join(",")
    )
}

fn server_cmd(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme", "server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn stored(client: &async_nats::Client) -> BTreeMap<String, String> {
    let kv = async_nats::jetstream::new(client.clone()).get_key_value(JOBSPECS_BUCKET).await.unwrap();
    let acme = steward_subjects::AccountId::parse("acme").unwrap();
    scan_latest(client, &kv, "acme.>", true)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !l.deleted)
        .map(|l| {
            let id = parse_jobspec_key(&acme, &l.key).unwrap().spec;
            let hash = l.headers.as_ref().and_then(|h| h.get(SPEC_HASH_HEADER)).unwrap().as_str().to_owned();
            (id.to_string(), hash)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renderer_converges_after_kill_9_mid_render() {
    let server = NatsServer::single(ServerOptions::named("config-render-kill")).await.unwrap();
    let url = server.client_url();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let hosts_kv = js.get_key_value(HOSTS_BUCKET).await.unwrap();
    let account = AccountId::parse("acme").unwrap();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let id = format!("h{i:04}");
        let labels = BTreeMap::from([("fleet".to_owned(), "yes".to_owned())]);
        let rec = HostRecord { host_id: id.clone(), labels: labels.clone(), ..HostRecord::default() };
        hosts_kv
            .put(
                host_registry_key(&account, &HostId::parse(&id).unwrap()),
                codec::encode(Encoding::MsgPack, &rec).unwrap(),
            )
            .await
            .unwrap();
        hosts.push(HostLabels { id, labels });
    }
    let doc_text = document();
    let doc = parse_document(doc_text.as_bytes()).unwrap();
    let expected: BTreeMap<String, String> = {
        let r = render("acme", &doc, &hosts);
        r.specs.iter().map(|s| (s.id.to_string(), s.hash.to_string())).collect()
    };
    assert_eq!(expected.len(), HOSTS * ATTESTATIONS);

    // Apply through the CLI while a server runs; kill -9 the server once writes have started.
    let mut first = server_cmd(&url).spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, &doc_text).unwrap();
    let api = JobSpecClient::new(client.clone(), Subjects::new(account.clone()));
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        api.status().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "--account", "acme", "apply", "--no-wait", "--label", "big", "-f"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 1 stored"));
    eventually(Duration::from_secs(60), Duration::from_millis(10), || {
        let js = js.clone();
        async move {
            let n = spec_messages(&js).await;
            if n >= 2000 {
                Ok(())
            } else {
                Err(format!("{n} specs written"))
            }
        }
    })
    .await
    .unwrap();
    nix_kill(first.id().unwrap());
    let _ = first.wait().await;
    let partial = stored(&client).await;
    assert!(partial.len() < expected.len(), "the render finished before the kill ({} specs)", partial.len());
    assert!(partial.iter().all(|(id, h)| expected.get(id) == Some(h)), "partial writes are a subset of the result");

    // Restart: the renderer resumes and converges to exactly the expected set.
    let _second = server_cmd(&url).spawn().unwrap();
    eventually(Duration::from_secs(120), Duration::from_millis(200), || async {
        let st = api.status().await.map_err(|e| e.to_string())?;
        if st.rendered_revision == 1 && st.rendering_revision.is_none() {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await
    .unwrap();
    let after = stored(&client).await;
    assert_eq!(after.len(), expected.len(), "nothing missing, nothing extra");
    assert!(after == expected, "ids and content hashes equal the deterministic render");
    // Exactly one message per key in the bucket's stream: nothing duplicated.
    assert_eq!(spec_messages(&js).await, expected.len() as u64);

    // The CLI reads it back.
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "--account", "acme", "-o", "json", "jobspecs", "--host", "h0007"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], ATTESTATIONS as u64);
    let id = v["specs"][0]["id"].as_str().unwrap().to_owned();
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "--account", "acme", "jobspecs", "--explain", &id])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet=yes") && text.contains("h0007"), "{text}");
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "--account", "acme", "-o", "json", "history", "--label", "big"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 1);
    let ids: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert!(ids.contains(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_every_problem_and_schema_prints() {
    let server = NatsServer::single(ServerOptions::named("config-cli")).await.unwrap();
    let url = server.client_url();
    let _hub = server_cmd(&url).spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"controls": [{"id": "x"}, {"id": "x"}], "components": [{"id": "c", "controls": ["nope"]}]}"#,
    )
    .unwrap();
    let out = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let (url, bad) = (url.clone(), bad.clone());
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .args(["--nats", &url, "--account", "acme", "plan", "-f"])
                .arg(&bad)
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if err.contains("problems") {
                Ok(out)
            } else {
                Err(err)
            }
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/controls/1/id") && err.contains("/components/0/controls/0"), "{err}");

    let out = tokio::process::Command::new(STEWARD).arg("schema").output().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["title"], "Steward configuration document");
}

/// Messages in the spec bucket's stream (fresh, not the cached KV status).
async fn spec_messages(js: &async_nats::jetstream::Context) -> u64 {
    let mut stream = js.get_stream(format!("KV_{JOBSPECS_BUCKET}")).await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn nix_kill(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
