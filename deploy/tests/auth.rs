//! `deploy/nats/hub-nkeys.conf` with an authorization file rendered by [`AuthDir`] passes
//! `nats-server -t`, and re-issuing an identity replaces its key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Command;

use steward_deploy::auth::{AuthDir, IdentityKind};
use steward_deploy::find_nats_server;

#[test]
fn hub_nkeys_conf_with_rendered_authorization_is_valid() {
    let work = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(work.path().join("auth"));
    let pubs = vec!["steward.v1.acme.host.heartbeat.web-01".to_owned()];
    let subs = vec!["_INBOX.acme.web-01.>".to_owned()];
    let first = auth.issue("acme", IdentityKind::Host, "web-01", pubs.clone(), subs.clone()).unwrap();
    auth.issue("acme", IdentityKind::Service, "hub", vec!["steward.v1.acme.>".into()], vec![]).unwrap();
    auth.issue("globex", IdentityKind::Service, "hub", vec!["steward.v1.globex.>".into()], vec![]).unwrap();
    let again = auth.issue("acme", IdentityKind::Host, "web-01", pubs, subs).unwrap();
    assert_ne!(first.public_key, again.public_key);
    let text = std::fs::read_to_string(auth.authorization_file()).unwrap();
    assert!(!text.contains(&first.public_key) && text.contains(&again.public_key), "re-issue replaces the key");

    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/hub-nkeys.conf");
    std::fs::copy(source, work.path().join("hub-nkeys.conf")).unwrap();
    std::fs::copy(auth.authorization_file(), work.path().join("authorization.conf")).unwrap();
    let output = Command::new(find_nats_server().unwrap())
        .current_dir(work.path())
        .args(["-t", "-c", "hub-nkeys.conf"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && out.contains("is valid"), "{out}");
}
