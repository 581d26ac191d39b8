//! The Steward load-test harness: a fast run must also be a correct one, so every scenario
//! reports correctness counters next to its throughput and latency.
//!
//! Layout: [`env`](mod@env) starts the NATS deployment a run measures (a single node or a 3-node R3
//! cluster through `steward_deploy`, or an existing one with `--nats`) and the hub processes,
//! [`auth`] its identities in `--auth` (JWT) mode;
//! [`procstat`] samples CPU seconds and resident memory of those processes from `/proc`;
//! [`measure`] holds the latency histogram and throughput helpers; [`report`] the JSON report
//! and the terminal table; [`checker`] the correctness counters (double leases, lost and
//! duplicated items) computed from a recorded history; [`progress`] a progress line on stderr;
//! [`scenario`] the scenario definition and the context scenarios run in; [`scenarios`] the
//! scenarios themselves and their registry: [`scenarios::raw`] (the plain async-nats ceiling
//! every other scenario is compared against in the same run), [`scenarios::presence`],
//! [`scenarios::dispatch`], [`scenarios::lease`], [`scenarios::results`] and
//! [`scenarios::apply`]. The binary (`main.rs`) parses the command line, runs the selected
//! scenarios and writes the report.

pub mod auth;
pub mod checker;
pub mod env;
pub mod faults;
pub mod measure;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod scenarios;
