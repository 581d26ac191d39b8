//! The checked-in JSON Schema matches the Rust types, and the example documents validate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::PathBuf;

use steward_subjects::config::schema::schema_text;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn checked_in_schema_is_current() {
    let path = repo().join("subjects/schema/config.schema.json");
    let generated = schema_text();
    if std::env::var_os("STEWARD_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == generated,
        "subjects/schema/config.schema.json is stale: run STEWARD_UPDATE_SCHEMA=1 cargo test -p steward-subjects --test config_schema"
    );
    let v: serde_json::Value = serde_json::from_str(&on_disk).unwrap();
    for section in ["services", "controls", "components", "assessments", "attestations", "pools"] {
        assert!(v["properties"][section].is_object(), "schema lacks {section}");
    }
}

#[test]
fn example_documents_validate() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).unwrap();
            if let Err(errs) = steward_subjects::config::parse_document(&bytes) {
                panic!("{} is invalid: {errs:#?}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no example documents found");
}
