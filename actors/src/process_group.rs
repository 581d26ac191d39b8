//! Runs a child process in its own process group (`setpgid(0, 0)` through
//! [`CommandExt::process_group`](std::os::unix::process::CommandExt::process_group)) and kills
//! the whole group with `SIGKILL` when it times out, when it is stopped, when the leader exits
//! (nothing it started in the background outlives the run) and when the run's future is dropped.
//!
//! What happens to the output is the caller's: [`run`] hands each pipe to a reader the caller
//! gives, on its own task. The assessment runtime's executors keep the first bytes up to a cap
//! (`runtime::executor::Captured::read_from`); the edge worker streams [`Chunk`]s as job events
//! while the process runs ([`forward`]). After the group is killed the readers get
//! [`DRAIN_GRACE`] to finish: a process that left the group could hold a pipe open forever.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

/// How long output readers may run on after the process group was killed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct GroupSpec<'a> {
    /// Program and arguments (`argv[0]` looked up in `PATH`).
    pub argv: &'a [String],
    /// Extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory, if any.
    pub cwd: Option<&'a Path>,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The leader exited by itself (with a code, or killed by a signal not ours).
    Exited(ExitStatus),
    /// The timeout passed; the group was killed.
    TimedOut,
    /// The stop future resolved; the group was killed.
    Stopped,
}

/// Which output stream a reader or a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of output, as [`forward`] sends it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its stream.
    pub stream: Stream,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// One of the child's output pipes, as a reader receives it.
pub type Pipe = Box<dyn AsyncRead + Send + Unpin>;

/// How an output reader finished.
#[derive(Debug)]
pub enum Drained<T> {
    /// It read to the end and returned this.
    Read(T),
    /// There was no pipe, or the reader task panicked.
    Missing,
    /// It was still reading [`DRAIN_GRACE`] after the group was killed and was aborted.
    Cut,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished<T> {
    /// How it ended.
    pub end: End,
    /// What the stdout reader returned.
    pub stdout: Drained<T>,
    /// What the stderr reader returned.
    pub stderr: Drained<T>,
    /// Wall time from spawn to end (reading the rest of the output not included).
    pub elapsed: Duration,
}

/// Kills a process group when dropped.
#[derive(Debug)]
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn new(pid: Option<u32>) -> Self {
        GroupGuard { pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) }
    }

    /// Sends `SIGKILL` to the whole group now (nothing when it is already gone).
    fn kill(&self) {
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

/// Sends everything `pipe` yields to `tx` as [`Chunk`]s of at most 8 KiB, until the pipe ends
/// or the receiver is gone.
pub async fn forward(mut pipe: Pipe, stream: Stream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Chunk { stream, bytes: buf[..n].to_vec() }).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn drain<T>(task: Option<JoinHandle<T>>) -> Drained<T> {
    let Some(mut task) = task else {
        return Drained::Missing;
    };
    match tokio::time::timeout(DRAIN_GRACE, &mut task).await {
        Ok(Ok(t)) => Drained::Read(t),
        Ok(Err(_)) => Drained::Missing,
        Err(_) => {
            task.abort();
            Drained::Cut
        }
    }
}

/// Spawns `spec` in a new process group, gives its stdout and stderr to `read` (each on its
/// own task) and waits for the leader to exit, `timeout` to pass or `stop` to resolve. The
/// group is killed in every case, the leader reaped, and the readers drained before it returns.
/// `read` is dropped once both readers are spawned, so a channel sender it holds closes when
/// the readers end.
///
/// # Errors
/// The spawn error (program missing, not executable, bad working directory), or a failed wait.
pub async fn run<T, F, Fut>(
    spec: &GroupSpec<'_>,
    timeout: Duration,
    stop: impl Future<Output = ()>,
    mut read: F,
) -> Result<Finished<T>, std::io::Error>
where
    F: FnMut(Stream, Pipe) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
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
    let stdout = child.stdout.take().map(|p| tokio::spawn(read(Stream::Stdout, Box::new(p))));
    let stderr = child.stderr.take().map(|p| tokio::spawn(read(Stream::Stderr, Box::new(p))));
    drop(read);
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => End::Exited(s),
            Err(e) => {
                guard.kill();
                return Err(e);
            }
        },
        () = tokio::time::sleep(timeout) => End::TimedOut,
        () = stop => End::Stopped,
    };
    // Kill the group in every case: on timeout and stop to end the run, on a normal exit to
    // end whatever it left running in the background.
    guard.kill();
    if !matches!(end, End::Exited(_)) {
        // Reap the leader so no zombie is left behind.
        let _ = child.wait().await;
    }
    let elapsed = started.elapsed();
    let stdout = drain(stdout).await;
    let stderr = drain(stderr).await;
    drop(guard);
    Ok(Finished { end, stdout, stderr, elapsed })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn read_all(mut pipe: Pipe) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn output_and_exit_status_come_back() {
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let argv = argv(&["sh", "-c", "echo $GREETING; echo oops >&2; exit 3"]);
        let spec = GroupSpec { argv: &argv, env: &env, cwd: None };
        let done = run(&spec, Duration::from_secs(10), std::future::pending(), |_, p| read_all(p)).await.unwrap();
        assert_eq!(done.end, End::Exited(done_status(3)));
        assert!(matches!(done.stdout, Drained::Read(ref b) if b == b"hi\n"), "{:?}", done.stdout);
        assert!(matches!(done.stderr, Drained::Read(ref b) if b == b"oops\n"), "{:?}", done.stderr);
    }

    fn done_status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    #[tokio::test]
    async fn stop_and_timeout_kill_the_group_and_its_background_children() {
        let env = BTreeMap::new();
        let argv = argv(&["sh", "-c", "sleep 600 & sleep 600"]);
        let spec = GroupSpec { argv: &argv, env: &env, cwd: None };
        let begun = std::time::Instant::now();
        let done = run(&spec, Duration::from_millis(200), std::future::pending(), |_, p| read_all(p)).await.unwrap();
        assert_eq!(done.end, End::TimedOut);
        // The background `sleep` held the pipes open: only the kill of the group ends the readers.
        assert!(matches!(done.stdout, Drained::Read(_)), "{:?}", done.stdout);
        assert!(begun.elapsed() < DRAIN_GRACE, "{:?}", begun.elapsed());
        let stop = tokio::time::sleep(Duration::from_millis(100));
        let done = run(&spec, Duration::from_secs(60), stop, |_, p| read_all(p)).await.unwrap();
        assert_eq!(done.end, End::Stopped);
    }

    #[tokio::test]
    async fn forward_streams_chunks_and_closes_with_the_readers() {
        let env = BTreeMap::new();
        let argv = argv(&["sh", "-c", "echo out; echo err >&2"]);
        let spec = GroupSpec { argv: &argv, env: &env, cwd: None };
        let (tx, mut rx) = mpsc::channel(8);
        let done = run(&spec, Duration::from_secs(10), std::future::pending(), move |s, p| forward(p, s, tx.clone()))
            .await
            .unwrap();
        assert!(matches!(done.end, End::Exited(s) if s.success()));
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.push((c.stream, c.bytes));
        }
        got.sort_by_key(|(s, _)| *s == Stream::Stderr);
        assert_eq!(got, [(Stream::Stdout, b"out\n".to_vec()), (Stream::Stderr, b"err\n".to_vec())]);
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let env = BTreeMap::new();
        let argv = argv(&["/no/such/program"]);
        let spec = GroupSpec { argv: &argv, env: &env, cwd: None };
        let err = run(&spec, Duration::from_secs(1), std::future::pending(), |_, p| read_all(p)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let empty = GroupSpec { argv: &[], env: &env, cwd: None };
        let err = run(&empty, Duration::from_secs(1), std::future::pending(), |_, p| read_all(p)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
