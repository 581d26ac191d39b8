//! Runs a child process in its own process group (`setpgid(0, 0)` through
//! [`CommandExt::process_group`](std::os::unix::process::CommandExt::process_group)) and kills
//! the whole group with `SIGKILL` when the run times out, is canceled, when the leader exits
//! (leftover background processes of a check do not outlive it), and when the run's future is
//! dropped. Stdout and stderr are drained to the end and kept up to a cap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use super::{Captured, RunContext};

/// How long the output readers may run on after the process group was killed (a process that
/// left the group could hold a pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// Extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory, if any.
    pub cwd: Option<&'a Path>,
    /// Cap on each captured stream.
    pub output_cap: usize,
}

/// How the process ended.
#[derive(Debug)]
pub enum ProcessEnd {
    /// It exited by itself.
    Exited(ExitStatus),
    /// The timeout passed; the group was killed.
    TimedOut,
    /// Cancel fired; the group was killed.
    Canceled,
}

/// A finished process run.
#[derive(Debug)]
pub struct ProcessRun {
    /// How it ended.
    pub end: ProcessEnd,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Wall time from spawn to end.
    pub elapsed: Duration,
}

/// Kills a process group when dropped (unless disarmed).
#[derive(Debug)]
pub struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn new(pid: Option<u32>) -> Self {
        GroupGuard { pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) }
    }

    /// Sends `SIGKILL` to the whole group now (nothing when it is already gone).
    pub fn kill(&self) {
        if let Some(pgid) = self.pgid {
            match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                Ok(()) => debug!(pgid, "process group killed"),
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => debug!(pgid, error = %e, "cannot kill process group"),
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn capture<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> Captured {
    let mut out = Captured::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
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

async fn join_capture(task: Option<tokio::task::JoinHandle<Captured>>) -> Captured {
    let Some(mut task) = task else {
        return Captured::default();
    };
    match tokio::time::timeout(DRAIN_GRACE, &mut task).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => Captured::default(),
        Err(_) => {
            task.abort();
            Captured { truncated: true, ..Captured::default() }
        }
    }
}

/// Spawns `spec` in a new process group and waits for it, the timeout or cancel.
///
/// # Errors
/// The spawn error (program missing, not executable, bad working directory).
pub async fn run(spec: &ProcessSpec<'_>, ctx: RunContext) -> Result<ProcessRun, std::io::Error> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    let started = tokio::time::Instant::now();
    let mut child = cmd.spawn()?;
    let guard = GroupGuard::new(child.id());
    let cap = spec.output_cap;
    let out = child.stdout.take().map(|s| tokio::spawn(capture(s, cap)));
    let err = child.stderr.take().map(|s| tokio::spawn(capture(s, cap)));
    let mut cancel = ctx.cancel;
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => ProcessEnd::Exited(s),
            Err(e) => {
                guard.kill();
                return Err(e);
            }
        },
        () = tokio::time::sleep(ctx.timeout) => ProcessEnd::TimedOut,
        () = cancel.cancelled() => ProcessEnd::Canceled,
    };
    // Kill the group in every case: on timeout and cancel to stop the check, on a normal exit
    // to stop whatever it left running in the background.
    guard.kill();
    if !matches!(end, ProcessEnd::Exited(_)) {
        // Reap the leader so no zombie is left behind.
        let _ = child.wait().await;
    }
    let elapsed = started.elapsed();
    let stdout = join_capture(out).await;
    let stderr = join_capture(err).await;
    drop(guard);
    Ok(ProcessRun { end, stdout, stderr, elapsed })
}
