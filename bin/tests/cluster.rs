//! `steward up --cluster 3`: three `steward node` children (nats-server + hub each, R3
//! streams) and a demo edge; SIGKILL of one node's nats-server and hub leaves a cluster on
//! which `steward health`, an apply and a run still succeed; Ctrl-C then stops everything.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steward_deploy::server::free_ports;
use steward_deploy::wait::eventually;

mod common;
use common::{children, processes_mentioning};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

/// A port `p` with `p`, `p+1` and `p+2` free now.
fn three_free_ports() -> u16 {
    for _ in 0..100 {
        let p = free_ports(1).unwrap()[0];
        if p < 60000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no three consecutive free ports");
}

/// Runs the CLI with `up`'s context; Ok(stdout) when it succeeds.
async fn cli(context: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(STEWARD)
        .env("STEWARD_CONTEXT", context)
        .env_remove("STEWARD_NATS_URL")
        .env_remove("STEWARD_CREDS")
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// (hubs, edges) answering `steward health`.
async fn services(context: &Path) -> Result<(usize, usize), String> {
    let out = cli(context, &["health", "-o", "json", "--wait-ms", "500"]).await?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let count = |name: &str| v.as_array().map_or(0, |a| a.iter().filter(|s| s["service"] == name).count());
    Ok((count("steward-hub"), count("steward-edge")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_cluster_survives_the_loss_of_one_node() {
    let data = tempfile::tempdir().unwrap();
    let port = three_free_ports();
    let mut up = tokio::process::Command::new(STEWARD)
        .args(["up", "--cluster", "3", "--edges", "1", "--heartbeat-ms", "500", "--port", &port.to_string()])
        .arg("--data")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up_pid = up.id().unwrap();
    let context = data.path().join("context.json");
    eventually(Duration::from_secs(180), Duration::from_millis(500), || {
        let context = context.clone();
        async move {
            match services(&context).await? {
                (3, 1) => Ok(()),
                (hubs, edges) => Err(format!("{hubs} hubs and {edges} edges so far")),
            }
        }
    })
    .await
    .unwrap();
    let context_text = std::fs::read_to_string(&context).unwrap();
    assert_eq!(context_text.matches("nats://127.0.0.1:").count(), 3, "the context names every node: {context_text}");

    // SIGKILL node 1: its `steward node` process (hub roles) and its nats-server.
    let node_file = data.path().join("node-1").join("node.json");
    let node = processes_mentioning(&format!("--config {}", node_file.display()));
    let node: Vec<u32> = node.into_iter().filter(|p| children(*p).len() == 1).collect();
    assert_eq!(node.len(), 1, "one node-1 process with its nats-server child");
    let nats = children(node[0]);
    assert!(std::fs::read_to_string(format!("/proc/{}/comm", nats[0])).unwrap().starts_with("nats-server"));
    Command::new("kill").args(["-KILL", &node[0].to_string(), &nats[0].to_string()]).status().unwrap();
    let killed = Instant::now();

    eventually(Duration::from_secs(60), Duration::from_millis(300), || {
        let context = context.clone();
        async move {
            match services(&context).await? {
                (2, 1) => Ok(()),
                (hubs, edges) => Err(format!("{hubs} hubs and {edges} edges answer")),
            }
        }
    })
    .await
    .unwrap();
    eprintln!("health shows the 2 surviving hubs {:?} after the kill", killed.elapsed());

    // An apply (a new revision) and a run on the edge succeed against the other two nodes.
    // Requests may still time out while the survivors elect new stream leaders: retried.
    let got = eventually(Duration::from_secs(60), Duration::from_millis(500), || {
        let context = context.clone();
        async move { cli(&context, &["get", "-o", "json"]).await }
    })
    .await
    .unwrap();
    let doc = serde_json::from_str::<serde_json::Value>(&got).unwrap();
    let mut document: serde_json::Value = match &doc["document"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    document["description"] = "changed after a node was lost".into();
    let file = data.path().join("changed.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let file_arg = file.to_string_lossy().to_string();
    let applied = eventually(Duration::from_secs(60), Duration::from_millis(500), || {
        let context = context.clone();
        let file_arg = file_arg.clone();
        async move { cli(&context, &["apply", "--label", "after-node-loss", "-f", &file_arg, "-o", "json"]).await }
    })
    .await
    .unwrap();
    assert!(applied.contains("after-node-loss"), "{applied}");
    eprintln!("apply succeeded {:?} after the kill", killed.elapsed());
    // Seen from 7 s to 74 s after the kill (a run attempt may wait out its 30 s timeout while
    // the survivors take over); bounded, not timed.
    eventually(Duration::from_secs(180), Duration::from_millis(500), || {
        let context = context.clone();
        async move { cli(&context, &["run", "--wait", "--timeout", "30s", "--hosts", "edge-1", "--", "true"]).await }
    })
    .await
    .unwrap();
    eprintln!("run succeeded {:?} after the kill", killed.elapsed());

    // Ctrl-C stops the other nodes, their servers and the edge; nothing is left.
    Command::new("kill").args(["-INT", &up_pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait()).await.expect("up exits").unwrap();
    assert!(status.success(), "{status:?}");
    let data_str = data.path().to_string_lossy().to_string();
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
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
