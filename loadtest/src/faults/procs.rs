//! `steward` processes a fault scenario starts and signals: [`StewardProc::kill9`] (SIGKILL),
//! [`StewardProc::pause`] / [`StewardProc::resume`] (SIGSTOP / SIGCONT) and
//! [`StewardProc::restart`] (the same command again). Output goes to `<dir>/<name>.log`, appended
//! across restarts, so a scenario's folder keeps what each process said.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::env::steward_binary;

/// A `steward` process (any role); killed when dropped.
#[derive(Debug)]
pub struct StewardProc {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl StewardProc {
    /// Starts `steward <args>` with `env` added, logging to `<dir>/<name>.log`.
    ///
    /// # Errors
    /// When the binary is missing or cannot start.
    pub fn start(name: &str, dir: &Path, args: &[String], env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut p = StewardProc {
            name: name.to_owned(),
            args: args.to_vec(),
            env: env.to_vec(),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = steward_binary()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = tokio::process::Command::new(&bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("STEWARD_LOG", std::env::var("STEWARD_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} {}", bin.display(), self.args.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of its log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// SIGKILL, then reaps it.
    ///
    /// # Errors
    /// When it is not running.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)?;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait().await;
        }
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen (its connections open, its timers stopped).
    ///
    /// # Errors
    /// When it is not running.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`StewardProc::pause`].
    ///
    /// # Errors
    /// When it is not running.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM and waits up to `grace` for it to end, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if self.signal(Signal::SIGTERM).is_ok() {
            if let Some(c) = self.child.as_mut() {
                if tokio::time::timeout(grace, c.wait()).await.is_ok() {
                    self.child = None;
                    return;
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the same command again (after [`StewardProc::kill9`] or an exit).
    ///
    /// # Errors
    /// When it is still running or cannot start.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if c.try_wait()?.is_none() {
                anyhow::bail!("{} is still running", self.name);
            }
        }
        self.spawn()
    }

    /// Whether it has exited (and how), without waiting.
    ///
    /// # Errors
    /// When the status cannot be read.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }
}
