#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose
//! The `steward` binary end to end for the assessment runtime: `steward server` and two
//! `steward runtime` processes; `jobspecs --runtime/--unassigned/--explain`, `results --spec`,
//! a large output fetched with `results --full-output`, Ctrl-C of a runtime releasing its specs
//! at once, and bad input giving a clear error and a non-zero exit.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use steward_actors::renderer::client::JobSpecClient;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::HostRecord;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{self, Replicas, HOSTS_BUCKET};
use steward_subjects::subject::{host_registry_key, result_output_object};
use steward_subjects::{AccountId, HostId, Subjects};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

/// A host spec for `web-01` (role=web) and a pool spec for pool `zone-a` (selector zone=a) whose
/// check prints 200 KiB.
const DOCUMENT: &str = r#"{
  "controls": [{"id": "c1"}],
  "components": [
    {"id": "web", "selector": "role=web", "controls": ["c1"]},
    {"id": "site", "selector": "", "controls": ["c1"]}
  ],
  "assessments": [
    {"id": "disk", "executor": {"kind": "command", "argv": ["echo", "disk"]}, "interval": "2s", "timeout": "2s"},
    {"id": "big", "executor": {"kind": "command", "argv": ["seq", "100000000", "100020479"]}, "interval": "2s", "timeout": "2s"}
  ],
  "attestations": [
    {"id": "host-disk", "assessment": "disk", "component": "web", "controls": ["c1"]},
    {"id": "probe", "assessment": "big", "component": "site", "controls": ["c1"], "pool": "zone-a"}
  ],
  "pools": [{"id": "zone-a", "selector": "zone=a"}]
}"#;

fn big_expected() -> Vec<u8> {
    (100_000_000u64..100_020_480).flat_map(|n| format!("{n}\n").into_bytes()).collect()
}

fn steward(url: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(STEWARD);
    c.args(["--nats", url, "--account", "acme"]).kill_on_drop(true);
    c
}

/// The hub's signing key pair in `data/keys` (made on first use).
fn keys(data: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = data.join("keys");
    match steward_actors::signing::JobSigner::init_dir(&dir) {
        Ok(f) => (f.secret, f.public),
        Err(_) => (dir.join(steward_actors::signing::SECRET_FILE), dir.join(steward_actors::signing::PUBLIC_FILE)),
    }
}

fn spawn_runtime(url: &str, id: &str, labels: &str, data: &Path) -> tokio::process::Child {
    steward(url)
        .args(["runtime", "--id", id, "--labels", labels, "--trusted-key"])
        .arg(keys(data).1)
        .arg("--data")
        .arg(data.join(id))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs the CLI; returns (success, stdout, stderr).
async fn run(url: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = steward(url).args(args).output().await.unwrap();
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the CLI with `-o json`, which must succeed.
async fn json(url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run(url, &all).await;
    if !ok {
        return Err(format!("steward {args:?} failed: {stderr}"));
    }
    serde_json::from_slice(&stdout).map_err(|e| format!("steward {args:?}: not JSON ({e})"))
}

fn rows_for<'a>(v: &'a serde_json::Value, spec: &str) -> Vec<&'a serde_json::Value> {
    v["rows"].as_array().unwrap().iter().filter(|r| r["spec"] == spec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobspecs_and_results_commands_against_a_real_hub_and_runtimes() {
    let server = NatsServer::single(ServerOptions::named("jobspecs-cli")).await.unwrap();
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
    js.get_key_value(HOSTS_BUCKET)
        .await
        .unwrap()
        .put(
            host_registry_key(&account, &HostId::parse("web-01").unwrap()),
            codec::encode(Encoding::MsgPack, &rec).unwrap(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (signing_key, _) = keys(dir.path());
    let _hub = steward(&url)
        .arg("server")
        .arg("--signing-key")
        .arg(&signing_key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let api = JobSpecClient::new(client.clone(), Subjects::new(account.clone()));
    eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        api.status().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, DOCUMENT).unwrap();
    let (ok, _, stderr) = run(&url, &["apply", "--label", "jobspecs-test", "-f", doc.to_str().unwrap()]).await;
    assert!(ok, "apply: {stderr}");

    // The two specs, found by attestation.
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
    let id_of = |att: &str| {
        listed["specs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["provenance"]["attestation"] == att)
            .unwrap_or_else(|| panic!("no spec of {att}: {listed}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (probe, host_disk) = (id_of("probe"), id_of("host-disk"));

    let mut rt_a = spawn_runtime(&url, "rt-a", "zone=a", dir.path());
    let _rt_b = spawn_runtime(&url, "rt-b", "zone=b", dir.path());

    // --runtime: rt-a holds the pool spec at epoch 1.
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let v = json(&url, &["jobspecs", "--runtime", "rt-a"]).await?;
        let rows = rows_for(&v, &probe);
        if rows.len() == 1 && rows[0]["holder"] == "rt-a" && rows[0]["live"] == true && rows[0]["epoch"] == 1 {
            Ok(())
        } else {
            Err(format!("rt-a rows: {v}"))
        }
    })
    .await
    .unwrap();
    let v = json(&url, &["jobspecs", "--runtime", "rt-b"]).await.unwrap();
    assert!(v["rows"].as_array().unwrap().is_empty(), "rt-b matches no spec: {v}");
    // --unassigned: the host spec (no runtime of web-01 runs), not the pool spec.
    let v = json(&url, &["jobspecs", "--unassigned"]).await.unwrap();
    assert_eq!(rows_for(&v, &host_disk).len(), 1, "{v}");
    assert!(rows_for(&v, &probe).is_empty(), "{v}");

    // results --spec: the pool spec's results, each with the inline head and an output_ref.
    let results = eventually(Duration::from_secs(30), Duration::from_millis(300), || async {
        let v = json(&url, &["results", "--spec", &probe]).await?;
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            Ok(v)
        } else {
            Err(format!("no results yet: {v}"))
        }
    })
    .await
    .unwrap();
    let expected = big_expected();
    for r in results.as_array().unwrap() {
        assert_eq!(r["spec"], probe.as_str());
        assert_eq!(r["status"], "pass", "{r}");
        assert_eq!(r["runtime"], "rt-a");
        assert_eq!(r["output"].as_str().unwrap().len(), 4096);
        assert!(r["output_ref"].as_str().is_some_and(|o| o.starts_with("out:")), "{r}");
    }
    let first = &results[0];
    let key = format!("{}:{}:{}", probe, first["epoch"], first["seq"]);
    let (ok, stdout, stderr) = run(&url, &["results", "--full-output", &key]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.len(), expected.len());
    assert!(stdout == expected, "the full output is the whole 200 KiB");
    let (ok, stdout, _) = run(&url, &["results", "--full-output", first["output_ref"].as_str().unwrap()]).await;
    assert!(ok && stdout == expected, "fetch by output_ref");
    // Results stored before outputs had their stream name an object of the artifacts store.
    let old = result_output_object(&account, &probe, 7, 3);
    let objects = js.get_object_store(streams::ARTIFACTS_STORE).await.unwrap();
    objects.put(old.as_str(), &mut b"an older output".as_slice()).await.unwrap();
    let (ok, stdout, stderr) = run(&url, &["results", "--full-output", &old]).await;
    assert!(ok && stdout == b"an older output", "fetch an object-store output_ref: {stderr}");

    // --explain of the pool spec: target, eligibility per runtime, holder, last run.
    let e = json(&url, &["jobspecs", "--explain", &probe]).await.unwrap();
    assert_eq!(e["target"], "pool/zone-a");
    assert_eq!(e["selector"], "zone=a");
    assert_eq!(e["lease"]["holder"], "rt-a");
    assert_eq!(e["lease"]["epoch"], 1);
    assert_eq!(e["lease"]["live"], true);
    let rt = |name: &str| e["runtimes"].as_array().unwrap().iter().find(|r| r["runtime"] == name).unwrap().clone();
    assert_eq!(rt("rt-a")["eligible"], true, "{e}");
    assert_eq!(rt("rt-b")["eligible"], false, "{e}");
    assert!(rt("rt-b")["reason"].as_str().unwrap().contains("zone"), "{e}");
    assert_eq!(e["last_run"]["status"], "pass", "{e}");
    assert_eq!(e["last_run"]["runtime"], "rt-a");
    let (ok, stdout, stderr) = run(&url, &["jobspecs", "--explain", &probe]).await;
    assert!(ok, "{stderr}");
    let text = String::from_utf8_lossy(&stdout);
    eprintln!("{text}");
    for needle in ["target: pool/zone-a", "holder: rt-a at epoch 1 (live", "rt-b", "labels zone=b fail", "last run: "] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    // --explain of the host spec: only web-01's runtime may run it, and none runs.
    let e = json(&url, &["jobspecs", "--explain", &host_disk]).await.unwrap();
    assert_eq!(e["target"], "host/web-01");
    assert!(e["runtimes"].as_array().unwrap().iter().all(|r| r["eligible"] == false), "{e}");
    assert!(e["lease"].is_null() || e["lease"]["holder"] == "", "{e}");
    assert!(e["last_run"].is_null());

    // Bad input: a clear error and a non-zero exit.
    let unknown = "0123456789abcdef0123456789abcdef";
    let (ok, _, stderr) = run(&url, &["jobspecs", "--explain", unknown]).await;
    assert!(!ok && stderr.contains("no job spec"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["jobspecs", "--explain", "not-a-spec"]).await;
    assert!(!ok && stderr.contains("32 hex digits"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["results", "--since", "yesterday"]).await;
    assert!(!ok && stderr.contains("--since"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["results", "--spec", "nope"]).await;
    assert!(!ok && stderr.contains("32 hex digits"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["results", "--full-output", "bogus"]).await;
    assert!(!ok && stderr.contains("<spec>:<epoch>:<seq>"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["results", "--full-output", &format!("{host_disk}:1:1")]).await;
    assert!(!ok && stderr.contains("no stored output"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["results", "--full-output", "out:999999"]).await;
    assert!(!ok && stderr.contains("no stored output out:999999"), "{stderr}");

    // Ctrl-C of rt-a releases its pool spec at once (the lease TTL is 15 s).
    let pid = rt_a.id().unwrap();
    let stopped = Instant::now();
    std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), rt_a.wait()).await.unwrap().unwrap();
    assert!(status.success(), "rt-a exits 0 on Ctrl-C: {status}");
    eventually(Duration::from_secs(5), Duration::from_millis(100), || async {
        let v = json(&url, &["jobspecs", "--unassigned"]).await?;
        if rows_for(&v, &probe).len() == 1 {
            Ok(())
        } else {
            Err(format!("pool spec still held: {v}"))
        }
    })
    .await
    .unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(10), "released well before the 15 s TTL");
    let e = json(&url, &["jobspecs", "--explain", &probe]).await.unwrap();
    assert_eq!(e["lease"]["holder"], "", "released: {e}");
}
