//! Fault scenarios: Steward's real processes (`steward server`, `steward edge`, `steward
//! runtime`, nats-server) under load while a fault is injected — a SIGKILL, a lost cluster node,
//! a cut leaf link, an outage longer than the dedupe window, a paused lease leader, a full disk,
//! an overload. Each scenario records a history (see [`crate::checker`]), judges it, and answers
//! one [`FaultReport`]: load during the fault, acknowledged, stored, lost, duplicates, double
//! executions, runs that never ended, and the time to recover.
//!
//! Layout: [`procs`] starts and signals `steward` processes (kill -9, stop, continue, restart);
//! [`exec_log`] builds check commands that log their own executions and reads those logs back as
//! history; one module per fault. [`registry`] lists them in the order `faults` runs them; the
//! binary runs them with `steward-loadtest faults [NAME...]`.

pub mod disk_full;
pub mod exec_log;
pub mod fleet;
pub mod hub_kill;
pub mod leader_pause;
pub mod leaf_cut;
pub mod long_outage;
pub mod node_loss;
pub mod overload;
pub mod procs;
pub mod proxy;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::checker::CheckReport;

/// Runs a fault scenario.
pub type FaultFn = for<'a> fn(&'a FaultCtx) -> BoxFuture<'a, anyhow::Result<FaultReport>>;

/// A registered fault scenario.
#[derive(Clone, Copy)]
pub struct FaultDef {
    /// Name on the command line (`hub_kill`, ...).
    pub name: &'static str,
    /// The fault, in one sentence.
    pub about: &'static str,
    /// The scenario.
    pub run: FaultFn,
}

impl std::fmt::Debug for FaultDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultDef").field("name", &self.name).finish()
    }
}

/// What every fault scenario gets.
#[derive(Debug)]
pub struct FaultCtx {
    /// Short version (the test suite's): smaller load, shorter faults; still real processes and
    /// real faults.
    pub quick: bool,
    /// A folder of its own for this scenario (servers, data folders, logs, histories).
    pub dir: PathBuf,
    /// Authenticate every connection (JWT operator mode) where the scenario's topology allows.
    pub auth: bool,
    /// Size overrides, `name=N` (`--set`).
    pub overrides: HashMap<String, u64>,
}

impl FaultCtx {
    /// `full` normally, `quick` in the short version; `--set name=N` overrides both.
    #[must_use]
    pub fn size(&self, name: &str, full: u64, quick: u64) -> u64 {
        if let Some(v) = self.overrides.get(name) {
            return *v;
        }
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// What a fault scenario found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultReport {
    /// Scenario name.
    pub name: String,
    /// The fault injected, in words (`hub SIGKILL at 5 s, restarted after 2 s`).
    pub fault: String,
    /// The load kept running through the fault, in words (`40 runtimes x 100 specs, ...`).
    pub load: String,
    /// Operations per second accepted while the fault lasted (what "load during the fault"
    /// means for this scenario is said in `load`).
    pub load_during_fault_per_sec: f64,
    /// Items the producers got an acknowledgement for.
    pub acked: u64,
    /// Distinct items found in the store afterwards.
    pub stored: u64,
    /// The checker's verdict on the recorded history (lost, duplicates, double leases, double
    /// executions, runs never ended).
    pub check: CheckReport,
    /// Time from the end of the fault (restart, link back, resume) until the system served
    /// normally again, in ms; what "normally" means is said in `extra`.
    pub recovery_ms: Option<f64>,
    /// Scenario-specific figures.
    pub extra: serde_json::Value,
    /// The command that reproduces this row.
    pub command: String,
}

impl FaultReport {
    /// Whether the checker found nothing wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.check.is_clean()
    }
}

/// Every fault scenario, in the order `faults` runs them.
#[must_use]
pub fn registry() -> Vec<FaultDef> {
    vec![
        hub_kill::DEF,
        node_loss::DEF,
        leaf_cut::DEF,
        long_outage::DEF,
        leader_pause::DEF,
        disk_full::DEF,
        overload::DEF,
    ]
}

/// The reports as a terminal table, one row per scenario.
#[must_use]
pub fn table(reports: &[FaultReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<13} {:>10} {:>9} {:>9} {:>5} {:>5} {:>6} {:>6} {:>11}  fault",
        "scenario", "load/s", "acked", "stored", "lost", "dups", "2xexec", "runs∞", "recovery"
    );
    for r in reports {
        let recovery = r.recovery_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"));
        let _ = writeln!(
            s,
            "{:<13} {:>10.0} {:>9} {:>9} {:>5} {:>5} {:>6} {:>6} {:>11}  {}",
            r.name,
            r.load_during_fault_per_sec,
            r.acked,
            r.stored,
            r.check.lost,
            r.check.duplicates,
            r.check.double_executions + r.check.double_leases,
            r.check.runs_not_ended,
            recovery,
            r.fault
        );
        for e in r.check.examples.iter().take(10) {
            let _ = writeln!(s, "    ! {e}");
        }
    }
    s
}
