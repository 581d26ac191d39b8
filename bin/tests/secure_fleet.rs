//! A secure fleet end to end on real processes in JWT mode: a hub nats-server in operator mode
//! configured from `steward creds issue` output, `steward server --creds hub.creds`, one
//! `steward edge --leaf-remote ... --creds host-a.creds` (its own leaf nats-server carrying the
//! host's identity) and one `steward edge --creds host-b.creds` connected straight to the hub.
//! Through the CLI with the admin operator's identity: host specs are leased and their results
//! stored, a run on both hosts succeeds, the service-enablement loop takes both to the applied
//! revision. Then `steward creds revoke --host host-b` disconnects host-b and keeps it out within
//! 5 s while the hub's nats-server keeps running and host-a keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
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

/// Issues every identity with the CLI, starts the hub server from the rendered `server.conf`,
/// makes the signing keys and spawns `steward server` and both edges. Returns the hub server,
/// the fleet, the hosts' public keys and the processes (killed on drop).
async fn start(dir: &Path) -> (NatsServer, Fleet, BTreeMap<&'static str, String>, Vec<tokio::process::Child>) {
    let mut issued = vec![("hub", issue(dir, &["--service", "hub"]).await)];
    let mut keys = BTreeMap::new();
    for host in HOSTS {
        let v = issue(dir, &["--host", host]).await;
        keys.insert(host, v["public_key"].as_str().unwrap().to_owned());
        issued.push((host, v));
    }
    issued.push(("admin", issue(dir, &["--operator", "admin"]).await));
    // The last issue rendered the server configuration with every account.
    let conf = std::fs::read_to_string(issued.last().unwrap().1["server_config"].as_str().unwrap()).unwrap();
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
    let fleet = Fleet { dir: dir.to_owned(), url: server.client_url() };
    let out = fleet.cli(None, &["keys", "init", "--dir", &fleet.path("keys")]).await;
    assert!(out.status.success(), "keys init: {}", String::from_utf8_lossy(&out.stderr));
    let (secret, public) = (fleet.path("keys/steward-signing.key"), fleet.path("keys/steward-signing.pub"));
    let mut procs = vec![fleet.spawn("server", &fleet.creds("hub"), &["server", "--signing-key", &secret])];
    let leaf = server.leaf_url().unwrap();
    for host in HOSTS {
        let data = fleet.path(&format!("data-{host}"));
        let mut args =
            vec!["edge", "--host-id", host, "--labels", "fleet=yes", "--heartbeat-ms", "200", "--data", &data];
        args.extend(["--trusted-key", &public]);
        // host-a reaches the hub through its own leaf node, host-b directly.
        if host == "host-a" {
            args.extend(["--leaf-remote", &leaf]);
        }
        procs.push(fleet.spawn(host, &fleet.creds(host), &args));
    }
    (server, fleet, keys, procs)
}

/// Polls `steward -o json ARGS` as the admin until `ok` holds for its answer.
async fn wait_json(fleet: &Fleet, args: &[&str], ok: impl Fn(&serde_json::Value) -> bool) {
    eventually(WAIT, POLL, || async {
        let v = fleet.admin_json(args).await?;
        if ok(&v) {
            Ok(())
        } else {
            Err(format!("steward {args:?}: {v}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
}

/// The host ids of a `steward hosts -o json` answer.
fn ids(v: &serde_json::Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(|h| h["host_id"].as_str()).collect()).unwrap_or_default()
}

/// `steward run --wait -- true` on `hosts` as the admin must succeed.
async fn run_ok(fleet: &Fleet, hosts: &str) {
    let args = ["run", "--wait", "--timeout", "30s", "--hosts", hosts, "--", "true"];
    let run = fleet.cli(Some(&fleet.creds("admin")), &args).await;
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "run on {hosts}: {out}{err}\n{}", fleet.logs());
}

/// `steward creds revoke --host HOST`, then waits until `/connz` shows no connection of the
/// host's key; returns the time from the command's start.
async fn revoke(fleet: &Fleet, port: u16, host: &str, key: &str) -> Duration {
    assert!(connected(port, key).await, "{host} is not seen in /connz before the revocation");
    let started = Instant::now();
    let out = fleet.cli(None, &["creds", "revoke", "--host", host, "--dir", &fleet.path("auth")]).await;
    assert!(out.status.success(), "revoke {host}: {}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        if connected(port, key).await {
            Err(format!("{host} still connected"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_fleet_leases_runs_enables_and_a_revoked_host_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, fleet, keys, _procs) = start(dir).await;
    let pid = server.pid();
    // Both hosts register through their own identities.
    wait_json(&fleet, &["hosts", "--online"], |v| ids(v) == HOSTS).await;

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
        wait_json(&fleet, &["jobspecs", "--runtime", host], |v| {
            v["rows"].as_array().is_some_and(|rows| rows.iter().any(|r| r["holder"] == host && r["live"] == true))
        })
        .await;
        wait_json(&fleet, &["results", "--host", host], |v| {
            v.as_array().is_some_and(|rows| rows.iter().any(|r| r["host"] == host && r["status"] == "pass"))
        })
        .await;
    }
    // A run on both hosts succeeds.
    run_ok(&fleet, "host-a,host-b").await;
    // The enablement loop takes both hosts to the applied revision (the playbook ran on both).
    wait_json(&fleet, &["hosts"], |v| {
        v.as_array().is_some_and(|a| {
            a.len() == HOSTS.len() && a.iter().all(|h| h["applied_revision"].as_u64() == Some(revision))
        })
    })
    .await;

    // Revoke host-b: its connections are closed and it stays out, the server untouched.
    let port = server.monitor_port();
    let before = loaded(port).await;
    let revoked = Instant::now();
    let cut = revoke(&fleet, port, "host-b", &keys["host-b"]).await;
    eprintln!("steward creds revoke --host host-b: disconnected after {cut:?}");
    // Its credentials are refused, and its edge, retrying, does not get back in.
    let refused = fleet.cli(Some(&fleet.creds("host-b")), &["health"]).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("authorization violation"), "{err}");
    wait_json(&fleet, &["hosts", "--offline"], |v| ids(v) == ["host-b"]).await;
    eprintln!("host-b shown offline {:?} after the revocation", revoked.elapsed());
    assert!(!connected(port, &keys["host-b"]).await, "host-b reconnected");
    // host-a keeps working.
    run_ok(&fleet, "host-a").await;
    assert!(!connected(port, &keys["host-b"]).await, "host-b reconnected");

    // Revoking the leaf-connected host cuts its leaf link; the leaf's retries are refused.
    let leaf_log = dir.join("data-host-a").join("leaf").join("nats-server.log");
    let refusals = || std::fs::read_to_string(&leaf_log).unwrap_or_default().matches("Authorization Violation").count();
    let refused_before = refusals();
    let cut = revoke(&fleet, port, "host-a", &keys["host-a"]).await;
    eprintln!("steward creds revoke --host host-a: leaf link closed after {cut:?}");
    eventually(Duration::from_secs(10), POLL, || async {
        if refusals() > refused_before {
            Ok(())
        } else {
            Err("the leaf did not retry yet".to_owned())
        }
    })
    .await
    .unwrap();
    assert!(!connected(port, &keys["host-a"]).await, "host-a's leaf reconnected");
    assert_eq!(server.pid(), pid, "the hub's nats-server was restarted");
    assert_eq!(loaded(port).await, before, "the hub's nats-server was restarted or reloaded");
}
