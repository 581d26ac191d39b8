//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::binary::INSTALL_HINT;

/// Why one readiness check of a starting server failed.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The client port does not accept TCP connections yet.
    #[error("client port {port} not accepting: {source}")]
    ClientPort {
        /// The client port.
        port: u16,
        /// The connect error.
        source: std::io::Error,
    },
    /// The health endpoint could not be asked.
    #[error(transparent)]
    Monitor(Box<DeployError>),
    /// The health endpoint answered with a status other than 200.
    #[error("healthz answered {status}: {body}")]
    Unhealthy {
        /// The HTTP status.
        status: u16,
        /// The response body, trimmed.
        body: String,
    },
}

/// Everything that can go wrong while finding, configuring, starting or stopping `nats-server`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No `nats-server` binary was found anywhere Steward looks.
    #[error("nats-server not found; searched: {}; {INSTALL_HINT}", searched.join(", "))]
    NotFound {
        /// Every place that was searched, in order.
        searched: Vec<String>,
    },

    /// `STEWARD_NATS_SERVER` is set but does not name an executable file.
    #[error("STEWARD_NATS_SERVER={} is not an executable file; {INSTALL_HINT}", path.display())]
    InvalidEnvBinary {
        /// The value of `STEWARD_NATS_SERVER`.
        path: PathBuf,
    },

    /// The binary reports a version Steward cannot use.
    #[error("{} is nats-server {version}, Steward needs 2.10 or newer; {INSTALL_HINT}", path.display())]
    UnsupportedVersion {
        /// The binary that was probed.
        path: PathBuf,
        /// The version it reported.
        version: String,
    },

    /// Running `nats-server --version` did not give a version.
    #[error("cannot read the version of {}: {reason}", path.display())]
    VersionProbe {
        /// The binary that was probed.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server could not bind one of its ports (another process took it).
    #[error("nats-server {name} could not bind a port (address already in use); log tail:\n{log_tail}")]
    AddressInUse {
        /// The server name.
        name: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// The server process exited while starting.
    #[error("nats-server {name} exited during start-up ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The server name.
        name: String,
        /// The exit status.
        status: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// The server did not become ready in time.
    #[error("nats-server {name} not ready after {timeout:?} ({reason}); log tail:\n{log_tail}")]
    StartTimeout {
        /// The server name.
        name: String,
        /// How long was waited.
        timeout: Duration,
        /// The last readiness check that failed.
        reason: NotReady,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// A monitoring endpoint request failed or answered something unexpected.
    #[error("monitoring request {url} failed: {reason}")]
    Monitor {
        /// The requested URL.
        url: String,
        /// What went wrong.
        reason: String,
    },

    /// A condition polled with [`crate::eventually`] did not hold in time.
    #[error("condition not met after {timeout:?}: {last_error}")]
    Timeout {
        /// How long was waited.
        timeout: Duration,
        /// The error returned by the last attempt.
        last_error: String,
    },

    /// A file holding a secret is missing, malformed or readable by others.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretFileError),

    /// A topology was used in a way it does not support (e.g. a node index out of range).
    #[error("invalid topology operation: {0}")]
    Topology(String),
}

impl DeployError {
    /// Wraps an I/O error with a short lowercase description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
