//! The host commands of the `steward` binary end to end: `steward server` on a hub, one
//! `steward edge --leaf-remote` (its own leaf nats-server) and one direct edge; `hosts` with
//! selectors, `host ID`, `host ID ping|drain`, `ensure-worker` success and clear failure,
//! hostile input, `creds issue|revoke|list` on an operator-mode server, Ctrl-C on an edge marking
//! it offline at once and leaving no leaf server behind, the edge's leaf refusing anonymous
//! clients, and `--tls-ca` to a TLS port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn steward(url: &str, args: &[&str]) -> Output {
    Command::new(STEWARD).args(["--nats", url, "--account", "acme"]).args(args).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|h| h["host_id"].as_str().unwrap().to_owned()).collect()
}

fn spawn(url: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(STEWARD)
        .args(["--nats", url, "--account", "acme"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn leaf_servers_in(dir: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("nats-server") && cmd.contains(dir) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_host_and_ensure_worker_from_the_command_line() {
    let hub = NatsServer::start(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        ..ServerOptions::named("cli-hub")
    })
    .await
    .unwrap();
    let url = hub.client_url();
    let data = tempfile::tempdir().unwrap();
    let _server = spawn(&url, &["server"]);
    let web_data = data.path().join("web-01");
    let web_data_s = web_data.display().to_string();
    let mut web = spawn(
        &url,
        &[
            "edge",
            "--host-id",
            "web-01",
            "--labels",
            "env=prod,zone=a",
            "--heartbeat-ms",
            "200",
            "--leaf-remote",
            &hub.leaf_url().unwrap(),
            "--data",
            &web_data_s,
        ],
    );
    let db_data = data.path().join("db-01").display().to_string();
    let _db = spawn(
        &url,
        &["edge", "--host-id", "db-01", "--labels", "env=dev", "--heartbeat-ms", "200", "--data", &db_data],
    );

    let all = eventually(WAIT, POLL, || {
        let url = url.clone();
        async move {
            let out = steward(&url, &["hosts", "--online", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            if ids(&v) == ["db-01", "web-01"] {
                Ok(v)
            } else {
                Err(format!("{v} / {}", String::from_utf8_lossy(&out.stderr)))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(all[1]["labels"]["zone"], "a");
    assert_eq!(ids(&json(&steward(&url, &["hosts", "--selector", "zone in (a,b)", "-o", "json"]))), ["web-01"]);
    assert_eq!(ids(&json(&steward(&url, &["hosts", "-s", "env!=prod", "-o", "json"]))), ["db-01"]);
    let table = steward(&url, &["hosts"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("HOST") && text.contains("web-01") && text.contains("env=prod,zone=a"), "{text}");

    let one = json(&steward(&url, &["host", "web-01", "-o", "json"]));
    assert_eq!((one["host_id"].as_str(), one["online"].as_bool()), (Some("web-01"), Some(true)));
    assert!(one["available_workers"]["playbook"].is_string(), "{one}");

    // The edge's leaf admits only the edge's own processes: an anonymous client is refused.
    let leaf_conf = std::fs::read_to_string(web_data.join("leaf").join("nats-server.conf")).unwrap();
    let leaf_port = leaf_conf.lines().find_map(|l| l.strip_prefix("port: ")).unwrap();
    let anon = steward(&format!("nats://127.0.0.1:{leaf_port}"), &["health"]);
    let anon_err = String::from_utf8_lossy(&anon.stderr);
    assert!(!anon.status.success() && anon_err.contains("authorization violation"), "{anon_err}");
    // The config names the local user's public key only, never its seed.
    let seed = std::fs::read_to_string(web_data.join("leaf").join("local-user.nk")).unwrap();
    assert!(leaf_conf.contains("authorization {") && !leaf_conf.contains(seed.trim()), "{leaf_conf}");

    let ping = steward(&url, &["host", "web-01", "ping"]);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stderr));
    assert_eq!(String::from_utf8_lossy(&ping.stdout).trim(), "web-01 ping: ok (pong)");

    let ok = json(&steward(&url, &["ensure-worker", "web-01", "playbook", "--timeout", "10s", "-o", "json"]));
    assert_eq!(ok["worker"], "playbook");
    let shown = json(&steward(&url, &["host", "web-01", "-o", "json"]));
    assert!(shown["workers"]["playbook"].is_string(), "{shown}");
    let bad = steward(&url, &["ensure-worker", "web-01", "nosuch", "--timeout", "2s"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cannot install worker \"nosuch\"") && err.contains("available: command, playbook"), "{err}");

    let drained = json(&steward(&url, &["host", "db-01", "drain", "-o", "json"]));
    assert_eq!(drained["reply"]["status"], "ok", "{drained}");

    // Hostile input is refused before anything is sent.
    for (args, needle) in [
        (vec!["hosts", "--selector", "env=*"], "invalid selector"),
        (vec!["hosts", "--selector", "env in (a b)"], "invalid selector"),
        (vec!["host", "a.b"], "invalid host id"),
        (vec!["host", "web-01", "install-worker", "x>y"], "invalid name"),
        (vec!["ensure-worker", "web 01", "command"], "invalid host id"),
    ] {
        let out = steward(&url, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let unknown = steward(&url, &["host", "ghost"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("host ghost is not registered"));

    // Ctrl-C on the leaf-connected edge: offline at once, its leaf server stopped.
    Command::new("kill").args(["-INT", &web.id().unwrap().to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), web.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    let off = eventually(Duration::from_secs(2), POLL, || {
        let url = url.clone();
        async move {
            let v = json(&steward(&url, &["hosts", "--offline", "-o", "json"]));
            if ids(&v) == ["web-01"] {
                Ok(v)
            } else {
                Err(format!("{v}"))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(off[0]["offline_reason"], "clean shutdown");
    assert!(leaf_servers_in(&web_data_s).is_empty(), "leaf nats-server left behind");
}

/// Writes a CA and a certificate for 127.0.0.1 it signed; returns (ca, cert, key).
fn test_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca_cert, &ca_key).unwrap();
    let files = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&files.0, ca_cert.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    steward_deploy::secret::write_secret(&files.2, &key.serialize_pem()).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cli_and_a_leaf_edge_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let tls = steward_deploy::tls::TlsListen { cert, key, ca: None, verify: false };
    let hub = NatsServer::start(ServerOptions {
        jetstream_domain: Some("hub".into()),
        tls: Some(tls.clone()),
        leafnode_listen: true,
        leafnode_tls: Some(tls),
        ..ServerOptions::named("cli-tls")
    })
    .await
    .unwrap();
    let url = hub.client_url();
    let ca = ca.display().to_string();
    let ok = steward(&url, &["--tls-ca", &ca, "health", "--wait-ms", "100"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let by_env = Command::new(STEWARD)
        .args(["--nats", &url, "health", "--wait-ms", "100"])
        .env("STEWARD_TLS_CA", &ca)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", String::from_utf8_lossy(&by_env.stderr));
    let refused = steward(&url, &["health", "--wait-ms", "100"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("TLS certificate is not trusted") && err.contains("--tls-ca"), "{err}");

    // The hub roles over the TLS client port, an edge through its own leaf over a TLS link.
    let _server = spawn(&url, &["--tls-ca", &ca, "server"]);
    let edge_data = dir.path().join("web-01").display().to_string();
    let leaf_url = hub.leaf_url().unwrap();
    let _edge = spawn(
        &url,
        &["edge", "--host-id", "web-01", "--heartbeat-ms", "200", "--leaf-remote", &leaf_url]
            .into_iter()
            .chain(["--leaf-tls-ca", &ca, "--data", &edge_data])
            .collect::<Vec<_>>(),
    );
    eventually(WAIT, POLL, || {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let out = steward(&url, &["--tls-ca", &ca, "hosts", "--online", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            (ids(&v) == ["web-01"])
                .then_some(())
                .ok_or_else(|| format!("{v} / {}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await
    .unwrap();
    let leafz = hub.monitor_json("/leafz").await.unwrap();
    assert_eq!(leafz["leafs"][0]["name"], "steward-edge-web-01", "{leafz}");
}

type Events = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn connect_creds(url: &str, creds: &str, inbox: &str) -> Result<(async_nats::Client, Events), String> {
    let events: Events = Events::default();
    let sink = events.clone();
    async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .custom_inbox_prefix(inbox)
        .event_callback(move |e| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(e.to_string()) }
        })
        .connect(url)
        .await
        .map(|c| (c, events))
        .map_err(|e| e.to_string())
}

/// `creds issue` before a server exists, a server started from the rendered `server.conf`,
/// identities issued while it runs (no reload), `creds revoke` cutting a connected host off
/// within 5 s, `creds list`, a new tenant pushed, and bad input refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_issue_revoke_list_on_an_operator_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("auth").display().to_string();
    let bads: [&[&str]; 5] = [
        &["--host", "web.01"],
        &["--host", "a", "--service", "b"],
        &[],
        &["--service", "hub", "--role", "viewer"],
        &["--operator", "ann", "--role", "root"],
    ];
    for bad in bads {
        let out = Command::new(STEWARD).args(["creds", "issue", "--dir", &d]).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?}");
    }
    let hub = json(&steward("nats://127.0.0.1:1", &["creds", "issue", "--service", "hub", "--dir", &d, "-o", "json"]));
    assert_eq!(hub["pushed"], false, "no server yet");
    let conf = std::fs::read_to_string(hub["server_config"].as_str().unwrap()).unwrap();
    let server =
        NatsServer::single(ServerOptions { extra_config: conf, ..ServerOptions::named("creds-cli") }).await.unwrap();
    let url = server.client_url();
    let pid = server.pid();

    let host = json(&steward(&url, &["creds", "issue", "--host", "web-01", "--dir", &d, "-o", "json"]));
    let creds = host["creds_file"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&creds).unwrap();
    let claims = steward_deploy::jwt::decode(steward_deploy::jwt::creds_jwt(&text).unwrap()).unwrap();
    let allowed = claims.nats["pub"]["allow"].to_string();
    assert!(allowed.contains("\"steward.v1.acme.host.heartbeat.web-01\""), "{allowed}");
    assert!(!allowed.contains("steward.v1.acme.host.heartbeat.*"), "a host must not speak for others: {allowed}");
    let (_client, events) = connect_creds(&url, &creds, "_INBOX.acme.web-01").await.unwrap();
    let viewer =
        json(&steward(&url, &["creds", "issue", "--operator", "ann", "--role", "viewer", "--dir", &d, "-o", "json"]));
    assert_eq!(viewer["role"], "viewer");
    // The CLI connects with a JWT creds file; without one it is refused.
    let health = steward(&url, &["--creds", viewer["creds_file"].as_str().unwrap(), "health", "-o", "json"]);
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    let anonymous = steward(&url, &["health"]);
    assert!(!anonymous.status.success(), "anonymous CLI accepted");
    // A viewer's write is refused by the server, and the CLI says so (not only "timed out").
    let write =
        steward(&url, &["--creds", viewer["creds_file"].as_str().unwrap(), "run", "--hosts", "web-01", "--", "true"]);
    let err = String::from_utf8_lossy(&write.stderr);
    assert!(!write.status.success(), "{err}");
    assert!(err.contains("Permissions Violation for Publish to \"steward.v1.acme.run.dispatch\""), "{err}");

    let started = std::time::Instant::now();
    let revoked = json(&steward(&url, &["creds", "revoke", "--host", "web-01", "--dir", &d, "-o", "json"]));
    assert!(revoked["revoked"].is_i64(), "{revoked}");
    eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        let seen = events.lock().unwrap().clone();
        let (url, creds) = (url.clone(), creds.clone());
        async move {
            if !seen.iter().any(|e| e == "disconnected") {
                return Err(format!("still connected: {seen:?}"));
            }
            connect_creds(&url, &creds, "_INBOX.acme.web-01")
                .await
                .map(|_| ())
                .err()
                .ok_or_else(|| "revoked creds accepted".to_owned())
        }
    })
    .await
    .unwrap();
    println!("steward creds revoke: host disconnected and refused after {:?}", started.elapsed());
    assert_eq!(server.pid(), pid, "server untouched");

    let list = json(&steward(&url, &["creds", "list", "--dir", &d, "-o", "json"]));
    let rows: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (format!("{} {}", r["kind"].as_str().unwrap(), r["name"].as_str().unwrap()), r["revoked"].is_i64()))
        .collect();
    assert_eq!(
        rows,
        [("service hub".to_owned(), false), ("host web-01".to_owned(), true), ("operator ann".to_owned(), false)]
    );
    let table = steward(&url, &["creds", "list", "--dir", &d]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("PUBLIC KEY"));
    let missing = steward(&url, &["creds", "revoke", "--host", "web-99", "--dir", &d]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("web-99"));

    // A new tenant is pushed at issue and works at once.
    let out = Command::new(STEWARD)
        .args(["--nats", &url, "--account", "initech", "creds", "issue", "--host", "db-1", "--dir", &d, "-o", "json"])
        .output()
        .unwrap();
    let late = json(&out);
    assert_eq!(late["pushed"], true);
    connect_creds(&url, late["creds_file"].as_str().unwrap(), "_INBOX.initech.db-1").await.unwrap();
}
