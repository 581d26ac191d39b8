//! The process's OpenMetrics families and the `/metrics` endpoint that serves them.
//!
//! Every Steward process has one set of families ([`global`]); components take handles to the
//! series they update when they start ([`Metrics::account`], [`Metrics::runtime`]), so an update
//! on a hot path (a lease grant, a stored result, a finished check) is one atomic add, with no
//! label lookup and no lock. Nothing is served until [`serve`] is called (`--metrics ADDR`);
//! the hub's consumer-lag sampler ([`sample_consumers`]) asks JetStream only while something
//! serves. The families and what each means are listed in `docs/operations.md`.
//!
//! Layout: this file holds the families and the per-component handles; `server` the small
//! HTTP/1.1 server of `GET /metrics`; `sampler` the hub's consumer-lag sampler.

mod sampler;
mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use steward_subjects::api::result::{ResultRecord, SubmitStatus};
use steward_subjects::api::run::RunStatus;
use steward_subjects::AccountId;

pub use self::sampler::sample_consumers;
pub use self::server::{serve, MetricsServer, ServeError, CONTENT_TYPE};

/// Labels of a series of one account (hub families).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

/// Labels of a run-state series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    account: String,
    state: String,
}

/// Labels of a submitted-result outcome series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    account: String,
    outcome: String,
}

/// Labels of a durable consumer's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    account: String,
    stream: String,
    consumer: String,
}

/// Labels of a NATS connection event series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: String,
    event: String,
}

/// Labels of a runtime's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
}

/// Labels of a check series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    runtime: String,
    executor: String,
    status: String,
}

/// Labels of a check-duration series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    runtime: String,
    executor: String,
}

/// Labels of an alarm transition series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    kind: String,
}

impl TransitionLabels {
    /// The series of one transition kind.
    #[must_use]
    pub fn of(kind: steward_subjects::api::alarm::TransitionKind) -> Self {
        TransitionLabels { kind: kind.as_str().to_owned() }
    }
}

/// Labels of a check's current metric value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckValueLabels {
    account: String,
    host: String,
    check: String,
    metric: String,
}

/// Labels of a check on a host.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckKeyLabels {
    account: String,
    host: String,
    check: String,
}

/// Labels of a check's current status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckStatusLabels {
    account: String,
    host: String,
    check: String,
    status: String,
}

/// Check duration buckets: 1 ms to about 65 s, doubling.
fn check_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The OpenMetrics families of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    serving: AtomicBool,
    lease_grants: Family<AccountLabels, Counter>,
    lease_renewals: Family<AccountLabels, Counter>,
    journal_appends: Family<AccountLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    results: Family<ResultLabels, Counter>,
    consumer_pending: Family<ConsumerLabels, Gauge>,
    consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    nats_events: Family<ConnectionLabels, Counter>,
    outbox_depth: Family<RuntimeLabels, Gauge>,
    outbox_age: Family<RuntimeLabels, Gauge<f64, AtomicU64>>,
    checks: Family<CheckLabels, Counter>,
    check_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    check_value: Family<CheckValueLabels, Gauge<f64, AtomicU64>>,
    check_status: Family<CheckStatusLabels, Gauge>,
    check_value_ts: Family<CheckKeyLabels, Gauge<f64, AtomicU64>>,
    telemetry_points: Family<AccountLabels, Counter>,
    telemetry_parts: Family<AccountLabels, Counter>,
    telemetry_writer: Family<AccountLabels, Gauge>,
    telemetry_unexposed: Family<AccountLabels, Counter>,
    /// Results the alarm evaluator took into account.
    pub(crate) alarm_results_evaluated: Counter,
    /// Alarm transitions stored by this hub, by kind.
    pub(crate) alarm_transitions: Family<TransitionLabels, Counter>,
    /// Alarms the evaluator knows (firing or not).
    pub(crate) alarms_known: Gauge,
    /// Alarms firing now.
    pub(crate) alarms_firing: Gauge,
    /// Notifications delivered, by sink (`nats`, `webhook`) and outcome.
    pub(crate) alarm_notifications: Family<NotificationLabels, Counter>,
}

/// Labels of a notification series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    sink: String,
    outcome: String,
}

impl NotificationLabels {
    /// One sink's outcome.
    #[must_use]
    pub fn of(sink: &str, outcome: &str) -> Self {
        NotificationLabels { sink: sink.to_owned(), outcome: outcome.to_owned() }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of families in a registry of its own.
    #[must_use]
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            serving: AtomicBool::new(false),
            lease_grants: Family::default(),
            lease_renewals: Family::default(),
            journal_appends: Family::default(),
            runs: Family::default(),
            results: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            nats_events: Family::default(),
            outbox_depth: Family::default(),
            outbox_age: Family::default(),
            checks: Family::default(),
            check_duration: Family::new_with_constructor(check_duration_histogram),
            alarm_results_evaluated: Counter::default(),
            alarm_transitions: Family::default(),
            alarms_known: Gauge::default(),
            alarms_firing: Gauge::default(),
            alarm_notifications: Family::default(),
            check_value: Family::default(),
            check_status: Family::default(),
            check_value_ts: Family::default(),
            telemetry_points: Family::default(),
            telemetry_parts: Family::default(),
            telemetry_writer: Family::default(),
            telemetry_unexposed: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "steward_lease_grants",
            "Job spec leases granted by this hub while it led the account",
            m.lease_grants.clone(),
        );
        r.register(
            "steward_lease_renewals",
            "Held leases confirmed by renew requests while this hub led the account",
            m.lease_renewals.clone(),
        );
        r.register(
            "steward_lease_journal_appends",
            "Entries this hub appended to the account's lease journal (confirmed by JetStream)",
            m.journal_appends.clone(),
        );
        r.register("steward_runs", "Runs that entered each state, as written by this hub", m.runs.clone());
        r.register("steward_results", "Submitted results by what this hub did with them", m.results.clone());
        r.register(
            "steward_consumer_pending_messages",
            "Messages not yet delivered to a hub durable consumer (sampled)",
            m.consumer_pending.clone(),
        );
        r.register(
            "steward_consumer_ack_pending_messages",
            "Messages delivered to a hub durable consumer and not yet acknowledged (sampled)",
            m.consumer_ack_pending.clone(),
        );
        r.register("steward_nats_connection_events", "NATS connection events by kind", m.nats_events.clone());
        r.register("steward_outbox_depth", "Results waiting in a runtime's outbox", m.outbox_depth.clone());
        r.register_with_unit(
            "steward_outbox_oldest_age",
            "Age of the oldest result waiting in a runtime's outbox (0 when empty)",
            Unit::Seconds,
            m.outbox_age.clone(),
        );
        r.register("steward_checks", "Checks a runtime ran, by executor and result status", m.checks.clone());
        r.register_with_unit(
            "steward_check_duration",
            "How long checks took to run, by executor",
            Unit::Seconds,
            m.check_duration.clone(),
        );
        r.register(
            "steward_alarm_results_evaluated",
            "Stored results the alarm evaluator of this hub took into account",
            m.alarm_results_evaluated.clone(),
        );
        r.register(
            "steward_alarm_transitions",
            "Alarm transitions stored by this hub, by kind",
            m.alarm_transitions.clone(),
        );
        r.register("steward_alarms", "Alarms the evaluator of this hub knows (firing or not)", m.alarms_known.clone());
        r.register(
            "steward_alarms_firing",
            "Alarms firing now, as the evaluator of this hub sees them",
            m.alarms_firing.clone(),
        );
        r.register(
            "steward_alarm_notifications",
            "Alarm notifications sent by this hub, by sink and outcome",
            m.alarm_notifications.clone(),
        );
        r.register(
            "steward_check_value",
            "Latest value of each metric of each check, per host (from the telemetry writer; bounded, see docs)",
            m.check_value.clone(),
        );
        r.register(
            "steward_check_status",
            "Latest status of each check per host: 1 for the current status, 0 for the others",
            m.check_status.clone(),
        );
        r.register_with_unit(
            "steward_check_last_result_timestamp",
            "When the latest result of each check per host ended (Unix time)",
            Unit::Seconds,
            m.check_value_ts.clone(),
        );
        r.register(
            "steward_telemetry_points",
            "Raw telemetry points this hub stored (one per result)",
            m.telemetry_points.clone(),
        );
        r.register(
            "steward_telemetry_rollup_parts",
            "Rollup parts (1m and 1h) this hub stored",
            m.telemetry_parts.clone(),
        );
        r.register(
            "steward_telemetry_writer",
            "1 while this hub is the account's telemetry writer",
            m.telemetry_writer.clone(),
        );
        r.register(
            "steward_telemetry_unexposed_checks",
            "Results whose check was not exposed as steward_check_* because the series cap was reached",
            m.telemetry_unexposed.clone(),
        );
        m
    }

    /// The current-check-value series of `account` (the telemetry writer's).
    #[must_use]
    pub fn check_values(&self, account: &AccountId) -> CheckValues {
        let labels = AccountLabels { account: account.to_string() };
        CheckValues {
            account: Arc::from(account.as_str()),
            value: self.check_value.clone(),
            status: self.check_status.clone(),
            ts: self.check_value_ts.clone(),
            points: self.telemetry_points.get_or_create_owned(&labels),
            parts: self.telemetry_parts.get_or_create_owned(&labels),
            writer: self.telemetry_writer.get_or_create_owned(&labels),
            unexposed: self.telemetry_unexposed.get_or_create_owned(&labels),
        }
    }

    /// The registry holding every family (for encoding, or to register more).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family in the OpenMetrics text format (ending with `# EOF`).
    ///
    /// # Errors
    /// [`std::fmt::Error`] when a metric cannot be encoded.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Whether an endpoint serves these families (samplers work only then).
    #[must_use]
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// The hub series of `account`, resolved once.
    #[must_use]
    pub fn account(&self, account: &AccountId) -> AccountMetrics {
        let labels = AccountLabels { account: account.to_string() };
        let outcome = |o: &str| {
            self.results.get_or_create_owned(&ResultLabels { account: account.to_string(), outcome: o.to_owned() })
        };
        AccountMetrics {
            lease_grants: self.lease_grants.get_or_create_owned(&labels),
            lease_renewals: self.lease_renewals.get_or_create_owned(&labels),
            journal_appends: self.journal_appends.get_or_create_owned(&labels),
            results_stored: outcome("stored"),
            results_duplicate: outcome("duplicate"),
            results_refused: outcome("refused"),
            results_retry: outcome("retry"),
            runs: RUN_STATES.map(|s| {
                self.runs.get_or_create_owned(&RunLabels { account: account.to_string(), state: s.to_owned() })
            }),
        }
    }

    /// The series of the runtime `runtime`, resolved once (checks per executor and status are
    /// resolved on first use).
    #[must_use]
    pub fn runtime(&self, runtime: &str) -> RuntimeMetrics {
        let labels = RuntimeLabels { runtime: runtime.to_owned() };
        RuntimeMetrics {
            runtime: Arc::from(runtime),
            outbox_depth: self.outbox_depth.get_or_create_owned(&labels),
            outbox_age: self.outbox_age.get_or_create_owned(&labels),
            checks: self.checks.clone(),
            check_duration: self.check_duration.clone(),
        }
    }

    /// Sets the sampled pending counts of one durable consumer.
    pub(crate) fn consumer_lag(&self, account: &AccountId, stream: &str, consumer: &str, pending: u64, acks: u64) {
        let labels =
            ConsumerLabels { account: account.to_string(), stream: stream.to_owned(), consumer: consumer.to_owned() };
        self.consumer_pending.get_or_create(&labels).set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.consumer_ack_pending.get_or_create(&labels).set(i64::try_from(acks).unwrap_or(i64::MAX));
    }

    /// Counts one event of the NATS connection named `connection`.
    fn nats_event(&self, connection: &str, event: &str) {
        self.nats_events
            .get_or_create(&ConnectionLabels { connection: connection.to_owned(), event: event.to_owned() })
            .inc();
    }
}

/// The process's families.
pub fn global() -> &'static Metrics {
    static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &GLOBAL
}

/// Run states as labelled, in [`run_slot`] order.
const RUN_STATES: [&str; 6] = ["pending", "running", "success", "failure", "timeout", "canceled"];

fn run_slot(s: RunStatus) -> Option<usize> {
    match s {
        RunStatus::Pending => Some(0),
        RunStatus::Running => Some(1),
        RunStatus::Success => Some(2),
        RunStatus::Failure => Some(3),
        RunStatus::Timeout => Some(4),
        RunStatus::Canceled => Some(5),
        RunStatus::Unknown => None,
    }
}

/// The hub series of one account.
#[derive(Debug, Clone)]
pub struct AccountMetrics {
    lease_grants: Counter,
    lease_renewals: Counter,
    journal_appends: Counter,
    results_stored: Counter,
    results_duplicate: Counter,
    results_refused: Counter,
    results_retry: Counter,
    runs: [Counter; 6],
}

impl AccountMetrics {
    /// Counts `n` leases granted.
    pub(crate) fn lease_grants(&self, n: usize) {
        self.lease_grants.inc_by(n as u64);
    }

    /// Counts `n` held leases confirmed by a renew request.
    pub(crate) fn lease_renewals(&self, n: u32) {
        self.lease_renewals.inc_by(u64::from(n));
    }

    /// Counts one confirmed journal append.
    pub(crate) fn journal_append(&self) {
        self.journal_appends.inc();
    }

    /// Counts one submitted result by what became of it.
    pub(crate) fn result(&self, status: SubmitStatus) {
        match status {
            SubmitStatus::Stored => self.results_stored.inc(),
            SubmitStatus::Duplicate => self.results_duplicate.inc(),
            SubmitStatus::Refused => self.results_refused.inc(),
            SubmitStatus::Retry => self.results_retry.inc(),
        };
    }

    /// Counts a run entering `state` (a record created in it, or written moving into it).
    pub(crate) fn run_entered(&self, state: RunStatus) {
        if let Some(i) = run_slot(state) {
            self.runs[i].inc();
        }
    }
}

/// The series of one assessment runtime.
#[derive(Debug, Clone)]
pub struct RuntimeMetrics {
    runtime: Arc<str>,
    outbox_depth: Gauge,
    outbox_age: Gauge<f64, AtomicU64>,
    checks: Family<CheckLabels, Counter>,
    check_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

impl RuntimeMetrics {
    /// Counts one finished check and records how long it took.
    pub(crate) fn check_done(&self, record: &ResultRecord) {
        let runtime = &*self.runtime;
        let status = record.status.as_str();
        let executor = if record.executor.is_empty() { "none" } else { record.executor.as_str() };
        self.checks
            .get_or_create(&CheckLabels {
                runtime: runtime.to_owned(),
                executor: executor.to_owned(),
                status: status.to_owned(),
            })
            .inc();
        let took = record.ended_at_ms.saturating_sub(record.started_at_ms);
        #[allow(clippy::cast_precision_loss)] // milliseconds well below 2^52
        let seconds = took as f64 / 1000.0;
        self.check_duration
            .get_or_create(&DurationLabels { runtime: runtime.to_owned(), executor: executor.to_owned() })
            .observe(seconds);
    }

    /// Sets the outbox gauges: `depth` results waiting, the oldest ended at `oldest_ms`.
    pub(crate) fn outbox(&self, depth: u64, oldest_ms: Option<u64>) {
        self.outbox_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        let age_ms = oldest_ms.map_or(0, |t| crate::now_ms().saturating_sub(t));
        #[allow(clippy::cast_precision_loss)] // milliseconds well below 2^52
        self.outbox_age.set(age_ms as f64 / 1000.0);
    }
}

/// Statuses as labelled on `steward_check_status`.
const CHECK_STATUSES: [&str; 6] = ["pass", "warn", "fail", "error", "timeout", "unknown"];

/// The current check values of one account: `steward_check_value{account,host,check,metric}`,
/// `steward_check_status{account,host,check,status}` (one-hot over the six statuses) and
/// `steward_check_last_result_timestamp_seconds{account,host,check}`, with the telemetry
/// writer's counters. The writer bounds how many (host, check) pairs it sets.
#[derive(Debug, Clone)]
pub struct CheckValues {
    account: Arc<str>,
    value: Family<CheckValueLabels, Gauge<f64, AtomicU64>>,
    status: Family<CheckStatusLabels, Gauge>,
    ts: Family<CheckKeyLabels, Gauge<f64, AtomicU64>>,
    points: Counter,
    parts: Counter,
    writer: Gauge,
    unexposed: Counter,
}

impl CheckValues {
    /// Sets the latest result of `check` on `host`: its status (one-hot over every status), its
    /// metric values and when it ended.
    pub(crate) fn set(
        &self,
        host: &str,
        check: &str,
        status: &str,
        metrics: &std::collections::BTreeMap<String, f64>,
        ended_ms: u64,
    ) {
        let account = self.account.to_string();
        for s in CHECK_STATUSES {
            let labels = CheckStatusLabels {
                account: account.clone(),
                host: host.to_owned(),
                check: check.to_owned(),
                status: s.to_owned(),
            };
            self.status.get_or_create(&labels).set(i64::from(s == status));
        }
        let ts_labels = CheckKeyLabels { account: account.clone(), host: host.to_owned(), check: check.to_owned() };
        #[allow(clippy::cast_precision_loss)] // milliseconds well below 2^52
        self.ts.get_or_create(&ts_labels).set(ended_ms as f64 / 1000.0);
        for (metric, v) in metrics {
            let labels = CheckValueLabels {
                account: account.clone(),
                host: host.to_owned(),
                check: check.to_owned(),
                metric: metric.clone(),
            };
            self.value.get_or_create(&labels).set(*v);
        }
    }

    /// Counts `n` raw points stored.
    pub(crate) fn points(&self, n: usize) {
        self.points.inc_by(n as u64);
    }

    /// Counts `n` rollup parts stored.
    pub(crate) fn parts(&self, n: usize) {
        self.parts.inc_by(n as u64);
    }

    /// Whether this hub writes the account's telemetry now.
    pub(crate) fn writer(&self, on: bool) {
        self.writer.set(i64::from(on));
    }

    /// Counts a result whose check is not exposed (cap reached).
    pub(crate) fn unexposed(&self) {
        self.unexposed.inc();
    }
}

/// Adds a callback to `o` counting the connection's events under its `name`: `connected` for
/// the first connection, `reconnected` for each later one, then `disconnected`, `lame_duck`,
/// `draining`, `closed`, `slow_consumer`, `server_error` and `client_error`.
pub(crate) fn count_events(o: async_nats::ConnectOptions, name: &str) -> async_nats::ConnectOptions {
    let name: Arc<str> = Arc::from(name);
    let connected_once = Arc::new(AtomicBool::new(false));
    o.event_callback(move |event| {
        let (name, once) = (name.clone(), connected_once.clone());
        async move {
            let kind = match event {
                async_nats::Event::Connected if once.swap(true, Ordering::Relaxed) => "reconnected",
                async_nats::Event::Connected => "connected",
                async_nats::Event::Disconnected => "disconnected",
                async_nats::Event::LameDuckMode => "lame_duck",
                async_nats::Event::Draining => "draining",
                async_nats::Event::Closed => "closed",
                async_nats::Event::SlowConsumer(_) => "slow_consumer",
                async_nats::Event::ServerError(_) => "server_error",
                async_nats::Event::ClientError(_) => "client_error",
            };
            global().nats_event(&name, kind);
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn handles_update_the_encoded_series() {
        let m = Metrics::new();
        let account = AccountId::parse("acme").unwrap();
        let a = m.account(&account);
        a.lease_grants(3);
        a.result(SubmitStatus::Stored);
        a.result(SubmitStatus::Stored);
        a.run_entered(RunStatus::Success);
        let text = m.encode().unwrap();
        assert!(text.contains("steward_lease_grants_total{account=\"acme\"} 3"), "{text}");
        assert!(text.contains("steward_results_total{account=\"acme\",outcome=\"stored\"} 2"), "{text}");
        assert!(text.contains("steward_runs_total{account=\"acme\",state=\"success\"} 1"), "{text}");
        assert!(text.contains("steward_runs_total{account=\"acme\",state=\"failure\"} 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
