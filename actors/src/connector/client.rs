//! The typed client of the connector API, for any process with a NATS connection (CLI,
//! config manager, dispatcher, enablement).

use std::time::Duration;

use steward_subjects::api::host::{
    AppliedRevisionRequest, AppliedRevisionResult, CommandOutcomeRequest, CommandReply, ConnectorStats,
    EnsureWorkerRequest, EnsureWorkerResult, HostList, HostListRequest, HostRecord, HostStatusRequest,
    SendCommandRequest, SendCommandResult,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::Subjects;

use super::{DEFAULT_ENSURE_TIMEOUT, MAX_ENSURE_TIMEOUT, MAX_SEND_WAIT};

/// Typed client of the connector API, for any process with a NATS connection (CLI, config
/// manager, dispatcher).
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), steward_subjects::rpc::RequestError> {
/// use steward_actors::connector::client::ConnectorClient;
/// use steward_subjects::{AccountId, Subjects};
/// let api = ConnectorClient::new(client, Subjects::new(AccountId::parse("acme").unwrap()));
/// for host in api.list("env=prod", Some(true)).await?.hosts {
///     println!("{} online since {:?}", host.host_id, host.connected_since);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectorClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl ConnectorClient {
    /// A client for the account of `subjects`.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        ConnectorClient { client, subjects, timeout: rpc::DEFAULT_TIMEOUT }
    }

    /// One host's record.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` for an unknown host, `Remote(Invalid)` for a bad id.
    pub async fn status(&self, host_id: &str) -> Result<HostRecord, RequestError> {
        let req = HostStatusRequest { host_id: host_id.to_owned() };
        rpc::request(&self.client, self.subjects.host_status(), &req, self.timeout).await
    }

    /// Hosts matching a selector (empty = all) and online state.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for a bad selector.
    pub async fn list(&self, selector: &str, online: Option<bool>) -> Result<HostList, RequestError> {
        let req = HostListRequest { selector: selector.to_owned(), online };
        rpc::request(&self.client, self.subjects.host_list(), &req, self.timeout).await
    }

    /// Queues a durable command and waits up to `req.wait_ms` for the reply.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` for an unknown host.
    pub async fn send(&self, req: &SendCommandRequest) -> Result<SendCommandResult, RequestError> {
        let timeout = self.timeout + Duration::from_millis(req.wait_ms).min(MAX_SEND_WAIT);
        rpc::request(&self.client, self.subjects.host_send(), req, timeout).await
    }

    /// Installs a worker and waits until the registry shows it.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Timeout)` when the worker did not appear in time,
    /// `Remote(Invalid)` when the host cannot install it.
    pub async fn ensure_worker(
        &self,
        host_id: &str,
        worker: &str,
        timeout: Duration,
    ) -> Result<EnsureWorkerResult, RequestError> {
        let req = EnsureWorkerRequest {
            host_id: host_id.to_owned(),
            worker: worker.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let wait = if timeout.is_zero() { DEFAULT_ENSURE_TIMEOUT } else { timeout.min(MAX_ENSURE_TIMEOUT) };
        rpc::request(&self.client, self.subjects.host_ensure_worker(), &req, wait + self.timeout).await
    }

    /// The recorded reply of a command.
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(NotFound)` while no reply is recorded.
    pub async fn outcome(&self, host_id: &str, command_id: &str) -> Result<CommandReply, RequestError> {
        let req = CommandOutcomeRequest { host_id: host_id.to_owned(), command_id: command_id.to_owned() };
        rpc::request(&self.client, self.subjects.host_outcome(), &req, self.timeout + Duration::from_secs(5)).await
    }

    /// Counters of the answering connector instance.
    ///
    /// # Errors
    /// [`RequestError`].
    pub async fn stats(&self) -> Result<ConnectorStats, RequestError> {
        rpc::request(&self.client, self.subjects.host_stats(), &(), self.timeout).await
    }

    /// Records the configuration revision a host applied, with every connector instance (the
    /// first answer is returned; `recorded: false` when that instance does not know the host).
    ///
    /// # Errors
    /// [`RequestError`]; `Remote(Invalid)` for a bad host id.
    pub async fn set_applied_revision(
        &self,
        host_id: &str,
        revision: u64,
    ) -> Result<AppliedRevisionResult, RequestError> {
        let req = AppliedRevisionRequest { host_id: host_id.to_owned(), revision };
        rpc::request(&self.client, self.subjects.host_applied(), &req, self.timeout).await
    }
}
