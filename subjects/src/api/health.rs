//! Health of one process, as answered on the health endpoints.

use serde::{Deserialize, Serialize};

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
