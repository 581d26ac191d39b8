//! Tracing set-up: an env filter (`STEWARD_LOG`, then `RUST_LOG`, default `info`) and text or
//! JSON lines on stderr, or appended to a log file (`--log-file`, or the default file of
//! `steward up` and `steward node`) and, with `-v`, on stderr too. Spans carry structured
//! fields so an OpenTelemetry layer can be added here without touching the components.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
use tracing_subscriber::EnvFilter;

use crate::cli::{Global, LogFormat};

/// Where logs go: `--log-file`, else the command's own default file, else stderr.
#[must_use]
pub fn log_file(global: &Global, command_default: Option<PathBuf>) -> Option<PathBuf> {
    global.log_file.clone().or(command_default)
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Installs the global subscriber, writing to `file` when given (and to stderr too with
/// `-v`). A file that cannot be opened is reported and logs go to stderr.
pub fn init(global: &Global, file: Option<&Path>) {
    let filter = EnvFilter::try_from_env("STEWARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let (writer, ansi) = match file.map(|p| (p, open_log(p))) {
        Some((_, Ok(f))) if global.verbose => (BoxMakeWriter::new(Mutex::new(f).and(std::io::stderr)), false),
        Some((_, Ok(f))) => (BoxMakeWriter::new(Mutex::new(f)), false),
        Some((path, Err(e))) => {
            eprintln!("warning: cannot open log file {}: {e}; logging to the terminal", path.display());
            (BoxMakeWriter::new(std::io::stderr), true)
        }
        None => (BoxMakeWriter::new(std::io::stderr), true),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let _ = match global.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
