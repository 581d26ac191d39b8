//! Scenarios and the context they run in.
//!
//! A scenario is a [`ScenarioDef`]: a name, a sentence, and an async function that takes the
//! run's [`Ctx`] and returns one [`ScenarioReport`] per measurement. Scenarios size themselves
//! with [`Ctx::size`] (full or `--quick`), measure with [`Ctx::begin`] / [`Measurement::finish`]
//! (which samples nats-server and hub processes), and compare themselves with the raw ceiling of
//! the same run through [`Ctx::ceiling`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::env::Deployment;
use crate::measure::{rate, Latency};
use crate::procstat::Sampler;
use crate::report::{CeilingRatio, ScenarioReport};

/// Runs a scenario.
pub type RunFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, anyhow::Result<Vec<ScenarioReport>>>;

/// A registered scenario.
#[derive(Clone, Copy)]
pub struct ScenarioDef {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it measures.
    pub about: &'static str,
    /// The scenario.
    pub run: RunFn,
}

impl std::fmt::Debug for ScenarioDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenarioDef").field("name", &self.name).finish()
    }
}

/// Options every scenario sees.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sizes (about a minute for every scenario together); checks correctness, not speed.
    pub quick: bool,
    /// One NATS connection per simulated host or runtime instead of a few shared ones.
    pub conn_per_host: bool,
    /// Account the scenarios use.
    pub account: String,
    /// Size overrides: `name=value` pairs given with `--set`.
    pub overrides: HashMap<String, u64>,
}

/// The context of a run.
pub struct Ctx {
    /// The deployment measured.
    pub deployment: std::sync::Arc<Deployment>,
    /// Run options.
    pub options: Options,
    /// Pids of hub processes started by scenarios (sampled with the hub figures).
    hub_pids: std::sync::Mutex<Vec<u32>>,
    ceilings: Mutex<HashMap<String, f64>>,
    extra_reports: std::sync::Mutex<Vec<ScenarioReport>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("deployment", &self.deployment).field("options", &self.options).finish()
    }
}

impl Ctx {
    /// A context for `deployment`.
    #[must_use]
    pub fn new(deployment: std::sync::Arc<Deployment>, options: Options) -> Self {
        Ctx {
            deployment,
            options,
            hub_pids: Default::default(),
            ceilings: Default::default(),
            extra_reports: Default::default(),
        }
    }

    /// `full` normally, `quick` with `--quick`; `--set name=N` overrides both.
    #[must_use]
    pub fn size(&self, name: &str, full: u64, quick: u64) -> u64 {
        if let Some(v) = self.options.overrides.get(name) {
            return *v;
        }
        if self.options.quick {
            quick
        } else {
            full
        }
    }

    /// Registers a hub process whose CPU and memory are reported with each measurement.
    pub fn track_hub(&self, pid: u32) {
        if let Ok(mut g) = self.hub_pids.lock() {
            g.push(pid);
        }
    }

    /// Stops tracking a hub process.
    pub fn untrack_hub(&self, pid: u32) {
        if let Ok(mut g) = self.hub_pids.lock() {
            g.retain(|p| *p != pid);
        }
    }

    /// Starts a measurement: samples nats-server and hub processes from now on.
    #[must_use]
    pub fn begin(&self) -> Measurement {
        let nats = self.deployment.nats_pids();
        let hub = self.hub_pids.lock().map(|g| g.clone()).unwrap_or_default();
        Measurement {
            nats: (!nats.is_empty()).then(|| Sampler::start(nats)),
            hub: (!hub.is_empty()).then(|| Sampler::start(hub)),
            started: Instant::now(),
        }
    }

    /// The raw ceiling `raw` (`raw.js_publish_async`, ...) in operations per second, measured
    /// in this run; measured now (and added to the report) if this run has not measured it yet.
    ///
    /// # Errors
    /// When the raw measurement fails.
    pub async fn ceiling(&self, raw: &str) -> anyhow::Result<f64> {
        let mut guard = self.ceilings.lock().await;
        if let Some(v) = guard.get(raw) {
            return Ok(*v);
        }
        drop(guard);
        let report = crate::scenarios::raw::measure_named(self, raw).await?;
        let v = report.ops_per_sec;
        guard = self.ceilings.lock().await;
        guard.insert(raw.to_owned(), v);
        if let Ok(mut extra) = self.extra_reports.lock() {
            extra.push(report);
        }
        Ok(v)
    }

    /// Records a raw measurement so later scenarios compare against it.
    pub async fn record_ceiling(&self, report: &ScenarioReport) {
        self.ceilings.lock().await.insert(report.name.clone(), report.ops_per_sec);
    }

    /// Sets `report.ceiling` from the raw figure `raw` of this run.
    ///
    /// # Errors
    /// When the raw measurement fails.
    pub async fn compare(&self, report: &mut ScenarioReport, raw: &str) -> anyhow::Result<()> {
        let raw_ops = self.ceiling(raw).await?;
        report.ceiling = Some(CeilingRatio {
            raw: raw.to_owned(),
            raw_ops_per_sec: raw_ops,
            ratio: if raw_ops > 0.0 { report.ops_per_sec / raw_ops } else { 0.0 },
        });
        Ok(())
    }

    /// Raw measurements taken on demand by [`Ctx::ceiling`] since the last call.
    pub fn take_extra_reports(&self) -> Vec<ScenarioReport> {
        self.extra_reports.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default()
    }
}

/// A measurement in progress.
#[derive(Debug)]
pub struct Measurement {
    nats: Option<Sampler>,
    hub: Option<Sampler>,
    started: Instant,
}

impl Measurement {
    /// Time since the measurement began.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the measurement of `operations` operations, with latencies if recorded.
    #[must_use]
    pub fn finish(self, name: &str, description: &str, operations: u64, latency: Option<&Latency>) -> ScenarioReport {
        let elapsed = self.started.elapsed();
        ScenarioReport {
            name: name.to_owned(),
            description: description.to_owned(),
            operations,
            elapsed_secs: elapsed.as_secs_f64(),
            ops_per_sec: rate(operations, elapsed),
            latency: latency.filter(|l| l.count() > 0).map(Latency::summary),
            nats: self.nats.map(Sampler::finish),
            hub: self.hub.map(Sampler::finish),
            params: serde_json::Value::Null,
            extra: serde_json::Value::Null,
            ..Default::default()
        }
    }
}
