//! Telemetry history: the stored forms (raw points, rollup parts, the writer's checkpoint) and
//! the `telemetry.query` and `telemetry.series` endpoints.
//!
//! A rollup part is a partial aggregate of one series over one bucket; a bucket normally has one
//! part, and a late point (a result that reached the hub after its bucket was written) adds
//! another. Readers merge the parts of a bucket ([`RollupPart::merge`]), so late points count
//! without rewriting what is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::result::ResultStatus;

/// How many results of each status a bucket saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCounts {
    /// `pass`.
    pub pass: u64,
    /// `warn`.
    pub warn: u64,
    /// `fail`.
    pub fail: u64,
    /// `error`.
    pub error: u64,
    /// `timeout`.
    pub timeout: u64,
    /// `unknown`.
    pub unknown: u64,
}

impl StatusCounts {
    /// Counts one result of `status`.
    pub fn add(&mut self, status: ResultStatus) {
        match status {
            ResultStatus::Pass => self.pass += 1,
            ResultStatus::Warn => self.warn += 1,
            ResultStatus::Fail => self.fail += 1,
            ResultStatus::Error => self.error += 1,
            ResultStatus::Timeout => self.timeout += 1,
            ResultStatus::Unknown => self.unknown += 1,
        }
    }

    /// Adds another bucket's counts.
    pub fn merge(&mut self, o: &StatusCounts) {
        self.pass += o.pass;
        self.warn += o.warn;
        self.fail += o.fail;
        self.error += o.error;
        self.timeout += o.timeout;
        self.unknown += o.unknown;
    }

    /// Every result counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.pass + self.warn + self.fail + self.error + self.timeout + self.unknown
    }
}

/// Aggregate of one metric over a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricAgg {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values (the average is `sum / count`).
    pub sum: f64,
    /// How many values.
    pub count: u64,
    /// The value with the latest time.
    pub last: f64,
    /// Time of `last`, ms since the Unix epoch.
    pub last_ts_ms: u64,
}

impl Default for MetricAgg {
    fn default() -> Self {
        MetricAgg { min: f64::INFINITY, max: f64::NEG_INFINITY, sum: 0.0, count: 0, last: 0.0, last_ts_ms: 0 }
    }
}

impl MetricAgg {
    /// The aggregate of one value at `ts_ms`.
    #[must_use]
    pub fn one(value: f64, ts_ms: u64) -> Self {
        MetricAgg { min: value, max: value, sum: value, count: 1, last: value, last_ts_ms: ts_ms }
    }

    /// Merges another aggregate in (the later `last` wins; on a tie, `o`'s).
    pub fn merge(&mut self, o: &MetricAgg) {
        if o.count == 0 {
            return;
        }
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        if self.count == 0 || o.last_ts_ms >= self.last_ts_ms {
            self.last = o.last;
            self.last_ts_ms = o.last_ts_ms;
        }
        self.count += o.count;
    }

    /// The average (0 when empty).
    #[must_use]
    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let n = self.count as f64;
            self.sum / n
        }
    }
}

/// One raw point: one result's status and metrics (`STEWARD_TELEMETRY_RAW`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryPoint {
    /// When the check ended (the result's `ended_at_ms`), ms since the Unix epoch.
    pub ts_ms: u64,
    /// The result's status.
    pub status: ResultStatus,
    /// Its metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Units of the metrics that have one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub units: BTreeMap<String, String>,
    /// Stream sequence of the result's message in `STEWARD_RESULTS`.
    pub result_seq: u64,
    /// Index of the result in that message.
    pub index: u32,
}

/// A partial aggregate of one series over one bucket (`STEWARD_TELEMETRY_1M`, `_1H`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RollupPart {
    /// Bucket start, ms since the Unix epoch (a multiple of `width_ms`).
    pub bucket_ms: u64,
    /// Bucket width in ms (60,000 or 3,600,000).
    pub width_ms: u64,
    /// Results by status.
    pub statuses: StatusCounts,
    /// Metric aggregates, by name.
    pub metrics: BTreeMap<String, MetricAgg>,
    /// Units of the metrics that have one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub units: BTreeMap<String, String>,
    /// The writer's flush that wrote it (parts of one bucket from different flushes add up).
    pub flush: u64,
}

impl RollupPart {
    /// An empty part of the bucket starting at `bucket_ms`.
    #[must_use]
    pub fn empty(bucket_ms: u64, width_ms: u64) -> Self {
        RollupPart { bucket_ms, width_ms, ..RollupPart::default() }
    }

    /// Adds one raw point.
    pub fn add_point(&mut self, p: &TelemetryPoint) {
        self.statuses.add(p.status);
        for (name, v) in &p.metrics {
            self.metrics.entry(name.clone()).or_default().merge(&MetricAgg::one(*v, p.ts_ms));
        }
        for (name, u) in &p.units {
            self.units.entry(name.clone()).or_insert_with(|| u.clone());
        }
    }

    /// Adds another part (of this bucket or of a finer bucket inside it).
    pub fn merge(&mut self, o: &RollupPart) {
        self.statuses.merge(&o.statuses);
        for (name, a) in &o.metrics {
            self.metrics.entry(name.clone()).or_default().merge(a);
        }
        for (name, u) in &o.units {
            self.units.entry(name.clone()).or_insert_with(|| u.clone());
        }
    }

    /// How many results it counts.
    #[must_use]
    pub fn results(&self) -> u64 {
        self.statuses.total()
    }
}

/// Where the raw stage stands: every result up to `done` (stream sequence, index) has its raw
/// point stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawMark {
    /// Last result position whose point is stored: (stream sequence, index).
    pub done: (u64, u32),
    /// A batch being written: its last position and the raw stream's last sequence before it.
    pub intent: Option<((u64, u32), u64)>,
}

/// Where one rollup level stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LevelMark {
    /// Buckets ending at or before this time are written, for every input up to `upto`.
    pub cut_ms: u64,
    /// Last input sequence (raw stream for 1m, 1m stream for 1h) taken into account.
    pub upto: u64,
    /// First input sequence still held in memory (not yet written): a restart replays from here.
    pub replay_from: u64,
    /// Number of the last flush.
    pub flush: u64,
    /// A flush being written: (cut, upto, the output stream's last sequence before it).
    pub intent: Option<(u64, u64, u64)>,
}

/// The telemetry writer's checkpoint of one account (`steward_telemetry`, `<account>.writer`),
/// updated with compare-and-set; it is also the writer's lock (`instance` holds it until
/// `expires_at_ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryCheckpoint {
    /// The writing hub instance.
    pub instance: String,
    /// Until when it holds the writer lock (hub clock, ms).
    pub expires_at_ms: u64,
    /// The raw stage.
    pub raw: RawMark,
    /// The 1-minute level.
    pub minute: LevelMark,
    /// The 1-hour level.
    pub hour: LevelMark,
}

/// `telemetry.query`: points of one series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryQuery {
    /// Host.
    pub host: String,
    /// Check (the attestation id).
    pub check: String,
    /// Only this metric (all when `None`).
    pub metric: Option<String>,
    /// Start, ms since the Unix epoch (inclusive).
    pub from_ms: u64,
    /// End, ms since the Unix epoch (exclusive).
    pub to_ms: u64,
    /// Step in ms (at least 1000; at most 10,000 steps per query).
    pub step_ms: u64,
}

/// Largest number of steps one query may ask for.
pub const MAX_QUERY_STEPS: u64 = 10_000;
/// Smallest step of a query, in ms.
pub const MIN_QUERY_STEP_MS: u64 = 1000;

/// One step of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepPoint {
    /// Step start, ms since the Unix epoch.
    pub t_ms: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Average.
    pub avg: f64,
    /// Latest value.
    pub last: f64,
    /// How many values.
    pub count: u64,
}

impl Default for StepPoint {
    fn default() -> Self {
        StepPoint { t_ms: 0, min: 0.0, max: 0.0, avg: 0.0, last: 0.0, count: 0 }
    }
}

/// The steps of one metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricSeries {
    /// Metric name.
    pub metric: String,
    /// Its unit, if it has one.
    pub unit: Option<String>,
    /// Steps that have values, in time order.
    pub points: Vec<StepPoint>,
}

/// Results by status in one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusStep {
    /// Step start, ms since the Unix epoch.
    pub t_ms: u64,
    /// Counts.
    pub counts: StatusCounts,
}

/// Reply of `telemetry.query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryReply {
    /// Host.
    pub host: String,
    /// Check.
    pub check: String,
    /// Which history answered: `raw`, `1m` or `1h`.
    pub source: String,
    /// Start (inclusive), aligned down to the step.
    pub from_ms: u64,
    /// End (exclusive).
    pub to_ms: u64,
    /// Step.
    pub step_ms: u64,
    /// Per metric.
    pub metrics: Vec<MetricSeries>,
    /// Results by status per step (steps without results left out).
    pub statuses: Vec<StatusStep>,
    /// Stored messages read to answer.
    pub read: u64,
    /// How long the hub took to answer, in µs (reading and folding; not the way to and from it).
    pub took_us: u64,
}

/// `telemetry.series`: the series of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesRequest {
    /// Host.
    pub host: String,
}

/// One series of a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesInfo {
    /// Check.
    pub check: String,
    /// Metrics of its latest stored point (or rollup).
    pub metrics: Vec<String>,
    /// Time of that point, ms since the Unix epoch.
    pub last_ts_ms: u64,
    /// Status of the latest raw point, when raw points are kept.
    pub last_status: Option<ResultStatus>,
    /// Raw points kept.
    pub raw_points: u64,
}

/// Reply of `telemetry.series`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesReply {
    /// Host.
    pub host: String,
    /// Its series, by check.
    pub series: Vec<SeriesInfo>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    #[test]
    fn parts_merge_like_the_points_they_hold() {
        let points: Vec<TelemetryPoint> = (0..10u64)
            .map(|i| TelemetryPoint {
                ts_ms: 1000 * (10 - i),
                status: if i % 3 == 0 { ResultStatus::Fail } else { ResultStatus::Pass },
                #[allow(clippy::cast_precision_loss)]
                metrics: BTreeMap::from([("v".to_owned(), i as f64)]),
                ..TelemetryPoint::default()
            })
            .collect();
        let mut whole = RollupPart::empty(0, 60_000);
        points.iter().for_each(|p| whole.add_point(p));
        let (mut a, mut b) = (RollupPart::empty(0, 60_000), RollupPart::empty(0, 60_000));
        points[..4].iter().for_each(|p| a.add_point(p));
        points[4..].iter().for_each(|p| b.add_point(p));
        let mut merged = RollupPart::empty(0, 60_000);
        merged.merge(&b);
        merged.merge(&a);
        assert_eq!(merged, whole);
        let v = whole.metrics["v"];
        assert_eq!((v.min, v.max, v.sum, v.count, v.last, v.last_ts_ms), (0.0, 9.0, 45.0, 10, 0.0, 10_000));
        assert_eq!(v.avg(), 4.5);
        assert_eq!((whole.statuses.fail, whole.statuses.pass, whole.results()), (4, 6, 10));
    }
}
