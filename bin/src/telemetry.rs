//! Tracing set-up: an env filter (`STEWARD_LOG`, then `RUST_LOG`, default `info`) and text or
//! JSON lines on stderr, or appended to a log file (`--log-file`, or the default file of
//! `steward up`) and, with `-v`, on stderr too; with an OTLP endpoint (`--otlp-endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), also an OpenTelemetry layer exporting Steward's spans over
//! OTLP/HTTP (protobuf), and W3C trace context in NATS headers (`steward_subjects::trace`).
//! Without an endpoint no exporter exists and no span is made.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::{Command, Global, LogFormat};

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not exported yet.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (a no-op without one). Call it
    /// before the process exits: a CLI command right after its request, a long-running role
    /// after its shutdown signal.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: traces not all exported: {e}");
            }
        }
    }
}

/// The OpenTelemetry service name of a command: one per role, `steward-cli` for the rest.
#[must_use]
pub fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Up(_) => "steward-up",
        Command::Server(_) | Command::Node(_) => "steward-hub",
        Command::Edge(_) => "steward-edge",
        Command::Runtime(_) => "steward-runtime",
        _ => "steward-cli",
    }
}

/// The root span of a CLI command (`steward apply`, `steward run`, ...), whose context its
/// requests carry; none for the long-running roles and while tracing is off.
#[must_use]
pub fn command_span(command: &Command, name: Option<&str>) -> tracing::Span {
    if service_name(command) != "steward-cli" {
        return tracing::Span::none();
    }
    let name = format!("steward {}", name.unwrap_or("command"));
    steward_subjects::trace::follow(None, || tracing::info_span!("command", otel.name = %name, otel.kind = "client"))
}

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

/// The log writer: `file` when given (and stderr too with `-v`), else stderr; and whether it
/// is a terminal stream (ANSI colours). A file that cannot be opened is reported and logs go
/// to stderr.
fn writer(global: &Global, file: Option<&Path>) -> (BoxMakeWriter, bool) {
    match file.map(|p| (p, open_log(p))) {
        Some((_, Ok(f))) if global.verbose => (BoxMakeWriter::new(Mutex::new(f).and(std::io::stderr)), false),
        Some((_, Ok(f))) => (BoxMakeWriter::new(Mutex::new(f)), false),
        Some((path, Err(e))) => {
            eprintln!("warning: cannot open log file {}: {e}; logging to the terminal", path.display());
            (BoxMakeWriter::new(std::io::stderr), true)
        }
        None => (BoxMakeWriter::new(std::io::stderr), true),
    }
}

/// Installs the global subscriber, writing logs to `file` when given, with the OTLP exporter
/// when an endpoint is set.
pub fn init(global: &Global, service: &'static str, file: Option<&Path>) -> Telemetry {
    let filter = EnvFilter::try_from_env("STEWARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let (writer, ansi) = writer(global, file);
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer);
    let fmt = match global.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let endpoint = global.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty());
    let provider = endpoint.and_then(|e| match tracer_provider(e, service) {
        Ok(p) => Some(p),
        Err(err) => {
            eprintln!("warning: traces are not exported: {err}");
            None
        }
    });
    let otel = provider.as_ref().map(|p| {
        // Only Steward's own spans and the events inside them are exported (a target prefix:
        // `steward` covers `steward_actors` and `steward_subjects`).
        let targets = Targets::new().with_target("steward", Level::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("steward")).with_filter(targets)
    });
    let installed = tracing_subscriber::registry().with(fmt).with(otel).try_init().is_ok();
    if installed && provider.is_some() {
        steward_subjects::trace::enable();
    }
    Telemetry { provider }
}

/// The tracer provider exporting to `endpoint` (the collector's base URL, as in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go to `<endpoint>/v1/traces`) with a batch processor.
fn tracer_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    let resource = Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
