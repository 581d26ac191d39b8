//! Request and reply types of the Steward endpoints (wire types: MessagePack with named fields,
//! every field defaulted so older peers keep working when fields are added).

use serde::{Deserialize, Serialize};

/// Health of one process, as answered on the health endpoints.
pub mod health {
    use super::{Deserialize, Serialize};

    /// Ask a process for its health. No parameters today.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct HealthRequest {}

    /// State of one supervised component.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ComponentState {
        /// Running and serving.
        Running,
        /// Failed and waiting for its restart back-off.
        Restarting,
        /// Gave up after too many restarts.
        Failed,
        /// Stopped on purpose.
        Stopped,
        /// Unknown state (sent by a newer peer).
        #[default]
        #[serde(other)]
        Unknown,
    }

    /// One supervised component of a process.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ComponentStatus {
        /// Component name (`health`, `edge-web-01`, ...).
        pub name: String,
        /// Its state.
        pub state: ComponentState,
        /// How many times the supervisor restarted it.
        pub restarts: u32,
        /// The last failure, if any.
        pub last_error: Option<String>,
    }

    /// A process's health.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct HealthStatus {
        /// Micro-service name (`steward-hub`, `steward-edge`).
        pub service: String,
        /// Instance id of the answering service.
        pub instance: String,
        /// The roles this process runs.
        pub roles: Vec<String>,
        /// Steward version.
        pub version: String,
        /// Start time of the process, RFC 3339.
        pub started_at: String,
        /// Seconds since start.
        pub uptime_secs: u64,
        /// Supervised components and their states.
        pub components: Vec<ComponentStatus>,
    }
}

/// Hosts: presence announcements published by edge agents.
pub mod host {
    use std::collections::BTreeMap;

    use super::{Deserialize, Serialize};

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
}
