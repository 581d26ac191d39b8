//! Correctness counters computed from a recorded history, so a fast run is also a correct run.
//!
//! Scenarios record what they observed as [`Event`]s (JSON lines when saved): leases granted
//! and ended, executions started and stopped (what a runtime's check process really did), items
//! acknowledged to a producer and items found in the store, runs started and runs ended.
//! [`check`] then counts double leases (two live holders of one spec at once), double
//! executions (one spec's check running in two runtimes at once), lost items (acknowledged but
//! never stored), duplicated items (stored more than once) and runs that never ended.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// `holder` was granted `spec` with `epoch` at time `at` (ns since the run started).
    LeaseGranted {
        /// Spec id.
        spec: String,
        /// Runtime holding it.
        holder: String,
        /// Lease epoch.
        epoch: u64,
        /// Time, ns since the start of the run.
        at: u64,
    },
    /// `holder`'s lease of `spec` at `epoch` ended (released, expired or revoked) at `at`.
    LeaseEnded {
        /// Spec id.
        spec: String,
        /// Runtime that held it.
        holder: String,
        /// Lease epoch.
        epoch: u64,
        /// Time, ns since the start of the run.
        at: u64,
    },
    /// The producer got an acknowledgement for the item with idempotency key `key`.
    ItemAcked {
        /// Idempotency key.
        key: String,
    },
    /// The item with idempotency key `key` was found in the store (once per stored copy).
    ItemStored {
        /// Idempotency key.
        key: String,
    },
    /// `runtime` started executing the check of `spec` at `at` (ns, any clock shared by the
    /// run's processes: the check processes write it themselves).
    ExecStarted {
        /// Spec id (or the check's name, when the spec id is not known to the check).
        spec: String,
        /// Runtime that executed it.
        runtime: String,
        /// Time, ns.
        at: u64,
    },
    /// `runtime`'s execution of `spec` that started last ended at `at`.
    ExecEnded {
        /// Spec id.
        spec: String,
        /// Runtime that executed it.
        runtime: String,
        /// Time, ns.
        at: u64,
    },
    /// Run `run` was accepted by the dispatcher.
    RunStarted {
        /// Run id.
        run: String,
    },
    /// Run `run` reached terminal state `state` (`success`, `failure`, `timeout`, `canceled`).
    RunEnded {
        /// Run id.
        run: String,
        /// Its terminal state.
        state: String,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Pairs of overlapping leases of one spec by different holders, or one epoch granted twice.
    pub double_leases: u64,
    /// Items acknowledged but never stored.
    pub lost: u64,
    /// Extra stored copies of items (an item stored three times counts two).
    pub duplicates: u64,
    /// Pairs of overlapping executions of one spec by different runtimes.
    #[serde(default)]
    pub double_executions: u64,
    /// Runs started and never seen ending.
    #[serde(default)]
    pub runs_not_ended: u64,
    /// Up to ten examples of each problem, for the report.
    pub examples: Vec<String>,
}

impl CheckReport {
    /// Whether nothing was wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.double_leases == 0
            && self.lost == 0
            && self.duplicates == 0
            && self.double_executions == 0
            && self.runs_not_ended == 0
    }
}

const MAX_EXAMPLES: usize = 10;

/// Counts the anomalies in `history`.
#[must_use]
pub fn check(history: &[Event]) -> CheckReport {
    let mut report = CheckReport::default();
    let examples = |report: &mut CheckReport, s: String| {
        if report.examples.len() < 5 * MAX_EXAMPLES {
            report.examples.push(s);
        }
    };

    // Leases: build (start, end, holder, epoch) intervals per spec.
    let mut open: HashMap<(&str, &str, u64), u64> = HashMap::new();
    let mut intervals: BTreeMap<&str, Vec<(u64, u64, &str, u64)>> = BTreeMap::new();
    let mut epochs: HashMap<(&str, u64), &str> = HashMap::new();
    for e in history {
        match e {
            Event::LeaseGranted { spec, holder, epoch, at } => {
                if let Some(prev) = epochs.insert((spec, *epoch), holder) {
                    if prev != holder {
                        report.double_leases += 1;
                        examples(&mut report, format!("spec {spec}: epoch {epoch} granted to {prev} and {holder}"));
                    }
                }
                open.insert((spec, holder, *epoch), *at);
            }
            Event::LeaseEnded { spec, holder, epoch, at } => {
                if let Some(start) = open.remove(&(spec.as_str(), holder.as_str(), *epoch)) {
                    intervals.entry(spec).or_default().push((start, *at, holder, *epoch));
                }
            }
            _ => {}
        }
    }
    for ((spec, holder, epoch), start) in open {
        intervals.entry(spec).or_default().push((start, u64::MAX, holder, epoch));
    }
    for (spec, mut ivs) in intervals {
        ivs.sort_unstable();
        // Sweep: compare each interval with the latest-ending one before it.
        let mut reach: Option<(u64, &str, u64)> = None;
        for (start, end, holder, epoch) in ivs {
            if let Some((r_end, r_holder, r_epoch)) = reach {
                if start < r_end && r_holder != holder {
                    report.double_leases += 1;
                    examples(
                        &mut report,
                        format!(
                            "spec {spec}: held by {r_holder} (epoch {r_epoch}) and {holder} (epoch {epoch}) at once"
                        ),
                    );
                }
                if end > r_end {
                    reach = Some((end, holder, epoch));
                }
            } else {
                reach = Some((end, holder, epoch));
            }
        }
    }

    // Executions: the same sweep over (start, end, runtime) intervals per spec.
    let mut running: HashMap<(&str, &str), u64> = HashMap::new();
    let mut runs: BTreeMap<&str, Vec<(u64, u64, &str, u64)>> = BTreeMap::new();
    for e in history {
        match e {
            Event::ExecStarted { spec, runtime, at } => {
                running.insert((spec, runtime), *at);
            }
            Event::ExecEnded { spec, runtime, at } => {
                if let Some(start) = running.remove(&(spec.as_str(), runtime.as_str())) {
                    runs.entry(spec).or_default().push((start, *at, runtime, 0));
                }
            }
            _ => {}
        }
    }
    for ((spec, runtime), start) in running {
        runs.entry(spec).or_default().push((start, u64::MAX, runtime, 0));
    }
    for (spec, mut ivs) in runs {
        ivs.sort_unstable();
        let mut reach: Option<(u64, &str)> = None;
        for (start, end, runtime, _) in ivs {
            match reach {
                Some((r_end, r_runtime)) => {
                    if start < r_end && r_runtime != runtime {
                        report.double_executions += 1;
                        examples(&mut report, format!("spec {spec}: executed by {r_runtime} and {runtime} at once"));
                    }
                    if end > r_end {
                        reach = Some((end, runtime));
                    }
                }
                None => reach = Some((end, runtime)),
            }
        }
    }

    // Runs.
    let ended: HashMap<&str, &str> = history
        .iter()
        .filter_map(|e| match e {
            Event::RunEnded { run, state } => Some((run.as_str(), state.as_str())),
            _ => None,
        })
        .collect();
    for e in history {
        if let Event::RunStarted { run } = e {
            if !ended.contains_key(run.as_str()) {
                report.runs_not_ended += 1;
                examples(&mut report, format!("run {run}: started and never ended"));
            }
        }
    }

    // Items.
    let mut stored: HashMap<&str, u64> = HashMap::new();
    for e in history {
        if let Event::ItemStored { key } = e {
            *stored.entry(key).or_default() += 1;
        }
    }
    for e in history {
        if let Event::ItemAcked { key } = e {
            if !stored.contains_key(key.as_str()) {
                report.lost += 1;
                examples(&mut report, format!("item {key}: acknowledged but never stored"));
            }
        }
    }
    let mut dups: Vec<(&str, u64)> = stored.into_iter().filter(|(_, n)| *n > 1).collect();
    dups.sort_unstable();
    for (key, n) in dups {
        report.duplicates += n - 1;
        examples(&mut report, format!("item {key}: stored {n} times"));
    }
    report
}

/// Parses a history saved as JSON lines.
///
/// # Errors
/// The line number and reason of the first line that is not an [`Event`].
pub fn parse_jsonl(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
