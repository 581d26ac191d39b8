//! Executors: how one run of a job spec is carried out. Every executor implements
//! [`Executor`]: it runs once with a timeout and a [`Cancel`] signal and answers with an
//! [`Observation`] (the check ran; it passed or failed) or an [`ExecError`] (it timed out, was
//! canceled, or could not run — each executor has its own error enum with a stable
//! [`kind`](ExecError::kind)).
//!
//! Layout: [`command`] runs a local program and [`ssh`] the system `ssh` client, both through
//! [`crate::process_group`] (the whole process group is killed on timeout, cancel or drop) with
//! output kept up to a cap ([`Captured::read_from`]), judged by exit code or, with
//! `"convention": "plugin"`, by the monitoring-plugins convention ([`plugin`]); [`http`] makes one HTTP(S) request; [`tcp`] opens one TCP connection; [`ssh`] runs a
//! command on a remote host with the system `ssh` client and a key.

pub mod command;
pub mod http;
pub mod plugin;
pub mod ssh;
pub mod tcp;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use steward_subjects::config::Executor as ExecutorSpec;

pub use command::{CommandError, CommandExecutor};
pub use http::{HttpError, HttpExecutor};
pub use ssh::{SshError, SshExecutor};
pub use tcp::{TcpError, TcpExecutor};

/// Default cap on captured stdout and stderr, each, in bytes: as much as a result may keep of
/// its output ([`MAX_STORED_OUTPUT`](steward_subjects::api::result::MAX_STORED_OUTPUT); the
/// first 4 KiB inline, the whole in the outputs stream).
pub const DEFAULT_OUTPUT_CAP: usize = steward_subjects::api::result::MAX_STORED_OUTPUT;

/// A cancel signal an execution watches; see [`cancel_pair`].
#[derive(Debug, Clone)]
pub struct Cancel(Option<tokio::sync::watch::Receiver<bool>>);

/// The sending side of a [`Cancel`].
#[derive(Debug)]
pub struct CancelHandle(tokio::sync::watch::Sender<bool>);

/// A linked cancel handle and signal.
#[must_use]
pub fn cancel_pair() -> (CancelHandle, Cancel) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (CancelHandle(tx), Cancel(Some(rx)))
}

impl CancelHandle {
    /// Cancels every execution watching the paired signal.
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

impl Cancel {
    /// A signal that never fires.
    #[must_use]
    pub fn never() -> Self {
        Cancel(None)
    }

    /// Whether cancel has been asked for.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
    }

    /// Resolves when cancel is asked for (or the handle is dropped, which counts as cancel).
    pub async fn cancelled(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                let _ = rx.wait_for(|c| *c).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// What one execution is given.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Longest the run may take.
    pub timeout: Duration,
    /// Fires when the run must stop (spec dropped, runtime stopping).
    pub cancel: Cancel,
}

/// Captured bytes of one output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes, up to the cap.
    pub bytes: Vec<u8>,
    /// Whether more was produced than kept.
    pub truncated: bool,
    /// Bytes produced in total.
    pub total: u64,
}

impl Captured {
    /// Reads `pipe` to its end, keeping the first `cap` bytes and counting all of them.
    pub async fn read_from(mut pipe: crate::process_group::Pipe, cap: usize) -> Captured {
        use tokio::io::AsyncReadExt;
        let mut out = Captured::default();
        let mut buf = vec![0u8; 8192];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.total += n as u64;
                    let room = cap.saturating_sub(out.bytes.len());
                    out.bytes.extend_from_slice(&buf[..n.min(room)]);
                    if n > room {
                        out.truncated = true;
                    }
                }
            }
        }
        out
    }

    /// What a reader left: nothing when there was no pipe, marked truncated when the reader
    /// was cut off after the process group was killed.
    #[must_use]
    pub fn from_drained(d: crate::process_group::Drained<Captured>) -> Captured {
        use crate::process_group::Drained;
        match d {
            Drained::Read(c) => c,
            Drained::Missing => Captured::default(),
            Drained::Cut => Captured { truncated: true, ..Captured::default() },
        }
    }

    /// The captured bytes as text (invalid UTF-8 replaced).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// What a check that ran observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Whether the check passed.
    pub passed: bool,
    /// One-line summary (`exit 0`, `status 200`, `connected`).
    pub message: String,
    /// Exit code of a process.
    pub exit_code: Option<i32>,
    /// Metrics, name → value.
    pub metrics: BTreeMap<String, f64>,
    /// Units of metrics that have one (from a plugin's performance data).
    pub units: BTreeMap<String, String>,
    /// The state the check reported itself (a plugin's exit code), overriding `passed`.
    pub state: Option<steward_subjects::api::result::ResultStatus>,
    /// Standard output, or the response body.
    pub stdout: Captured,
    /// Standard error.
    pub stderr: Captured,
}

/// Why a run produced no [`Observation`].
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The run did not finish within its timeout (and was stopped).
    #[error("timed out after {after:?}")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Output captured before it was stopped.
        partial: Box<Observation>,
    },
    /// The run was canceled (and stopped).
    #[error("canceled")]
    Canceled,
    /// The `command` executor could not run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The `http` executor could not run.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The `tcp` executor could not run.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// The `ssh` executor could not run.
    #[error(transparent)]
    Ssh(#[from] SshError),
}

impl ExecError {
    /// Stable error class reported in results (`timeout`, `canceled`, `spawn`, `connect`, ...).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::Timeout { .. } => "timeout",
            ExecError::Canceled => "canceled",
            ExecError::Command(e) => e.kind(),
            ExecError::Http(e) => e.kind(),
            ExecError::Tcp(e) => e.kind(),
            ExecError::Ssh(e) => e.kind(),
        }
    }
}

/// One way of running a check.
pub trait Executor: Send + Sync + fmt::Debug {
    /// The executor kind (`command`, `http`, `tcp`, `ssh`).
    fn kind(&self) -> &'static str;

    /// Runs the check once. Must stop everything it started when the timeout passes, when
    /// `ctx.cancel` fires, and when the returned future is dropped.
    fn run<'a>(&'a self, ctx: RunContext) -> BoxFuture<'a, Result<Observation, ExecError>>;
}

/// Settings shared by the executors of one runtime.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// Cap on captured stdout and stderr, each.
    pub output_cap: usize,
    /// `known_hosts` file the `ssh` executor uses (host keys are accepted on first use and
    /// checked afterwards).
    pub ssh_known_hosts: PathBuf,
    /// The `ssh` client program.
    pub ssh_program: PathBuf,
}

impl ExecSettings {
    /// Settings keeping `ssh` host keys in `data_dir/known_hosts`.
    #[must_use]
    pub fn in_dir(data_dir: &std::path::Path) -> Self {
        ExecSettings {
            output_cap: DEFAULT_OUTPUT_CAP,
            ssh_known_hosts: data_dir.join("known_hosts"),
            ssh_program: PathBuf::from("ssh"),
        }
    }
}

/// Builds the executor a spec asks for.
///
/// # Errors
/// The executor's own error when its parameters are unusable (empty argv, bad URL, ...).
pub fn build(spec: &ExecutorSpec, settings: &ExecSettings) -> Result<Box<dyn Executor>, ExecError> {
    Ok(match spec {
        ExecutorSpec::Command(c) => Box::new(CommandExecutor::new(c, settings.output_cap)?),
        ExecutorSpec::Http(h) => Box::new(HttpExecutor::new(h, settings.output_cap)?),
        ExecutorSpec::Tcp(t) => Box::new(TcpExecutor::new(t)?),
        ExecutorSpec::Ssh(s) => Box::new(SshExecutor::new(s, settings)?),
    })
}

/// Metrics printed by a check: the last non-empty line of `stdout`, when it is a JSON object,
/// gives its numeric fields (those under a `metrics` object if it has one). Booleans count as
/// 1 and 0.
#[must_use]
pub fn metrics_from_output(stdout: &[u8]) -> BTreeMap<String, f64> {
    let text = String::from_utf8_lossy(stdout);
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(last.trim()) else {
        return BTreeMap::new();
    };
    let source = match obj.get("metrics") {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => obj,
    };
    source
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Number(n) => n.as_f64().map(|f| (k, f)),
            serde_json::Value::Bool(b) => Some((k, if b { 1.0 } else { 0.0 })),
            _ => None,
        })
        .collect()
}

/// Runs `spec` in its own process group until it exits, `ctx`'s timeout passes or its cancel
/// fires, keeping each output stream up to `output_cap`. The observation carries the output,
/// the metrics its stdout gives and `duration_ms`; the caller judges the [`End`].
///
/// # Errors
/// The spawn error (program missing, not executable, bad working directory).
///
/// [`End`]: crate::process_group::End
pub async fn run_process(
    spec: &crate::process_group::GroupSpec<'_>,
    output_cap: usize,
    ctx: RunContext,
) -> Result<(crate::process_group::End, Observation), std::io::Error> {
    let mut cancel = ctx.cancel;
    let run = crate::process_group::run(spec, ctx.timeout, cancel.cancelled(), |_, pipe| {
        Captured::read_from(pipe, output_cap)
    })
    .await?;
    let stdout = Captured::from_drained(run.stdout);
    let mut obs = Observation {
        metrics: metrics_from_output(&stdout.bytes),
        stdout,
        stderr: Captured::from_drained(run.stderr),
        ..Observation::default()
    };
    obs.metrics.insert("duration_ms".into(), millis(run.elapsed));
    Ok((run.end, obs))
}

/// Milliseconds of `d` as a metric value.
#[must_use]
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_come_from_the_last_json_line() {
        let m = metrics_from_output(b"hello\n{\"a\": 1, \"b\": 2.5, \"s\": \"x\", \"ok\": true}\n\n");
        assert_eq!(m.get("a"), Some(&1.0));
        assert_eq!(m.get("b"), Some(&2.5));
        assert_eq!(m.get("ok"), Some(&1.0));
        assert!(!m.contains_key("s"));
        let m = metrics_from_output(b"{\"metrics\": {\"load\": 0.5}, \"other\": 3}");
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("load"), Some(&0.5));
        assert!(metrics_from_output(b"not json\n").is_empty());
        assert!(metrics_from_output(b"[1,2]").is_empty());
    }
}
