//! Typed client of the config manager's `config.*` endpoints, for the CLI, hosts fetching
//! playbooks, the enablement loop and tests.

use std::time::Duration;

#[cfg(doc)]
use steward_subjects::api::config::PlaybookRef;
use steward_subjects::api::config::{
    ApplyReply, ApplyRequest, DiffReply, DiffRequest, GetRequest, HistoryReply, HistoryRequest, PlanReply, PlanRequest,
    PlaybookGetRequest, PlaybookReply, PlaybookStoreRequest, PlaybookStored, RollbackRequest, StateArchive,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::Subjects;

/// Calls the configuration endpoints of one account.
#[derive(Debug, Clone)]
pub struct ConfigClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl ConfigClient {
    /// A client for the account of `subjects`, waiting up to 30 s for applies and plans.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        ConfigClient { client, subjects, timeout: Duration::from_secs(30) }
    }

    /// The NATS connection this client uses.
    #[must_use]
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// Changes the reply timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Applies a document.
    ///
    /// # Errors
    /// `invalid` (with every problem in the details), `conflict`, or a transport error.
    pub async fn apply(&self, req: &ApplyRequest) -> Result<ApplyReply, RequestError> {
        rpc::request(&self.client, self.subjects.config_apply(), req, self.timeout).await
    }

    /// Plans a document.
    ///
    /// # Errors
    /// `invalid` with every problem, or a transport error.
    pub async fn plan(&self, req: &PlanRequest) -> Result<PlanReply, RequestError> {
        rpc::request(&self.client, self.subjects.config_plan(), req, self.timeout).await
    }

    /// Reads a revision.
    ///
    /// # Errors
    /// `not_found` when there is no such revision, or a transport error.
    pub async fn get(&self, req: &GetRequest) -> Result<StateArchive, RequestError> {
        rpc::request(&self.client, self.subjects.config_get(), req, self.timeout).await
    }

    /// Lists revisions.
    ///
    /// # Errors
    /// `invalid` filters, or a transport error.
    pub async fn history(&self, req: &HistoryRequest) -> Result<HistoryReply, RequestError> {
        rpc::request(&self.client, self.subjects.config_history(), req, self.timeout).await
    }

    /// Compares two revisions.
    ///
    /// # Errors
    /// `not_found` when a revision does not exist, or a transport error.
    pub async fn diff(&self, req: &DiffRequest) -> Result<DiffReply, RequestError> {
        rpc::request(&self.client, self.subjects.config_diff(), req, self.timeout).await
    }

    /// Re-applies an old revision.
    ///
    /// # Errors
    /// `not_found`, `conflict`, or a transport error.
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<ApplyReply, RequestError> {
        rpc::request(&self.client, self.subjects.config_rollback(), req, self.timeout).await
    }

    /// A stored playbook by reference (`sha256:<hex>`), as stored: check it with
    /// [`PlaybookRef::matches`] before use.
    ///
    /// # Errors
    /// `not_found` for an unknown reference, `invalid` for a malformed one, or a transport error.
    pub async fn playbook(&self, reference: &str) -> Result<PlaybookReply, RequestError> {
        let req = PlaybookGetRequest { reference: reference.to_owned() };
        rpc::request(&self.client, self.subjects.config_playbook(), &req, self.timeout).await
    }

    /// Stores a playbook content-addressed and returns its reference.
    ///
    /// # Errors
    /// `invalid` when it is too large, or a transport error.
    pub async fn store_playbook(&self, content: &str) -> Result<PlaybookStored, RequestError> {
        let req = PlaybookStoreRequest { content: content.to_owned() };
        rpc::request(&self.client, self.subjects.config_store_playbook(), &req, self.timeout).await
    }
}
