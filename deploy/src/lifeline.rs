//! Child processes that end with their parent, even when the parent is killed with SIGKILL.
//!
//! A process started through a [`Lifeline`] is launched as `<launcher> <args> --parent <pid> --
//! <program> <program args>`: the launcher (the `steward` binary's hidden `lifeline` command)
//! asks the kernel for a parent-death signal (`PR_SET_PDEATHSIG`), checks that its parent is
//! still the process that started it (the parent may have died before the request took
//! effect), and then replaces itself with the program ([`exec_tied_to_parent`]). The program
//! keeps the launcher's pid, so the parent sees and signals it as its own child, and the
//! signal survives the `execve`.
//!
//! The kernel sends the signal when the *thread* that spawned the child ends; Steward spawns
//! its children from runtime worker threads, which live as long as the process.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

/// The command prefix that ties a child's life to this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifeline {
    /// The launcher executable.
    pub launcher: PathBuf,
    /// Arguments before `--parent <pid> -- <program>` (the launcher's subcommand).
    pub args: Vec<OsString>,
}

impl Lifeline {
    /// A lifeline through this process's own executable run as `<exe> <subcommand>`.
    ///
    /// # Errors
    /// When the path of the running executable cannot be read.
    pub fn current_exe(subcommand: &str) -> std::io::Result<Self> {
        Ok(Self { launcher: std::env::current_exe()?, args: vec![OsString::from(subcommand)] })
    }

    /// A command that runs `program` tied to this process's life.
    #[must_use]
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.launcher);
        cmd.args(&self.args).arg("--parent").arg(std::process::id().to_string()).arg("--").arg(program);
        cmd
    }
}

/// Why [`exec_tied_to_parent`] did not run the program.
#[derive(Debug, thiserror::Error)]
pub enum LifelineError {
    /// The parent-death signal could not be requested.
    #[error("cannot request a parent-death signal: {0}")]
    Prctl(nix::Error),
    /// The parent had already ended when the signal was requested.
    #[error("parent process {expected} has already ended (parent is now {actual})")]
    ParentGone {
        /// The pid the launcher was given.
        expected: u32,
        /// The launcher's parent now.
        actual: i32,
    },
    /// The program could not be executed.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Requests `signal` at the death of the parent `parent`, then replaces this process with
/// `program args`. Returns only when that fails.
pub fn exec_tied_to_parent(parent: u32, signal: Signal, program: &OsStr, args: &[OsString]) -> LifelineError {
    use std::os::unix::process::CommandExt as _;
    if let Err(e) = nix::sys::prctl::set_pdeathsig(signal) {
        return LifelineError::Prctl(e);
    }
    let actual = nix::unistd::getppid().as_raw();
    if u32::try_from(actual).ok() != Some(parent) {
        return LifelineError::ParentGone { expected: parent, actual };
    }
    let source = std::process::Command::new(program).args(args).exec();
    LifelineError::Exec { program: program.to_string_lossy().into_owned(), source }
}
