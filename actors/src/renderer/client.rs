//! Typed client of the renderer's `jobspec.{list,explain,status}` endpoints, for the CLI and
//! tests.

use std::time::Duration;

use steward_subjects::api::jobspec::{
    ExplainReply, ExplainRequest, JobSpecListReply, JobSpecListRequest, RenderStatus, RenderStatusRequest,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::Subjects;

/// Calls the renderer's job-spec endpoints of one account.
#[derive(Debug, Clone)]
pub struct JobSpecClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl JobSpecClient {
    /// A client for the account of `subjects`, waiting up to 30 s per call.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        JobSpecClient { client, subjects, timeout: Duration::from_secs(30) }
    }

    /// Lists job specs.
    ///
    /// # Errors
    /// `invalid` target, or a transport error.
    pub async fn list(&self, req: &JobSpecListRequest) -> Result<JobSpecListReply, RequestError> {
        rpc::request(&self.client, self.subjects.jobspec_list(), req, self.timeout).await
    }

    /// Explains one job spec.
    ///
    /// # Errors
    /// `not_found` when no such spec exists, or a transport error.
    pub async fn explain(&self, id: &str) -> Result<ExplainReply, RequestError> {
        let req = ExplainRequest { id: id.to_owned() };
        rpc::request(&self.client, self.subjects.jobspec_explain(), &req, self.timeout).await
    }

    /// The renderer's progress.
    ///
    /// # Errors
    /// A transport error.
    pub async fn status(&self) -> Result<RenderStatus, RequestError> {
        rpc::request(&self.client, self.subjects.jobspec_status(), &RenderStatusRequest {}, self.timeout).await
    }
}
