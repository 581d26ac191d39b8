//! One job on the edge, from work order to `last` event: verify the hub's signature for this
//! worker's own account and host and the order's run id, attempt and deadline, and refuse an
//! order past its deadline (before anything runs), fetch a playbook given by reference, emit
//! `start`, run the command or the playbook while streaming its output as events, store large
//! output in the artifacts object store, and end with a `last` event carrying the outcome.
//!
//! A playbook job whose `playbook_ref` is `sha256:<hex>` and whose content is empty is fetched
//! from the config manager (`config.playbook`) through the worker's hub connection (through the
//! leaf link on an edge site; the host's credentials allow that one request). The signature
//! covers the reference, so the reference pins the bytes: the fetched bytes must hash to it,
//! else the job is refused before anything runs, as it is when the reference is unknown, the
//! fetch fails, or the playbook is larger than `MAX_PLAYBOOK_BYTES`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config_manager::client::ConfigClient;
use async_nats::jetstream;
use sha2::{Digest, Sha256};
use steward_subjects::api::config::PlaybookRef;
use steward_subjects::api::run::{ArtifactRef, EventKind, JobKind, RunEvent, RunStatus, WorkOrder, MAX_PLAYBOOK_BYTES};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::streams::ARTIFACTS_STORE;
use steward_subjects::subject::run_artifact_name;
use steward_subjects::ErrorCode;
use steward_subjects::{HostId, Subjects};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::events::EventSink;
use crate::process_group::{self, Chunk, End, GroupSpec, Stream};
use crate::signing::OrderBinding;
use crate::spec_signing::TrustedKeys;

/// Output streamed as events, per job; the rest only goes to the artifact.
pub const STREAM_CAP: usize = 256 * 1024;
/// Largest output kept for the artifact.
pub const ARTIFACT_CAP: usize = 64 * 1024 * 1024;
/// Largest stdout chunk in one event.
pub const CHUNK: usize = 4096;
/// How long a playbook fetch from the config manager may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The ansible stdout callback that prints one JSON line per playbook event.
const CALLBACK_PLUGIN: &str = r#"from __future__ import annotations
import json
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: steward_events
type: stdout
short_description: one JSON line per playbook event, for steward job event data
description:
  - Prints one JSON object per line for every playbook, play, task and runner event.
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'steward_events'

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._play = ''
        self._task = ''

    def _emit(self, event, host='', changed=False, detail=''):
        line = json.dumps({'steward_event': event, 'play': self._play, 'task': self._task,
                           'host': host, 'changed': bool(changed), 'detail': str(detail)[:2000]})
        sys.stdout.write(line + '\n')
        sys.stdout.flush()

    @staticmethod
    def _detail(result):
        r = result._result
        for key in ('msg', 'stderr', 'stdout'):
            if r.get(key):
                return r.get(key)
        return ''

    def v2_playbook_on_start(self, playbook):
        self._emit('playbook_on_start')

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name().strip()
        self._task = ''
        self._emit('playbook_on_play_start')

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task = task.get_name().strip()
        self._emit('playbook_on_task_start')

    def v2_runner_on_ok(self, result):
        self._emit('runner_on_ok', result._host.get_name(), result._result.get('changed', False), self._detail(result))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._emit('runner_on_failed', result._host.get_name(), result._result.get('changed', False), self._detail(result))

    def v2_runner_on_skipped(self, result):
        self._emit('runner_on_skipped', result._host.get_name())

    def v2_runner_on_unreachable(self, result):
        self._emit('runner_on_unreachable', result._host.get_name(), False, self._detail(result))

    def v2_playbook_on_stats(self, stats):
        summary = dict((h, stats.summarize(h)) for h in sorted(stats.processed.keys()))
        self._emit('playbook_on_stats', detail=json.dumps(summary, sort_keys=True))
"#;

/// What a job needs from its worker.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// JetStream of the hub (through the hub's domain from a leaf).
    pub js: jetstream::Context,
    /// Account subjects.
    pub subjects: Subjects,
    /// This host.
    pub host: HostId,
    /// The hub key(s) this host trusts; `None` refuses every job.
    pub verifier: Option<TrustedKeys>,
    /// Folder for per-job scratch files.
    pub work_dir: PathBuf,
    /// The `ansible-playbook` program.
    pub ansible_playbook: PathBuf,
}

/// How a job ended on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// Status.
    pub status: RunStatus,
    /// Why.
    pub reason: String,
    /// Exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
}

/// What a stop asks the job to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAs(pub RunStatus);

/// Runs one work order to its `last` event. `stop` carries the status to end with once a stop
/// arrives; `process_gone` is told the outcome as soon as no process of the job is left (before
/// the last events are flushed).
pub async fn execute(
    ctx: JobContext,
    order: WorkOrder,
    stop: watch::Receiver<Option<StopAs>>,
    process_gone: impl FnOnce(&JobOutcome) + Send,
) -> JobOutcome {
    let timeout = Duration::from_millis(order.timeout_ms.max(1));
    let mut sink = EventSink::start(
        ctx.js.clone(),
        ctx.subjects.clone(),
        ctx.host.clone(),
        order.run_id.clone(),
        order.attempt,
        timeout + Duration::from_secs(600),
    );
    let outcome = run_job(&ctx, &order, timeout, stop, &mut sink).await;
    process_gone(&outcome);
    sink.emit(RunEvent {
        kind: EventKind::Last,
        status: Some(outcome.status),
        exit_code: outcome.exit_code,
        reason: outcome.reason.clone(),
        ..RunEvent::default()
    })
    .await;
    if let Err(e) = sink.finish().await {
        warn!(run_id = %order.run_id, error = %e, "job events of the run were not all stored");
    }
    info!(run_id = %order.run_id, attempt = order.attempt, status = %outcome.status, "job ended");
    outcome
}

async fn run_job(
    ctx: &JobContext,
    order: &WorkOrder,
    timeout: Duration,
    stop: watch::Receiver<Option<StopAs>>,
    sink: &mut EventSink,
) -> JobOutcome {
    let fail = |reason: String| JobOutcome { status: RunStatus::Failure, reason, exit_code: None };
    let timeout = match admit(ctx, order, crate::now_ms()) {
        Ok(left) => timeout.min(left),
        Err(refused) => {
            warn!(run_id = %order.run_id, attempt = order.attempt, reason = %refused, "job refused");
            return fail(refused.to_string());
        }
    };
    let scratch = match tempfile::Builder::new().prefix("steward-job-").tempdir_in(&ctx.work_dir) {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot create scratch folder in {}: {e}", ctx.work_dir.display())),
    };
    let (argv, env, playbook) = match order.job.kind {
        JobKind::Command => (order.job.command.clone(), BTreeMap::new(), false),
        JobKind::Playbook => {
            let fetched;
            let content = if order.job.playbook.is_empty() {
                match fetch_playbook(ctx, &order.job.playbook_ref).await {
                    Ok(c) => {
                        fetched = c;
                        &fetched
                    }
                    Err(reason) => {
                        warn!(run_id = %order.run_id, playbook_ref = %order.job.playbook_ref, reason = %reason,
                            "job refused");
                        return fail(reason.to_string());
                    }
                }
            } else {
                &order.job.playbook
            };
            match prepare_playbook(ctx, content, scratch.path()) {
                Ok((argv, env)) => (argv, env, true),
                Err(e) => return fail(format!("cannot prepare playbook: {e}")),
            }
        }
        JobKind::Unknown => return fail("unknown job kind".into()),
    };
    sink.emit(RunEvent { kind: EventKind::Start, event: order.job.kind.as_str().to_owned(), ..RunEvent::default() })
        .await;

    // A stop given as the reason to end is remembered for the outcome; a stop handle dropped
    // without a stop never ends the run.
    let mut stop_watch = stop.clone();
    let stopped = async move {
        loop {
            if stop_watch.borrow_and_update().is_some() {
                return;
            }
            if stop_watch.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Chunk>(64);
    let spec = GroupSpec { argv: &argv, env: &env, cwd: Some(scratch.path()) };
    let run = process_group::run(&spec, timeout, stopped, move |stream, pipe| {
        process_group::forward(pipe, stream, out_tx.clone())
    });
    let mut output = OutputState::new(playbook);
    let consume = async {
        while let Some(chunk) = out_rx.recv().await {
            output.push(chunk, sink).await;
        }
    };
    let (end, ()) = tokio::join!(run, consume);
    output.flush(sink).await;
    if output.total > STREAM_CAP {
        match store_artifact(ctx, order, &output.all).await {
            Ok(r) => sink.emit(RunEvent { kind: EventKind::Artifact, artifact: Some(r), ..RunEvent::default() }).await,
            Err(e) => warn!(run_id = %order.run_id, error = %e, "output artifact not stored"),
        }
    }
    use std::os::unix::process::ExitStatusExt;
    match end.map(|done| done.end) {
        Err(e) => fail(format!("cannot run {:?}: {e}", argv.first().cloned().unwrap_or_default())),
        Ok(End::Exited(status)) => match status.code() {
            Some(0) => JobOutcome { status: RunStatus::Success, reason: "exit 0".into(), exit_code: Some(0) },
            Some(code) => JobOutcome {
                status: RunStatus::Failure,
                reason: if playbook { format!("ansible-playbook exit {code}") } else { format!("exit {code}") },
                exit_code: Some(code),
            },
            None => fail(format!("killed by signal {}", status.signal().unwrap_or_default())),
        },
        Ok(End::TimedOut) => JobOutcome {
            status: RunStatus::Timeout,
            reason: format!("stopped at the deadline after {timeout:?}"),
            exit_code: None,
        },
        Ok(End::Stopped) => {
            let status = stop.borrow().map_or(RunStatus::Canceled, |s| s.0);
            JobOutcome {
                status,
                reason: format!("stopped on request ({status}); process group killed"),
                exit_code: None,
            }
        }
    }
}

/// Why a work order was refused before anything of it ran; the text is the job's failure reason.
#[derive(Debug, thiserror::Error)]
pub enum OrderRefused {
    /// The worker has no key to verify with.
    #[error("refused: this host has no trusted signing key configured")]
    NoTrustedKey,
    /// The order names another host.
    #[error("refused: work order for host {named:?} reached host {host}")]
    OtherHost {
        /// The host the order names.
        named: String,
        /// This worker's host.
        host: String,
    },
    /// The signature does not cover this account, host, run, attempt, deadline and job.
    #[error("refused: signature verification failed: {0}")]
    Signature(#[source] crate::signing::SigningError),
    /// The order has no deadline.
    #[error("refused: work order carries no deadline")]
    NoDeadline,
    /// The deadline passed.
    #[error("refused: work order deadline {at} passed {ago_ms} ms ago")]
    Expired {
        /// The deadline, RFC 3339.
        at: String,
        /// How long ago.
        ago_ms: u64,
    },
}

/// Checks a work order before anything of it runs: it names this host, its signature verifies
/// for this worker's own account and host (not only those the order names) with the order's
/// run id, attempt and deadline, and its deadline is still ahead. Answers the time left until
/// the deadline.
fn admit(ctx: &JobContext, order: &WorkOrder, now_ms: u64) -> Result<Duration, OrderRefused> {
    let Some(verifier) = &ctx.verifier else {
        return Err(OrderRefused::NoTrustedKey);
    };
    if order.host_id != ctx.host.as_str() {
        return Err(OrderRefused::OtherHost { named: order.host_id.clone(), host: ctx.host.to_string() });
    }
    let binding = OrderBinding {
        account: ctx.subjects.account().as_str(),
        host_id: ctx.host.as_str(),
        run_id: &order.run_id,
        attempt: order.attempt,
        deadline_ms: order.deadline_ms,
        job: &order.job,
    };
    verifier.verify_order(&binding, &order.signature, &order.key_id).map_err(OrderRefused::Signature)?;
    if order.deadline_ms == 0 {
        return Err(OrderRefused::NoDeadline);
    }
    if order.deadline_ms <= now_ms {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(order.deadline_ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        return Err(OrderRefused::Expired { at, ago_ms: now_ms - order.deadline_ms });
    }
    Ok(Duration::from_millis(order.deadline_ms - now_ms))
}

/// Why a playbook given by reference was refused; the text is the job's failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaybookFetchError {
    /// The reference is not `sha256:<hex>`.
    #[error("refused: {0}")]
    BadReference(String),
    /// The config manager does not know the reference.
    #[error("refused: playbook {reference} is unknown to the config manager")]
    Unknown {
        /// The reference.
        reference: String,
    },
    /// The config manager could not be asked.
    #[error("refused: cannot fetch playbook {reference} from the config manager: {reason}")]
    Fetch {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The fetched playbook is larger than `MAX_PLAYBOOK_BYTES`.
    #[error(
        "refused: fetched playbook {reference} is {size} bytes, larger than the {MAX_PLAYBOOK_BYTES} bytes allowed"
    )]
    TooLarge {
        /// The reference.
        reference: String,
        /// Its size in bytes.
        size: usize,
    },
    /// The fetched bytes do not hash to the signed reference.
    #[error(
        "refused: fetched playbook does not match its signed reference {reference} (the bytes hash to {actual}); \
         nothing was run"
    )]
    Mismatch {
        /// The signed reference.
        reference: String,
        /// The reference of the bytes fetched.
        actual: String,
    },
}

/// Fetches the playbook `reference` names from the config manager and checks that the bytes
/// hash to it.
async fn fetch_playbook(ctx: &JobContext, reference: &str) -> Result<String, PlaybookFetchError> {
    let pinned = PlaybookRef::parse(reference).map_err(|e| PlaybookFetchError::BadReference(e.message))?;
    let config = ConfigClient::new(ctx.js.client(), ctx.subjects.clone()).with_timeout(FETCH_TIMEOUT);
    let reply = match config.playbook(reference).await {
        Ok(r) => r,
        Err(e) if e.kind() == RequestErrorKind::Remote(ErrorCode::NotFound) => {
            return Err(PlaybookFetchError::Unknown { reference: pinned.to_string() });
        }
        Err(e) => return Err(PlaybookFetchError::Fetch { reference: pinned.to_string(), reason: e.to_string() }),
    };
    if reply.content.len() > MAX_PLAYBOOK_BYTES {
        return Err(PlaybookFetchError::TooLarge { reference: pinned.to_string(), size: reply.content.len() });
    }
    if !pinned.matches(reply.content.as_bytes()) {
        return Err(PlaybookFetchError::Mismatch {
            reference: pinned.to_string(),
            actual: PlaybookRef::of(reply.content.as_bytes()).to_string(),
        });
    }
    Ok(reply.content)
}

fn prepare_playbook(
    ctx: &JobContext,
    content: &str,
    dir: &std::path::Path,
) -> Result<(Vec<String>, BTreeMap<String, String>), std::io::Error> {
    let plugins = dir.join("callback_plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::write(plugins.join("steward_events.py"), CALLBACK_PLUGIN)?;
    let book = dir.join("playbook.yml");
    std::fs::write(&book, content)?;
    let home = dir.join("ansible-home");
    std::fs::create_dir_all(&home)?;
    let d = |p: PathBuf| p.display().to_string();
    let env = BTreeMap::from([
        ("ANSIBLE_STDOUT_CALLBACK".to_owned(), "steward_events".to_owned()),
        ("ANSIBLE_CALLBACK_PLUGINS".to_owned(), d(plugins)),
        ("ANSIBLE_LOAD_CALLBACK_PLUGINS".to_owned(), "1".to_owned()),
        ("ANSIBLE_NOCOLOR".to_owned(), "1".to_owned()),
        ("ANSIBLE_RETRY_FILES_ENABLED".to_owned(), "0".to_owned()),
        ("ANSIBLE_DEPRECATION_WARNINGS".to_owned(), "0".to_owned()),
        ("ANSIBLE_HOME".to_owned(), d(home.clone())),
        ("ANSIBLE_LOCAL_TEMP".to_owned(), d(home.join("tmp"))),
        ("ANSIBLE_REMOTE_TEMP".to_owned(), d(home.join("remote"))),
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
    ]);
    let argv = vec![
        ctx.ansible_playbook.display().to_string(),
        "-i".to_owned(),
        "localhost,".to_owned(),
        "-c".to_owned(),
        "local".to_owned(),
        // The host's own tasks run with the interpreter ansible itself runs on.
        "-e".to_owned(),
        "ansible_python_interpreter={{ ansible_playbook_python }}".to_owned(),
        d(book),
    ];
    Ok((argv, env))
}

/// Why a job's output was not stored as an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The artifacts object store could not be opened.
    #[error("artifacts store unavailable: {0}")]
    Store(#[from] async_nats::jetstream::context::ObjectStoreError),
    /// The output could not be written.
    #[error("cannot write the output artifact: {0}")]
    Put(#[from] async_nats::jetstream::object_store::PutError),
}

/// Stores a job's whole output in the artifacts object store.
async fn store_artifact(ctx: &JobContext, order: &WorkOrder, bytes: &[u8]) -> Result<ArtifactRef, ArtifactError> {
    let store = ctx.js.get_object_store(ARTIFACTS_STORE).await?;
    let name = run_artifact_name(ctx.subjects.account(), &order.run_id, &ctx.host, order.attempt, "output");
    let mut reader = bytes;
    store.put(name.as_str(), &mut reader).await?;
    Ok(ArtifactRef {
        store: ARTIFACTS_STORE.to_owned(),
        name,
        size: bytes.len() as u64,
        sha256: crate::signing::hex(&Sha256::digest(bytes)),
    })
}

/// Turns output chunks into events: plain chunks for commands; for playbooks, one task event
/// per JSON line of the callback and plain chunks for anything else.
struct OutputState {
    playbook: bool,
    total: usize,
    all: Vec<u8>,
    line: Vec<u8>,
}

impl OutputState {
    fn new(playbook: bool) -> Self {
        OutputState { playbook, total: 0, all: Vec::new(), line: Vec::new() }
    }

    async fn push(&mut self, chunk: Chunk, sink: &mut EventSink) {
        let room = ARTIFACT_CAP.saturating_sub(self.all.len());
        self.all.extend_from_slice(&chunk.bytes[..chunk.bytes.len().min(room)]);
        let streamed_before = self.total;
        self.total += chunk.bytes.len();
        if self.playbook && chunk.stream == Stream::Stdout {
            self.line.extend_from_slice(&chunk.bytes);
            while let Some(pos) = self.line.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.line.drain(..=pos).collect();
                emit_line(&line, sink).await;
            }
            return;
        }
        if streamed_before >= STREAM_CAP {
            return;
        }
        let keep = chunk.bytes.len().min(STREAM_CAP - streamed_before);
        let kind = if chunk.stream == Stream::Stdout { EventKind::Stdout } else { EventKind::Stderr };
        for part in chunk.bytes[..keep].chunks(CHUNK) {
            sink.emit(RunEvent { kind, stdout: String::from_utf8_lossy(part).into_owned(), ..RunEvent::default() })
                .await;
        }
    }

    async fn flush(&mut self, sink: &mut EventSink) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            emit_line(&line, sink).await;
        }
    }
}

async fn emit_line(line: &[u8], sink: &mut EventSink) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    #[derive(serde::Deserialize)]
    struct Line {
        steward_event: String,
        #[serde(default)]
        play: String,
        #[serde(default)]
        task: String,
        #[serde(default)]
        host: String,
        #[serde(default)]
        changed: bool,
        #[serde(default)]
        detail: String,
    }
    match serde_json::from_str::<Line>(text) {
        Ok(l) => {
            sink.emit(RunEvent {
                kind: EventKind::Task,
                event: l.steward_event,
                play: l.play,
                task: l.task,
                task_host: l.host,
                changed: l.changed,
                detail: l.detail,
                ..RunEvent::default()
            })
            .await;
        }
        Err(_) => {
            let cut: String = text.chars().take(CHUNK).collect();
            sink.emit(RunEvent { kind: EventKind::Stdout, stdout: cut, ..RunEvent::default() }).await;
        }
    }
}
