//! Who is asking: the lease and result endpoints take the caller's runtime and host from the
//! last two tokens of the subject (`<host>.<runtime>`), which the server checked against the
//! caller's permissions (a host identity may publish only `<host>.<host>`), never from the body.
//! A body naming another runtime or host is refused `forbidden`; an empty body field takes the
//! subject's value. Refusals are counted ([`FenceCounters`]) and logged as warnings, the first
//! few and then every thousandth, so a hostile caller cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

use steward_subjects::api::lease::{FenceStats, LeaseRequest, MineRequest, ReleaseRequest, RenewRequest};
use steward_subjects::subject::{Acting, ActingParser, IdentityEndpoint};
use steward_subjects::{ErrorCode, Subjects, WireError};
use tracing::{debug, warn};

use super::api::Op;

/// The parsers of the per-identity endpoints of one account.
pub(super) struct Identities {
    lease: ActingParser,
    renew: ActingParser,
    mine: ActingParser,
    release: ActingParser,
    submit: ActingParser,
}

impl Identities {
    pub(super) fn new(s: &Subjects) -> Self {
        Identities {
            lease: s.identity_parser(IdentityEndpoint::Lease),
            renew: s.identity_parser(IdentityEndpoint::Renew),
            mine: s.identity_parser(IdentityEndpoint::Mine),
            release: s.identity_parser(IdentityEndpoint::Release),
            submit: s.identity_parser(IdentityEndpoint::Submit),
        }
    }

    /// The identity a request of `op` acts as, from its subject.
    pub(super) fn acting<'a>(&self, op: Op, subject: &'a str) -> Result<Acting<'a>, WireError> {
        let parser = match op {
            Op::Lease => &self.lease,
            Op::Renew => &self.renew,
            Op::Mine => &self.mine,
            Op::Release => &self.release,
            Op::Submit => &self.submit,
            Op::Leases => return Err(WireError::invalid("jobspec.leases names no identity")),
        };
        parser.parse(subject).map_err(|e| WireError::invalid(e.to_string()))
    }
}

/// Fills an empty `field` with the subject's `token`; refuses a different one.
pub(super) fn claim(field: &mut String, token: &str, what: &str) -> Result<(), WireError> {
    if field.is_empty() {
        token.clone_into(field);
        Ok(())
    } else if field == token {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Forbidden,
            format!("the request names {what} {field:?} but was sent as {what} {token:?}"),
        ))
    }
}

/// A host field is optional (a standalone runtime sends none): only a different one is refused.
fn claim_host(field: &str, token: &str) -> Result<(), WireError> {
    if field.is_empty() || field == token {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Forbidden,
            format!("the request names host {field:?} but was sent as host {token:?}"),
        ))
    }
}

/// A request whose body names the caller, checked against (and completed from) the subject.
pub(super) trait Claimed {
    /// Refuses a body naming another runtime or host; fills an empty runtime.
    fn claim(&mut self, who: &Acting<'_>) -> Result<(), WireError>;
}

impl Claimed for LeaseRequest {
    fn claim(&mut self, who: &Acting<'_>) -> Result<(), WireError> {
        claim(&mut self.runtime, who.runtime, "runtime")?;
        claim_host(&self.host, who.host)
    }
}

impl Claimed for RenewRequest {
    fn claim(&mut self, who: &Acting<'_>) -> Result<(), WireError> {
        claim(&mut self.runtime, who.runtime, "runtime")?;
        claim_host(&self.host, who.host)
    }
}

impl Claimed for MineRequest {
    fn claim(&mut self, who: &Acting<'_>) -> Result<(), WireError> {
        claim(&mut self.runtime, who.runtime, "runtime")
    }
}

impl Claimed for ReleaseRequest {
    fn claim(&mut self, who: &Acting<'_>) -> Result<(), WireError> {
        claim(&mut self.runtime, who.runtime, "runtime")
    }
}

/// What the fence refused since this leader took over.
#[derive(Debug, Default)]
pub(super) struct FenceCounters {
    foreign_requests: AtomicU64,
    foreign_results: AtomicU64,
    stale_results: AtomicU64,
    invalid_results: AtomicU64,
    duplicate_results: AtomicU64,
    foreign_outputs: AtomicU64,
}

/// Which counter a refusal goes to.
#[derive(Debug, Clone, Copy)]
pub(super) enum FenceRefusal {
    /// A lease request naming another runtime or host, or on a malformed subject.
    ForeignRequest,
    /// A result naming another runtime or host.
    ForeignResult,
    /// A result whose runtime does not hold its spec at its epoch (forged or replayed).
    StaleResult,
    /// A malformed result.
    InvalidResult,
    /// A result naming a full output its host did not store.
    ForeignOutput,
}

impl FenceCounters {
    /// Counts one refusal and logs it (rate limited).
    pub(super) fn refused(&self, what: FenceRefusal, host: &str, runtime: &str, reason: &str) {
        let (counter, kind) = match what {
            FenceRefusal::ForeignRequest => (&self.foreign_requests, "foreign request"),
            FenceRefusal::ForeignResult => (&self.foreign_results, "foreign result"),
            FenceRefusal::StaleResult => (&self.stale_results, "stale result"),
            FenceRefusal::InvalidResult => (&self.invalid_results, "invalid result"),
            FenceRefusal::ForeignOutput => (&self.foreign_outputs, "foreign output"),
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if total <= 10 || total % 1000 == 0 {
            warn!(host_id = host, runtime, kind, reason, total, "refused by the lease fence");
        } else {
            debug!(host_id = host, runtime, kind, reason, total, "refused by the lease fence");
        }
    }

    /// Counts results answered `duplicate` (already stored; nothing written).
    pub(super) fn duplicates(&self, n: u64) {
        self.duplicate_results.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as answered by `jobspec.leases`.
    pub(super) fn stats(&self) -> FenceStats {
        FenceStats {
            foreign_requests: self.foreign_requests.load(Ordering::Relaxed),
            foreign_results: self.foreign_results.load(Ordering::Relaxed),
            stale_results: self.stale_results.load(Ordering::Relaxed),
            invalid_results: self.invalid_results.load(Ordering::Relaxed),
            duplicate_results: self.duplicate_results.load(Ordering::Relaxed),
            foreign_outputs: self.foreign_outputs.load(Ordering::Relaxed),
        }
    }
}
