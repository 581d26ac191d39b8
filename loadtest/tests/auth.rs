//! `--auth`: the deployment the harness starts refuses anonymous clients, its own clients and
//! hub identities authenticate (accounts first used later are pushed to the running server),
//! and the anonymous probe does notice an open server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::time::Duration;

use futures::StreamExt;
use steward_loadtest::auth::Identity;
use steward_loadtest::env::{Deployment, Topology};

#[tokio::test]
async fn auth_mode_refuses_anonymous_clients_and_admits_issued_identities() {
    let d = Deployment::start(Topology::Single, "loadtest", true).await.unwrap();
    assert_eq!(d.auth_mode(), "jwt");
    let anonymous =
        async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(d.url_list()).await;
    assert!(anonymous.is_err(), "an anonymous client was admitted");
    d.anonymous_refused().await.unwrap();

    // The harness identity of the default account reaches the raw subjects.
    let a = d.connect("t-a").await.unwrap();
    let mut sub = a.subscribe("loadtest.raw.probe").await.unwrap();
    a.flush().await.unwrap();
    a.publish("loadtest.raw.probe", "x".into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"x");

    // An account first used now is issued and pushed; its clients live in that account only.
    let b = d.connect_in("other", "t-b").await.unwrap();
    let mut sub_b = b.subscribe("loadtest.raw.probe").await.unwrap();
    b.flush().await.unwrap();
    a.publish("loadtest.raw.probe", "y".into()).await.unwrap();
    a.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), sub_b.next()).await.is_err(), "accounts are not separate");
    let hub = d.creds("other", Identity::Hub).await.unwrap().unwrap();
    assert!(hub.is_file());
    assert!(d.tenant_arg("other").await.unwrap().starts_with("other="));
}

#[tokio::test]
async fn the_probe_notices_an_open_server() {
    let d = Deployment::start(Topology::Single, "loadtest", false).await.unwrap();
    assert_eq!(d.auth_mode(), "open");
    let err = d.anonymous_refused().await.unwrap_err().to_string();
    assert!(err.contains("accepted an anonymous client"), "{err}");
    assert_eq!(d.tenant_arg("other").await.unwrap(), "other");
}

#[tokio::test]
async fn auth_is_refused_for_a_cluster() {
    let err = Deployment::start(Topology::Cluster3, "loadtest", true).await.unwrap_err().to_string();
    assert!(err.contains("--auth runs a single node"), "{err}");
}
