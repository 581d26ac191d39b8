//! The run commands of the `steward` binary end to end: `steward keys init`, `steward server
//! --signing-key` on a hub, one `steward edge --trusted-key` straight to it; `run --wait`,
//! `runs --status`, `run-status` (with events, and `--follow` streaming until the end),
//! `cancel` of a running `sleep 600` and cancelling it again, bad input refused with a clear
//! error; and the enablement loop seen from the command line: `hosts` shows each host's
//! applied revision and `history` which revision each host reached.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const HOST: &str = "web-01";

async fn steward(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(STEWARD).args(["--nats", url, "--account", "acme"]).args(args).output().await.unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(out: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
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

/// `run-status ID -o json` until `ok` says the view is as wanted.
async fn wait_view(url: &str, id: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    eventually(WAIT, POLL, || async {
        let out = steward(url, &["-o", "json", "run-status", id]).await;
        if !out.status.success() {
            return Err(text(&out).1);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if ok(&v) {
            Ok(v)
        } else {
            Err(format!("run {id} is {}", v["run"]["status"]))
        }
    })
    .await
    .unwrap()
}

fn write_playbook(path: &Path, log: &Path) {
    let book = format!(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: record\n      ansible.builtin.shell: echo applied >> \"{}\"\n",
        log.display()
    );
    std::fs::write(path, book).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_runs_run_status_cancel_hosts_and_history_from_the_command_line() {
    let hub = NatsServer::start(ServerOptions::named("runs-cli")).await.unwrap();
    let url = hub.client_url();
    let tmp = tempfile::tempdir().unwrap();
    let keys_dir = tmp.path().join("keys");
    let keys = json(&steward(&url, &["-o", "json", "keys", "init", "--dir", keys_dir.to_str().unwrap()]).await);
    let secret = keys["secret"].as_str().unwrap().to_owned();
    let public = keys["public"].as_str().unwrap().to_owned();
    let _server = spawn(&url, &["server", "--signing-key", &secret]);
    let edge_data = tmp.path().join(HOST);
    let _edge = spawn(
        &url,
        &[
            "edge",
            "--host-id",
            HOST,
            "--labels",
            "env=test",
            "--heartbeat-ms",
            "200",
            "--data",
            edge_data.to_str().unwrap(),
            "--trusted-key",
            &public,
        ],
    );
    eventually(WAIT, POLL, || async {
        let out = steward(&url, &["-o", "json", "hosts", "--online"]).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {:?}", text(&out)))?;
        if v.as_array().is_some_and(|a| a.iter().any(|h| h["host_id"] == HOST)) {
            Ok(())
        } else {
            Err(format!("{HOST} not online: {v}"))
        }
    })
    .await
    .unwrap();

    // run --wait ends success, with the command's output among the events.
    let view = eventually(WAIT, POLL, || async {
        let out =
            steward(&url, &["-o", "json", "run", "--hosts", HOST, "--wait", "--command", "echo", "hello-run"]).await;
        if out.status.success() {
            Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
        } else {
            // The dispatcher registers its endpoint shortly after the edge shows up.
            Err(text(&out).1)
        }
    })
    .await
    .unwrap();
    assert_eq!(view["run"]["status"], "success", "{view:#}");
    let id = view["run"]["run_id"].as_str().unwrap().to_owned();

    // runs --status success lists it; runs --status failure does not.
    let listed = json(&steward(&url, &["-o", "json", "runs", "--status", "success"]).await);
    let ids: Vec<&str> = listed["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&id.as_str()), "{listed:#}");
    let failed = json(&steward(&url, &["-o", "json", "runs", "--status", "failure"]).await);
    assert!(failed["runs"].as_array().unwrap().iter().all(|r| r["run_id"] != id.as_str()), "{failed:#}");

    // run-status shows the host's status and its events.
    let v = json(&steward(&url, &["-o", "json", "run-status", &id]).await);
    let host = &v["hosts"][0];
    assert_eq!(host["run"]["host_id"], HOST);
    assert_eq!(host["run"]["status"], "success");
    assert_eq!(host["run"]["exit_code"], 0);
    let events = host["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"last"), "{kinds:?}");
    assert!(events.iter().any(|e| e["stdout"].as_str().unwrap_or_default().contains("hello-run")), "{events:#?}");
    let table = text(&steward(&url, &["run-status", &id]).await).0;
    assert!(table.contains(HOST) && table.contains("success") && table.contains("hello-run"), "{table}");

    // The `--` form: options before `--` are steward's, everything after is the program's.
    let dashed =
        json(&steward(&url, &["run", "--hosts", HOST, "--wait", "-o", "json", "--", "echo", "-o", "--wait"]).await);
    assert_eq!(dashed["run"]["status"], "success", "{dashed:#}");
    let events = dashed["hosts"][0]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["stdout"].as_str().unwrap_or_default().contains("-o --wait")), "{events:#?}");

    // cancel a running `sleep 600`: it ends canceled; cancelling again says it already ended.
    let started = json(&steward(&url, &["-o", "json", "run", "--hosts", HOST, "--command", "sleep", "600"]).await);
    let sleep_id = started["run_id"].as_str().unwrap().to_owned();
    wait_view(&url, &sleep_id, |v| v["hosts"][0]["run"]["status"] == "running").await;
    let out = steward(&url, &["-o", "json", "cancel", &sleep_id]).await;
    let canceled = json(&out);
    assert_eq!(canceled["confirmed"], serde_json::json!([HOST]), "{canceled:#}");
    let v = wait_view(&url, &sleep_id, |v| v["run"]["status"] == "canceled").await;
    assert_eq!(v["hosts"][0]["run"]["status"], "canceled", "{v:#}");
    let again = steward(&url, &["cancel", &sleep_id]).await;
    assert!(!again.status.success());
    let stderr = text(&again).1;
    assert!(stderr.contains("already ended") && stderr.contains(&sleep_id), "{stderr}");

    // run-status --follow streams events until the run ends.
    let started = json(
        &steward(
            &url,
            &[
                "-o",
                "json",
                "run",
                "--hosts",
                HOST,
                "--command",
                "sh",
                "-c",
                "echo first-line; sleep 2; echo second-line",
            ],
        )
        .await,
    );
    let follow_id = started["run_id"].as_str().unwrap().to_owned();
    let followed = tokio::time::timeout(WAIT, steward(&url, &["run-status", "--follow", &follow_id])).await.unwrap();
    let (stdout, stderr) = text(&followed);
    assert!(followed.status.success(), "{stderr}");
    let first = stdout.find("first-line").unwrap_or_else(|| panic!("{stdout}"));
    let second = stdout.find("second-line").unwrap_or_else(|| panic!("{stdout}"));
    assert!(first < second, "{stdout}");
    assert!(stdout.contains("status success"), "{stdout}");

    // Bad input: a clear error and a non-zero exit, nothing dispatched.
    let before = json(&steward(&url, &["-o", "json", "runs"]).await)["runs"].as_array().unwrap().len();
    let book = tmp.path().join("book.yml");
    std::fs::write(&book, "- hosts: all\n  tasks: []\n").unwrap();
    let book_s = book.to_str().unwrap();
    for (args, want) in [
        (vec!["run", "--command", "true"], "--hosts"),
        (vec!["run", "--hosts", HOST, "--playbook", book_s, "--command", "true"], "cannot be used with"),
        (vec!["run", "--selector", "env in (a", "--command", "true"], "bad selector"),
        (vec!["run", "--hosts", "a.b", "--command", "true"], "host"),
        (vec!["run", "--hosts", HOST], "--playbook"),
        (vec!["run", "--hosts", HOST, "--", "ls -l"], "pass its arguments separately: -- ls -l"),
        (vec!["run", "--hosts", HOST, "--playbook", book_s, "--", "true"], "cannot be used with"),
        (vec!["run-status", "no-such-run"], "no-such-run"),
    ] {
        let out = steward(&url, &args).await;
        let stderr = text(&out).1;
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let after = json(&steward(&url, &["-o", "json", "runs"]).await)["runs"].as_array().unwrap().len();
    assert_eq!(before, after, "bad input dispatched a run");

    // The enablement loop from the command line: apply a service, the host reaches the
    // revision; `hosts` shows the applied revision and `history` which revision it reached.
    let log = tmp.path().join("applied.log");
    let playbook = tmp.path().join("baseline.yml");
    write_playbook(&playbook, &log);
    let doc = tmp.path().join("doc.json");
    std::fs::write(
        &doc,
        format!(
            r#"{{"services": [{{"id": "baseline", "title": "baseline", "worker": "playbook", "playbook": "{}", "selector": "env=test"}}]}}"#,
            playbook.display()
        ),
    )
    .unwrap();
    let applied = json(&steward(&url, &["-o", "json", "apply", "-f", doc.to_str().unwrap()]).await);
    let revision = applied["revision"]["revision"].as_u64().unwrap();
    let hosts = eventually(Duration::from_secs(120), POLL, || async {
        let v = json(&steward(&url, &["-o", "json", "hosts"]).await);
        let h = v.as_array().unwrap().iter().find(|h| h["host_id"] == HOST).cloned().unwrap();
        if h["applied_revision"].as_u64() == Some(revision) {
            Ok(v)
        } else {
            Err(format!("{HOST} at {}", h["applied_revision"]))
        }
    })
    .await
    .unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "applied\n");
    let table = text(&steward(&url, &["hosts"]).await).0;
    let line = table.lines().find(|l| l.starts_with(HOST)).unwrap();
    assert!(table.contains("APPLIED") && line.trim_end().ends_with(&revision.to_string()), "{table}");
    let history = json(&steward(&url, &["-o", "json", "history"]).await);
    let rev = history["revisions"].as_array().unwrap().iter().find(|r| r["revision"] == revision).unwrap();
    assert_eq!(rev["hosts_at"], serde_json::json!([HOST]), "{history:#}");
    let table = text(&steward(&url, &["history"]).await).0;
    assert!(table.contains("HOSTS AT"), "{table}");
    let line = table.lines().find(|l| l.trim_start().starts_with(&revision.to_string())).unwrap();
    assert!(line.trim_end().ends_with(HOST), "{table}");
}
