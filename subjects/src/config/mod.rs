//! The configuration document: what an operator declares for one account.
//!
//! Layout: this file holds the document types (JSON, schema generated with `schemars` and
//! checked in as `subjects/schema/config.schema.json`; selectors use [`crate::selector`]);
//! [`duration`] parses `30s`-style durations; [`subst`]
//! resolves `{{control.x}}` substitutions; [`validate`] checks a document and reports every
//! problem at once with its JSON pointer; [`spec`] is the rendered job spec, its deterministic id
//! and content hash; [`diff`] compares two documents; [`schema`] prints the JSON Schema.
//!
//! `services` enable workers and state playbooks; `controls` (with parameters) are implemented
//! by `components` (hosts chosen by a label selector); `assessments` say how to check (executor,
//! interval, timeout, thresholds); `attestations` tie an assessment, controls and a component,
//! and render into one job spec per matching host, or one per `pool` when they name one.

pub mod diff;
pub mod duration;
pub mod schema;
pub mod spec;
pub mod subst;
pub mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use spec::{HexIdError, JobSpec, ProofBytes, Provenance, SpecId, SpecSignature, SpecTarget, TargetKind};
pub use validate::{parse_document, validate_document};

/// The document format version this build understands.
pub const DOCUMENT_VERSION: u32 = 1;

/// One account's configuration document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Steward configuration document")]
pub struct ConfigDocument {
    /// Document format version; must be 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Free text describing the document.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Service enablement: which workers and state playbooks the account's hosts get.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Controls: requirements with parameters.
    #[serde(default)]
    pub controls: Vec<Control>,
    /// Components: sets of hosts (by label selector) and the controls they implement.
    #[serde(default)]
    pub components: Vec<Component>,
    /// Assessments: how a check is run.
    #[serde(default)]
    pub assessments: Vec<Assessment>,
    /// Attestations: which assessment attests which controls for which component.
    #[serde(default)]
    pub attestations: Vec<Attestation>,
    /// Pools: runtime selectors for specs that are not bound to one host.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Alarm rules: when a check's results raise an alarm, and when it clears.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<AlarmRule>,
    /// Remediation rules: what runs when an alarm fires, and the guards around it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediations: Vec<RemediationRule>,
}

impl Default for ConfigDocument {
    fn default() -> Self {
        ConfigDocument {
            version: DOCUMENT_VERSION,
            description: String::new(),
            services: Vec::new(),
            controls: Vec::new(),
            components: Vec::new(),
            assessments: Vec::new(),
            attestations: Vec::new(),
            pools: Vec::new(),
            alarms: Vec::new(),
            remediations: Vec::new(),
        }
    }
}

fn default_version() -> u32 {
    DOCUMENT_VERSION
}

fn default_true() -> bool {
    true
}

/// A service enabled (or disabled) for the account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service id (letters, digits, `-`, `_`).
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Whether the service is enabled.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The worker the service needs on each host (installed when missing).
    pub worker: String,
    /// URL of the playbook that brings a host to the desired state.
    pub playbook: String,
    /// Hosts the service applies to (label selector; empty = every host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

/// A control parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Text(String),
}

impl ParamValue {
    /// The value as substituted into executor parameters.
    #[must_use]
    pub fn render(&self) -> String {
        match self {
            ParamValue::Bool(b) => b.to_string(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Text(s) => s.clone(),
        }
    }
}

/// A control: a requirement, with parameters assessments may reference as `{{control.NAME}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Control id (letters, digits, `-`, `_`).
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Parameters (name → value); names are letters, digits, `-`, `_`.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
}

/// A component: the hosts matching `selector`, implementing `controls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Component id.
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Label selector choosing the hosts (`k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`);
    /// empty = every host.
    #[serde(default)]
    pub selector: String,
    /// Ids of the controls this component implements.
    #[serde(default)]
    pub controls: Vec<String>,
}

/// How an assessment is executed. Every text field may use `{{control.NAME}}` (or
/// `{{control.ID.NAME}}`) substitutions, resolved when job specs are rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Executor {
    /// Run a local command.
    Command(CommandExecutor),
    /// Make an HTTP request.
    Http(HttpExecutor),
    /// Open a TCP connection.
    Tcp(TcpExecutor),
    /// Run a command on a remote host over SSH.
    Ssh(SshExecutor),
}

impl Executor {
    /// The executor kind's name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Executor::Command(_) => "command",
            Executor::Http(_) => "http",
            Executor::Tcp(_) => "tcp",
            Executor::Ssh(_) => "ssh",
        }
    }
}

/// Parameters of the `command` executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandExecutor {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// How the program reports: `exit_code` (the default: exit 0 passes, anything else fails,
    /// a JSON last line gives metrics) or `plugin` (the monitoring-plugins convention).
    #[serde(default, skip_serializing_if = "OutputConvention::is_default")]
    pub convention: OutputConvention,
}

/// How a `command` or `ssh` check reports its state and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputConvention {
    /// Exit 0 passes, any other exit fails; the last stdout line, when it is a JSON object,
    /// gives metrics.
    #[default]
    ExitCode,
    /// The convention of Nagios, Naemon, Icinga and Sensu plugins (Debian's
    /// `monitoring-plugins`): exit 0/1/2/3 = pass/warn/fail/unknown (any other exit is
    /// unknown), the first line's text is the message, and performance data after `|`
    /// (`'label'=value[UOM];warn;crit;min;max`, several per line, on the first line and on
    /// any later line after a `|`) gives metrics with units.
    Plugin,
}

impl OutputConvention {
    /// Whether this is the default (`exit_code`), which is not written out.
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == OutputConvention::ExitCode
    }
}

/// Parameters of the `http` executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpExecutor {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Expected status code (default 200).
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Text the body must contain, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body_contains: String,
    /// Verify TLS certificates (default true).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_status() -> u16 {
    200
}

/// Parameters of the `tcp` executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpExecutor {
    /// Host name or address to connect to.
    pub host: String,
    /// Port (1–65535).
    pub port: u16,
}

/// Parameters of the `ssh` executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshExecutor {
    /// Remote host name or address.
    pub host: String,
    /// Remote port (default 22).
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Path of the private key on the runtime's machine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_path: String,
    /// Command to run remotely.
    pub command: String,
    /// How the remote command reports (as for `command`).
    #[serde(default, skip_serializing_if = "OutputConvention::is_default")]
    pub convention: OutputConvention,
}

fn default_ssh_port() -> u16 {
    22
}

/// Comparison used by a threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The metric is bad when greater than the limit.
    #[default]
    Gt,
    /// Greater than or equal.
    Ge,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
}

/// A threshold on one metric of an assessment's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Metric name.
    pub metric: String,
    /// How the metric is compared with the limits (default `gt`).
    #[serde(default)]
    pub op: Comparison,
    /// Limit past which the result is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<f64>,
    /// Limit past which the result fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<f64>,
}

/// An assessment: how to check something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assessment {
    /// Assessment id.
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The executor and its parameters.
    pub executor: Executor,
    /// How often to run, as `500ms`, `30s`, `5m`, `1h` (default `60s`).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// How long one run may take (default `10s`; at most the interval).
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Thresholds on the result's metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Threshold>,
}

fn default_interval() -> String {
    "60s".to_owned()
}

fn default_timeout() -> String {
    "10s".to_owned()
}

/// An attestation: `assessment` attests `controls` for `component`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Attestation id.
    pub id: String,
    /// The assessment that is run.
    pub assessment: String,
    /// The component it attests.
    pub component: String,
    /// The controls it attests (each implemented by the component); empty = all of the
    /// component's controls.
    #[serde(default)]
    pub controls: Vec<String>,
    /// Render one spec for this pool instead of one per host of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A pool: specs any runtime matching `selector` may run (for example checks of external URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Pool id.
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Label selector of the runtimes that may run the pool's specs (empty = any runtime).
    #[serde(default)]
    pub selector: String,
}

/// A condition on one result: a metric compared with a value, or the result's status.
/// Exactly one of `metric` or `status` is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Metric name (as the check reports it: a plugin's perfdata label, a JSON key, `latency_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// How the metric is compared with `value` (default `gt`).
    #[serde(default)]
    pub op: Comparison,
    /// The value the metric is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The result statuses that meet the condition (`pass`, `warn`, `fail`, `error`, `timeout`,
    /// `unknown`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
}

/// "N of the last M results".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Breaches {
    /// How many results must meet the condition ...
    pub n: u32,
    /// ... out of the last this many (at most 21).
    pub of: u32,
}

/// Flap detection: percent state change over the last 21 results (Naemon and Icinga's method,
/// newer changes weighted more).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flapping {
    /// Flapping starts when the percent state change reaches this (default 50).
    #[serde(default = "default_flap_start")]
    pub start: f64,
    /// Flapping ends when it falls below this (default 25; below `start`).
    #[serde(default = "default_flap_stop")]
    pub stop: f64,
}

fn default_flap_start() -> f64 {
    50.0
}

fn default_flap_stop() -> f64 {
    25.0
}

/// An alarm rule: one alarm per (host, check) whose results meet `when`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Rule id (letters, digits, `-`, `_`).
    pub id: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The check (attestation id) it watches; empty = every check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// Hosts it applies to (label selector; empty = every host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// When a result breaches. Optional only when `stale_after` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// When a firing alarm clears (hysteresis); default: a result that does not breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<Condition>,
    /// Fire only once results have breached without a break for this long (`5m`).
    #[serde(default, rename = "for", skip_serializing_if = "String::is_empty")]
    pub for_: String,
    /// Fire when N of the last M results breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaches: Option<Breaches>,
    /// Fire (reason `stale`) when no result came for this many intervals of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<u32>,
    /// Flap detection (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flapping: Option<Flapping>,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default = "default_severity")]
    pub severity: String,
}

fn default_severity() -> String {
    "warning".to_owned()
}

/// What a remediation runs on the alarm's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RemediationAction {
    /// A command (argv, no shell).
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// A playbook (URL the config manager serves, or `file://`).
    Playbook {
        /// The playbook's URL.
        url: String,
    },
}

/// A remediation rule: when an alarm of `alarm` fires, run `action` on its host, within guards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemediationRule {
    /// Rule id.
    pub id: String,
    /// The alarm rule it answers.
    pub alarm: String,
    /// Only alarms of this check (empty = any).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// Only hosts matching this label selector (empty = every host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// What runs.
    pub action: Option<RemediationAction>,
    /// Run on a runner matching this selector instead of the alarm's host (empty = the host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runner: String,
    /// Least time between two remediations of one host by this rule (default `10m`).
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    /// Most remediations of this rule in flight at once (the blast radius; default 5).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// Most remediations of this rule started per hour (default 20).
    #[serde(default = "default_per_hour")]
    pub max_per_hour: u32,
    /// Hold every remediation until an operator approves it.
    #[serde(default)]
    pub approval: bool,
    /// How long a remediation run may take (default `5m`).
    #[serde(default = "default_remediation_timeout")]
    pub timeout: String,
}

fn default_cooldown() -> String {
    "10m".to_owned()
}

fn default_in_flight() -> u32 {
    5
}

fn default_per_hour() -> u32 {
    20
}

fn default_remediation_timeout() -> String {
    "5m".to_owned()
}

impl ConfigDocument {
    /// The canonical JSON encoding (struct field order, sorted maps): what the content hash
    /// covers and what state archives store.
    ///
    /// # Errors
    /// Never in practice (every field encodes); the serializer's error otherwise.
    pub fn canonical_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Hex SHA-256 of [`Self::canonical_json`].
    ///
    /// # Errors
    /// As [`Self::canonical_json`].
    pub fn content_hash(&self) -> Result<String, serde_json::Error> {
        use sha2::Digest;
        Ok(spec::hex(&sha2::Sha256::digest(self.canonical_json()?)))
    }
}
