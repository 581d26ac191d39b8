//! The `command` executor: runs a local program (no shell) with extra environment and a working
//! directory, in its own process group. Exit 0 passes, any other exit fails; the last stdout
//! line, when it is a JSON object, gives metrics. With `"convention": "plugin"` the run is
//! judged as a monitoring plugin instead ([`super::plugin`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use futures::FutureExt;
use steward_subjects::config::{CommandExecutor as CommandSpec, OutputConvention};

use super::{run_process, ExecError, Executor, Observation, RunContext};
use crate::process_group::{End, GroupSpec};

/// Why a command could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The spec has no program.
    #[error("command has an empty argv")]
    EmptyArgv,
    /// The program does not exist.
    #[error("program {program:?} not found")]
    NotFound {
        /// The program.
        program: String,
    },
    /// The program is not executable (or the working directory not accessible).
    #[error("permission denied running {program:?}")]
    PermissionDenied {
        /// The program.
        program: String,
    },
    /// The working directory does not exist.
    #[error("working directory {cwd:?} does not exist")]
    BadCwd {
        /// The directory.
        cwd: String,
    },
    /// Any other spawn or wait failure.
    #[error("cannot run {program:?}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// The process was killed by a signal it did not get from us.
    #[error("{program:?} was killed by signal {signal}")]
    Signaled {
        /// The program.
        program: String,
        /// The signal number.
        signal: i32,
    },
}

impl CommandError {
    /// Stable error class.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::EmptyArgv => "invalid",
            CommandError::NotFound { .. } => "not_found",
            CommandError::PermissionDenied { .. } => "permission",
            CommandError::BadCwd { .. } => "bad_cwd",
            CommandError::Spawn { .. } => "spawn",
            CommandError::Signaled { .. } => "signaled",
        }
    }
}

/// Runs a local program.
#[derive(Debug, Clone)]
pub struct CommandExecutor {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    convention: OutputConvention,
    output_cap: usize,
}

impl CommandExecutor {
    /// An executor for `spec`, keeping up to `output_cap` bytes of each output stream.
    ///
    /// # Errors
    /// [`CommandError::EmptyArgv`] when there is no program.
    pub fn new(spec: &CommandSpec, output_cap: usize) -> Result<Self, CommandError> {
        if spec.argv.first().is_none_or(String::is_empty) {
            return Err(CommandError::EmptyArgv);
        }
        Ok(CommandExecutor {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: (!spec.cwd.is_empty()).then(|| PathBuf::from(&spec.cwd)),
            convention: spec.convention,
            output_cap,
        })
    }

    fn program(&self) -> String {
        self.argv.first().cloned().unwrap_or_default()
    }

    async fn execute(&self, ctx: RunContext) -> Result<Observation, ExecError> {
        let timeout = ctx.timeout;
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(CommandError::BadCwd { cwd: cwd.display().to_string() }.into());
            }
        }
        let spec = GroupSpec { argv: &self.argv, env: &self.env, cwd: self.cwd.as_deref() };
        let (end, mut obs) = run_process(&spec, self.output_cap, ctx).await.map_err(|e| {
            let program = self.program();
            match e.kind() {
                std::io::ErrorKind::NotFound => CommandError::NotFound { program },
                std::io::ErrorKind::PermissionDenied => CommandError::PermissionDenied { program },
                _ => CommandError::Spawn { program, reason: e.to_string() },
            }
        })?;
        match end {
            End::Exited(status) => {
                use std::os::unix::process::ExitStatusExt;
                match status.code() {
                    Some(code) if self.convention == OutputConvention::Plugin => {
                        super::plugin::judge(&mut obs, code);
                        Ok(obs)
                    }
                    Some(code) => {
                        obs.exit_code = Some(code);
                        obs.passed = code == 0;
                        obs.message = format!("exit {code}");
                        Ok(obs)
                    }
                    None => Err(CommandError::Signaled {
                        program: self.program(),
                        signal: status.signal().unwrap_or_default(),
                    }
                    .into()),
                }
            }
            End::TimedOut => {
                obs.message = format!("killed after {timeout:?}");
                Err(ExecError::Timeout { after: timeout, partial: Box::new(obs) })
            }
            End::Stopped => Err(ExecError::Canceled),
        }
    }
}

impl Executor for CommandExecutor {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn run<'a>(&'a self, ctx: RunContext) -> BoxFuture<'a, Result<Observation, ExecError>> {
        self.execute(ctx).boxed()
    }
}
