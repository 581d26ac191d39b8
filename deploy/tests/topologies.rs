//! Real nats-server topologies driven through async-nats. Every test starts its own servers on
//! free ports in temporary folders, so they run in parallel, and waits by polling.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use steward_deploy::{eventually, Cluster, DeployError, HubLeaf, NatsServer, ServerOptions, SingleNode};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

fn stream_config(name: &str, subject: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        num_replicas: replicas,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_pub_sub_and_jetstream() {
    let node = SingleNode::start().await.unwrap();
    assert!(node.client_url().starts_with("nats://127.0.0.1:"));
    assert!(node.config_path().exists());
    assert!(node.log_path().exists());

    let client = async_nats::connect(node.client_url()).await.unwrap();
    let mut sub = client.subscribe("steward.v1.acme.ping").await.unwrap();
    client.flush().await.unwrap();
    client.publish("steward.v1.acme.ping", "hello".into()).await.unwrap();
    let msg = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(msg.payload.as_ref(), b"hello");

    let js = jetstream::new(client);
    let stream = js.create_stream(stream_config("SINGLE", "single.>", 1)).await.unwrap();
    let ack = js.publish("single.a", "one".into()).await.unwrap().await.unwrap();
    let stored = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(stored.payload.as_ref(), b"one");
    assert!(node.store_dir().join("jetstream").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_survives_a_node_loss_and_rejoins() {
    let mut cluster = Cluster::start(3).await.unwrap();
    assert_eq!(cluster.len(), 3);

    // Connect to the two nodes that stay up.
    let survivors = vec![cluster.client_url(0).unwrap(), cluster.client_url(1).unwrap()];
    let client = async_nats::connect(survivors).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.create_stream(stream_config("R3", "r3.>", 3)).await.unwrap();
    js.publish("r3.before", "before".into()).await.unwrap().await.unwrap();

    cluster.stop_node(2).await.unwrap();
    assert!(!cluster.node_mut(2).unwrap().is_running());
    // If node 2 was the meta leader, the survivors elect a new one first.
    cluster.wait_formed(WAIT).await.unwrap();

    // Writes need a stream leader; if node 2 held it, a new one is elected first.
    let ack = eventually(WAIT, POLL, || {
        let js = js.clone();
        async move { js.publish("r3.after", "after".into()).await?.await }
    })
    .await
    .unwrap();
    let stored = eventually(WAIT, POLL, || stream.get_raw_message(ack.sequence)).await.unwrap();
    assert_eq!(stored.payload.as_ref(), b"after");

    let consumer = eventually(WAIT, POLL, || {
        stream.create_consumer(consumer::pull::Config { durable_name: Some("reader".into()), ..Default::default() })
    })
    .await
    .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut payloads = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.unwrap();
        payloads.push(String::from_utf8(msg.payload.to_vec()).unwrap());
        msg.ack().await.unwrap();
    }
    assert_eq!(payloads, ["before", "after"]);

    cluster.restart_node(2).await.unwrap();
    assert!(cluster.node_mut(2).unwrap().is_running());
    cluster.wait_formed(WAIT).await.unwrap();

    // The restarted node catches up on the stream it missed writes for.
    let restarted = cluster.node(2).unwrap();
    eventually(WAIT, POLL, || async {
        let jsz = restarted.monitor_json("/jsz?streams=true").await?;
        let messages = jsz["messages"].as_u64().unwrap_or(0);
        if messages == 2 {
            Ok(())
        } else {
            Err(DeployError::Topology(format!("restarted node holds {messages} messages")))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_with_sigkill_is_gone_and_catches_up_after_restart() {
    use std::os::unix::process::ExitStatusExt as _;

    let mut cluster = Cluster::start(3).await.unwrap();
    let client = async_nats::connect(cluster.server_addrs()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.create_stream(stream_config("KILL9", "kill9.>", 3)).await.unwrap();
    // A new R3 stream may not have its leader yet: the first publish can find no stream.
    eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        js.publish("kill9.before", "before".into()).await.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();

    let pid = cluster.node(1).unwrap().pid().unwrap();
    let status = cluster.kill_node(1).await.unwrap().expect("node 1 was running");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!cluster.node(1).unwrap().has_process());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still exists");
    // Killing a node that is not running does nothing.
    assert!(cluster.kill_node(1).await.unwrap().is_none());
    assert!(cluster.kill_node(3).await.is_err(), "out of range");

    cluster.wait_formed(WAIT).await.unwrap();
    eventually(WAIT, POLL, || {
        let js = js.clone();
        async move { js.publish("kill9.after", "after".into()).await?.await }
    })
    .await
    .unwrap();

    cluster.restart_node(1).await.unwrap();
    assert_ne!(cluster.node(1).unwrap().pid(), Some(pid));
    let restarted = cluster.node(1).unwrap();
    eventually(WAIT, POLL, || async {
        let jsz = restarted.monitor_json("/jsz?streams=true").await?;
        let messages = jsz["messages"].as_u64().unwrap_or(0);
        if messages == 2 {
            Ok(())
        } else {
            Err(DeployError::Topology(format!("restarted node holds {messages} messages")))
        }
    })
    .await
    .unwrap();
    assert_eq!(stream.get_info().await.unwrap().state.messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_reaches_hub_and_keeps_its_own_jetstream_when_cut_off() {
    let mut pair = HubLeaf::start().await.unwrap();

    let hub_client = async_nats::connect(pair.hub().client_url()).await.unwrap();
    let leaf_client = async_nats::connect(pair.leaf().client_url()).await.unwrap();
    let sub = hub_client.subscribe("steward.v1.acme.host.presence").await.unwrap();
    hub_client.flush().await.unwrap();
    let sub = std::sync::Arc::new(tokio::sync::Mutex::new(sub));

    // Interest propagates to the leaf asynchronously: publish until the hub sees a message.
    let received = eventually(WAIT, POLL, || {
        let leaf_client = leaf_client.clone();
        let sub = sub.clone();
        async move {
            leaf_client.publish("steward.v1.acme.host.presence", "up".into()).await.map_err(|e| e.to_string())?;
            leaf_client.flush().await.map_err(|e| e.to_string())?;
            let mut sub = sub.lock().await;
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(msg)) => Ok(msg),
                _ => Err("no message at the hub yet".to_owned()),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(received.payload.as_ref(), b"up");

    pair.hub_mut().stop().await;
    assert!(!pair.hub_mut().is_running());

    let leaf_js = jetstream::with_domain(leaf_client, "leaf");
    let stream = leaf_js.create_stream(stream_config("EDGE", "edge.>", 1)).await.unwrap();
    let ack = leaf_js.publish("edge.result", "kept".into()).await.unwrap().await.unwrap();
    let stored = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(stored.payload.as_ref(), b"kept");

    pair.hub_mut().restart().await.unwrap();
    pair.wait_leaf_connected(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_kills_the_process_and_removes_the_temp_dir() {
    let server = NatsServer::start(ServerOptions::named("dropped")).await.unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    let proc_path = format!("/proc/{pid}");
    assert!(std::path::Path::new(&proc_path).exists());
    drop(server);
    eventually(WAIT, POLL, || async {
        if std::path::Path::new(&proc_path).exists() {
            Err(format!("{proc_path} still exists"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_data_dir_survives_restart_and_is_kept() {
    let base = tempfile::tempdir().unwrap();
    let opts = ServerOptions {
        data_dir: Some(base.path().join("node")),
        max_payload: Some(2 * 1024 * 1024),
        ..ServerOptions::named("persistent")
    };
    let mut server = NatsServer::start(opts).await.unwrap();
    let port = server.port();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 2 * 1024 * 1024);
    let js = jetstream::new(client);
    js.create_stream(stream_config("KEEP", "keep.>", 1)).await.unwrap();
    js.publish("keep.a", "x".into()).await.unwrap().await.unwrap();

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(stream.get_raw_message(1).await.unwrap().payload.as_ref(), b"x");

    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(dir.join("nats-server.conf").exists(), "persistent folder is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_reports_the_log_tail() {
    let opts = ServerOptions { extra_config: "this is not valid {{{".into(), ..ServerOptions::named("broken") };
    let err = NatsServer::start(opts).await.unwrap_err();
    assert!(matches!(err, DeployError::Exited { .. }), "{err}");
    assert!(err.to_string().contains("log tail"), "{err}");
}
