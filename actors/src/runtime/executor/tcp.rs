//! The `tcp` executor: opens one TCP connection and reports how long it took. Connected
//! passes; refused and unreachable are failures of the check, not errors of the runtime, so
//! they are observations that did not pass, with the error class in the message.

use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use steward_subjects::config::TcpExecutor as TcpSpec;

use super::{millis, ExecError, Executor, Observation, RunContext};

/// Why a TCP check could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// Host empty or port zero.
    #[error("invalid tcp target {host:?}:{port}")]
    InvalidTarget {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host:?}: {reason}")]
    Resolve {
        /// Host.
        host: String,
        /// Why.
        reason: String,
    },
}

impl TcpError {
    /// Stable error class.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TcpError::InvalidTarget { .. } => "invalid",
            TcpError::Resolve { .. } => "resolve",
        }
    }
}

/// Opens one TCP connection.
#[derive(Debug, Clone)]
pub struct TcpExecutor {
    host: String,
    port: u16,
}

impl TcpExecutor {
    /// An executor for `spec`.
    ///
    /// # Errors
    /// [`TcpError::InvalidTarget`] for an empty host or port 0.
    pub fn new(spec: &TcpSpec) -> Result<Self, TcpError> {
        if spec.host.trim().is_empty() || spec.port == 0 {
            return Err(TcpError::InvalidTarget { host: spec.host.clone(), port: spec.port });
        }
        Ok(TcpExecutor { host: spec.host.clone(), port: spec.port })
    }

    async fn execute(&self, ctx: RunContext) -> Result<Observation, ExecError> {
        let mut cancel = ctx.cancel;
        let work = async {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| TcpError::Resolve { host: self.host.clone(), reason: e.to_string() })?
                .collect();
            if addrs.is_empty() {
                return Err(TcpError::Resolve { host: self.host.clone(), reason: "no addresses".into() }.into());
            }
            let started = Instant::now();
            let mut last = None;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let elapsed = started.elapsed();
                        drop(stream);
                        let mut obs = Observation {
                            passed: true,
                            message: format!("connected to {addr}"),
                            ..Observation::default()
                        };
                        obs.metrics.insert("latency_ms".into(), millis(elapsed));
                        return Ok(obs);
                    }
                    Err(e) => last = Some((addr, e)),
                }
            }
            let (addr, e) = match last {
                Some(x) => x,
                None => return Err(TcpError::Resolve { host: self.host.clone(), reason: "no addresses".into() }.into()),
            };
            let class = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::TimedOut => "timeout",
                _ => "unreachable",
            };
            Ok(Observation {
                passed: false,
                message: format!("{class}: cannot connect to {addr}: {e}"),
                ..Observation::default()
            })
        };
        tokio::select! {
            r = work => r,
            () = tokio::time::sleep(ctx.timeout) => Err(ExecError::Timeout { after: ctx.timeout, partial: Box::default() }),
            () = cancel.cancelled() => Err(ExecError::Canceled),
        }
    }
}

impl Executor for TcpExecutor {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn run<'a>(&'a self, ctx: RunContext) -> BoxFuture<'a, Result<Observation, ExecError>> {
        self.execute(ctx).boxed()
    }
}
