#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The executors against real processes, sockets and a real `sshd`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use steward_actors::runtime::executor::{self, cancel_pair, Cancel, ExecError, ExecSettings, RunContext};
use steward_subjects::config::{CommandExecutor, Executor as Spec, HttpExecutor, SshExecutor, TcpExecutor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ctx(timeout: Duration) -> RunContext {
    RunContext { timeout, cancel: Cancel::never() }
}

fn settings(dir: &Path) -> ExecSettings {
    ExecSettings::in_dir(dir)
}

fn command(argv: &[&str]) -> Spec {
    Spec::Command(CommandExecutor {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        cwd: String::new(),
        ..CommandExecutor::default()
    })
}

/// Whether `pid` is gone (no such process, or a zombie waiting for a reaper that is not us).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn read_pids(path: &Path, n: usize) -> Vec<u32> {
    steward_deploy::eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pids: Vec<u32> = text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        if pids.len() >= n {
            Ok(pids)
        } else {
            Err(format!("{} of {n} pids written", pids.len()))
        }
    })
    .await
    .unwrap()
}

async fn assert_all_gone(pids: &[u32]) {
    steward_deploy::eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        match pids.iter().find(|p| !gone(**p)) {
            None => Ok(()),
            Some(p) => Err(format!("process {p} still alive")),
        }
    })
    .await
    .unwrap();
}

/// A shell that starts two background sleepers, writes every pid to `pids`, and waits.
fn sleepers(pids: &Path) -> Spec {
    let script = format!("sleep 300 & a=$!; sleep 300 & b=$!; echo $$ $a $b > {}; echo started; wait", pids.display());
    command(&["sh", "-c", &script])
}

#[tokio::test]
async fn command_exit_codes_output_env_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let ok = executor::build(&command(&["sh", "-c", "echo hi; echo '{\"load\": 0.25}'"]), &s).unwrap();
    let obs = ok.run(ctx(Duration::from_secs(10))).await.unwrap();
    assert!(obs.passed);
    assert_eq!(obs.exit_code, Some(0));
    assert_eq!(obs.metrics.get("load"), Some(&0.25));
    assert!(obs.stdout.text().starts_with("hi\n"));

    let fail = executor::build(&command(&["sh", "-c", "echo oops >&2; exit 3"]), &s).unwrap();
    let obs = fail.run(ctx(Duration::from_secs(10))).await.unwrap();
    assert!(!obs.passed);
    assert_eq!(obs.exit_code, Some(3));
    assert_eq!(obs.stderr.text(), "oops\n");

    let spec = Spec::Command(CommandExecutor {
        argv: vec!["sh".into(), "-c".into(), "echo $GREETING; pwd".into()],
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        cwd: dir.path().display().to_string(),
        ..CommandExecutor::default()
    });
    let obs = executor::build(&spec, &s).unwrap().run(ctx(Duration::from_secs(10))).await.unwrap();
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(obs.stdout.text(), format!("hello\n{}\n", canonical.display()));
}

#[tokio::test]
async fn command_output_is_capped_but_drained() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.output_cap = 1000;
    let e = executor::build(&command(&["sh", "-c", "head -c 200000 /dev/zero"]), &s).unwrap();
    let obs = e.run(ctx(Duration::from_secs(10))).await.unwrap();
    assert!(obs.passed);
    assert_eq!(obs.stdout.bytes.len(), 1000);
    assert!(obs.stdout.truncated);
    assert_eq!(obs.stdout.total, 200_000);
}

#[tokio::test]
async fn command_error_taxonomy() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    assert_eq!(executor::build(&command(&[]), &s).unwrap_err().kind(), "invalid");
    let missing = executor::build(&command(&["/definitely/not/here"]), &s).unwrap();
    assert_eq!(missing.run(ctx(Duration::from_secs(5))).await.unwrap_err().kind(), "not_found");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    let denied = executor::build(&command(&[plain.to_str().unwrap()]), &s).unwrap();
    assert_eq!(denied.run(ctx(Duration::from_secs(5))).await.unwrap_err().kind(), "permission");
    let spec = Spec::Command(CommandExecutor {
        argv: vec!["true".into()],
        env: BTreeMap::new(),
        cwd: "/no/such/dir".into(),
        ..Default::default()
    });
    let bad_cwd = executor::build(&spec, &s).unwrap();
    assert_eq!(bad_cwd.run(ctx(Duration::from_secs(5))).await.unwrap_err().kind(), "bad_cwd");
    let signaled = executor::build(&command(&["sh", "-c", "kill -9 $$"]), &s).unwrap();
    assert_eq!(signaled.run(ctx(Duration::from_secs(5))).await.unwrap_err().kind(), "signaled");
}

#[tokio::test]
async fn command_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let e = executor::build(&sleepers(&pids), &settings(dir.path())).unwrap();
    let err = e.run(ctx(Duration::from_millis(1500))).await.unwrap_err();
    let ExecError::Timeout { partial, .. } = &err else { panic!("expected a timeout, got {err:?}") };
    assert_eq!(partial.stdout.text(), "started\n");
    let pids = read_pids(&pids, 3).await;
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn command_cancel_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let e = executor::build(&sleepers(&pid_file), &settings(dir.path())).unwrap();
    let (handle, cancel) = cancel_pair();
    let run = tokio::spawn(async move { e.run(RunContext { timeout: Duration::from_secs(300), cancel }).await });
    let pids = read_pids(&pid_file, 3).await;
    handle.cancel();
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, ExecError::Canceled), "{err:?}");
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn dropping_a_run_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let e = executor::build(&sleepers(&pid_file), &settings(dir.path())).unwrap();
    let run = tokio::spawn(async move { e.run(ctx(Duration::from_secs(300))).await });
    let pids = read_pids(&pid_file, 3).await;
    run.abort();
    let _ = run.await;
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn background_leftovers_of_a_finished_command_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let script = format!("sleep 300 >/dev/null 2>&1 & echo $! > {}; exit 0", pid_file.display());
    let e = executor::build(&command(&["sh", "-c", &script]), &settings(dir.path())).unwrap();
    let obs = e.run(ctx(Duration::from_secs(10))).await.unwrap();
    assert!(obs.passed);
    let pids = read_pids(&pid_file, 1).await;
    assert_all_gone(&pids).await;
}

async fn http_server(response: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

fn http(url: String, expect: u16, contains: &str) -> Spec {
    Spec::Http(HttpExecutor {
        url,
        method: "GET".into(),
        expect_status: expect,
        body_contains: contains.into(),
        tls_verify: true,
    })
}

#[tokio::test]
async fn http_status_body_latency_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let port = http_server("HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world").await;
    let url = format!("http://127.0.0.1:{port}/health");
    let obs =
        executor::build(&http(url.clone(), 200, "world"), &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap();
    assert!(obs.passed, "{obs:?}");
    assert_eq!(obs.metrics.get("status"), Some(&200.0));
    assert!(obs.metrics.contains_key("latency_ms"));
    assert_eq!(obs.stdout.text(), "hello world");

    let obs =
        executor::build(&http(url.clone(), 200, "absent"), &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap();
    assert!(!obs.passed);
    let obs = executor::build(&http(url, 204, ""), &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap();
    assert!(!obs.passed);
    assert!(obs.message.contains("expected 204"), "{}", obs.message);

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = executor::build(&http(format!("http://127.0.0.1:{closed_port}/"), 200, ""), &s)
        .unwrap()
        .run(ctx(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");

    // TLS spoken to a plain-HTTP server fails the handshake.
    let err = executor::build(&http(format!("https://127.0.0.1:{port}/"), 200, ""), &s)
        .unwrap()
        .run(ctx(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "tls", "{err}");

    assert_eq!(executor::build(&http("ftp://x/".into(), 200, ""), &s).unwrap_err().kind(), "invalid");
}

#[tokio::test]
async fn http_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let e = executor::build(&http(format!("http://127.0.0.1:{port}/"), 200, ""), &settings(dir.path())).unwrap();
    let err = e.run(ctx(Duration::from_millis(300))).await.unwrap_err();
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test]
async fn tcp_connects_and_reports_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = Spec::Tcp(TcpExecutor { host: "127.0.0.1".into(), port });
    let obs = executor::build(&spec, &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap();
    assert!(obs.passed);
    assert!(obs.metrics.contains_key("latency_ms"));
    drop(listener);
    let obs = executor::build(&spec, &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap();
    assert!(!obs.passed);
    assert!(obs.message.starts_with("refused"), "{}", obs.message);
    let bad = Spec::Tcp(TcpExecutor { host: "no-such-host.invalid".into(), port: 80 });
    let err = executor::build(&bad, &s).unwrap().run(ctx(Duration::from_secs(5))).await.unwrap_err();
    assert_eq!(err.kind(), "resolve");
    assert_eq!(
        executor::build(&Spec::Tcp(TcpExecutor { host: String::new(), port: 1 }), &s).unwrap_err().kind(),
        "invalid"
    );
}

// ---- ssh against a real sshd ----

struct Sshd {
    child: std::process::Child,
    port: u16,
    key: PathBuf,
    user: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"].iter().map(PathBuf::from).find(|p| p.exists()).expect(
        "sshd is not installed: run deploy/dev test (it installs openssh-server) or apt-get install openssh-server",
    )
}

fn keygen(path: &Path) {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

async fn start_sshd() -> Sshd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // sshd refuses to start without its privilege-separation folder.
    let _ = std::fs::create_dir_all("/run/sshd");
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let user = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowUsers {user}\n",
        hk = d.join("host_key").display(),
        ak = d.join("authorized_keys").display(),
        pid = d.join("sshd.pid").display(),
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    let child = std::process::Command::new(sshd_binary())
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(d.join("sshd_config"))
        .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    steward_deploy::eventually(Duration::from_secs(10), Duration::from_millis(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map(|_| ())
    })
    .await
    .unwrap();
    Sshd { child, port, key: d.join("client_key"), user, _dir: dir }
}

fn ssh(sshd: &Sshd, command: &str, key: &Path) -> Spec {
    Spec::Ssh(SshExecutor {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        key_path: key.display().to_string(),
        command: command.into(),
        ..SshExecutor::default()
    })
}

#[tokio::test]
async fn ssh_runs_remote_commands_against_a_real_sshd() {
    let sshd = start_sshd().await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let obs = executor::build(&ssh(&sshd, "echo remote; echo '{\"users\": 3}'", &sshd.key), &s)
        .unwrap()
        .run(ctx(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(obs.passed, "{obs:?}");
    assert!(obs.stdout.text().starts_with("remote\n"));
    assert_eq!(obs.metrics.get("users"), Some(&3.0));
    // The host key was accepted on first use.
    assert!(std::fs::read_to_string(dir.path().join("known_hosts")).unwrap().contains("ssh-ed25519"));

    let obs =
        executor::build(&ssh(&sshd, "exit 4", &sshd.key), &s).unwrap().run(ctx(Duration::from_secs(20))).await.unwrap();
    assert!(!obs.passed);
    assert_eq!(obs.exit_code, Some(4));

    // The monitoring-plugins convention over ssh: a remote WARNING with performance data.
    let mut plugin = ssh(&sshd, "echo 'REMOTE WARNING - queue long | queue=42;10;50;0'; exit 1", &sshd.key);
    if let Spec::Ssh(spec) = &mut plugin {
        spec.convention = steward_subjects::config::OutputConvention::Plugin;
    }
    let obs = executor::build(&plugin, &s).unwrap().run(ctx(Duration::from_secs(20))).await.unwrap();
    assert_eq!(obs.state, Some(steward_subjects::api::result::ResultStatus::Warn), "{obs:?}");
    assert_eq!((obs.message.as_str(), obs.metrics.get("queue")), ("REMOTE WARNING - queue long", Some(&42.0)));

    // A key the server does not know.
    let stranger = dir.path().join("stranger");
    keygen(&stranger);
    let err = executor::build(&ssh(&sshd, "true", &stranger), &s)
        .unwrap()
        .run(ctx(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}");

    let err = executor::build(&ssh(&sshd, "true", &dir.path().join("missing")), &s)
        .unwrap()
        .run(ctx(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "key_missing");

    // A different server on the same address and port presents another host key.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("known_hosts"),
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
            sshd.port
        ),
    )
    .unwrap();
    let err = executor::build(&ssh(&sshd, "true", &sshd.key), &settings(other.path()))
        .unwrap()
        .run(ctx(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "host_key", "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let spec = Spec::Ssh(SshExecutor {
        host: "127.0.0.1".into(),
        port: closed_port,
        user: sshd.user.clone(),
        key_path: sshd.key.display().to_string(),
        command: "true".into(),
        ..SshExecutor::default()
    });
    let err = executor::build(&spec, &s).unwrap().run(ctx(Duration::from_secs(20))).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
}

#[tokio::test]
async fn ssh_timeout_leaves_no_local_process_behind() {
    let sshd = start_sshd().await;
    let dir = tempfile::tempdir().unwrap();
    let e = executor::build(&ssh(&sshd, "echo started; sleep 300", &sshd.key), &settings(dir.path())).unwrap();
    let err = e.run(ctx(Duration::from_secs(3))).await.unwrap_err();
    let ExecError::Timeout { partial, .. } = &err else { panic!("expected a timeout, got {err:?}") };
    assert_eq!(partial.stdout.text(), "started\n");
    // No ssh client of ours is left running.
    let me = std::process::id();
    steward_deploy::eventually(Duration::from_secs(5), Duration::from_millis(50), || async move {
        let children: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = stat.rsplit(')').next().unwrap_or("");
                let mut f = rest.split_whitespace();
                let state = f.next().unwrap_or("");
                let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                ppid == me && state != "Z" && stat.contains("(ssh)")
            })
            .collect();
        if children.is_empty() {
            Ok(())
        } else {
            Err(format!("ssh children left: {children:?}"))
        }
    })
    .await
    .unwrap();
}
