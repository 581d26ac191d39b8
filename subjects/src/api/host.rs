//! Hosts: presence announcements published by edge agents, host registry records and events,
//! durable host commands and their replies, and the connector API's requests and replies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::WireError;
use crate::token::{validate, HostId, TokenError, TokenKind};

/// Header carrying a command's id on commands and replies (also used as `Nats-Msg-Id` so
/// JetStream stores each command and each reply once).
pub const COMMAND_ID_HEADER: &str = "Steward-Command-Id";

/// Facts an agent reports about its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostFacts {
    /// Machine host name.
    pub hostname: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`x86_64`).
    pub arch: String,
}

/// Presence announcement and heartbeat of an edge agent, published on
/// `steward.v1.<account>.host.heartbeat.<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// Host id (must equal the subject's target token).
    pub host_id: String,
    /// Host labels.
    pub labels: BTreeMap<String, String>,
    /// Agent version.
    pub agent_version: String,
    /// Machine facts.
    pub facts: HostFacts,
    /// Enabled workers and their versions (the "dispatchers map").
    pub workers: BTreeMap<String, String>,
    /// Workers the agent could enable (its catalog), with versions.
    pub available_workers: BTreeMap<String, String>,
    /// Whether the agent is draining (takes no new work).
    pub draining: bool,
    /// Heartbeat interval the agent uses, in milliseconds.
    pub interval_ms: u64,
    /// Sequence number of this heartbeat since the agent started.
    pub seq: u64,
    /// Agent start count from its local store (changes on every restart).
    pub incarnation: u64,
    /// `true` on the last heartbeat of a clean shutdown.
    pub leaving: bool,
}

/// Largest number of labels a heartbeat may carry.
pub const MAX_LABELS: usize = 64;
/// Largest number of workers a heartbeat may carry.
pub const MAX_WORKERS: usize = 64;

impl Heartbeat {
    /// Checks that the heartbeat is one the connector may store: the host id is a valid token
    /// equal to `subject_host`, labels and worker names are valid tokens, and the maps are
    /// bounded.
    ///
    /// # Errors
    /// [`HeartbeatFieldError`] naming the first problem.
    pub fn validate(&self, subject_host: &str) -> Result<HostId, HeartbeatFieldError> {
        let host = HostId::parse(&self.host_id)?;
        if host.as_str() != subject_host {
            return Err(HeartbeatFieldError::WrongHost {
                host: self.host_id.clone(),
                subject_host: subject_host.to_owned(),
            });
        }
        validate_labels(&self.labels)?;
        for (what, map) in [("workers", &self.workers), ("available workers", &self.available_workers)] {
            if map.len() > MAX_WORKERS {
                return Err(HeartbeatFieldError::TooManyWorkers { what, count: map.len() });
            }
            for (name, version) in map {
                validate(TokenKind::Name, name)?;
                if version.len() > 64 {
                    return Err(HeartbeatFieldError::VersionTooLong { worker: name.clone() });
                }
            }
        }
        Ok(host)
    }
}

/// Why a heartbeat is refused by [`Heartbeat::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatFieldError {
    /// The host id or a worker name is not a valid token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The host id is not the host named by the subject it arrived on.
    #[error("heartbeat for host {host:?} arrived on the subject of host {subject_host:?}")]
    WrongHost {
        /// The host id in the heartbeat.
        host: String,
        /// The host token of the subject.
        subject_host: String,
    },
    /// The labels are invalid.
    #[error(transparent)]
    Labels(#[from] LabelsError),
    /// More than [`MAX_WORKERS`] entries in `workers` or `available_workers`.
    #[error("{count} {what}, at most {MAX_WORKERS} allowed")]
    TooManyWorkers {
        /// Which map: `"workers"` or `"available workers"`.
        what: &'static str,
        /// How many entries it has.
        count: usize,
    },
    /// A worker version longer than 64 bytes.
    #[error("worker {worker:?} version is longer than 64 bytes")]
    VersionTooLong {
        /// The worker name.
        worker: String,
    },
}

/// Checks a label map: every key and value a valid token, at most [`MAX_LABELS`] labels.
///
/// # Errors
/// [`LabelsError`] naming the first bad key or value.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelsError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelsError::TooMany { count: labels.len() });
    }
    for (k, v) in labels {
        validate(TokenKind::LabelKey, k)?;
        validate(TokenKind::LabelValue, v)?;
    }
    Ok(())
}

/// Why a label map is refused by [`validate_labels`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    /// More than [`MAX_LABELS`] labels.
    #[error("{count} labels, at most {MAX_LABELS} allowed")]
    TooMany {
        /// How many labels there are.
        count: usize,
    },
    /// A key or value is not a valid token.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A host's entry in the host registry (KV bucket `steward_hosts`, key from
/// [`crate::subject::host_registry_key`]), written by the connector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRecord {
    /// Host id.
    pub host_id: String,
    /// Whether the host is connected now.
    pub online: bool,
    /// When the current connection began (RFC 3339), if online.
    pub connected_since: Option<String>,
    /// Last heartbeat seen (RFC 3339). The registry refreshes it on every change and at least
    /// every refresh period; the connector's answers carry the exact value.
    pub last_seen: String,
    /// Host labels.
    pub labels: BTreeMap<String, String>,
    /// Machine facts.
    pub facts: HostFacts,
    /// Enabled workers and versions (the "dispatchers map").
    pub workers: BTreeMap<String, String>,
    /// Workers the agent could enable.
    pub available_workers: BTreeMap<String, String>,
    /// Whether the host is draining.
    pub draining: bool,
    /// Agent version.
    pub agent_version: String,
    /// Agent incarnation (start count) last seen.
    pub incarnation: u64,
    /// Heartbeat interval the agent announced, in milliseconds.
    pub interval_ms: u64,
    /// Why the host went offline last (`missed heartbeats`, `clean shutdown`).
    pub offline_reason: Option<String>,
    /// Configuration revision last applied on the host (written by the config manager).
    pub applied_revision: Option<u64>,
}

/// What happened to a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEventKind {
    /// The host came online (first heartbeat, or back after being offline).
    Online,
    /// The host went offline (missed heartbeats or clean shutdown).
    Offline,
    /// Labels, workers, facts, version, drain state or incarnation changed.
    Changed,
    /// A kind this peer does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl HostEventKind {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HostEventKind::Online => "online",
            HostEventKind::Offline => "offline",
            HostEventKind::Changed => "changed",
            HostEventKind::Unknown => "unknown",
        }
    }
}

/// A host registry event on `steward.v1.<account>.host.event.<host>` (stream
/// `STEWARD_HOST_EVENTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostEvent {
    /// What happened.
    pub kind: HostEventKind,
    /// The host.
    pub host_id: String,
    /// When the connector saw it (RFC 3339).
    pub at: String,
    /// Why (`first heartbeat`, `missed heartbeats`, `clean shutdown`, `labels changed`, ...).
    pub reason: String,
    /// The record after the change.
    pub record: HostRecord,
}

/// The built-in commands a host understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandAction {
    /// Answer with the agent's state.
    #[default]
    Ping,
    /// Enable a worker from the agent's catalog (the package-manager step).
    InstallWorker,
    /// Disable a worker.
    RemoveWorker,
    /// Take no new work, finish current work.
    Drain,
    /// Take new work again after a drain.
    Resume,
    /// Hand a run's work order (carried in [`HostCommand::work`]) to the host's run worker.
    Run,
    /// An action this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl CommandAction {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CommandAction::Ping => "ping",
            CommandAction::InstallWorker => "install_worker",
            CommandAction::RemoveWorker => "remove_worker",
            CommandAction::Drain => "drain",
            CommandAction::Resume => "resume",
            CommandAction::Run => "run",
            CommandAction::Unknown => "unknown",
        }
    }

    /// Whether the action names a worker.
    #[must_use]
    pub fn needs_worker(self) -> bool {
        matches!(self, CommandAction::InstallWorker | CommandAction::RemoveWorker)
    }
}

/// A command to one host on `steward.v1.<account>.host.command.<host>` (stream
/// `STEWARD_HOST_COMMANDS`, read by the host's durable consumer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostCommand {
    /// Unique command id (also its `Nats-Msg-Id`).
    pub command_id: String,
    /// Target host.
    pub host_id: String,
    /// What to do.
    pub action: CommandAction,
    /// Worker name for worker actions.
    pub worker: String,
    /// When it was sent (RFC 3339).
    pub issued_at: String,
    /// After this instant (RFC 3339) the host answers `expired` instead of running it.
    pub expires_at: Option<String>,
    /// The work order of a [`CommandAction::Run`] command (the dispatcher's delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<crate::api::run::WorkOrder>,
}

/// How a command ended on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Done.
    Ok,
    /// The host refused or failed it (the message says why).
    Failed,
    /// It reached the host after its expiry and was not run.
    Expired,
    /// A status this peer does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl CommandStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Ok => "ok",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
            CommandStatus::Unknown => "unknown",
        }
    }
}

/// A host's reply to a command, on `steward.v1.<account>.host.reply.<host>` (recorded in the
/// commands stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandReply {
    /// The command answered.
    pub command_id: String,
    /// The answering host.
    pub host_id: String,
    /// The action that was asked for.
    pub action: CommandAction,
    /// How it ended.
    pub status: CommandStatus,
    /// Human-readable detail (lowercase).
    pub message: String,
    /// Enabled workers after the command.
    pub workers: BTreeMap<String, String>,
    /// Drain state after the command.
    pub draining: bool,
    /// Agent incarnation that ran it.
    pub incarnation: u64,
    /// When the host answered (RFC 3339).
    pub replied_at: String,
}

/// `host.applied`: record the configuration revision a host reached (the enablement loop,
/// after the host's service runs succeeded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppliedRevisionRequest {
    /// The host.
    pub host_id: String,
    /// The revision it applied.
    pub revision: u64,
}

/// Reply of `host.applied`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppliedRevisionResult {
    /// `false` when the answering connector does not know the host.
    pub recorded: bool,
}

/// `host.status`: one host's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostStatusRequest {
    /// The host.
    pub host_id: String,
}

/// `host.list`: hosts matching a selector and online state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostListRequest {
    /// Label selector (`k=v,k2!=v2,k3 in (a,b)`); empty matches all.
    pub selector: String,
    /// Only online (`true`) or offline (`false`) hosts; `None` for both.
    pub online: Option<bool>,
}

/// Reply of `host.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostList {
    /// Matching hosts in host id order.
    pub hosts: Vec<HostRecord>,
}

/// `host.send`: queue a durable command for a host and optionally wait for its reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SendCommandRequest {
    /// Target host.
    pub host_id: String,
    /// What to do.
    pub action: CommandAction,
    /// Worker name for worker actions.
    pub worker: String,
    /// Time to live in milliseconds; the host answers `expired` when it receives the command
    /// later. `0` = no expiry (the stream keeps it for 7 days).
    pub ttl_ms: u64,
    /// How long to wait for the reply, in milliseconds (`0` = do not wait). At most 60 s.
    pub wait_ms: u64,
}

impl SendCommandRequest {
    /// Validates the host id and the worker name (for worker actions); refuses `run`, which only
    /// the dispatcher sends.
    ///
    /// # Errors
    /// An `invalid` [`WireError`].
    pub fn validate(&self) -> Result<HostId, WireError> {
        let host = HostId::parse(&self.host_id)?;
        if self.action == CommandAction::Unknown {
            return Err(WireError::invalid("unknown command action"));
        }
        if self.action == CommandAction::Run {
            return Err(WireError::invalid("run commands carry work orders of the dispatcher; use run.dispatch"));
        }
        if self.action.needs_worker() {
            validate(TokenKind::Name, &self.worker)?;
        }
        Ok(host)
    }
}

/// Reply of `host.send`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SendCommandResult {
    /// The command's id (look its reply up later with `host.outcome`).
    pub command_id: String,
    /// Stream sequence of the stored command.
    pub sequence: u64,
    /// The host's reply, when it came within the wait.
    pub reply: Option<CommandReply>,
}

/// `host.outcome`: the recorded reply of one command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandOutcomeRequest {
    /// The host the command went to.
    pub host_id: String,
    /// The command.
    pub command_id: String,
}

/// `host.ensure_worker`: install a worker and wait until the registry shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnsureWorkerRequest {
    /// The host.
    pub host_id: String,
    /// The worker.
    pub worker: String,
    /// How long to wait, in milliseconds (at most 120 s; `0` = 30 s).
    pub timeout_ms: u64,
}

/// Reply of `host.ensure_worker`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnsureWorkerResult {
    /// The worker.
    pub worker: String,
    /// Its version as the registry shows it.
    pub version: String,
    /// Whether the worker was already present (no command sent).
    pub already_present: bool,
    /// The install command's id, when one was sent.
    pub command_id: Option<String>,
    /// Milliseconds until the registry showed it.
    pub waited_ms: u64,
}

/// `host.stats`: counters of the answering connector instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectorStats {
    /// Heartbeats accepted.
    pub heartbeats: u64,
    /// Heartbeats dropped as malformed (undecodable, bad tokens, host id mismatch).
    pub malformed: u64,
    /// Hosts known.
    pub hosts: u64,
    /// Hosts online.
    pub online: u64,
    /// Registry writes done.
    pub registry_writes: u64,
    /// Registry writes that failed.
    pub registry_write_errors: u64,
    /// Events published.
    pub events: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn heartbeat_validation_refuses_hostile_tokens() {
        let ok = Heartbeat { host_id: "web-01".into(), ..Heartbeat::default() };
        assert!(ok.validate("web-01").is_ok());
        assert!(ok.validate("web-02").unwrap_err().to_string().contains("subject of host"));
        assert!(matches!(ok.validate("web-02"), Err(HeartbeatFieldError::WrongHost { .. })));
        for bad in ["web.01", "web*", ">", "a b", ""] {
            let hb = Heartbeat { host_id: bad.into(), ..Heartbeat::default() };
            assert!(hb.validate(bad).is_err(), "{bad:?}");
        }
        for (k, v) in [("env", "pr.od"), ("e v", "x"), ("", "x"), ("k", ""), ("k", ">")] {
            let hb = Heartbeat {
                host_id: "h".into(),
                labels: BTreeMap::from([(k.to_owned(), v.to_owned())]),
                ..Heartbeat::default()
            };
            assert!(hb.validate("h").is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn unknown_enum_values_from_newer_peers_decode() {
        let v = serde_json::json!({"command_id": "c", "action": "reboot"});
        let cmd: HostCommand = serde_json::from_value(v).unwrap();
        assert_eq!(cmd.action, CommandAction::Unknown);
        let r: CommandReply = serde_json::from_value(serde_json::json!({"status": "weird"})).unwrap();
        assert_eq!(r.status, CommandStatus::Unknown);
    }
}
