//! The typed client of the lease service: what a runtime (or the CLI) calls to lease, renew,
//! list and release job specs and to submit results, each on the subject of the runtime (and
//! host) it acts as, which the hub takes as the caller's identity (reading stored results is
//! [`crate::results::client`]'s job). Errors keep the remote code, so callers
//! branch on [`LeaseClientError::kind`] (`Remote(Conflict)` for a stale epoch, `NoResponders`
//! or `TimedOut` when no hub answers).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_subjects::api::lease::{
    LeaseReply, LeaseRequest, LeasesReply, LeasesRequest, MineReply, MineRequest, ReleaseReply, ReleaseRequest,
    RenewReply, RenewRequest,
};
use steward_subjects::api::result::{SubmitReply, SubmitRequest};
use steward_subjects::rpc::{self, RequestError, RequestErrorKind};
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{HostId, RuntimeId, Subjects, WireError};

/// A failed call to the lease service.
pub type LeaseClientError = RequestError;

/// Whether an error means the hub could not be reached (retry later; work offline meanwhile).
#[must_use]
pub fn is_unreachable(e: &LeaseClientError) -> bool {
    matches!(e.kind(), RequestErrorKind::TimedOut | RequestErrorKind::NoResponders | RequestErrorKind::Transport)
        || matches!(e.kind(), RequestErrorKind::Remote(steward_subjects::ErrorCode::Unavailable))
}

/// Client of the lease service of one account.
#[derive(Debug, Clone)]
pub struct LeaseClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl LeaseClient {
    /// A client on `client` for the account of `subjects`.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        LeaseClient { client, subjects, timeout: rpc::DEFAULT_TIMEOUT }
    }

    /// The same client with another reply timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: String,
        req: &Req,
    ) -> Result<Resp, LeaseClientError> {
        rpc::request(&self.client, subject, req, self.timeout).await
    }

    /// The subject of `endpoint` as `runtime` (on `host`, when not empty); an invalid token is
    /// refused here as the hub would (`invalid`).
    fn acting(&self, endpoint: IdentityEndpoint, runtime: &str, host: &str) -> Result<String, LeaseClientError> {
        let runtime = RuntimeId::parse(runtime).map_err(WireError::from)?;
        let host = if host.is_empty() { None } else { Some(HostId::parse(host).map_err(WireError::from)?) };
        Ok(self.subjects.identity_subject(endpoint, host.as_ref(), &runtime))
    }

    /// Leases up to `req.max` unassigned specs, as `req.runtime` (on `req.host`).
    ///
    /// # Errors
    /// [`LeaseClientError`]: `invalid` for bad tokens, `forbidden` when the caller may not act
    /// as that runtime, transport errors when no hub answers.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseReply, LeaseClientError> {
        self.call(self.acting(IdentityEndpoint::Lease, &req.runtime, &req.host)?, req).await
    }

    /// Renews every lease of the runtime; stale ones come back refused.
    ///
    /// # Errors
    /// As [`Self::lease`].
    pub async fn renew(&self, req: &RenewRequest) -> Result<RenewReply, LeaseClientError> {
        self.call(self.acting(IdentityEndpoint::Renew, &req.runtime, &req.host)?, req).await
    }

    /// The authoritative set of specs `req.runtime` holds, asked as `req.runtime` on `host`.
    ///
    /// # Errors
    /// As [`Self::lease`].
    pub async fn mine(&self, host: Option<&HostId>, req: &MineRequest) -> Result<MineReply, LeaseClientError> {
        let host = host.map_or("", HostId::as_str);
        self.call(self.acting(IdentityEndpoint::Mine, &req.runtime, host)?, req).await
    }

    /// Releases specs, as `req.runtime` on `host`.
    ///
    /// # Errors
    /// As [`Self::lease`].
    pub async fn release(&self, host: Option<&HostId>, req: &ReleaseRequest) -> Result<ReleaseReply, LeaseClientError> {
        let host = host.map_or("", HostId::as_str);
        self.call(self.acting(IdentityEndpoint::Release, &req.runtime, host)?, req).await
    }

    /// Lists specs and their leases.
    ///
    /// # Errors
    /// As [`Self::lease`].
    pub async fn leases(&self, req: &LeasesRequest) -> Result<LeasesReply, LeaseClientError> {
        self.call(self.subjects.jobspec_leases(), req).await
    }

    /// Submits results as `runtime` (on `host`); each gets its own outcome. Results naming
    /// another runtime or host are refused (`forbidden`).
    ///
    /// # Errors
    /// As [`Self::lease`]; `invalid` for a batch over the size limit.
    pub async fn submit(
        &self,
        host: Option<&HostId>,
        runtime: &RuntimeId,
        req: &SubmitRequest,
    ) -> Result<SubmitReply, LeaseClientError> {
        self.call(self.subjects.identity_subject(IdentityEndpoint::Submit, host, runtime), req).await
    }
}

/// What the lease service says about one spec and the runtimes (for explanations).
#[derive(Debug, Clone, Default)]
pub struct LeaseSnapshot {
    /// The spec's lease row, when the lease service knows the spec.
    pub lease: Option<steward_subjects::api::lease::LeaseRow>,
    /// Every runtime session the lease service knows (live or expired), ordered by runtime id.
    pub sessions: Vec<steward_subjects::api::lease::RuntimeSession>,
}

/// Asks the lease service (the leader of the account) for the lease of `spec` and every
/// runtime session. The lease state lives in the leader's memory and journal, so this is the
/// only authoritative view.
///
/// # Errors
/// [`LeaseClientError`] when no lease service answers.
pub async fn lease_snapshot(
    client: &async_nats::Client,
    subjects: &Subjects,
    spec: &str,
) -> Result<LeaseSnapshot, LeaseClientError> {
    let req = LeasesRequest { spec: Some(spec.to_owned()), sessions: true, limit: 1, ..Default::default() };
    let reply = LeaseClient::new(client.clone(), subjects.clone()).leases(&req).await?;
    Ok(LeaseSnapshot { lease: reply.rows.into_iter().find(|r| r.spec == spec), sessions: reply.sessions })
}
