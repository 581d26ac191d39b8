//! CPU and memory of processes, read from `/proc`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clock ticks per second used by `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) a process has used so far.
#[must_use]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident memory of a process now, in bytes.
#[must_use]
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Figures for a group of processes over one measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcFigures {
    /// CPU seconds used during the measurement, all processes together.
    pub cpu_seconds: f64,
    /// Highest resident memory sampled during the measurement, all processes together, bytes.
    pub peak_rss_bytes: u64,
}

/// Samples a group of processes while a measurement runs.
#[derive(Debug)]
pub struct Sampler {
    pids: Vec<u32>,
    cpu_start: f64,
    peak: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_bytes(*p)).sum()
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

impl Sampler {
    /// Starts sampling `pids` every 50 ms.
    #[must_use]
    pub fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(Mutex::new(total_rss(&pids)));
        let (p, pk) = (pids.clone(), peak.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let now = total_rss(&p);
                if let Ok(mut g) = pk.lock() {
                    *g = (*g).max(now);
                }
            }
        });
        Sampler { cpu_start: total_cpu(&pids), pids, peak, task }
    }

    /// Stops sampling and returns the figures.
    #[must_use]
    pub fn finish(self) -> ProcFigures {
        self.task.abort();
        let last = total_rss(&self.pids);
        let peak = self.peak.lock().map(|g| *g).unwrap_or(0).max(last);
        ProcFigures { cpu_seconds: (total_cpu(&self.pids) - self.cpu_start).max(0.0), peak_rss_bytes: peak }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
    }
}
