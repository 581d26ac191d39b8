//! An edge killed with SIGKILL leaves its leaf `nats-server` running (it never got to stop
//! it). `start_leaf` on the same folder stops that leaf before starting the new one, so the hub
//! sees one leaf for the host and one server uses the folder's JetStream store; a pid file
//! naming a process that does not run the leaf's configuration is left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::time::Duration;

use steward_actors::edge::{start_leaf, LeafConfig};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::HostId;

/// Whether `pid` is a live process (missing, or a zombie not reaped yet, is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) STATE ...`: the state follows the last ')'.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

/// Kills the forgotten leaf when the test ends, whatever happened (a failing test would
/// otherwise leave it running).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn leafs(hub: &NatsServer) -> u64 {
    hub.monitor_json("/leafz").await.map(|v| v["leafs"].as_array().map_or(0, Vec::len) as u64).unwrap_or(0)
}

#[tokio::test]
async fn a_leaf_left_by_a_killed_edge_is_stopped_before_the_next_starts() {
    let hub = NatsServer::single(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        ..ServerOptions::named("leaf-restart-hub")
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let host = HostId::parse("web-01").unwrap();
    let cfg = LeafConfig::new(hub.leaf_url().unwrap(), tmp.path().join("leaf"));

    // A pid file naming a live process that is not this folder's leaf (this test) is ignored.
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    std::fs::write(cfg.pid_file(), format!("{}\n/nowhere/nats-server.conf\n", std::process::id())).unwrap();
    let first = start_leaf(&host, &cfg).await.unwrap();
    let old = first.pid().unwrap();
    eventually(Duration::from_secs(20), Duration::from_millis(50), || async {
        (leafs(&hub).await == 1).then_some(()).ok_or("the first leaf is not linked")
    })
    .await
    .unwrap();
    let record = std::fs::read_to_string(cfg.pid_file()).unwrap();
    assert_eq!(record, format!("{old}\n{}\n", first.config_path().display()));

    // The edge process dies without stopping its leaf (SIGKILL runs no destructor).
    std::mem::forget(first);
    let _cleanup = KillOnDrop(old);
    assert!(alive(old));
    let second = start_leaf(&host, &cfg).await.unwrap();
    assert_ne!(second.pid(), Some(old));
    assert!(!alive(old), "the earlier leaf {old} still runs beside the new one");
    eventually(Duration::from_secs(20), Duration::from_millis(50), || async {
        let n = leafs(&hub).await;
        (n == 1).then_some(()).ok_or(format!("{n} leafs linked, want 1"))
    })
    .await
    .unwrap();
}
