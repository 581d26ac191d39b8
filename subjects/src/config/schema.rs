//! The JSON Schema of the configuration document, generated from the Rust types. The checked-in
//! copy is `subjects/schema/config.schema.json`; a test fails when it is stale (regenerate with
//! `STEWARD_UPDATE_SCHEMA=1 cargo test -p steward-subjects --test config_schema`).

use super::ConfigDocument;

/// The schema as a JSON value.
#[must_use]
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(ConfigDocument).to_value()
}

/// The schema as pretty JSON text with a trailing newline (the checked-in form).
#[must_use]
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    s.push('\n');
    s
}
