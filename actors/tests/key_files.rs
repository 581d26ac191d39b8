//! Files holding secrets on the actors' side: the job signing key is written 0600 and refused
//! when group or others may access it (the trusted public key is not a secret and is read as
//! it is); the NATS connect path refuses a credentials file that is missing, malformed or too
//! open, naming the file, before any network traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use steward_actors::signing::{JobSigner, JobVerifier, SigningError};
use steward_actors::{connect, ActorsError, ConnectOptions};
use steward_deploy::auth::{AuthDir, IdentityKind};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_signing_key_readable_by_others_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = JobSigner::init_dir(dir.path()).unwrap();
    assert_eq!(mode(&files.secret), 0o600);
    let shown = files.secret.display().to_string();
    for bad in [0o644, 0o640, 0o604] {
        chmod(&files.secret, bad);
        let e = JobSigner::load(&files.secret).unwrap_err();
        assert!(matches!(e, SigningError::Io { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("permissions {bad:04o} for '{shown}' are too open")), "{text}");
        assert!(text.contains(&format!("chmod 600 {shown}")), "{text}");
    }
    chmod(&files.secret, 0o600);
    let signer = JobSigner::load(&files.secret).unwrap();
    // The trusted key is public: world-readable is fine.
    chmod(&files.public, 0o644);
    assert_eq!(JobVerifier::load(&files.public).unwrap().key_id(), signer.key_id());
}

#[test]
fn missing_or_malformed_signing_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.key");
    let e = JobSigner::load(&missing).unwrap_err();
    assert!(e.to_string().contains(&missing.display().to_string()) && e.to_string().contains("does not exist"), "{e}");
    let junk = dir.path().join("junk.key");
    steward_deploy::secret::write_secret(&junk, "not a key\n").unwrap();
    let e = JobSigner::load(&junk).unwrap_err();
    assert!(matches!(e, SigningError::BadKey { .. }), "{e}");
    assert!(e.to_string().contains(&junk.display().to_string()), "{e}");
}

#[tokio::test]
async fn connect_refuses_bad_credentials_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let seed = AuthDir::new(dir.path()).issue("acme", IdentityKind::Host, "web-01", vec![], vec![]).unwrap().seed_file;
    chmod(&seed, 0o644);
    let junk = dir.path().join("junk.nk");
    steward_deploy::secret::write_secret(&junk, "hello\n").unwrap();
    let missing = dir.path().join("missing.nk");
    let cases = [
        (&seed, "are too open"),
        (&seed, "chmod 600"),
        (&junk, "is not a valid nkey user seed"),
        (&missing, "does not exist"),
    ];
    for (file, says) in cases {
        // Nothing listens on the URL: the file is refused before any connection attempt.
        let opts = ConnectOptions { creds: Some(file.clone()), ..ConnectOptions::new("nats://127.0.0.1:1") };
        let e = connect(&opts, "key-files-test").await.unwrap_err();
        assert!(matches!(e, ActorsError::Connect { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("cannot use credentials") && text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains(says), "{text}");
    }
}
