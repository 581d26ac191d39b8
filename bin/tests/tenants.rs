//! One `steward server` process serving several tenant accounts (`--tenant`): each account gets
//! its own configuration history, none sees the other's; bad tenant lists are
//! refused before anything starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Stdio;
use std::time::Duration;

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

const DOC: &str = r#"{"controls": [{"id": "c1"}], "components": [{"id": "fleet", "selector": "fleet=yes", "controls": ["c1"]}],
 "assessments": [{"id": "a1", "executor": {"kind": "command", "argv": ["true"]}}],
 "attestations": [{"id": "t1", "assessment": "a1", "component": "fleet", "controls": ["c1"]}]}"#;

async fn cli(url: &str, account: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", url, "--account", account, "-o", "json"])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_process_serves_several_tenants_apart() {
    let server = NatsServer::single(ServerOptions::named("tenants")).await.unwrap();
    let url = server.client_url();
    let _hub = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "server", "--tenant", "acme", "--tenant", "globex", "--tenant", "initech"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, DOC).unwrap();
    let file = file.display().to_string();
    // Every tenant's config manager answers (the process started all three).
    for account in ["acme", "globex", "initech"] {
        eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
            let (ok, _, err) = cli(&url, account, &["history"]).await;
            if ok {
                Ok(())
            } else {
                Err(err)
            }
        })
        .await
        .unwrap();
    }
    for account in ["acme", "globex"] {
        let label = format!("{account}-doc");
        let (ok, _, err) = cli(&url, account, &["apply", "--label", &label, "-f", &file]).await;
        assert!(ok, "apply to {account}: {err}");
    }
    let (_, acme, _) = cli(&url, "acme", &["history"]).await;
    let (_, globex, _) = cli(&url, "globex", &["history"]).await;
    let (_, initech, _) = cli(&url, "initech", &["history"]).await;
    assert!(acme.contains("acme-doc") && !acme.contains("globex-doc"), "{acme}");
    assert!(globex.contains("globex-doc") && !globex.contains("acme-doc"), "{globex}");
    assert!(!initech.contains("-doc"), "{initech}");
}

#[tokio::test]
async fn bad_tenant_lists_are_refused_before_anything_starts() {
    // No NATS server at all: the refusal comes first, naming the problem.
    let url = "nats://127.0.0.1:1";
    for (args, expect) in [
        (vec!["server", "--tenant", "acme", "--tenant", "acme"], "tenant acme is given twice"),
        (
            vec!["server", "--tenant", "a", "--tenant", "b", "--config-source", "file:///dev/null"],
            "cannot be used with more than one --tenant",
        ),
        (vec!["server", "--tenant", "acme="], "names no credentials file"),
        (vec!["server", "--tenant", "bad name"], "invalid value"),
    ] {
        let out = tokio::process::Command::new(STEWARD).args(["--nats", url]).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

fn issue(url: &str, dir: &str, account: &str, what: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(STEWARD)
        .args(["--nats", url, "--account", account, "-o", "json", "creds", "issue", "--dir", dir])
        .args(what)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each tenant its own NATS account (JWT operator mode): one `steward server` process serves
/// both with each account's service credentials; an operator of one account reaches nothing of
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_process_serves_two_nats_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("auth").display().to_string();
    let none = "nats://127.0.0.1:1";
    let acme_hub = issue(none, &d, "acme", &["--service", "hub"]);
    let globex_hub = issue(none, &d, "globex", &["--service", "hub"]);
    let acme_admin = issue(none, &d, "acme", &["--operator", "admin"]);
    let globex_admin = issue(none, &d, "globex", &["--operator", "admin"]);
    let conf = std::fs::read_to_string(globex_admin["server_config"].as_str().unwrap()).unwrap();
    let server =
        NatsServer::single(ServerOptions { extra_config: conf, ..ServerOptions::named("tenants-jwt") }).await.unwrap();
    let url = server.client_url();
    let tenant = |account: &str, v: &serde_json::Value| format!("{account}={}", v["creds_file"].as_str().unwrap());
    let _hub = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "server", "--tenant", &tenant("acme", &acme_hub), "--tenant"])
        .arg(tenant("globex", &globex_hub))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, DOC).unwrap();
    let file = file.display().to_string();
    let as_admin = |admin: &serde_json::Value| admin["creds_file"].as_str().unwrap().to_owned();
    for (account, admin) in [("acme", &acme_admin), ("globex", &globex_admin)] {
        let creds = as_admin(admin);
        eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
            let (ok, _, err) = cli(&url, account, &["--creds", &creds, "history"]).await;
            if ok {
                Ok(())
            } else {
                Err(err)
            }
        })
        .await
        .unwrap();
        let label = format!("{account}-doc");
        let (ok, _, err) = cli(&url, account, &["--creds", &creds, "apply", "--label", &label, "-f", &file]).await;
        assert!(ok, "apply to {account}: {err}");
    }
    let (_, acme, _) = cli(&url, "acme", &["--creds", &as_admin(&acme_admin), "history"]).await;
    assert!(acme.contains("acme-doc") && !acme.contains("globex-doc"), "{acme}");
    // acme's admin asking for globex's history: its account has no such service, and its
    // permissions name acme's subjects only.
    let (ok, out, _) = cli(&url, "globex", &["--creds", &as_admin(&acme_admin), "history"]).await;
    assert!(!ok && !out.contains("globex-doc"), "{out}");
}
