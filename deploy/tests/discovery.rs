//! Binary discovery. Uses explicit [`SearchInputs`] so no test mutates process-global
//! environment variables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::PathBuf;

use steward_deploy::{
    check_nats_server, find_nats_server, find_nats_server_in, DeployError, SearchInputs, PINNED_NATS_SERVER_VERSION,
};

const HINT: &str = "run deploy/install-nats-server.sh (installs the pinned nats-server 2.15.1 into .tools/bin) or set STEWARD_NATS_SERVER to a nats-server 2.10+ binary";

#[test]
fn env_pointing_nowhere_gives_the_clear_error() {
    let inputs =
        SearchInputs { env_value: Some("/definitely/not/here/nats-server".into()), ..SearchInputs::from_environment() };
    let err = find_nats_server_in(&inputs).unwrap_err();
    assert!(matches!(err, DeployError::InvalidEnvBinary { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("STEWARD_NATS_SERVER=/definitely/not/here/nats-server"), "{text}");
    assert!(text.contains(HINT), "{text}");
}

#[test]
fn nothing_found_lists_what_was_searched() {
    let inputs = SearchInputs {
        env_value: None,
        path_var: Some("/no-bin-a:/no-bin-b".into()),
        roots: vec![PathBuf::from("/no-root")],
    };
    let text = find_nats_server_in(&inputs).unwrap_err().to_string();
    assert!(text.starts_with("nats-server not found; searched: "), "{text}");
    assert!(text.contains("STEWARD_NATS_SERVER (unset)"), "{text}");
    assert!(text.contains("nats-server on PATH"), "{text}");
    assert!(text.contains("/no-root/.tools/bin/nats-server"), "{text}");
    assert!(text.ends_with(HINT), "{text}");
}

#[test]
fn env_wins_over_everything_else() {
    let found = find_nats_server().unwrap();
    let inputs = SearchInputs { env_value: Some(found.clone().into_os_string()), path_var: None, roots: Vec::new() };
    assert_eq!(find_nats_server_in(&inputs).unwrap(), found);
}

#[test]
fn the_tools_folder_is_found_and_supported() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = repo.join(".tools/bin/nats-server");
    if !tools.exists() {
        eprintln!("skipping: {} not installed", tools.display());
        return;
    }
    let inputs = SearchInputs { env_value: None, path_var: None, roots: vec![repo] };
    let found = find_nats_server_in(&inputs).unwrap();
    let version = check_nats_server(&found).unwrap();
    assert_eq!(version.to_string(), PINNED_NATS_SERVER_VERSION);
}
