//! The run report: one entry per measured scenario, as JSON (`--report FILE.json`) and as a
//! table on the terminal.

use serde::{Deserialize, Serialize};

use crate::measure::LatencySummary;
use crate::procstat::ProcFigures;

/// Ratio of a scenario's throughput to the matching raw-NATS figure of the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingRatio {
    /// The raw measurement compared against (`raw.js_publish_async`, ...).
    pub raw: String,
    /// Its operations per second in this run.
    pub raw_ops_per_sec: f64,
    /// This scenario's operations per second divided by the raw figure.
    pub ratio: f64,
}

/// One measured scenario (or one measurement of a scenario with several).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Name, `scenario` or `scenario.measurement`.
    pub name: String,
    /// What was measured, in a sentence.
    pub description: String,
    /// Parameters of the measurement (counts, batch sizes, ...).
    pub params: serde_json::Value,
    /// Operations completed.
    pub operations: u64,
    /// Wall time of the measurement, seconds.
    pub elapsed_secs: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Latency percentiles, when latencies were recorded.
    pub latency: Option<LatencySummary>,
    /// Operations that failed.
    pub errors: u64,
    /// Items stored or delivered more than once.
    pub duplicates: u64,
    /// Items acknowledged but never stored or delivered.
    pub lost: u64,
    /// CPU and peak memory of nats-server during the measurement (when this run started it).
    pub nats: Option<ProcFigures>,
    /// CPU and peak memory of the hub processes during the measurement (when there are any).
    pub hub: Option<ProcFigures>,
    /// Ratio to the raw ceiling (absent for the raw measurements themselves).
    pub ceiling: Option<CeilingRatio>,
    /// Further figures specific to the scenario (detection times, memory per host, ...).
    pub extra: serde_json::Value,
}

/// A whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Harness version.
    pub version: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Where it ran: cores, memory, nats-server version.
    pub machine: Machine,
    /// `single`, `cluster3` or `external`.
    pub topology: String,
    /// Whether `--quick` sizes were used.
    pub quick: bool,
    /// `open`, or `jwt` with `--auth` (every connection authenticated).
    #[serde(default)]
    pub auth: String,
    /// With `--auth`: which identity each kind of connection used.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub identities: serde_json::Value,
    /// The measurements, in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// Medians per measurement over the rounds of `--repeat` (empty for a single round).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub medians: Vec<MedianFigures>,
}

/// Median figures of one measurement over several rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MedianFigures {
    /// Measurement name.
    pub name: String,
    /// Rounds it ran.
    pub runs: usize,
    /// Median operations per second.
    pub ops_per_sec: f64,
    /// Median of the p50 latencies, µs.
    pub p50_us: Option<f64>,
    /// Median of the p99 latencies, µs.
    pub p99_us: Option<f64>,
    /// Median ratio to the raw ceiling.
    pub ratio: Option<f64>,
}

/// The machine a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// nats-server version, when this run started the server.
    pub nats_server: Option<String>,
}

impl Machine {
    /// Reads the machine's figures.
    #[must_use]
    pub fn detect(nats_server: Option<String>) -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        Machine {
            cores: std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1),
            memory_bytes,
            nats_server,
        }
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

fn fmt_us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2}ms", x / 1000.0)
    } else {
        format!("{x:.0}µs")
    }
}

fn fmt_mib(b: u64) -> String {
    format!("{:.0}MiB", b as f64 / (1024.0 * 1024.0))
}

impl RunReport {
    /// The report as an aligned table.
    #[must_use]
    pub fn table(&self) -> String {
        let headers =
            ["scenario", "ops", "ops/s", "p50", "p99", "p99.9", "err", "dup", "lost", "cpu s", "peak rss", "× raw"];
        let mut rows: Vec<Vec<String>> = Vec::new();
        for s in &self.scenarios {
            let (p50, p99, p999) = s
                .latency
                .map(|l| (fmt_us(l.p50_us), fmt_us(l.p99_us), fmt_us(l.p999_us)))
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
            let procs: Vec<ProcFigures> = [s.nats, s.hub].into_iter().flatten().collect();
            let cpu = if procs.is_empty() {
                "-".into()
            } else {
                format!("{:.2}", procs.iter().map(|p| p.cpu_seconds).sum::<f64>())
            };
            let rss = if procs.is_empty() { "-".into() } else { fmt_mib(procs.iter().map(|p| p.peak_rss_bytes).sum()) };
            rows.push(vec![
                s.name.clone(),
                s.operations.to_string(),
                fmt_rate(s.ops_per_sec),
                p50,
                p99,
                p999,
                s.errors.to_string(),
                s.duplicates.to_string(),
                s.lost.to_string(),
                cpu,
                rss,
                s.ceiling.as_ref().map_or_else(|| "-".into(), |c| format!("{:.2}", c.ratio)),
            ]);
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            out.push_str(&parts.join("  "));
            out.push('\n');
        };
        line(headers.iter().map(|h| (*h).to_owned()).collect());
        for r in rows {
            line(r);
        }
        if !self.medians.is_empty() {
            out.push_str("\nmedians over rounds:\n");
            for m in &self.medians {
                out.push_str(&format!(
                    "  {:<40} runs {}  ops/s {}  p50 {}  p99 {}  × raw {}\n",
                    m.name,
                    m.runs,
                    fmt_rate(m.ops_per_sec),
                    m.p50_us.map_or_else(|| "-".into(), fmt_us),
                    m.p99_us.map_or_else(|| "-".into(), fmt_us),
                    m.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
                ));
            }
        }
        out
    }

    /// Whether every measurement kept its correctness counters at zero.
    #[must_use]
    pub fn correct(&self) -> bool {
        self.scenarios.iter().all(|s| s.duplicates == 0 && s.lost == 0)
    }
}
