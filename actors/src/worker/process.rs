//! A child process in its own process group whose output is streamed while it runs (the
//! runtime's executor in `runtime::executor::process` captures output only at the end, which
//! job event data cannot use). The whole group gets `SIGKILL` when the run is stopped, when it
//! times out, when the leader exits (nothing it started in the background outlives the run) and
//! when the future is dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tracing::debug;

/// How long output readers may run on after the group was killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of output.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its stream.
    pub stream: Stream,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// The timeout passed; the group was killed.
    TimedOut,
    /// A stop arrived; the group was killed.
    Stopped,
}

struct Group(Option<i32>);

impl Group {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => debug!(pgid, error = %e, "cannot kill process group"),
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_into<R: AsyncRead + Unpin>(mut r: R, stream: Stream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Chunk { stream, bytes: buf[..n].to_vec() }).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Runs `argv` in a new process group, sending output chunks to `out` as they come, until it
/// exits, `timeout` passes or `stop` turns `true`. Returns after the group is killed and the
/// leader reaped.
///
/// # Errors
/// The spawn error (program missing, not executable, bad working directory).
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
    out: mpsc::Sender<Chunk>,
) -> Result<End, std::io::Error> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn()?;
    let group = Group(child.id().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1));
    let readers: Vec<_> = [
        child.stdout.take().map(|s| tokio::spawn(read_into(s, Stream::Stdout, out.clone()))),
        child.stderr.take().map(|s| tokio::spawn(read_into(s, Stream::Stderr, out.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    drop(out);
    let stopped = async {
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match s.code() {
                    Some(c) => End::Exited(c),
                    None => End::Signaled(s.signal().unwrap_or_default()),
                }
            }
            Err(e) => {
                group.kill();
                return Err(e);
            }
        },
        () = tokio::time::sleep(timeout) => End::TimedOut,
        () = stopped => End::Stopped,
    };
    group.kill();
    if matches!(end, End::TimedOut | End::Stopped) {
        let _ = child.wait().await;
    }
    for mut r in readers {
        if tokio::time::timeout(DRAIN_GRACE, &mut r).await.is_err() {
            r.abort();
        }
    }
    Ok(end)
}
