//! The `steward` binary end to end: `up` in the background, `health -o json` lists its services,
//! Ctrl-C exits 0 and leaves no nats-server behind; hostile tokens are refused before anything
//! is published; `run -- PROG ARGS` and durations parse as documented; secret files are written
//! 0600 and refused, naming the file, when others may read them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use steward::cli::{Cli, Command as Sub, OutputFormat};

use steward_deploy::server::{free_ports, NatsServer, ServerOptions};
use steward_deploy::wait::eventually;

mod common;
use common::{descendants, processes_mentioning};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_health_and_stops_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let url = format!("nats://127.0.0.1:{port}");
    let mut up = tokio::process::Command::new(STEWARD)
        .args(["up", "--data"])
        .arg(data.path())
        .args(["--port", &port.to_string(), "--edges", "2", "--heartbeat-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = up.id().unwrap();

    // The CLI finds the server and the operator identity through the context `up` wrote;
    // no --nats, no --creds.
    let context = data.path().join("context.json");
    let services = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let context = context.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env("STEWARD_CONTEXT", &context)
                .env_remove("STEWARD_NATS_URL")
                .env_remove("STEWARD_CREDS")
                .args(["health", "-o", "json", "--wait-ms", "300"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let count = |name: &str| v.as_array().map_or(0, |a| a.iter().filter(|s| s["service"] == name).count());
            let (hubs, edges) = (count("steward-hub"), count("steward-edge"));
            if hubs == 1 && edges == 2 {
                Ok(v)
            } else {
                Err(format!("{hubs} hub and {edges} edge services so far"))
            }
        }
    })
    .await
    .unwrap();
    let names: Vec<&str> = services.as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| **n == "steward-hub").count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "steward-edge").count(), 2, "{names:?}");
    assert!(services[0]["version"].is_string() && services[0]["uptime_secs"].is_u64(), "{services}");
    let data_str = data.path().to_string_lossy().to_string();
    assert!(!processes_mentioning(&data_str).is_empty(), "nats-server of `up` should be running");
    // Authenticated by default: an anonymous client is refused, the CLI without its context too.
    let refused = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url)).await;
    assert!(!matches!(refused, Ok(Ok(_))), "an anonymous client connected to `steward up`");
    let out = Command::new(STEWARD)
        .env_remove("STEWARD_CONTEXT")
        .env("XDG_STATE_HOME", data.path().join("elsewhere"))
        .args(["--nats", &url, "health", "--wait-ms", "300"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains("authoriz"), "{err}");
    // Each demo edge works under its own host identity: a run on both succeeds (agent → run
    // worker → job events, all with host credentials).
    let out = tokio::process::Command::new(STEWARD)
        .env("STEWARD_CONTEXT", &context)
        .args(["run", "--wait", "--timeout", "30s", "--hosts", "edge-1,edge-2", "--", "true"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "run on both edges: {}", String::from_utf8_lossy(&out.stderr));
    // Every secret `up` wrote is readable by its owner only.
    for creds in
        ["auth/operator.nk", "auth/accounts/default/operators/admin.creds", "auth/accounts/default/hosts/edge-1.creds"]
    {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.path().join(creds)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{creds}");
    }

    // The demo's checks are real monitoring plugins: the process count warns on purpose, the
    // disk check reports its performance data with units; both reach the stored results.
    eventually(Duration::from_secs(60), Duration::from_millis(500), || {
        let context = context.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env("STEWARD_CONTEXT", &context)
                .args(["results", "-o", "json"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let rows = v.as_array().cloned().unwrap_or_default();
            let warn = rows.iter().any(|r| {
                r["status"] == "warn" && r["message"].as_str().is_some_and(|m| m.starts_with("PROCS WARNING"))
            });
            let disk =
                rows.iter().any(|r| r["units"]["/"] == "B" && r["metrics"]["/"].as_f64().is_some_and(|b| b > 0.0));
            if warn && disk {
                Ok(())
            } else {
                Err(format!("no warn from check_procs ({warn}) or disk data with units ({disk}) yet: {v}"))
            }
        }
    })
    .await
    .unwrap();

    // The demo's alarm rule on the process count fires for real, on each demo edge.
    eventually(Duration::from_secs(60), Duration::from_millis(500), || {
        let context = context.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env("STEWARD_CONTEXT", &context)
                .args(["alarms", "--state", "firing", "-o", "json"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let ids: Vec<&str> =
                v.as_array().map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect()).unwrap_or_default();
            if ids.contains(&"edge-1.process-count.too-many-processes") {
                Ok(())
            } else {
                Err(format!("firing: {ids:?} ({})", String::from_utf8_lossy(&out.stderr)))
            }
        }
    })
    .await
    .unwrap();

    // Ctrl-C: exit 0 within 5 s, nothing left behind.
    Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), up.wait()).await.expect("exited within 5 s").unwrap();
    assert!(status.success(), "{status:?}");
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let left = processes_mentioning(&data_str);
        async move {
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left behind: {left:?}"))
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_killed_with_sigkill_leaves_no_process_behind() {
    let data = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let mut up = tokio::process::Command::new(STEWARD)
        .args(["up", "--data"])
        .arg(data.path())
        .args(["--port", &port.to_string(), "--edges", "1", "--heartbeat-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = up.id().unwrap();
    let context = data.path().join("context.json");
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let context = context.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env("STEWARD_CONTEXT", &context)
                .args(["health", "--wait-ms", "300"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("steward-edge") {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    })
    .await
    .unwrap();
    let children = descendants(pid);
    let nats: Vec<u32> = children
        .iter()
        .copied()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.starts_with("nats-server"))
        })
        .collect();
    assert_eq!(nats.len(), 1, "the embedded nats-server is a child of `up`: {children:?}");
    // The banner says where the logs went, and they went there.
    let log = data.path().join("steward.log");
    assert!(std::fs::metadata(&log).is_ok_and(|m| m.len() > 0), "logs in {}", log.display());

    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    let _ = up.wait().await;
    let data_str = data.path().to_string_lossy().to_string();
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        let alive: Vec<u32> =
            children.iter().copied().filter(|c| std::path::Path::new(&format!("/proc/{c}")).exists()).collect();
        let mentioning = processes_mentioning(&data_str);
        async move {
            if alive.is_empty() && mentioning.is_empty() {
                Ok(())
            } else {
                Err(format!("left behind: children {alive:?}, mentioning the data folder {mentioning:?}"))
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_account_is_refused_and_nothing_is_published() {
    let server = NatsServer::single(ServerOptions::named("cli-hostile")).await.unwrap();
    // Connections that said CONNECT (they name their client library); the readiness probe's
    // bare TCP connect may show up as a closed connection at any moment and does not count.
    let clients = |v: serde_json::Value| {
        v["connections"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["lang"].as_str().is_some_and(|l| !l.is_empty())).count())
    };
    let before = clients(server.monitor_json("/connz?state=all").await.unwrap());
    for bad in ["a.b", "a*", ">", "a b", ""] {
        let out =
            Command::new(STEWARD).args(["--nats", &server.client_url(), "--account", bad, "health"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid account"), "{bad:?}: {err}");
        if !bad.is_empty() {
            assert!(err.contains(&format!("{bad:?}")), "error names the token {bad:?}: {err}");
        }
    }
    let after = clients(server.monitor_json("/connz?state=all").await.unwrap());
    assert_eq!(before, after, "no connection was made, so nothing was published");
}

#[test]
fn hostile_labels_are_refused() {
    for bad in ["env=prod.eu", "env", "k*=v", "k= v", "env=a,env=b"] {
        let out = Command::new(STEWARD).args(["edge", "--host-id", "h1", "--labels", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("label"), "{bad}");
    }
    let out = Command::new(STEWARD).args(["edge", "--host-id", "web.01"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid host id \"web.01\""));
}

#[test]
fn version_prints() {
    let out = Command::new(STEWARD).args(["version", "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("steward").chain(args.iter().copied()))
}

fn run_args(args: &[&str]) -> steward::commands::run::RunArgs {
    match parse(args).unwrap().command {
        Sub::Run(r) => r,
        other => panic!("not a run: {other:?}"),
    }
}

#[test]
fn run_after_double_dash_keeps_later_words_for_the_program() {
    let cli = parse(&["run", "--hosts", "h1", "--wait", "-o", "json", "--", "ls", "-l", "--wait", "-o", "x"]).unwrap();
    assert_eq!(cli.global.output, OutputFormat::Json);
    let Sub::Run(r) = cli.command else { panic!("not a run") };
    assert!(r.wait);
    assert_eq!(r.argv, ["ls", "-l", "--wait", "-o", "x"]);
    assert!(r.command.is_empty());
    let job = r.job().unwrap();
    assert_eq!(job.command, ["ls", "-l", "--wait", "-o", "x"]);
}

#[test]
fn run_command_flag_still_takes_the_rest() {
    let r = run_args(&["run", "--hosts", "h1", "--command", "echo", "hello", "--wait"]);
    assert_eq!(r.command, ["echo", "hello", "--wait"]);
    assert!(!r.wait, "--command takes every later word, as documented");
    assert_eq!(r.job().unwrap().command, ["echo", "hello", "--wait"]);
}

#[test]
fn run_refuses_two_jobs_and_no_job() {
    let err = parse(&["run", "--hosts", "h1", "--playbook", "x.yml", "--", "true"]).unwrap_err();
    assert!(err.to_string().contains("cannot be used with"), "{err}");
    let err = parse(&["run", "--hosts", "h1"]).unwrap_err();
    assert!(err.to_string().contains("--playbook"), "{err}");
}

#[test]
fn run_program_with_a_space_gets_a_hint_to_split_it() {
    let err = run_args(&["run", "--hosts", "h1", "--", "ls -l", "/tmp"]).job().unwrap_err().to_string();
    assert_eq!(err, r#"program "ls -l" contains a space; pass its arguments separately: -- ls -l /tmp"#);
    let err = run_args(&["run", "--hosts", "h1", "--command", "ls -l"]).job().unwrap_err().to_string();
    assert!(err.contains("pass its arguments separately: -- ls -l"), "{err}");
    // Refused before connecting: no server needed.
    let out = Command::new(STEWARD)
        .args(["--nats", "nats://127.0.0.1:1", "run", "--hosts", "h1", "--", "ls -l"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-- ls -l"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn durations_need_a_unit_on_every_flag() {
    let r = run_args(&["run", "--hosts", "h1", "--timeout", "90s", "--backoff", "250ms", "--", "true"]);
    assert_eq!(r.timeout, Some(Duration::from_secs(90)));
    assert_eq!(r.backoff, Duration::from_millis(250));
    for args in [
        &["run", "--hosts", "h1", "--timeout", "30", "--", "true"][..],
        &["run", "--hosts", "h1", "--backoff", "5", "--", "true"][..],
        &["ensure-worker", "h1", "w", "--timeout", "30"][..],
        &["server", "--poll", "30"][..],
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains("add a unit"), "{args:?}: {err}");
    }
    let Sub::EnsureWorker(e) = parse(&["ensure-worker", "h1", "w", "--timeout", "2m"]).unwrap().command else {
        panic!("not ensure-worker")
    };
    assert_eq!(e.timeout, Duration::from_secs(120));
}

/// Secrets on disk: `creds issue` writes the seed 0600, also when re-issuing over a file someone
/// loosened; a 0644 credentials file or signing key makes the command exit non-zero with an
/// error naming the file and saying `chmod 600`, before anything connects with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_are_0600_and_refused_when_readable_by_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("auth");
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let chmod = |p: &str, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let issue = || {
        let out = Command::new(STEWARD)
            .args(["creds", "issue", "--host", "web-01", "--dir", d.to_str().unwrap(), "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["creds_file"].as_str().unwrap().to_owned()
    };
    let seed = issue();
    assert_eq!(mode(&seed), 0o600);
    chmod(&seed, 0o644);
    assert_eq!(issue(), seed);
    assert_eq!(mode(&seed), 0o600, "re-issue tightens a loosened seed file");

    chmod(&seed, 0o644);
    let out =
        Command::new(STEWARD).args(["--nats", "nats://127.0.0.1:1", "--creds", &seed, "health"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("permissions 0644 for '{seed}' are too open")), "{err}");
    assert!(err.contains(&format!("chmod 600 {seed}")), "{err}");

    let keys = tmp.path().join("keys");
    let out =
        Command::new(STEWARD).args(["-o", "json", "keys", "init", "--dir", keys.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = files["secret"].as_str().unwrap().to_owned();
    assert_eq!(mode(&secret), 0o600);
    chmod(&secret, 0o644);
    let server = NatsServer::single(ServerOptions::named("cli-secrets")).await.unwrap();
    let hub = tokio::process::Command::new(STEWARD)
        .args(["--nats", &server.client_url(), "server", "--signing-key", &secret])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), hub).await.expect("server exits").unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("permissions 0644 for '{secret}' are too open")), "{err}");
    assert!(err.contains(&format!("chmod 600 {secret}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_take_their_connection_from_the_context_file() {
    let server = NatsServer::single(ServerOptions::named("cli-context")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("context.json");
    let context = steward::context::Context { nats: server.client_url(), creds: None, account: "ctx-acme".into() };
    context.write(&file).unwrap();
    let _hub = tokio::process::Command::new(STEWARD)
        .args(["--nats", &server.client_url(), "--account", "ctx-acme", "server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // No --nats, no --account: both come from the context (the server is not on the default port).
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let file = file.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env("STEWARD_CONTEXT", &file)
                .env_remove("STEWARD_NATS_URL")
                .env_remove("STEWARD_ACCOUNT")
                .args(["-o", "json", "history"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    })
    .await
    .unwrap();
    // A flag still wins over the context: a dead URL fails even though the context is good.
    let out = Command::new(STEWARD)
        .env("STEWARD_CONTEXT", &file)
        .args(["--nats", "nats://127.0.0.1:1", "history"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A context file that is named but missing or malformed is an error naming it.
    let missing = dir.path().join("nope.json");
    let out = Command::new(STEWARD).env("STEWARD_CONTEXT", &missing).args(["history"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope.json"), "{err}");
    std::fs::write(dir.path().join("bad.json"), "{").unwrap();
    let out =
        Command::new(STEWARD).env("STEWARD_CONTEXT", dir.path().join("bad.json")).args(["history"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Steward context"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_insecure_accepts_anyone_and_says_so() {
    let data = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let url = format!("nats://127.0.0.1:{port}");
    let up = tokio::process::Command::new(STEWARD)
        .args(["up", "--insecure", "--edges", "0", "--port", &port.to_string(), "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = up.id().unwrap();
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let url = url.clone();
        async move {
            let out = tokio::process::Command::new(STEWARD)
                .env_remove("STEWARD_CONTEXT")
                .args(["--nats", &url, "health", "--wait-ms", "300"])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    })
    .await
    .unwrap();
    Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), up.wait_with_output()).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure") && err.contains("ANY connection"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("auth:     NONE"), "{stdout}");
    assert!(!data.path().join("auth").exists(), "no identities are made in insecure mode");
}

#[test]
fn server_lease_and_leader_ttls_parse_and_too_short_ones_are_refused() {
    match parse(&["server", "--lease-ttl", "4500ms", "--leader-ttl", "2s"]).unwrap().command {
        Sub::Server(s) => {
            assert_eq!(s.lease_ttl, Duration::from_millis(4500));
            assert_eq!(s.leader_ttl, Duration::from_secs(2));
        }
        other => panic!("not a server: {other:?}"),
    }
    match parse(&["server"]).unwrap().command {
        Sub::Server(s) => assert_eq!((s.lease_ttl.as_secs(), s.leader_ttl.as_secs()), (15, 10)),
        other => panic!("not a server: {other:?}"),
    }
    // Refused before any connection is made.
    let out = Command::new(STEWARD)
        .args(["--nats", "nats://127.0.0.1:1", "server", "--leader-ttl", "100ms"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 300ms"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
