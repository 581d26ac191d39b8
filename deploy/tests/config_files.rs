//! The checked-in configuration files in `deploy/nats/` must parse: each one goes through
//! `nats-server -t -c <file>` (config test mode) from a temporary copy of the folder, so
//! relative paths (`./data`, `./host.creds`) resolve inside the copy; the TLS examples get a CA
//! and a certificate made here in `./tls/` (nats-server loads them while checking).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Command;

use steward_deploy::find_nats_server;

const FILES: [&str; 6] =
    ["cluster-node.conf", "hub.conf", "leaf.conf", "accounts.conf", "hub-tls.conf", "leaf-tls.conf"];

/// Writes `tls/ca.crt`, `tls/hub.crt` and `tls/hub.key` (a CA and a certificate it signed).
fn write_test_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let hub = CertificateParams::new(vec!["steward-hub.example.internal".to_owned()]).unwrap();
    let cert = hub.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(tls.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(tls.join("hub.crt"), cert.pem()).unwrap();
    steward_deploy::secret::write_secret(&tls.join("hub.key"), &key.serialize_pem()).unwrap();
}

#[test]
fn checked_in_configs_pass_nats_server_config_test() {
    let binary = find_nats_server().unwrap();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats");
    let work = tempfile::tempdir().unwrap();
    for name in FILES {
        std::fs::copy(source.join(name), work.path().join(name)).unwrap();
    }
    write_test_pki(work.path());
    for name in FILES {
        let output = Command::new(&binary).current_dir(work.path()).arg("-t").arg("-c").arg(name).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name} failed the config test: {text}");
        assert!(text.contains("is valid"), "{name}: {text}");
    }
}

#[test]
fn tenant_users_are_confined_to_their_subjects() {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/accounts.conf")).unwrap();
    for account in ["acme", "globex"] {
        let own = format!("\"steward.v1.{account}.>\"");
        assert!(text.matches(own.as_str()).count() >= 4, "{account} permissions");
    }
    assert!(text.contains("system_account: SYS"));
    assert!(!text.contains("\"steward.v1.>\""), "no user may see every tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_conf_permissions_hold_on_a_running_server() {
    use std::time::Duration;
    use steward_deploy::{NatsServer, ServerOptions};

    // nats-server resolves `include` relative to the including file's folder, even for
    // absolute paths, so accounts.conf is copied next to the rendered config.
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let accounts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/accounts.conf");
    std::fs::copy(accounts, dir.join("accounts.conf")).unwrap();
    let server = NatsServer::start(ServerOptions {
        data_dir: Some(dir),
        extra_config: "include \"accounts.conf\"".into(),
        ..ServerOptions::named("accounts")
    })
    .await
    .unwrap();

    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let host = async_nats::ConnectOptions::with_user_and_password("acme-host".into(), "change-me-acme-host".into())
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event.to_string());
            }
        })
        .connect(server.client_url())
        .await
        .unwrap();

    // Own subjects: allowed (no responders proves the request was published and delivered).
    let own = host.request("steward.v1.acme.host.ping", "x".into()).await.unwrap_err();
    assert_eq!(own.kind(), async_nats::RequestErrorKind::NoResponders, "{own}");

    // Another tenant's subjects: the server refuses the subscription.
    let _denied = host.subscribe("steward.v1.globex.>").await.unwrap();
    host.flush().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(e) if e.contains("Permissions Violation") => return e,
                Some(_) => continue,
                None => return String::new(),
            }
        }
    })
    .await
    .unwrap();
    assert!(event.contains("steward.v1.globex.>"), "{event}");
}
