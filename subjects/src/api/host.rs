//! Hosts: presence announcements published by edge agents, host registry records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Heartbeat interval the agent uses, in milliseconds.
    pub interval_ms: u64,
    /// Sequence number of this heartbeat since the agent started.
    pub seq: u64,
    /// Agent start count from its local store (changes on every restart).
    pub incarnation: u64,
    /// `true` on the last heartbeat of a clean shutdown.
    pub leaving: bool,
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
    /// Last heartbeat seen (RFC 3339).
    pub last_seen: String,
    /// Host labels.
    pub labels: BTreeMap<String, String>,
    /// Machine facts.
    pub facts: HostFacts,
    /// Enabled workers and versions (the "dispatchers map").
    pub workers: BTreeMap<String, String>,
    /// Agent version.
    pub agent_version: String,
    /// Agent incarnation (start count) last seen.
    pub incarnation: u64,
    /// Configuration revision last applied on the host (written by the config manager).
    pub applied_revision: Option<u64>,
}
