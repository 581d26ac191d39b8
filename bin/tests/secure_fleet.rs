//! A secure fleet end to end on real processes in JWT mode: a hub nats-server in operator mode
//! configured from `steward creds issue` output, `steward server --creds hub.creds`, one
//! `steward edge --leaf-remote ... --creds host-a.creds` (its own leaf nats-server carrying the
//! host's identity) and one `steward edge --creds host-b.creds` connected straight to the hub.
//! Through the CLI with the admin operator's identity: host specs are leased and their results
//! stored, a run on both hosts succeeds, the service-enablement loop takes both to the applied
//! revision. Then `steward creds revoke --host host-b` disconnects host-b and keeps it out within
//! 5 s while the hub's nats-server keeps running and host-a keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use steward_deploy::monitor::http_get;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(100);
const HOSTS: [&str; 2] = ["host-a", "host-b"];

/// The test's folder and the hub's client URL; every process logs into the folder.
struct Fleet {
    dir: PathBuf,
    url: String,
}

impl Fleet {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn creds(&self, name: &str) -> String {
        self.path(&format!("{name}.creds"))
    }

    /// Runs the CLI with `creds` (a creds file path, if any).
    async fn cli(&self, creds: Option<&str>, args: &[&str]) -> Output {
        let mut c = tokio::process::Command::new(STEWARD);
        c.args(["--nats", &self.url, "--account", "acme"]);
        if let Some(creds) = creds {
            c.args(["--creds", creds]);
        }
        c.args(args).kill_on_drop(true).output().await.unwrap()
    }

    /// Runs the CLI as the admin operator with `-o json`.
    async fn admin_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.cli(Some(&self.creds("admin")), &all).await;
        if !out.status.success() {
            return Err(format!("steward {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("steward {args:?}: not JSON ({e})"))
    }

    /// Starts a long-running `steward` process logging into `<dir>/<log>.log`.
    fn spawn(&self, log: &str, creds: &str, args: &[&str]) -> tokio::process::Child {
        let file = std::fs::File::create(self.dir.join(format!("{log}.log"))).unwrap();
        tokio::process::Command::new(STEWARD)
            .args(["--nats", &self.url, "--account", "acme", "--creds", creds])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// The last lines of every process log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["server", "host-a", "host-b"] {
            let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {name}.log (last 40 lines)\n{}\n",
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }
}

/// `steward creds issue` before any server exists; returns the JSON answer.
async fn issue(dir: &Path, target: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", "nats://127.0.0.1:1", "--account", "acme", "creds", "issue", "-o", "json", "--dir"])
        .arg(dir.join("auth"))
        .args(target)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "creds issue {target:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A configuration enabling a playbook service on both hosts and attesting a command check on
/// both.
fn document(playbook: &Path) -> String {
    format!(
        r#"{{
  "services": [{{"id": "baseline", "title": "Baseline", "worker": "playbook", "playbook": "{}", "selector": "fleet=yes"}}],
  "controls": [{{"id": "alive"}}],
  "components": [{{"id": "fleet", "selector": "fleet=yes", "controls": ["alive"]}}],
  "assessments": [{{"id": "true", "executor": {{"kind": "command", "argv": ["true"]}}, "interval": "2s", "timeout": "2s"}}],
  "attestations": [{{"id": "fleet-alive", "assessment": "true", "component": "fleet", "controls": ["alive"]}}]
}}"#,
        playbook.display()
    )
}

const PLAYBOOK: &str = "- name: steward secure fleet test
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: say so
      ansible.builtin.debug:
        msg: applied
";

/// Whether the hub server's `/connz` lists a client connection authenticated as `public_key`.
async fn connected(port: u16, public_key: &str) -> bool {
    let body = http_get(port, "/connz?auth=1&limit=1024").await.unwrap().body;
    body.contains(public_key)
}

/// The hub server's start time and configuration load time (`/varz`): a restart or a reload
/// changes them.
async fn loaded(port: u16) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&http_get(port, "/varz").await.unwrap().body).unwrap();
    (v["start"].to_string(), v["config_load_time"].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_fleet_leases_runs_enables_and_a_revoked_host_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub_id = issue(dir, &["--service", "hub"]).await;
    let mut keys = std::collections::BTreeMap::new();
    let mut issued = vec![("hub", hub_id)];
    for host in HOSTS {
        let v = issue(dir, &["--host", host]).await;
        keys.insert(host, v["public_key"].as_str().unwrap().to_owned());
        issued.push((host, v));
    }
    let admin = issue(dir, &["--operator", "admin"]).await;
    let conf = std::fs::read_to_string(admin["server_config"].as_str().unwrap()).unwrap();
    issued.push(("admin", admin));
    // Each process gets its creds file by name: `<dir>/<name>.creds`.
    for (name, v) in &issued {
        std::fs::copy(v["creds_file"].as_str().unwrap(), dir.join(format!("{name}.creds"))).unwrap();
    }
    let server = NatsServer::single(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        extra_config: conf,
        ..ServerOptions::named("secure-hub")
    })
    .await
    .unwrap();
    let pid = server.pid();
    let fleet = Fleet { dir: dir.to_owned(), url: server.client_url() };
    let out = fleet.cli(None, &["keys", "init", "--dir", &fleet.path("keys")]).await;
    assert!(out.status.success(), "keys init: {}", String::from_utf8_lossy(&out.stderr));
    let (secret, public) = (fleet.path("keys/steward-signing.key"), fleet.path("keys/steward-signing.pub"));

    let _server = fleet.spawn("server", &fleet.creds("hub"), &["server", "--signing-key", &secret]);
    let leaf = server.leaf_url().unwrap();
    let edge = |host: &str| {
        vec![
            "edge".to_owned(),
            "--host-id".to_owned(),
            host.to_owned(),
            "--labels".to_owned(),
            "fleet=yes".to_owned(),
            "--heartbeat-ms".to_owned(),
            "200".to_owned(),
            "--data".to_owned(),
            fleet.path(&format!("data-{host}")),
            "--trusted-key".to_owned(),
            public.clone(),
        ]
    };
    let mut a_args = edge("host-a");
    a_args.extend(["--leaf-remote".to_owned(), leaf]);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let _host_a = fleet.spawn("host-a", &fleet.creds("host-a"), &a_args);
    let b_args = edge("host-b");
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let _host_b = fleet.spawn("host-b", &fleet.creds("host-b"), &b_args);

    // Both hosts register through their own identities.
    eventually(WAIT, POLL, || async {
        let v = fleet.admin_json(&["hosts", "--online"]).await?;
        let ids: Vec<&str> = v.as_array().unwrap().iter().filter_map(|h| h["host_id"].as_str()).collect();
        if ids == HOSTS {
            Ok(())
        } else {
            Err(format!("online: {ids:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));

    let playbook = dir.join("baseline.yml");
    std::fs::write(&playbook, PLAYBOOK).unwrap();
    let doc = dir.join("fleet.json");
    std::fs::write(&doc, document(&playbook)).unwrap();
    let applied = fleet
        .admin_json(&["apply", "--label", "secure-fleet", "-f", &doc.display().to_string()])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let revision = applied["revision"]["revision"].as_u64().unwrap_or_else(|| panic!("{applied}"));

    // Each host's spec is leased by its own runtime and its results are stored.
    for host in HOSTS {
        eventually(WAIT, POLL, || async {
            let v = fleet.admin_json(&["jobspecs", "--runtime", host]).await?;
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            if rows.iter().any(|r| r["holder"] == host && r["live"] == true) {
                Ok(())
            } else {
                Err(format!("no live lease of {host}: {v}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        eventually(WAIT, POLL, || async {
            let v = fleet.admin_json(&["results", "--host", host]).await?;
            let rows = v.as_array().cloned().unwrap_or_default();
            if rows.iter().any(|r| r["status"] == "pass") {
                Ok(())
            } else {
                Err(format!("no passing result of {host}: {v}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    }

    // A run on both hosts succeeds.
    let run = fleet
        .cli(
            Some(&fleet.creds("admin")),
            &["run", "--wait", "--timeout", "30s", "--hosts", "host-a,host-b", "--", "true"],
        )
        .await;
    assert!(
        run.status.success(),
        "run on both: {}{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        fleet.logs()
    );

    // The enablement loop takes both hosts to the applied revision.
    eventually(WAIT, POLL, || async {
        let v = fleet.admin_json(&["hosts"]).await?;
        let at: Vec<(String, Option<u64>)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["host_id"].as_str().unwrap_or_default().to_owned(), h["applied_revision"].as_u64()))
            .collect();
        if at.iter().filter(|(_, r)| *r == Some(revision)).count() == HOSTS.len() {
            Ok(())
        } else {
            Err(format!("applied revisions {at:?}, want {revision}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));

    // Revoke host-b: its connections are closed and it stays out, the server untouched.
    let port = server.monitor_port();
    let before = loaded(port).await;
    assert!(connected(port, &keys["host-b"]).await, "host-b is not seen in /connz before the revocation");
    let started = Instant::now();
    let out = fleet.cli(None, &["creds", "revoke", "--host", "host-b", "--dir", &fleet.path("auth")]).await;
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        if connected(port, &keys["host-b"]).await {
            Err("host-b still connected".to_owned())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    let cut = started.elapsed();
    eprintln!("steward creds revoke --host host-b: disconnected after {cut:?}");
    assert!(cut < Duration::from_secs(5), "{cut:?}");
    // It stays out: its edge keeps retrying, and its credentials are refused.
    let refused = fleet.cli(Some(&fleet.creds("host-b")), &["health"]).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("authorization violation"), "{err}");
    assert!(!connected(port, &keys["host-b"]).await, "host-b reconnected");
    eventually(WAIT, POLL, || async {
        let v = fleet.admin_json(&["hosts", "--offline"]).await?;
        let ids: Vec<&str> = v.as_array().unwrap().iter().filter_map(|h| h["host_id"].as_str()).collect();
        if ids == ["host-b"] {
            Ok(())
        } else {
            Err(format!("offline: {ids:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(server.pid(), pid, "the hub's nats-server was restarted");

    // host-a keeps working.
    let run = fleet
        .cli(Some(&fleet.creds("admin")), &["run", "--wait", "--timeout", "30s", "--hosts", "host-a", "--", "true"])
        .await;
    assert!(
        run.status.success(),
        "run on host-a after the revocation: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        fleet.logs()
    );
    assert!(!connected(port, &keys["host-b"]).await, "host-b reconnected");

    // Revoking the leaf-connected host cuts its leaf link; the leaf's retries are refused.
    assert!(connected(port, &keys["host-a"]).await, "host-a's leaf link is not seen in /connz");
    let started = Instant::now();
    let out = fleet.cli(None, &["creds", "revoke", "--host", "host-a", "--dir", &fleet.path("auth")]).await;
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        if connected(port, &keys["host-a"]).await {
            Err("host-a's leaf still connected".to_owned())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    let cut = started.elapsed();
    eprintln!("steward creds revoke --host host-a: leaf link closed after {cut:?}");
    let leaf_log = dir.join("data-host-a").join("leaf").join("nats-server.log");
    eventually(Duration::from_secs(10), POLL, || async {
        let text = std::fs::read_to_string(&leaf_log).unwrap_or_default();
        let refusals = text.lines().filter(|l| l.contains("Authorization Violation")).count();
        if refusals > 0 {
            Ok(())
        } else {
            Err(format!("the leaf did not retry yet:\n{text}"))
        }
    })
    .await
    .unwrap();
    assert!(!connected(port, &keys["host-a"]).await, "host-a's leaf reconnected");
    assert_eq!(server.pid(), pid, "the hub's nats-server was restarted");
    assert_eq!(loaded(port).await, before, "the hub's nats-server was restarted or reloaded");
}
