//! The `ssh` executor: agentless checks. Runs a command on a remote host with the system
//! OpenSSH client and a private key (`BatchMode`, no password prompts), in its own process
//! group like the `command` executor. Host keys are accepted on first use into the runtime's
//! own `known_hosts` file and checked on every later run. The remote exit code decides pass or
//! fail; the client's own failures (exit 255) are classified from its error output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use futures::FutureExt;
use steward_subjects::config::SshExecutor as SshSpec;

use super::{run_process, ExecError, ExecSettings, Executor, Observation, RunContext};
use crate::process_group::{End, GroupSpec};

/// Exit code the OpenSSH client uses for its own errors.
const SSH_CLIENT_ERROR: i32 = 255;

/// Why an ssh check could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// Host, user or command missing, or a value that would be read as an option.
    #[error("invalid ssh target: {0}")]
    InvalidTarget(String),
    /// The key file does not exist.
    #[error("ssh key {0:?} not found")]
    KeyMissing(String),
    /// The `ssh` client could not be started.
    #[error("cannot start the ssh client: {0}")]
    Spawn(String),
    /// The connection failed (refused, unreachable, name not resolved, closed).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server refused the key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server's host key does not match the known one.
    #[error("host key verification failed: {0}")]
    HostKey(String),
    /// Any other client error.
    #[error("ssh failed: {0}")]
    Other(String),
}

impl SshError {
    /// Stable error class.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SshError::InvalidTarget(_) => "invalid",
            SshError::KeyMissing(_) => "key_missing",
            SshError::Spawn(_) => "spawn",
            SshError::Connect(_) => "connect",
            SshError::Auth(_) => "auth",
            SshError::HostKey(_) => "host_key",
            SshError::Other(_) => "ssh",
        }
    }

    fn classify(stderr: &str) -> Self {
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        let lower = stderr.to_ascii_lowercase();
        if lower.contains("host key verification failed") || lower.contains("remote host identification has changed") {
            SshError::HostKey(line)
        } else if lower.contains("permission denied") || lower.contains("too many authentication failures") {
            SshError::Auth(line)
        } else if [
            "connection refused",
            "timed out",
            "no route",
            "could not resolve",
            "connection closed",
            "network is unreachable",
            "connection reset",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            SshError::Connect(line)
        } else {
            SshError::Other(line)
        }
    }
}

fn bad(s: &str) -> bool {
    s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@')
}

/// Runs a command on a remote host over SSH.
#[derive(Debug, Clone)]
pub struct SshExecutor {
    argv: Vec<String>,
    key_path: Option<PathBuf>,
    convention: steward_subjects::config::OutputConvention,
    output_cap: usize,
}

impl SshExecutor {
    /// An executor for `spec` using the client and `known_hosts` file of `settings`.
    ///
    /// # Errors
    /// [`SshError::InvalidTarget`] when host, user or command is unusable.
    pub fn new(spec: &SshSpec, settings: &ExecSettings) -> Result<Self, SshError> {
        if bad(&spec.host) || bad(&spec.user) {
            return Err(SshError::InvalidTarget(format!("host {:?}, user {:?}", spec.host, spec.user)));
        }
        if spec.command.trim().is_empty() {
            return Err(SshError::InvalidTarget("empty command".into()));
        }
        let port = if spec.port == 0 { 22 } else { spec.port };
        let mut argv = vec![
            settings.ssh_program.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", settings.ssh_known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-T".into(),
        ];
        let key_path = (!spec.key_path.is_empty()).then(|| PathBuf::from(&spec.key_path));
        if let Some(key) = &key_path {
            argv.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into(), key.display().to_string()]);
        }
        argv.extend(["-l".into(), spec.user.clone(), spec.host.clone(), "--".into(), spec.command.clone()]);
        Ok(SshExecutor { argv, key_path, convention: spec.convention, output_cap: settings.output_cap })
    }

    /// The client command line this executor runs (for `--explain` and tests).
    #[must_use]
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    async fn execute(&self, ctx: RunContext) -> Result<Observation, ExecError> {
        if let Some(key) = &self.key_path {
            if !key.is_file() {
                return Err(SshError::KeyMissing(key.display().to_string()).into());
            }
        }
        let timeout = ctx.timeout;
        let env = BTreeMap::new();
        let spec = GroupSpec { argv: &self.argv, env: &env, cwd: None };
        let (end, mut obs) =
            run_process(&spec, self.output_cap, ctx).await.map_err(|e| SshError::Spawn(e.to_string()))?;
        match end {
            End::Exited(status) => match status.code() {
                Some(SSH_CLIENT_ERROR) => Err(SshError::classify(&obs.stderr.text()).into()),
                Some(code) if self.convention == steward_subjects::config::OutputConvention::Plugin => {
                    super::plugin::judge(&mut obs, code);
                    Ok(obs)
                }
                Some(code) => {
                    obs.exit_code = Some(code);
                    obs.passed = code == 0;
                    obs.message = format!("remote exit {code}");
                    Ok(obs)
                }
                None => Err(SshError::Other("ssh client killed by a signal".into()).into()),
            },
            End::TimedOut => {
                obs.message = format!("killed after {timeout:?}");
                Err(ExecError::Timeout { after: timeout, partial: Box::new(obs) })
            }
            End::Stopped => Err(ExecError::Canceled),
        }
    }
}

impl Executor for SshExecutor {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn run<'a>(&'a self, ctx: RunContext) -> BoxFuture<'a, Result<Observation, ExecError>> {
        self.execute(ctx).boxed()
    }
}
