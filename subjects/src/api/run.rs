//! Runs: the dispatcher API (`run.dispatch`, `run.status`, `run.cancel`, `run.list`), the run
//! records kept in the `steward_runs` bucket, work and stop orders sent to hosts, and the job
//! events hosts stream to `STEWARD_RUN_EVENTS`.
//!
//! Lifecycle of one host's run: `pending → running → success | failure | timeout | canceled`.
//! A run's status aggregates its hosts: `pending` until one host starts, `running` while any
//! host has not ended, then `success` when every host succeeded, `canceled` when the run was
//! canceled, `failure` when any host failed, else `timeout`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::host::validate_labels;
use crate::envelope::WireError;
use crate::token::HostId;

/// Longest run timeout accepted (24 h), in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Timeout of a run that asks for none (10 min), in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// Most hosts one run may target.
pub const MAX_HOSTS: usize = 20_000;
/// Largest playbook accepted, in bytes.
pub const MAX_PLAYBOOK_BYTES: usize = 256 * 1024;
/// Header carrying the job event's run id on `STEWARD_RUN_EVENTS` messages.
pub const RUN_ID_HEADER: &str = "Steward-Run-Id";

/// Status of a run or of one host's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Not started on the host yet (not delivered, or waiting for a retry).
    #[default]
    Pending,
    /// Started on the host.
    Running,
    /// Ended well.
    Success,
    /// Ended badly (non-zero exit, failed task, refused signature).
    Failure,
    /// Did not end before its deadline.
    Timeout,
    /// Canceled on request.
    Canceled,
    /// A status this peer does not know.
    #[serde(other)]
    Unknown,
}

impl RunStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Timeout => "timeout",
            RunStatus::Canceled => "canceled",
            RunStatus::Unknown => "unknown",
        }
    }

    /// Whether the status is final.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::Failure | RunStatus::Timeout | RunStatus::Canceled)
    }

    /// Parses a wire name.
    ///
    /// # Errors
    /// [`UnknownRunStatus`], whose message lists the accepted names.
    pub fn parse(s: &str) -> Result<Self, UnknownRunStatus> {
        match s {
            "pending" => Ok(RunStatus::Pending),
            "running" => Ok(RunStatus::Running),
            "success" => Ok(RunStatus::Success),
            "failure" => Ok(RunStatus::Failure),
            "timeout" => Ok(RunStatus::Timeout),
            "canceled" => Ok(RunStatus::Canceled),
            other => Err(UnknownRunStatus { text: other.to_owned() }),
        }
    }
}

/// A run status name [`RunStatus::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status {text:?} (pending, running, success, failure, timeout, canceled)")]
pub struct UnknownRunStatus {
    /// The text given.
    pub text: String,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A process (`command` argv).
    #[default]
    Command,
    /// An Ansible playbook run against the host itself.
    Playbook,
    /// A kind this peer does not know.
    #[serde(other)]
    Unknown,
}

impl JobKind {
    /// The wire name (also the worker that runs it).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Command => "command",
            JobKind::Playbook => "playbook",
            JobKind::Unknown => "unknown",
        }
    }
}

/// The work of a run: a command or a playbook (by content, or by reference to the config
/// manager). Signed by the hub as part of each host's work order; see `steward_actors::signing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// Command or playbook.
    pub kind: JobKind,
    /// Argv of a command job (`argv[0]` looked up in `PATH`).
    pub command: Vec<String>,
    /// Playbook YAML of a playbook job given by content.
    pub playbook: String,
    /// Reference of a playbook kept by the config manager (used when `playbook` is empty).
    pub playbook_ref: String,
}

impl Job {
    /// A command job.
    #[must_use]
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Job { kind: JobKind::Command, command: argv.into_iter().map(Into::into).collect(), ..Job::default() }
    }

    /// A playbook job given by content.
    #[must_use]
    pub fn playbook(content: impl Into<String>) -> Self {
        Job { kind: JobKind::Playbook, playbook: content.into(), ..Job::default() }
    }

    /// A playbook job given by reference to a playbook the config manager keeps
    /// (`sha256:<hex>`, see [`crate::api::config::PlaybookRef`]); hosts fetch it and check the
    /// bytes against the (signed) reference before running them.
    #[must_use]
    pub fn playbook_by_ref(reference: impl Into<String>) -> Self {
        Job { kind: JobKind::Playbook, playbook_ref: reference.into(), ..Job::default() }
    }

    /// Checks that the job is runnable.
    ///
    /// # Errors
    /// An `invalid` [`WireError`] naming the problem.
    pub fn validate(&self) -> Result<(), WireError> {
        match self.kind {
            JobKind::Command => {
                if self.command.first().is_none_or(|c| c.trim().is_empty()) {
                    return Err(WireError::invalid("command job needs a non-empty command"));
                }
                if self.command.iter().any(|a| a.contains('\0')) {
                    return Err(WireError::invalid("command arguments must not contain NUL bytes"));
                }
            }
            JobKind::Playbook => {
                if self.playbook.is_empty() && self.playbook_ref.is_empty() {
                    return Err(WireError::invalid("playbook job needs playbook content or a playbook_ref"));
                }
                if !self.playbook.is_empty() && !self.playbook_ref.is_empty() {
                    return Err(WireError::invalid("playbook job takes playbook content or a playbook_ref, not both"));
                }
                if !self.playbook_ref.is_empty() {
                    crate::api::config::PlaybookRef::parse(&self.playbook_ref)?;
                }
                if self.playbook.len() > MAX_PLAYBOOK_BYTES {
                    return Err(WireError::invalid(format!(
                        "playbook of {} bytes is larger than the {MAX_PLAYBOOK_BYTES} bytes allowed",
                        self.playbook.len()
                    )));
                }
            }
            JobKind::Unknown => return Err(WireError::invalid("unknown job kind (command, playbook)")),
        }
        Ok(())
    }
}

/// Retries of `failure` and `timeout` outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`0` and `1` mean no retry).
    pub max_attempts: u32,
    /// Wait before each retry, in milliseconds.
    pub backoff_ms: u64,
}

impl RetryPolicy {
    /// Attempts in all (at least 1).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// `run.dispatch`: start a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRequest {
    /// Target hosts by id (exclusive with `selector`).
    pub hosts: Vec<String>,
    /// Target connected hosts matching this label selector (exclusive with `hosts`).
    pub selector: String,
    /// What to run.
    pub job: Job,
    /// Labels of the run (for example `state=<revision>`).
    pub labels: BTreeMap<String, String>,
    /// Time each attempt on each host may take, in milliseconds (`0` = 10 min).
    pub timeout_ms: u64,
    /// The same key twice returns the same run.
    pub idempotency_key: String,
    /// Retries of failed or timed-out hosts.
    pub retry: RetryPolicy,
}

impl RunRequest {
    /// Checks the request: one kind of target, valid host ids and labels, a runnable job,
    /// bounded timeout and retries. Returns the explicit host ids (empty for a selector).
    ///
    /// # Errors
    /// An `invalid` [`WireError`] naming the first problem.
    pub fn validate(&self) -> Result<Vec<HostId>, WireError> {
        if self.hosts.is_empty() == self.selector.trim().is_empty() {
            return Err(WireError::invalid("give either hosts or a selector"));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(WireError::invalid(format!("{} hosts, at most {MAX_HOSTS} allowed", self.hosts.len())));
        }
        let mut hosts = Vec::with_capacity(self.hosts.len());
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            let host = HostId::parse(h)?;
            if seen.insert(host.clone()) {
                hosts.push(host);
            }
        }
        validate_labels(&self.labels).map_err(|e| WireError::invalid(e.to_string()))?;
        self.job.validate()?;
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(WireError::invalid(format!(
                "timeout {} ms is longer than {MAX_TIMEOUT_MS} ms",
                self.timeout_ms
            )));
        }
        if self.retry.max_attempts > MAX_ATTEMPTS {
            return Err(WireError::invalid(format!(
                "{} attempts asked for, at most {MAX_ATTEMPTS} allowed",
                self.retry.max_attempts
            )));
        }
        if self.idempotency_key.len() > 256 {
            return Err(WireError::invalid("idempotency key is longer than 256 bytes"));
        }
        Ok(hosts)
    }

    /// The effective timeout per attempt, in milliseconds.
    #[must_use]
    pub fn timeout(&self) -> u64 {
        if self.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            self.timeout_ms
        }
    }
}

/// Reply of `run.dispatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunAccepted {
    /// The run.
    pub run_id: String,
    /// `true` when the idempotency key named an existing run (nothing new was started).
    pub existing: bool,
    /// Hosts targeted.
    pub hosts: Vec<String>,
}

/// Counts of host runs per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCounts {
    /// Not started.
    pub pending: u64,
    /// Running.
    pub running: u64,
    /// Succeeded.
    pub success: u64,
    /// Failed.
    pub failure: u64,
    /// Timed out.
    pub timeout: u64,
    /// Canceled.
    pub canceled: u64,
}

impl StatusCounts {
    /// Adds one host run of `status`.
    pub fn add(&mut self, status: RunStatus) {
        match status {
            RunStatus::Pending | RunStatus::Unknown => self.pending += 1,
            RunStatus::Running => self.running += 1,
            RunStatus::Success => self.success += 1,
            RunStatus::Failure => self.failure += 1,
            RunStatus::Timeout => self.timeout += 1,
            RunStatus::Canceled => self.canceled += 1,
        }
    }

    /// Host runs counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.success + self.failure + self.timeout + self.canceled
    }

    /// Host runs that ended.
    #[must_use]
    pub fn ended(&self) -> u64 {
        self.success + self.failure + self.timeout + self.canceled
    }

    /// The aggregate status of a run with these host counts out of `hosts` host runs.
    #[must_use]
    pub fn aggregate(&self, hosts: u64, cancel_requested: bool) -> RunStatus {
        if hosts == 0 || self.ended() < hosts {
            if self.running > 0 || self.ended() > 0 {
                RunStatus::Running
            } else {
                RunStatus::Pending
            }
        } else if self.success == hosts {
            RunStatus::Success
        } else if cancel_requested && self.canceled > 0 {
            RunStatus::Canceled
        } else if self.failure > 0 {
            RunStatus::Failure
        } else if self.timeout > 0 {
            RunStatus::Timeout
        } else {
            RunStatus::Canceled
        }
    }
}

/// A run (KV `steward_runs`, key `<account>.run.<run>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Aggregate status.
    pub status: RunStatus,
    /// The job.
    pub job: Job,
    /// Hex sha-256 of the job's signed content.
    pub job_digest: String,
    /// Empty: each host's work order carries its own signature (see [`WorkOrder`]); older
    /// hubs wrote a signature of the job alone here.
    pub signature: String,
    /// Id of the key that signs the run's work orders, empty when the hub has none.
    pub key_id: String,
    /// Run labels.
    pub labels: BTreeMap<String, String>,
    /// The selector the hosts were chosen with, if any.
    pub selector: String,
    /// Idempotency key given.
    pub idempotency_key: String,
    /// Time per attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Host runs.
    pub hosts_total: u64,
    /// Host runs per status (recomputed from the host records).
    pub counts: StatusCounts,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Latest time any host can still be running (all attempts), Unix milliseconds.
    pub deadline_ms: u64,
    /// When the run ended, RFC 3339.
    pub finished_at: Option<String>,
}

/// Where a large artifact was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArtifactRef {
    /// Object store.
    pub store: String,
    /// Object name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha-256 of the content.
    pub sha256: String,
}

/// One finished attempt of a host run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attempt {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// How it ended.
    pub status: RunStatus,
    /// Why (refused signature, exit code, deadline, ...).
    pub reason: String,
    /// Process exit code, if the process ended by itself.
    pub exit_code: Option<i32>,
    /// When it started on the host (RFC 3339), if it did.
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: String,
}

/// One host's run (KV `steward_runs`, key `<account>.host.<run>.<host>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRun {
    /// Run id.
    pub run_id: String,
    /// Host id.
    pub host_id: String,
    /// Status of the current attempt (terminal once no retry is left).
    pub status: RunStatus,
    /// Current attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Wait before a retry, in milliseconds.
    pub backoff_ms: u64,
    /// Time per attempt, in milliseconds.
    pub timeout_ms: u64,
    /// When the current attempt may be delivered (a retry waits for its back-off), Unix ms.
    pub not_before_ms: u64,
    /// Deadline of the current attempt, Unix milliseconds.
    pub deadline_ms: u64,
    /// When the current attempt started on the host (RFC 3339).
    pub started_at: Option<String>,
    /// When the host run ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Why it ended as it did.
    pub reason: String,
    /// Exit code of the last process, if any.
    pub exit_code: Option<i32>,
    /// Finished earlier attempts, and the final one once ended.
    pub attempts: Vec<Attempt>,
    /// Stream sequence of the first event of the current attempt in `STEWARD_RUN_EVENTS`.
    pub first_event_stream_seq: u64,
    /// Highest event sequence number seen for the current attempt.
    pub last_event_seq: u64,
    /// Artifact of the current attempt, if its output was large.
    pub artifact: Option<ArtifactRef>,
}

/// Kind of a job event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The job started on the host.
    #[default]
    Start,
    /// A chunk of standard output.
    Stdout,
    /// A chunk of standard error.
    Stderr,
    /// A playbook event (task started, ok, changed, failed, skipped, unreachable; play; stats).
    Task,
    /// A large artifact was stored; the event carries its reference.
    Artifact,
    /// The final event of the host's run; carries the outcome.
    Last,
    /// A kind this peer does not know.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Stdout => "stdout",
            EventKind::Stderr => "stderr",
            EventKind::Task => "task",
            EventKind::Artifact => "artifact",
            EventKind::Last => "last",
            EventKind::Unknown => "unknown",
        }
    }
}

/// One job event, on `steward.v1.<account>.run.event.<host>` (stream `STEWARD_RUN_EVENTS`,
/// `Nats-Msg-Id` from [`crate::subject::run_event_msg_id`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunEvent {
    /// Run id.
    pub run_id: String,
    /// Host id.
    pub host_id: String,
    /// Attempt the event belongs to.
    pub attempt: u32,
    /// Sequence number per (run, host, attempt), from 1, without gaps.
    pub seq: u64,
    /// Kind.
    pub kind: EventKind,
    /// When it happened on the host (RFC 3339).
    pub at: String,
    /// Output chunk (stdout / stderr events).
    pub stdout: String,
    /// Ansible event name (`playbook_on_task_start`, `runner_on_ok`, ...) for task events.
    pub event: String,
    /// Play name, for playbook events.
    pub play: String,
    /// Task name, for playbook events.
    pub task: String,
    /// Inventory host the task ran against, for playbook events.
    pub task_host: String,
    /// Whether the task changed something.
    pub changed: bool,
    /// Task result detail (module message, failure reason), shortened.
    pub detail: String,
    /// Outcome, on the `last` event.
    pub status: Option<RunStatus>,
    /// Exit code, on the `last` event when the process ended by itself.
    pub exit_code: Option<i32>,
    /// Why the run ended as it did, on the `last` event.
    pub reason: String,
    /// Artifact reference, on `artifact` (and `last`) events.
    pub artifact: Option<ArtifactRef>,
}

/// A work order sent to one host on `run.work.<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkOrder {
    /// Run id.
    pub run_id: String,
    /// Target host (must equal the subject's host).
    pub host_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The job.
    pub job: Job,
    /// Hub signature (hex) over the account, host, run id, attempt, deadline and job; see
    /// `steward_actors::signing::order_digest`.
    pub signature: String,
    /// Id of the signing key.
    pub key_id: String,
    /// Time the attempt may take, in milliseconds (the host stops it after that, and at
    /// `deadline_ms` at the latest).
    pub timeout_ms: u64,
    /// Run labels.
    pub labels: BTreeMap<String, String>,
    /// Deadline of the attempt, Unix milliseconds (signed): the host refuses the order after
    /// it, and one without a deadline.
    pub deadline_ms: u64,
}

/// A host's answer to a work order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkAck {
    /// The host took the order (or already had it).
    pub accepted: bool,
    /// `true` when the order was a duplicate of one already taken.
    pub duplicate: bool,
    /// Detail (lowercase).
    pub message: String,
}

/// A stop order sent to one host on `run.stop.<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopOrder {
    /// Run id.
    pub run_id: String,
    /// Target host.
    pub host_id: String,
    /// The status to end with (`canceled`, or `timeout` when the hub's deadline passed).
    pub status: RunStatus,
    /// Why.
    pub reason: String,
}

/// A host's answer to a stop order, sent once its process group is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopAck {
    /// The run was running and is now stopped (no process left).
    pub stopped: bool,
    /// The run had already ended on the host with this status (its `last` event says so).
    pub finished: Option<RunStatus>,
    /// Detail (lowercase).
    pub message: String,
}

/// `run.status`: one run with its hosts and their current job event data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunStatusRequest {
    /// Run id.
    pub run_id: String,
    /// Include job events.
    pub events: bool,
    /// Only events with a sequence number above this (per host; for following).
    pub after_seq: u64,
    /// Most events per host (`0` = 200).
    pub max_events: u32,
    /// Most host records returned (`0` = 500); counts always cover every host.
    pub host_limit: u32,
}

/// One host's run with its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRunView {
    /// The host run.
    pub run: HostRun,
    /// Its events of the current attempt, in order.
    pub events: Vec<RunEvent>,
}

/// Reply of `run.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunView {
    /// The run.
    pub run: RunRecord,
    /// Its hosts in host id order (at most `host_limit`).
    pub hosts: Vec<HostRunView>,
    /// Whether hosts were left out.
    pub hosts_truncated: bool,
}

/// `run.cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCancelRequest {
    /// Run id.
    pub run_id: String,
}

/// Reply of `run.cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCancelResult {
    /// Run id.
    pub run_id: String,
    /// Aggregate status after the cancel.
    pub status: RunStatus,
    /// Hosts that confirmed their process was stopped.
    pub confirmed: Vec<String>,
    /// Hosts canceled before anything ran there.
    pub canceled_pending: Vec<String>,
    /// Hosts that did not answer (canceled on the hub; they stop at their deadline at the latest).
    pub unconfirmed: Vec<String>,
}

/// `run.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunListRequest {
    /// Only runs with this aggregate status.
    pub status: Option<RunStatus>,
    /// Only runs carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Most runs returned, newest first (`0` = 100).
    pub limit: u32,
}

/// Reply of `run.list`: runs newest first, jobs without playbook content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunList {
    /// The runs.
    pub runs: Vec<RunRecord>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_validated() {
        let ok = RunRequest { hosts: vec!["a".into()], job: Job::command(["true"]), ..Default::default() };
        assert_eq!(ok.validate().unwrap().len(), 1);
        let both = RunRequest { selector: "env=x".into(), ..ok.clone() };
        assert!(both.validate().is_err());
        let bad_host = RunRequest { hosts: vec!["a.b".into()], ..ok.clone() };
        assert!(bad_host.validate().unwrap_err().message.contains("host id"));
        let no_cmd = RunRequest { job: Job::command(Vec::<String>::new()), ..ok.clone() };
        assert!(no_cmd.validate().is_err());
        let retries = RunRequest { retry: RetryPolicy { max_attempts: 99, backoff_ms: 0 }, ..ok.clone() };
        assert!(retries.validate().is_err());
        let reference = crate::api::config::PlaybookRef::of(b"- hosts: all\n").to_string();
        let by_ref = RunRequest { job: Job::playbook_by_ref(reference.clone()), ..ok.clone() };
        assert!(by_ref.validate().is_ok());
        let bad_ref = RunRequest { job: Job::playbook_by_ref("https://x/y.yml"), ..ok.clone() };
        assert!(bad_ref.validate().unwrap_err().message.contains("sha256:"));
        let mut both = Job::playbook("- hosts: all\n");
        both.playbook_ref = reference;
        assert!(RunRequest { job: both, ..ok }.validate().unwrap_err().message.contains("not both"));
    }

    #[test]
    fn playbook_references() {
        use crate::api::config::PlaybookRef;
        let r = PlaybookRef::of(b"abc");
        assert_eq!(r.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(PlaybookRef::parse(&r.to_string()).unwrap(), r);
        assert!(r.matches(b"abc") && !r.matches(b"abd"));
        for bad in
            ["", "sha256:", "sha1:ba78", "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"]
        {
            assert!(PlaybookRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aggregate_status() {
        let mut c = StatusCounts::default();
        assert_eq!(c.aggregate(2, false), RunStatus::Pending);
        c.add(RunStatus::Running);
        c.add(RunStatus::Pending);
        assert_eq!(c.aggregate(2, false), RunStatus::Running);
        let mut c = StatusCounts::default();
        c.add(RunStatus::Success);
        c.add(RunStatus::Success);
        assert_eq!(c.aggregate(2, false), RunStatus::Success);
        c.add(RunStatus::Timeout);
        assert_eq!(c.aggregate(3, false), RunStatus::Timeout);
        c.add(RunStatus::Failure);
        assert_eq!(c.aggregate(4, false), RunStatus::Failure);
        c.add(RunStatus::Canceled);
        assert_eq!(c.aggregate(5, true), RunStatus::Canceled);
    }

    #[test]
    fn unknown_values_decode() {
        let e: RunEvent = serde_json::from_value(serde_json::json!({"kind": "future", "status": "odd"})).unwrap();
        assert_eq!(e.kind, EventKind::Unknown);
        assert_eq!(e.status, Some(RunStatus::Unknown));
    }
}
