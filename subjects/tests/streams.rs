//! `ensure` against real servers: idempotent on one node, R3 on a three-node cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::topology::Cluster;
use steward_subjects::streams::{self, Replicas};
use steward_subjects::{AccountId, HostId, Subjects};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_is_idempotent_and_streams_capture_their_subjects() {
    let server = NatsServer::single(ServerOptions::named("ensure")).await.unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let first = streams::ensure(&js, Replicas::One).await.unwrap();
    let second = streams::ensure(&js, Replicas::One).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.streams.len(), streams::streams().len());

    // A result published on the account's subject lands in the results stream, once per msg id.
    let s = Subjects::new(AccountId::parse("acme").unwrap());
    let host = HostId::parse("web-01").unwrap();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "spec-1:epoch-1:seq-1");
        js.publish_with_headers(
            s.result_put(&host, &steward_subjects::RuntimeId::parse("web-01").unwrap()),
            headers,
            "r".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut stream = js.get_stream(streams::RESULTS_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1, "duplicate dropped by the dedupe window");
    let kv = js.get_key_value(streams::HOSTS_BUCKET).await.unwrap();
    kv.put("web-01", "x".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_creates_r3_streams_on_a_cluster() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = async_nats::connect(cluster.server_addrs()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    streams::ensure(&js, Replicas::Three).await.unwrap();
    for def in streams::streams() {
        let mut stream = js.get_stream(def.name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.num_replicas, 3, "{}", def.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_object_reads_whole_objects_and_does_not_wait_forever_for_lost_chunks() {
    let server = NatsServer::single(ServerOptions::named("objects")).await.unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let store = js.get_object_store(streams::ARTIFACTS_STORE).await.unwrap();
    // Several chunks' worth of bytes come back whole.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    store.put("acme/big", &mut big.as_slice()).await.unwrap();
    assert_eq!(streams::read_object(&store, "acme/big", usize::MAX).await.unwrap(), big);
    assert!(matches!(
        streams::read_object(&store, "acme/big", 1000).await,
        Err(streams::ObjectReadError::TooLarge { size: 600_000, limit: 1000, .. })
    ));
    assert!(matches!(
        streams::read_object(&store, "acme/none", usize::MAX).await,
        Err(streams::ObjectReadError::NotFound(_))
    ));
    // An object whose chunks are gone under its info (what a delete or replace racing a read
    // leaves): the read ends instead of waiting for them.
    let info = store.info("acme/big").await.unwrap();
    let stream = js.get_stream(format!("OBJ_{}", streams::ARTIFACTS_STORE)).await.unwrap();
    stream.purge().filter(format!("$O.{}.C.{}", streams::ARTIFACTS_STORE, info.nuid)).await.unwrap();
    assert!(matches!(
        streams::read_object(&store, "acme/big", usize::MAX).await,
        Err(streams::ObjectReadError::Stalled(_))
    ));
}
