//! Tracing set-up: an env filter (`STEWARD_LOG`, then `RUST_LOG`, default `info`) and text or
//! JSON lines on stderr. Spans carry structured fields so an OpenTelemetry layer can be added
//! here without touching the components.

use tracing_subscriber::EnvFilter;

use crate::cli::{Global, LogFormat};

/// Installs the global subscriber.
pub fn init(global: &Global) {
    let filter = EnvFilter::try_from_env("STEWARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
