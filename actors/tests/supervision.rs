//! The supervised runtime against a real nats-server: health discovery through `$SRV.*`, JSON
//! requests, malformed input, a failing child restarted and serving again, clean shutdown; and
//! the supervisor's restart counters with a child defined here that fails on request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use steward_actors::supervisor::SupervisorArgs;
use steward_actors::{
    ChildSpec, EdgeSpec, ProcessConfig, RestartPolicy, RunningProcess, StatusBoard, SupervisorHandle,
};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::health::{ComponentState, HealthStatus};
use steward_subjects::api::host::Heartbeat;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::{self, RequestErrorKind};
use steward_subjects::{AccountId, ErrorCode, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The id of the instance answering `$SRV.PING` for `service`. A ping caught by an instance that
/// is stopping goes unanswered, so each waits at most a second (the callers retry).
async fn ping_id(client: &async_nats::Client, service: &str) -> Result<String, String> {
    let ping = client.request(format!("$SRV.PING.{service}"), "".into());
    let msg = tokio::time::timeout(Duration::from_secs(1), ping)
        .await
        .map_err(|_| "ping unanswered".to_owned())?
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
    v["id"].as_str().map(str::to_owned).ok_or_else(|| "no id".to_owned())
}

fn instance(id: &str) -> steward_subjects::Token {
    steward_subjects::Token::parse(steward_subjects::TokenKind::InstanceId, id).unwrap()
}

fn config(url: &str, account: &str, data: &std::path::Path) -> ProcessConfig {
    let mut cfg = ProcessConfig::hub(url, AccountId::parse(account).unwrap());
    cfg.heartbeat = Duration::from_millis(200);
    cfg.policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
    cfg.edges = vec![EdgeSpec {
        host_id: HostId::parse("edge-1").unwrap(),
        labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
        data_dir: data.join("edge-1"),
    }];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_discoverable_and_a_failed_child_is_restarted() {
    let server = NatsServer::single(ServerOptions::named("supervision")).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let subjects = Subjects::new(AccountId::parse("acme").unwrap());
    let mut heartbeats = client.subscribe(subjects.host_heartbeat_all()).await.unwrap();

    let process = RunningProcess::start(config(&server.client_url(), "acme", data.path())).await.unwrap();
    assert!(process.ensured.streams.len() >= 5, "{:?}", process.ensured);

    // $SRV discovery answers for the hub and the edge.
    let first_id = ping_id(&client, "steward-hub").await.unwrap();
    ping_id(&client, "steward-edge").await.unwrap();
    let info = client.request("$SRV.INFO.steward-hub", "".into()).await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["metadata"]["account"], "acme");
    assert!(info["endpoints"].as_array().unwrap().iter().any(|e| e["subject"] == subjects.health_status().as_str()));
    let stats = client.request("$SRV.STATS.steward-hub", "".into()).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");

    // A heartbeat from the edge arrives with its identity and labels.
    let hb = tokio::time::timeout(WAIT, heartbeats.next()).await.unwrap().unwrap();
    let hb: Heartbeat = codec::decode(Encoding::MsgPack, &hb.payload).unwrap();
    assert_eq!(hb.host_id, "edge-1");
    assert_eq!(hb.labels.get("env").map(String::as_str), Some("test"));

    // Plain JSON request with the JSON content type gets a JSON envelope back.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let reply = client
        .request_with_headers(
            subjects.health_status_of(
                &steward_subjects::Token::parse(steward_subjects::TokenKind::InstanceId, &first_id).unwrap(),
            ),
            headers.clone(),
            "{}".into(),
        )
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["data"]["service"], "steward-hub");
    assert_eq!(json["data"]["instance"], first_id.as_str());

    // Malformed JSON and MessagePack get an `invalid` envelope; the service keeps serving.
    let bad = client.request_with_headers(subjects.health_status(), headers, "{not json".into()).await.unwrap();
    let bad: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"]["code"], "invalid");
    let bad = client.request(subjects.health_status(), vec![0xc1u8, 0xff, 0x00].into()).await.unwrap();
    let env: steward_subjects::Envelope<HealthStatus> = codec::decode(Encoding::MsgPack, &bad.payload).unwrap();
    assert_eq!(env.into_result().unwrap_err().code, ErrorCode::Invalid);

    // Make the health child end (stopped from outside with a reason, as the production type has
    // no fault hook): the supervisor restarts it and it serves again.
    let cell = process.supervisor().child("health").await.unwrap().expect("health running");
    cell.stop(Some("injected fault: test".into()));
    let second_id = eventually(WAIT, POLL, || {
        let client = client.clone();
        let first_id = first_id.clone();
        async move {
            let id = ping_id(&client, "steward-hub").await?;
            if id == first_id {
                Err("old instance still answers".to_owned())
            } else {
                Ok(id)
            }
        }
    })
    .await
    .unwrap();
    assert_ne!(first_id, second_id);
    let status: HealthStatus =
        rpc::request(&client, subjects.health_status_of(&instance(&second_id)), &serde_json::json!({}), WAIT)
            .await
            .unwrap();
    let health = status.components.iter().find(|c| c.name == "health").unwrap();
    assert_eq!(health.restarts, 1);
    assert_eq!(health.state, ComponentState::Running);
    assert!(health.last_error.as_deref().unwrap_or("").contains("injected fault"));
    assert!(status.components.iter().any(|c| c.name == "edge-edge-1" && c.state == ComponentState::Running));

    // Clean shutdown: the edge says it is leaving, and nothing answers afterwards.
    process.shutdown(Duration::from_secs(3)).await.unwrap();
    let leaving = tokio::time::timeout(WAIT, async {
        while let Some(m) = heartbeats.next().await {
            let hb: Heartbeat = codec::decode(Encoding::MsgPack, &m.payload).unwrap();
            if hb.leaving {
                return hb;
            }
        }
        panic!("heartbeat subscription ended");
    })
    .await
    .unwrap();
    assert_eq!(leaving.host_id, "edge-1");
    let err = rpc::request::<_, HealthStatus>(&client, subjects.health_status(), &(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::NoResponders, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_identity_survives_restart() {
    let server = NatsServer::single(ServerOptions::named("edge-identity")).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let subjects = Subjects::new(AccountId::parse("acme").unwrap());
    let mut heartbeats = client.subscribe(subjects.host_heartbeat_all()).await.unwrap();
    for incarnation in 1..=2u64 {
        let mut cfg = config(&server.client_url(), "acme", data.path());
        cfg.roles.clear();
        let process = RunningProcess::start(cfg).await.unwrap();
        let hb = tokio::time::timeout(WAIT, heartbeats.next()).await.unwrap().unwrap();
        let hb: Heartbeat = codec::decode(Encoding::MsgPack, &hb.payload).unwrap();
        assert_eq!(hb.incarnation, incarnation);
        assert_eq!(hb.host_id, "edge-1");
        process.shutdown(Duration::from_secs(3)).await.unwrap();
        // Drain what is left of this incarnation (its leaving heartbeat included).
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), heartbeats.next()).await {
            let hb: Heartbeat = codec::decode(Encoding::MsgPack, &m.payload).unwrap();
            if hb.leaving {
                break;
            }
        }
    }
}

/// A child that fails whenever it is told to.
struct Faulty;

enum FaultyMsg {
    Fail(String),
}

impl Actor for Faulty {
    type Msg = FaultyMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<FaultyMsg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<FaultyMsg>,
        msg: FaultyMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FaultyMsg::Fail(reason) => Err(ActorProcessingErr::from(format!("injected fault: {reason}"))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_is_restarted_and_counted() {
    let board = StatusBoard::new();
    let policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
    let children = vec![ChildSpec::new("faulty", || (Faulty, ()))];
    let (supervisor, _join) = SupervisorHandle::start(SupervisorArgs { children, policy, board }).await.unwrap();
    let first = supervisor.child("faulty").await.unwrap().expect("faulty running");
    first.send_message(FaultyMsg::Fail("test".into())).unwrap();
    let status = eventually(WAIT, POLL, || {
        let supervisor = supervisor.clone();
        let first_id = first.get_id();
        async move {
            let cell = supervisor.child("faulty").await.map_err(|e| e.to_string())?.ok_or("restarting")?;
            if cell.get_id() == first_id {
                return Err("the failed child still runs".to_owned());
            }
            let all = supervisor.status().await.map_err(|e| e.to_string())?;
            all.into_iter().find(|c| c.name == "faulty").ok_or_else(|| "no status".to_owned())
        }
    })
    .await
    .unwrap();
    assert_eq!(status.restarts, 1);
    assert_eq!(status.state, ComponentState::Running);
    assert!(status.last_error.as_deref().unwrap_or("").contains("injected fault"));
    supervisor.shutdown(Duration::from_secs(1)).await.unwrap();
}
