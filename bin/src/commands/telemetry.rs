//! Telemetry on the command line: the hub's retention flags (`--telemetry-raw`,
//! `--telemetry-1m`, `--telemetry-1h` of `up`, `server` and `node`) and `steward metrics HOST
//! [CHECK]`, which queries the history of a host's checks and draws each metric as a small
//! terminal graph (or prints the query replies with `-o json`).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use steward_actors::telemetry::client::TelemetryClient;
use steward_actors::telemetry::TelemetryConfig;
use steward_subjects::api::telemetry::{MetricSeries, StatusStep, TelemetryQuery, TelemetryReply};
use steward_subjects::streams::TelemetryRetention;
use steward_subjects::Subjects;

use crate::args::{parse_duration, parse_long_duration};
use crate::cli::{Global, OutputFormat};

/// How long the hub keeps telemetry history.
#[derive(Debug, Clone, Args)]
pub struct HubTelemetryArgs {
    /// How long raw telemetry points (one per result) are kept (`48h`, `2d`).
    #[arg(long = "telemetry-raw", default_value = "48h", value_parser = parse_long_duration)]
    pub raw: Duration,
    /// How long 1-minute rollups are kept.
    #[arg(long = "telemetry-1m", default_value = "30d", value_parser = parse_long_duration)]
    pub minute: Duration,
    /// How long 1-hour rollups are kept.
    #[arg(long = "telemetry-1h", default_value = "400d", value_parser = parse_long_duration)]
    pub hour: Duration,
}

impl Default for HubTelemetryArgs {
    fn default() -> Self {
        let r = TelemetryRetention::default();
        HubTelemetryArgs { raw: r.raw, minute: r.minute, hour: r.hour }
    }
}

impl HubTelemetryArgs {
    /// The telemetry settings of a hub process.
    #[must_use]
    pub fn config(&self) -> TelemetryConfig {
        TelemetryConfig {
            retention: TelemetryRetention { raw: self.raw, minute: self.minute, hour: self.hour },
            ..TelemetryConfig::default()
        }
    }
}

/// Options of `steward metrics`.
#[derive(Debug, Clone, Args)]
pub struct MetricsQueryArgs {
    /// The host.
    pub host: String,
    /// One check (attestation id); every check of the host when left out.
    pub check: Option<String>,
    /// Only this metric.
    #[arg(long)]
    pub metric: Option<String>,
    /// How far back (`30m`, `24h`, `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_long_duration)]
    pub since: Duration,
    /// Step between points (`1m`, `5m`, `1h`); by default about 60 steps over `--since`.
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<Duration>,
    /// Graph width in columns (steps are merged to fit).
    #[arg(long, default_value_t = 72)]
    pub width: usize,
}

/// Steps a query is given by default: the range cut in about 60, rounded to a step people read.
fn default_step(since: Duration) -> Duration {
    const NICE: [u64; 12] = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600];
    let want = since.as_secs() / 60;
    let secs = NICE.iter().copied().find(|n| *n >= want).unwrap_or(86_400);
    Duration::from_secs(secs)
}

/// `steward metrics HOST [CHECK]`.
///
/// # Errors
/// When NATS cannot be reached, the host has no history, or a query is refused.
pub async fn metrics(global: &Global, args: MetricsQueryArgs) -> anyhow::Result<()> {
    let client = global.connect().await?;
    let telemetry = TelemetryClient::new(client, Subjects::new(global.account.clone()));
    let checks = match &args.check {
        Some(c) => vec![c.clone()],
        None => {
            let listed = telemetry.series(&args.host).await.context("cannot list the host's series")?;
            if listed.series.is_empty() {
                anyhow::bail!("no telemetry stored for host {}", args.host);
            }
            listed.series.into_iter().map(|s| s.check).collect()
        }
    };
    let step = args.step.unwrap_or_else(|| default_step(args.since));
    let now = steward_actors::now_ms();
    let since_ms = u64::try_from(args.since.as_millis()).unwrap_or(u64::MAX);
    let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
    let mut replies = Vec::new();
    for check in checks {
        let q = TelemetryQuery {
            host: args.host.clone(),
            check,
            metric: args.metric.clone(),
            from_ms: now.saturating_sub(since_ms),
            to_ms: now + 1,
            step_ms,
        };
        replies.push(telemetry.query(&q).await.with_context(|| format!("query of {}", q.check))?);
    }
    match global.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&Printed(&replies))?),
        OutputFormat::Table => {
            for r in &replies {
                print!("{}", render(r, args.width));
            }
        }
    }
    Ok(())
}

/// What `-o json` prints: one query reply per check.
#[derive(Serialize)]
struct Printed<'a>(&'a [TelemetryReply]);

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The column of step `t` in a graph of `width` columns over the reply's range.
fn column(r: &TelemetryReply, t: u64, width: usize) -> usize {
    let span = (r.to_ms - r.from_ms).max(1);
    let w = width.max(1) as u128;
    let c = u128::from(t.saturating_sub(r.from_ms)) * w / u128::from(span);
    usize::try_from(c).unwrap_or(usize::MAX).min(width.max(1) - 1)
}

/// A sparkline of a metric's averages: one block per column, blank where nothing was stored.
fn sparkline(r: &TelemetryReply, m: &MetricSeries, width: usize) -> String {
    let (lo, hi) =
        m.points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.min), hi.max(p.max)));
    let mut cols: Vec<Option<(f64, u64)>> = vec![None; width.max(1)];
    for p in &m.points {
        #[allow(clippy::cast_precision_loss)]
        let weighted = p.avg * p.count as f64;
        let slot = cols[column(r, p.t_ms, width)].get_or_insert((0.0, 0));
        slot.0 += weighted;
        slot.1 += p.count;
    }
    cols.iter()
        .map(|c| match c {
            None => ' ',
            Some((_, 0)) => ' ',
            Some((sum, n)) => {
                #[allow(clippy::cast_precision_loss)]
                let avg = sum / *n as f64;
                let level = if hi > lo { ((avg - lo) / (hi - lo) * 7.0).round() } else { 3.0 };
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = level.clamp(0.0, 7.0) as usize;
                BLOCKS[i]
            }
        })
        .collect()
}

/// A line of the worst status per column: ` ` nothing, `.` pass, `w` warn, `F` fail, error or
/// timeout, `?` unknown.
fn status_line(r: &TelemetryReply, steps: &[StatusStep], width: usize) -> String {
    let mut cols = vec![0u8; width.max(1)];
    for s in steps {
        let c = &s.counts;
        let rank = if c.fail + c.error + c.timeout > 0 {
            4
        } else if c.warn > 0 {
            3
        } else if c.unknown > 0 {
            2
        } else {
            u8::from(c.pass > 0)
        };
        let col = &mut cols[column(r, s.t_ms, width)];
        *col = (*col).max(rank);
    }
    cols.iter().map(|r| [' ', '.', '?', 'w', 'F'][usize::from(*r)]).collect()
}

fn num(v: f64) -> String {
    if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02} {:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

/// The graph of one reply: one column per step, steps merged when there are more than `width`.
fn render(r: &TelemetryReply, width: usize) -> String {
    let steps = usize::try_from((r.to_ms - r.from_ms).div_ceil(r.step_ms.max(1))).unwrap_or(usize::MAX);
    let width = width.clamp(1, steps.max(1));
    let mut out = format!(
        "{} {}  {} to {} UTC, step {}, from the {} history\n",
        r.host,
        r.check,
        time(r.from_ms),
        time(r.to_ms),
        crate::output::duration(r.step_ms / 1000),
        r.source
    );
    let total = |f: fn(&steward_subjects::api::telemetry::StatusCounts) -> u64| -> u64 {
        r.statuses.iter().map(|s| f(&s.counts)).sum()
    };
    out.push_str(&format!(
        "  {:<24} |{}| pass {} warn {} fail {} error {} timeout {} unknown {}\n",
        "status",
        status_line(r, &r.statuses, width),
        total(|c| c.pass),
        total(|c| c.warn),
        total(|c| c.fail),
        total(|c| c.error),
        total(|c| c.timeout),
        total(|c| c.unknown)
    ));
    if r.metrics.is_empty() {
        out.push_str("  (no metric values in this range)\n");
    }
    for m in &r.metrics {
        let min = m.points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
        let max = m.points.iter().map(|p| p.max).fold(f64::NEG_INFINITY, f64::max);
        let n: u64 = m.points.iter().map(|p| p.count).sum();
        #[allow(clippy::cast_precision_loss)]
        let avg = m.points.iter().map(|p| p.avg * p.count as f64).sum::<f64>() / n.max(1) as f64;
        let last = m.points.last().map_or(0.0, |p| p.last);
        let name = match &m.unit {
            Some(u) if !u.is_empty() => format!("{} ({u})", m.metric),
            _ => m.metric.clone(),
        };
        out.push_str(&format!(
            "  {name:<24} |{}| min {} avg {} max {} last {} ({n} values)\n",
            sparkline(r, m, width),
            num(min),
            num(avg),
            num(max),
            num(last)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use steward_subjects::api::telemetry::{StatusCounts, StepPoint};

    use super::*;

    #[test]
    fn default_steps_are_round_and_about_sixty_per_range() {
        assert_eq!(default_step(Duration::from_secs(24 * 3600)), Duration::from_secs(1800));
        assert_eq!(default_step(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(default_step(Duration::from_secs(60)), Duration::from_secs(1));
    }

    #[test]
    fn a_rising_metric_draws_a_rising_line() {
        let points: Vec<StepPoint> = (0..8u64)
            .map(|i| {
                #[allow(clippy::cast_precision_loss)]
                let v = i as f64;
                StepPoint { t_ms: i * 1000, min: v, max: v, avg: v, last: v, count: 1 }
            })
            .collect();
        let r = TelemetryReply {
            host: "h".into(),
            check: "c".into(),
            from_ms: 0,
            to_ms: 8000,
            step_ms: 1000,
            metrics: vec![MetricSeries { metric: "v".into(), unit: Some("%".into()), points }],
            statuses: vec![StatusStep { t_ms: 3000, counts: StatusCounts { fail: 1, ..StatusCounts::default() } }],
            ..TelemetryReply::default()
        };
        let text = render(&r, 8);
        assert!(text.contains("|▁▂▃▄▅▆▇█| min 0 avg 3.5 max 7 last 7 (8 values)"), "{text}");
        assert!(text.contains("|   F    | pass 0 warn 0 fail 1"), "{text}");
        assert!(text.contains("v (%)"), "{text}");
    }
}
