//! One rollup level in memory: the parts of the buckets not yet written, each with the smallest
//! input sequence it holds, and the rule that says which inputs a restart must replay.
//!
//! A level takes inputs (raw points for the 1-minute level, 1-minute parts for the 1-hour level),
//! each with its sequence in the input stream, and keeps one part per (series, bucket). A flush
//! at `cut` takes every part whose bucket ends at or before `cut`; the level's mark then says
//! "every input up to `upto` whose bucket ends by `cut` is written", and `replay_from` is the
//! smallest input sequence still held. After a restart the inputs from `replay_from` on are read
//! again and [`Level::already_written`] drops those the mark covers, which rebuilds exactly the
//! parts that were held.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_subjects::api::telemetry::{LevelMark, RollupPart};
use steward_subjects::subject::TelemetryLevel;

/// A series: (host, check).
pub(crate) type SeriesKey = (Arc<str>, Arc<str>);

/// One part held in memory.
#[derive(Debug, Clone)]
struct Held {
    part: RollupPart,
    min_seq: u64,
}

/// One rollup level in memory.
#[derive(Debug)]
pub(crate) struct Level {
    width: u64,
    /// The last committed mark.
    pub(crate) mark: LevelMark,
    /// The last input sequence added.
    last_seq: u64,
    held: BTreeMap<(SeriesKey, u64), Held>,
}

impl Level {
    /// A level of `level` (1m or 1h) resuming from `mark`.
    pub(crate) fn new(level: TelemetryLevel, mark: LevelMark) -> Self {
        let width = level.width_ms().max(1);
        Level { width, last_seq: mark.upto, mark, held: BTreeMap::new() }
    }

    /// The start of the bucket holding `ts_ms`.
    pub(crate) fn bucket_of(&self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.width
    }

    /// Whether the input `seq` at `ts_ms` is covered by the committed mark (written already).
    pub(crate) fn already_written(&self, seq: u64, ts_ms: u64) -> bool {
        seq <= self.mark.upto && self.bucket_of(ts_ms) + self.width <= self.mark.cut_ms
    }

    /// Adds input `seq` at `ts_ms`: `apply` folds it into its bucket's part.
    pub(crate) fn add(&mut self, series: &SeriesKey, seq: u64, ts_ms: u64, apply: impl FnOnce(&mut RollupPart)) {
        let bucket = self.bucket_of(ts_ms);
        let width = self.width;
        let held = self
            .held
            .entry((series.clone(), bucket))
            .or_insert_with(|| Held { part: RollupPart::empty(bucket, width), min_seq: seq });
        held.min_seq = held.min_seq.min(seq);
        apply(&mut held.part);
        self.last_seq = self.last_seq.max(seq);
    }

    /// The last input sequence added (or covered by the mark).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Parts held.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether a flush at `cut` would write anything.
    pub(crate) fn due(&self, cut: u64) -> bool {
        self.held.keys().any(|(_, b)| b + self.width <= cut)
    }

    /// Takes the parts whose bucket ends at or before `cut`, numbered `flush`.
    pub(crate) fn take_due(&mut self, cut: u64, flush: u64) -> Vec<(SeriesKey, RollupPart)> {
        let width = self.width;
        let due: Vec<(SeriesKey, u64)> = self.held.keys().filter(|(_, b)| b + width <= cut).cloned().collect();
        due.into_iter()
            .filter_map(|k| {
                let mut held = self.held.remove(&k)?;
                held.part.flush = flush;
                Some((k.0, held.part))
            })
            .collect()
    }

    /// The smallest input sequence still held (`upto + 1` when nothing is).
    pub(crate) fn replay_from(&self, upto: u64) -> u64 {
        self.held.values().map(|h| h.min_seq).min().unwrap_or(upto + 1).min(upto + 1)
    }

    /// The mark after a flush at `cut` of every input up to `upto`, numbered `flush`.
    pub(crate) fn commit(&mut self, cut: u64, upto: u64, flush: u64) {
        self.mark = LevelMark { cut_ms: cut, upto, replay_from: self.replay_from(upto), flush, intent: None };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_precision_loss)]
    use std::collections::BTreeMap;

    use steward_subjects::api::result::ResultStatus;
    use steward_subjects::api::telemetry::TelemetryPoint;

    use super::*;

    fn point(ts: u64, v: f64) -> TelemetryPoint {
        TelemetryPoint {
            ts_ms: ts,
            status: ResultStatus::Pass,
            metrics: BTreeMap::from([("v".to_owned(), v)]),
            ..TelemetryPoint::default()
        }
    }

    /// Against a model (every point summed per bucket): flushes at arbitrary cuts, a restart
    /// after each flush that replays from the mark, late points, and the parts written add up
    /// to every point exactly once.
    #[test]
    fn restarts_and_late_points_neither_lose_nor_repeat_a_point() {
        let series: SeriesKey = (Arc::from("h"), Arc::from("c"));
        // Inputs in arrival order: mostly in time order, some late by minutes.
        let mut inputs: Vec<(u64, TelemetryPoint)> = Vec::new();
        for i in 0..600u64 {
            let ts = if i % 50 == 7 { i * 1000 - 200_000.min(i * 1000) } else { i * 1000 };
            inputs.push((i + 1, point(ts, i as f64)));
        }
        let mut model: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
        for (_, p) in &inputs {
            let e = model.entry(p.ts_ms - p.ts_ms % 60_000).or_default();
            e.0 += 1;
            e.1 += p.metrics["v"];
        }
        let mut written: Vec<RollupPart> = Vec::new();
        let mut level = Level::new(TelemetryLevel::Minute, LevelMark::default());
        let mut flush = 0;
        for chunk in inputs.chunks(37) {
            for (seq, p) in chunk {
                level.add(&series, *seq, p.ts_ms, |part| part.add_point(p));
            }
            let cut = chunk.last().unwrap().1.ts_ms.saturating_sub(15_000).max(level.mark.cut_ms);
            flush += 1;
            let upto = level.last_seq();
            written.extend(level.take_due(cut, flush).into_iter().map(|(_, p)| p));
            level.commit(cut, upto, flush);
            // Restart: a new level replays the inputs from the mark.
            let mark = level.mark.clone();
            let mut again = Level::new(TelemetryLevel::Minute, mark.clone());
            for (seq, p) in inputs.iter().filter(|(s, _)| *s >= mark.replay_from && *s <= upto) {
                if !again.already_written(*seq, p.ts_ms) {
                    again.add(&series, *seq, p.ts_ms, |part| part.add_point(p));
                }
            }
            assert_eq!(again.held(), level.held());
            level = again;
        }
        flush += 1;
        written.extend(level.take_due(u64::MAX, flush).into_iter().map(|(_, p)| p));
        let mut merged: BTreeMap<u64, RollupPart> = BTreeMap::new();
        for p in &written {
            merged.entry(p.bucket_ms).or_insert_with(|| RollupPart::empty(p.bucket_ms, 60_000)).merge(p);
        }
        let got: BTreeMap<u64, (u64, f64)> =
            merged.iter().map(|(b, p)| (*b, (p.metrics["v"].count, p.metrics["v"].sum))).collect();
        assert_eq!(got, model);
        assert!(written.len() > model.len(), "late points made extra parts");
    }
}
