//! Typed client of the dispatcher API, for the CLI, the config manager and tests.

use std::time::Duration;

use steward_subjects::api::run::{
    RunAccepted, RunCancelRequest, RunCancelResult, RunList, RunListRequest, RunRequest, RunStatusRequest, RunView,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::Subjects;

/// Calls the dispatcher endpoints of one account.
#[derive(Debug, Clone)]
pub struct DispatcherClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl DispatcherClient {
    /// A client on `client` for the account of `subjects`, waiting up to 10 s per call.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        DispatcherClient { client, subjects, timeout: Duration::from_secs(10) }
    }

    /// The same client with another per-call timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts a run (`run.dispatch`).
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for a bad request.
    pub async fn dispatch(&self, req: &RunRequest) -> Result<RunAccepted, RequestError> {
        rpc::request(&self.client, self.subjects.run_dispatch(), req, self.timeout).await
    }

    /// A run with its hosts and current job events (`run.status`).
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` for an unknown run.
    pub async fn status(&self, req: &RunStatusRequest) -> Result<RunView, RequestError> {
        rpc::request(&self.client, self.subjects.run_status(), req, self.timeout).await
    }

    /// Cancels a run (`run.cancel`).
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Conflict)` when the run already finished.
    pub async fn cancel(&self, run_id: &str) -> Result<RunCancelResult, RequestError> {
        let req = RunCancelRequest { run_id: run_id.to_owned() };
        rpc::request(&self.client, self.subjects.run_cancel(), &req, self.timeout).await
    }

    /// Lists runs (`run.list`).
    ///
    /// # Errors
    /// [`RequestError`].
    pub async fn list(&self, req: &RunListRequest) -> Result<RunList, RequestError> {
        rpc::request(&self.client, self.subjects.run_list(), req, self.timeout).await
    }
}
