//! TLS and the edge's locked leaf node on real servers: a leaf link over TLS with a CA this test
//! makes carries an edge's traffic to the hub, and a leaf trusting another CA never links; a
//! client reaches a TLS client port only with the CA (a clear error without it), and with its
//! certificate where the server verifies them; the leaf that an edge starts admits only its own
//! host's processes (anonymous and foreign keys refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use steward_actors::edge::{start_leaf, EdgeArgs, EdgeHandle, LeafConfig};
use steward_actors::ConnectOptions;
use steward_deploy::secret::write_secret;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::tls::{TlsListen, TlsRemote};
use steward_deploy::wait::eventually;
use steward_subjects::{AccountId, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, format!("steward test ca {name}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    leaf.distinguished_name.push(DnType::CommonName, format!("steward test server {name}"));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("server.pem"), cert.pem()).unwrap();
    write_secret(&p("server-key.pem"), &key.serialize_pem()).unwrap();
    Pki { ca: p("ca.pem"), cert: p("server.pem"), key: p("server-key.pem"), _dir: dir }
}

fn listen(p: &Pki) -> TlsListen {
    TlsListen { cert: p.cert.clone(), key: p.key.clone(), ca: None, verify: false }
}

async fn leaf_count(hub: &NatsServer) -> usize {
    let leafz = hub.monitor_json("/leafz").await.unwrap();
    leafz["leafs"].as_array().map_or(0, Vec::len)
}

fn acme() -> Subjects {
    Subjects::new(AccountId::parse("acme").unwrap())
}

/// Waits for one heartbeat of `host` on the hub.
async fn heartbeat_arrives(hub: &async_nats::Client, host: &HostId) {
    let mut sub = hub.subscribe(acme().host_heartbeat(host)).await.unwrap();
    tokio::time::timeout(WAIT, sub.next()).await.expect("no heartbeat reached the hub").unwrap();
}

async fn edge_on(leaf_cfg: &LeafConfig, leaf: &NatsServer, host: &HostId, data: &Path) -> EdgeHandle {
    let mut args = EdgeArgs::new(leaf_cfg.local_connect(leaf), acme(), host.clone(), data.to_path_buf());
    args.heartbeat = Duration::from_millis(200);
    args.hub_domain = Some("hub".into());
    EdgeHandle::start(args).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_link_over_tls_with_the_test_ca_and_refused_with_another() {
    let (good, other) = (pki("good"), pki("other"));
    let hub = NatsServer::start(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        leafnode_tls: Some(listen(&good)),
        ..ServerOptions::named("hub-tls")
    })
    .await
    .unwrap();
    let hub_client = async_nats::connect(hub.client_url()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let host = HostId::parse("web-01").unwrap();

    // The edge's leaf trusts the test CA: the link (a `tls://` URL) comes up over TLS and the
    // edge's heartbeat crosses it.
    let tls_url = hub.leaf_url().unwrap().replace("nats-leaf://", "tls://");
    let cfg = LeafConfig {
        tls: Some(TlsRemote { ca: Some(good.ca.clone()), ..TlsRemote::default() }),
        ..LeafConfig::new(tls_url, tmp.path().join("leaf"))
    };
    let leaf = start_leaf(&host, &cfg).await.unwrap();
    let config = std::fs::read_to_string(leaf.config_path()).unwrap();
    assert!(config.contains(&format!("tls {{ ca_file: \"{}\" }}", good.ca.display())), "{config}");
    eventually(WAIT, POLL, || async { (leaf_count(&hub).await == 1).then_some(()).ok_or("no leaf yet") })
        .await
        .unwrap();
    let leafz = hub.monitor_json("/leafz").await.unwrap();
    let edge = edge_on(&cfg, &leaf, &host, &tmp.path().join("edge")).await;
    heartbeat_arrives(&hub_client, &host).await;
    edge.stop().await;
    println!("leaf over tls: {}", leafz["leafs"][0]);

    // A plain leaf server trusting another CA: the hub's certificate is refused, no link.
    let bad = NatsServer::start(ServerOptions {
        leaf_remotes: vec![steward_deploy::LeafRemote {
            url: hub.leaf_url().unwrap(),
            tls: Some(TlsRemote { ca: Some(other.ca.clone()), ..TlsRemote::default() }),
            ..steward_deploy::LeafRemote::default()
        }],
        ..ServerOptions::named("leaf-other-ca")
    })
    .await
    .unwrap();
    let refused = eventually(WAIT, POLL, || async {
        let log = bad.log_tail();
        log.contains("certificate signed by unknown authority").then_some(log).ok_or("no tls failure logged yet")
    })
    .await
    .unwrap();
    println!("leaf trusting another CA: {}", refused.lines().last().unwrap_or_default());
    assert_eq!(leaf_count(&hub).await, 1, "only the leaf trusting the right CA is linked");
    let bad_leafz = bad.monitor_json("/leafz").await.unwrap();
    assert_eq!(bad_leafz["leafs"].as_array().map_or(0, Vec::len), 0, "{bad_leafz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_port_over_tls_needs_the_ca() {
    let (good, other) = (pki("good"), pki("other"));
    let hub = NatsServer::start(ServerOptions { tls: Some(listen(&good)), ..ServerOptions::named("tls-clients") })
        .await
        .unwrap();
    let url = hub.client_url();
    assert!(url.starts_with("tls://127.0.0.1:"), "{url}");

    let with_ca = ConnectOptions { tls_ca: Some(good.ca.clone()), ..ConnectOptions::new(url.clone()) };
    let client = steward_actors::connect(&with_ca, "tls-ok").await.unwrap();
    let mut sub = client.subscribe("tls.echo").await.unwrap();
    client.publish("tls.echo", "hi".into()).await.unwrap();
    let got = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"hi");
    // The same CA with a plain nats:// URL: TLS is required and used.
    let plain_url = ConnectOptions { url: url.replace("tls://", "nats://"), ..with_ca.clone() };
    steward_actors::connect(&plain_url, "tls-upgraded").await.unwrap();

    let e = steward_actors::connect(&ConnectOptions::new(url.clone()), "no-ca").await.unwrap_err().to_string();
    println!("without the CA: {e}");
    assert!(e.contains("TLS certificate is not trusted") && e.contains("--tls-ca"), "{e}");

    let wrong = ConnectOptions { tls_ca: Some(other.ca.clone()), ..ConnectOptions::new(url.clone()) };
    let e = steward_actors::connect(&wrong, "wrong-ca").await.unwrap_err().to_string();
    assert!(e.contains(&format!("not signed by the CA in '{}'", other.ca.display())), "{e}");

    let missing = good.ca.with_file_name("nope.pem");
    let e = steward_actors::connect(&ConnectOptions { tls_ca: Some(missing.clone()), ..ConnectOptions::new(url) }, "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("TLS CA file '{}' does not exist", missing.display())), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_leaf_admits_only_its_own_host() {
    let hub = NatsServer::start(ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        ..ServerOptions::named("hub")
    })
    .await
    .unwrap();
    let hub_client = async_nats::connect(hub.client_url()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let host = HostId::parse("web-01").unwrap();
    let cfg = LeafConfig::new(hub.leaf_url().unwrap(), tmp.path().join("leaf"));
    let mut leaf = start_leaf(&host, &cfg).await.unwrap();
    assert_eq!(leaf.options().host, "127.0.0.1");
    let seed_file = cfg.local_seed_file();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&seed_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Anonymous and a foreign key: refused.
    let anon = async_nats::connect(leaf.client_url()).await.unwrap_err();
    assert_eq!(anon.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{anon}");
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let foreign = async_nats::ConnectOptions::with_nkey(stranger).connect(leaf.client_url()).await.unwrap_err();
    assert_eq!(foreign.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{foreign}");

    // The edge's own processes: connected with the local seed, the agent reaches the hub.
    let edge = edge_on(&cfg, &leaf, &host, &tmp.path().join("edge")).await;
    heartbeat_arrives(&hub_client, &host).await;
    edge.stop().await;

    // The seed survives a restart (same key), and a seed file others may read is refused.
    let before = std::fs::read_to_string(&seed_file).unwrap();
    leaf.stop().await;
    let mut again = start_leaf(&host, &cfg).await.unwrap();
    assert_eq!(std::fs::read_to_string(&seed_file).unwrap(), before);
    steward_actors::connect(&cfg.local_connect(&again), "again").await.unwrap();
    again.stop().await;
    std::fs::set_permissions(&seed_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = start_leaf(&host, &cfg).await.unwrap_err().to_string();
    assert!(e.contains(&format!("permissions 0644 for '{}' are too open", seed_file.display())), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_the_server_verifies_them() {
    let (server, client) = (pki("server"), pki("client"));
    let verify = TlsListen { ca: Some(client.ca.clone()), verify: true, ..listen(&server) };
    let hub = NatsServer::start(ServerOptions { tls: Some(verify), ..ServerOptions::named("mtls") }).await.unwrap();
    let base = ConnectOptions { tls_ca: Some(server.ca.clone()), ..ConnectOptions::new(hub.client_url()) };

    // The client's certificate (signed by the CA the server verifies with) is accepted.
    let with_cert =
        ConnectOptions { tls_cert: Some(client.cert.clone()), tls_key: Some(client.key.clone()), ..base.clone() };
    let c = steward_actors::connect(&with_cert, "mtls-ok").await.unwrap();
    c.flush().await.unwrap();

    // Without a certificate the server closes the handshake.
    assert!(steward_actors::connect(&base, "mtls-none").await.is_err());
    // A certificate without its key, and a key others may read, are refused before connecting.
    let half = ConnectOptions { tls_cert: Some(client.cert.clone()), ..base.clone() };
    let e = steward_actors::connect(&half, "half").await.unwrap_err().to_string();
    assert!(e.contains("needs both its certificate and key"), "{e}");
    std::fs::set_permissions(&client.key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = steward_actors::connect(&with_cert, "open-key").await.unwrap_err().to_string();
    assert!(e.contains(&format!("permissions 0644 for '{}' are too open", client.key.display())), "{e}");
}
