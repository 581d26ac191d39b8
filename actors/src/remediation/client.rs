//! Typed client of the remediation endpoints, for the CLI and tests.

use std::time::Duration;

use steward_subjects::api::remediation::{
    ApproveReply, ApproveRequest, ListRemediationsReply, ListRemediationsRequest,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::subject::alarm_verb;
use steward_subjects::Subjects;

/// Calls the remediation endpoints of one account.
#[derive(Debug, Clone)]
pub struct RemediationClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl RemediationClient {
    /// A client on `client` for the account of `subjects`, waiting up to 10 s per call.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        RemediationClient { client, subjects, timeout: Duration::from_secs(10) }
    }

    /// Starts a held remediation (`alarm.approve`).
    ///
    /// # Errors
    /// [`RequestError`]: `Remote(NotFound)` for an unknown id, `Remote(Conflict)` when it is not
    /// held or another guard still holds it.
    pub async fn approve(&self, id: &str, author: &str) -> Result<ApproveReply, RequestError> {
        let req = ApproveRequest { id: id.to_owned(), author: author.to_owned() };
        rpc::request(&self.client, self.subjects.alarm_request(alarm_verb::APPROVE), &req, self.timeout).await
    }

    /// Lists remediations (`alarm.remediations`), newest first.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for an unknown state.
    pub async fn list(&self, req: &ListRemediationsRequest) -> Result<ListRemediationsReply, RequestError> {
        rpc::request(&self.client, self.subjects.alarm_request(alarm_verb::REMEDIATIONS), req, self.timeout).await
    }
}
