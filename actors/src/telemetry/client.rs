//! Typed client of the telemetry endpoints (`telemetry.query`, `telemetry.series`), for the
//! CLI and tests.

use std::time::Duration;

use steward_subjects::api::telemetry::{SeriesReply, SeriesRequest, TelemetryQuery, TelemetryReply};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::Subjects;

/// Calls the telemetry endpoints of one account.
#[derive(Debug, Clone)]
pub struct TelemetryClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl TelemetryClient {
    /// A client for the account of `subjects`, waiting up to 30 s per call.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        TelemetryClient { client, subjects, timeout: Duration::from_secs(30) }
    }

    /// Points of one series.
    ///
    /// # Errors
    /// `invalid` query (the message says what is wrong), or a transport error.
    pub async fn query(&self, q: &TelemetryQuery) -> Result<TelemetryReply, RequestError> {
        rpc::request(&self.client, self.subjects.telemetry_query(), q, self.timeout).await
    }

    /// The series of one host.
    ///
    /// # Errors
    /// `invalid` host, or a transport error.
    pub async fn series(&self, host: &str) -> Result<SeriesReply, RequestError> {
        rpc::request(
            &self.client,
            self.subjects.telemetry_series(),
            &SeriesRequest { host: host.to_owned() },
            self.timeout,
        )
        .await
    }
}
