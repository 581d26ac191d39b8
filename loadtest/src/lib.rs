//! The Steward load-test harness.
//!
//! Layout: [`env`] starts the NATS deployment a run measures (a single node or a 3-node R3
//! cluster through `steward_deploy`, or an existing one with `--nats`) and the hub processes;
//! [`procstat`] samples CPU seconds and resident memory of those processes from `/proc`;
//! [`measure`] holds the latency histogram and throughput helpers; [`report`] the JSON report
//! and the terminal table; [`checker`] the correctness counters (double leases, lost and
//! duplicated items) computed from a recorded history; [`progress`] a progress line on stderr;
//! [`scenario`] the registry of scenarios and the context they run in; [`scenarios`] the
//! scenarios themselves, starting with [`scenarios::raw`], the plain async-nats ceiling every
//! other scenario is compared against in the same run.

pub mod checker;
pub mod env;
pub mod measure;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod scenarios;
