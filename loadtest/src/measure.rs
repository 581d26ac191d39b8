//! Latency histograms and throughput.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in nanoseconds (1 ns to 60 s, 3 significant figures).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    #[must_use]
    pub fn new() -> Self {
        #[allow(clippy::expect_used)] // fixed, valid bounds
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        Latency { hist }
    }

    /// Records one duration (clamped into range).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1, 60_000_000_000);
        let _ = self.hist.record(ns);
    }

    /// Records the time since `start`.
    pub fn record_since(&mut self, start: Instant) {
        self.record(start.elapsed());
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles of the report, in microseconds.
    #[must_use]
    pub fn summary(&self) -> LatencySummary {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        LatencySummary {
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1000.0,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Operations per second for `ops` operations over `elapsed`.
#[must_use]
pub fn rate(ops: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        ops as f64 / secs
    }
}

/// The share of `total` operations that worker `i` of `workers` performs (the first
/// `total % workers` workers take one more), so the shares add up to `total`.
#[must_use]
pub fn share(total: u64, workers: u64, i: u64) -> u64 {
    total / workers + u64::from(i < total % workers)
}

/// Median of a list of figures (for repeated runs).
#[must_use]
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(Duration::from_micros(i));
        }
        let s = l.summary();
        assert!((s.p50_us - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 5.0, "{s:?}");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!((0..7).map(|i| share(100, 7, i)).sum::<u64>(), 100);
        assert_eq!(share(10, 4, 1), 3);
        assert_eq!(share(10, 4, 2), 2);
        assert!((rate(100, Duration::from_secs(2)) - 50.0).abs() < f64::EPSILON);
    }
}
