//! Reading telemetry back: which level answers a query, reading one series' range of it, and
//! folding what was read into steps (per metric min, max, avg, last, count; results per status).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;
use steward_subjects::api::telemetry::{
    MetricSeries, RollupPart, SeriesInfo, SeriesReply, StatusStep, StepPoint, TelemetryPoint, TelemetryQuery,
    TelemetryReply, MAX_QUERY_STEPS, MIN_QUERY_STEP_MS,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{telemetry_stream, TelemetryRetention};
use steward_subjects::subject::TelemetryLevel;
use steward_subjects::{HostId, Subjects, Token, TokenKind, WireError};

use super::store;

/// How far before a query's start the stored messages are read (points stored a little before
/// their own time by a host whose clock runs ahead).
const READ_MARGIN_MS: u64 = 5 * 60_000;

/// The level that answers a query of `step_ms` starting at `from_ms`: the coarsest whose buckets
/// are no wider than the step, moved to a coarser one when its retention no longer covers the
/// start.
#[must_use]
pub fn pick_level(step_ms: u64, from_ms: u64, now_ms: u64, retention: &TelemetryRetention) -> TelemetryLevel {
    let levels = [TelemetryLevel::Raw, TelemetryLevel::Minute, TelemetryLevel::Hour];
    let finest = levels.iter().rev().find(|l| l.width_ms() <= step_ms).copied().unwrap_or(TelemetryLevel::Raw);
    let mut pick = finest;
    for l in levels.iter().filter(|l| **l >= finest) {
        pick = *l;
        let kept = u64::try_from(retention.of(*l).as_millis()).unwrap_or(u64::MAX);
        if from_ms >= now_ms.saturating_sub(kept) {
            break;
        }
    }
    pick
}

/// Checks a query; answers its host and check tokens.
///
/// # Errors
/// `invalid`, saying what is wrong.
pub fn validate(q: &TelemetryQuery) -> Result<(HostId, Token), WireError> {
    let host = HostId::parse(&q.host).map_err(|e| WireError::invalid(format!("host: {e}")))?;
    let check = Token::parse(TokenKind::Name, &q.check).map_err(|e| WireError::invalid(format!("check: {e}")))?;
    if q.to_ms <= q.from_ms {
        return Err(WireError::invalid(format!("to_ms ({}) must be after from_ms ({})", q.to_ms, q.from_ms)));
    }
    if q.step_ms < MIN_QUERY_STEP_MS {
        return Err(WireError::invalid(format!(
            "step_ms {} is below the smallest step, {MIN_QUERY_STEP_MS} ms",
            q.step_ms
        )));
    }
    let steps = (q.to_ms - q.from_ms).div_ceil(q.step_ms);
    if steps > MAX_QUERY_STEPS {
        return Err(WireError::invalid(format!(
            "{steps} steps asked for, at most {MAX_QUERY_STEPS}: use a larger step or a shorter range"
        )));
    }
    if q.metric.as_deref().is_some_and(str::is_empty) {
        return Err(WireError::invalid("metric: empty name"));
    }
    Ok((host, check))
}

/// Answers a query from the streams.
///
/// # Errors
/// `invalid` for a bad query, `unavailable` when the stream cannot be read.
pub async fn run(
    js: &jetstream::Context,
    subjects: &Subjects,
    retention: &TelemetryRetention,
    q: &TelemetryQuery,
) -> Result<TelemetryReply, WireError> {
    let started = std::time::Instant::now();
    let (host, check) = validate(q)?;
    let level = pick_level(q.step_ms, q.from_ms, crate::now_ms(), retention);
    let from = q.from_ms - q.from_ms % q.step_ms;
    let start = from.saturating_sub(READ_MARGIN_MS + level.width_ms());
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start) * 1_000_000)
        .map_err(|e| WireError::invalid(format!("from_ms: {e}")))?;
    let mut steps = Steps::new(from, q.to_ms, q.step_ms);
    let read = store::read_range(
        js,
        telemetry_stream(level),
        &subjects.telemetry_series_subject(level, &host, &check),
        consumer::DeliverPolicy::ByStartTime { start_time },
        |m| {
            steps.add(level, &m.payload);
            Ok(())
        },
    )
    .await
    .map_err(|e| WireError::unavailable(e.to_string()))?;
    let (metrics, statuses) = steps.finish(q.metric.as_deref());
    Ok(TelemetryReply {
        host: q.host.clone(),
        check: q.check.clone(),
        source: level.name().to_owned(),
        from_ms: from,
        to_ms: q.to_ms,
        step_ms: q.step_ms,
        metrics,
        statuses,
        read,
        took_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    })
}

/// Stored items folded into steps.
struct Steps {
    from: u64,
    to: u64,
    step: u64,
    by_step: BTreeMap<u64, RollupPart>,
}

impl Steps {
    fn new(from: u64, to: u64, step: u64) -> Self {
        Steps { from, to, step, by_step: BTreeMap::new() }
    }

    fn slot(&mut self, t: u64) -> Option<&mut RollupPart> {
        if t < self.from || t >= self.to {
            return None;
        }
        let s = t - t % self.step;
        let step = self.step;
        Some(self.by_step.entry(s).or_insert_with(|| RollupPart::empty(s, step)))
    }

    /// Folds one stored message of `level` in (undecodable ones are skipped).
    fn add(&mut self, level: TelemetryLevel, payload: &[u8]) {
        if level == TelemetryLevel::Raw {
            if let Ok(p) = codec::decode::<TelemetryPoint>(Encoding::MsgPack, payload) {
                if let Some(slot) = self.slot(p.ts_ms) {
                    slot.add_point(&p);
                }
            }
        } else if let Ok(p) = codec::decode::<RollupPart>(Encoding::MsgPack, payload) {
            if let Some(slot) = self.slot(p.bucket_ms) {
                slot.merge(&p);
            }
        }
    }

    fn finish(self, only: Option<&str>) -> (Vec<MetricSeries>, Vec<StatusStep>) {
        let mut metrics: BTreeMap<String, MetricSeries> = BTreeMap::new();
        let mut statuses = Vec::new();
        for (t, part) in &self.by_step {
            statuses.push(StatusStep { t_ms: *t, counts: part.statuses });
            for (name, a) in &part.metrics {
                if only.is_some_and(|m| m != name) || a.count == 0 {
                    continue;
                }
                let series = metrics.entry(name.clone()).or_insert_with(|| MetricSeries {
                    metric: name.clone(),
                    unit: None,
                    points: Vec::new(),
                });
                if series.unit.is_none() {
                    series.unit = part.units.get(name).cloned();
                }
                series.points.push(StepPoint {
                    t_ms: *t,
                    min: a.min,
                    max: a.max,
                    avg: a.avg(),
                    last: a.last,
                    count: a.count,
                });
            }
        }
        (metrics.into_values().collect(), statuses)
    }
}

/// The series of `host`: checks with raw points (their latest point), then checks known only
/// from rollups.
///
/// # Errors
/// `invalid` host, `unavailable` when a stream cannot be read.
pub async fn series(js: &jetstream::Context, subjects: &Subjects, host: &str) -> Result<SeriesReply, WireError> {
    let host_id = HostId::parse(host).map_err(|e| WireError::invalid(format!("host: {e}")))?;
    let unavailable = |e: String| WireError::unavailable(e);
    let mut found: BTreeMap<String, SeriesInfo> = BTreeMap::new();
    for level in [TelemetryLevel::Raw, TelemetryLevel::Minute, TelemetryLevel::Hour] {
        let stream = js.get_stream(telemetry_stream(level)).await.map_err(|e| unavailable(e.to_string()))?;
        let mut info = stream
            .info_with_subjects(subjects.telemetry_host_filter(level, &host_id))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut listed = Vec::new();
        while let Some((subject, count)) = info.try_next().await.map_err(|e| unavailable(e.to_string()))? {
            listed.push((subject, count));
        }
        for (subject, count) in listed {
            let Some((_, check)) = subjects.parse_telemetry_series(level, &subject) else { continue };
            if found.contains_key(check.as_str()) {
                continue;
            }
            let last = tokio::time::timeout(Duration::from_secs(5), stream.direct_get_last_for_subject(subject))
                .await
                .map_err(|_| unavailable("telemetry stream did not answer".to_owned()))?
                .map_err(|e| unavailable(e.to_string()))?;
            let mut s = SeriesInfo { check: check.to_string(), ..SeriesInfo::default() };
            if level == TelemetryLevel::Raw {
                if let Ok(p) = codec::decode::<TelemetryPoint>(Encoding::MsgPack, &last.payload) {
                    s.metrics = p.metrics.keys().cloned().collect();
                    s.last_ts_ms = p.ts_ms;
                    s.last_status = Some(p.status);
                }
                s.raw_points = count as u64;
            } else if let Ok(p) = codec::decode::<RollupPart>(Encoding::MsgPack, &last.payload) {
                s.metrics = p.metrics.keys().cloned().collect();
                s.last_ts_ms = p.bucket_ms;
            }
            found.insert(check.to_string(), s);
        }
    }
    Ok(SeriesReply { host: host.to_owned(), series: found.into_values().collect() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_level_follows_the_step_and_the_retention() {
        let r = TelemetryRetention::default();
        let now = 1000 * 86_400_000;
        let day = 86_400_000;
        assert_eq!(pick_level(10_000, now - day, now, &r), TelemetryLevel::Raw);
        assert_eq!(pick_level(60_000, now - day, now, &r), TelemetryLevel::Minute);
        assert_eq!(pick_level(300_000, now - day, now, &r), TelemetryLevel::Minute);
        assert_eq!(pick_level(3_600_000, now - day, now, &r), TelemetryLevel::Hour);
        // Raw is kept 48 h: a 10 s step three days back reads the 1-minute level.
        assert_eq!(pick_level(10_000, now - 3 * day, now, &r), TelemetryLevel::Minute);
        assert_eq!(pick_level(60_000, now - 60 * day, now, &r), TelemetryLevel::Hour);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let ok = TelemetryQuery {
            host: "web-01".into(),
            check: "disk".into(),
            metric: None,
            from_ms: 0,
            to_ms: 3_600_000,
            step_ms: 60_000,
        };
        assert!(validate(&ok).is_ok());
        let cases = [
            (TelemetryQuery { host: "web.01".into(), ..ok.clone() }, "host"),
            (TelemetryQuery { check: "a b".into(), ..ok.clone() }, "check"),
            (TelemetryQuery { to_ms: 0, ..ok.clone() }, "must be after"),
            (TelemetryQuery { step_ms: 10, ..ok.clone() }, "smallest step"),
            (TelemetryQuery { step_ms: 1000, to_ms: 86_400_000, ..ok.clone() }, "at most"),
            (TelemetryQuery { metric: Some(String::new()), ..ok.clone() }, "metric"),
        ];
        for (q, want) in cases {
            let e = validate(&q).unwrap_err();
            assert!(e.message.contains(want), "{q:?}: {e:?}");
        }
    }
}
