//! `steward dead-letters` against a real hub: job events of runs the hub never created are
//! dropped by the dispatcher and listed with their host's subject and the reason, only for
//! their own account.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::process::Stdio;
use std::time::Duration;

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::run::{EventKind, RunEvent};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::{AccountId, HostId, Subjects};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

async fn dead_letters(url: &str, account: &str) -> Result<serde_json::Value, String> {
    let out = tokio::process::Command::new(STEWARD)
        .args(["--nats", url, "--account", account, "-o", "json", "dead-letters", "--limit", "50"])
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_run_events_are_listed_with_host_and_reason() {
    let server = NatsServer::single(ServerOptions::named("dead-letters")).await.unwrap();
    let url = server.client_url();
    let _hub = tokio::process::Command::new(STEWARD)
        .args(["--nats", &url, "server", "--tenant", "acme", "--tenant", "globex"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let acme = Subjects::new(AccountId::parse("acme").unwrap());
    let host = HostId::parse("noisy").unwrap();
    // The hub's streams exist once its config manager answers.
    eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        dead_letters(&url, "acme").await.map(|_| ())
    })
    .await
    .unwrap();
    for i in 0..5 {
        let ev = RunEvent {
            run_id: format!("not-a-run-{i}"),
            host_id: host.to_string(),
            attempt: 1,
            seq: 1,
            kind: EventKind::Last,
            ..RunEvent::default()
        };
        let payload = codec::encode(Encoding::MsgPack, &ev).unwrap();
        js.publish(acme.run_event(&host), payload).await.unwrap().await.unwrap();
    }
    // Generous: the events go through the dispatcher's retries before they are dead letters,
    // which takes seconds longer on a loaded machine.
    let rows = eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let v = dead_letters(&url, "acme").await?;
        match v.as_array() {
            Some(rows) if rows.len() == 5 => Ok(rows.clone()),
            _ => Err(format!("{v}")),
        }
    })
    .await
    .unwrap();
    for row in &rows {
        assert_eq!(row["subject"], acme.run_event(&host), "{row}");
        assert_eq!(row["why"], "run id is not a uuidv7", "{row}");
        assert_eq!(row["stream"], "STEWARD_RUN_EVENTS", "{row}");
    }
    // Another tenant sees none of them.
    let other = dead_letters(&url, "globex").await.unwrap();
    assert_eq!(other.as_array().map(Vec::len), Some(0), "{other}");
}
