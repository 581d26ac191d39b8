//! Subjects and keys of job-spec leasing.
//!
//! Endpoints (NATS micro, queue group; only the account's lease leader serves them):
//! `steward.v1.<account>.jobspec.{lease,renew,mine,release}.<host>.<runtime>` (the caller's own
//! identity, see [`IdentityEndpoint`]) and `steward.v1.<account>.jobspec.leases` (operators). Notices (core NATS, not stored):
//! `steward.v1.<account>.jobspec.notice.<runtime>` (plain subscription by that runtime) and
//! `steward.v1.<account>.jobspec.available` (plain subscription by every runtime);
//! `steward.v1.<account>.jobspec.recheck.<runtime>` (run a held spec now; plain subscription by
//! that runtime).
//!
//! Durable state: the lease journal and fence (`jobspec.journal`, `jobspec.fence`, stream
//! `STEWARD_LEASE_JOURNAL`); in the `steward_leases` bucket the leader lock `<account>.leader`
//! and the snapshot pointer `<account>.snapshot`, plus the record keys `<account>.spec.<spec>`
//! and `<account>.rt.<runtime>`; snapshots in the artifacts object store.

use super::{account_rest, noun, AnyAccount, SubjectError, Subjects, ROOT, VERSION};
use crate::token::{validate, AccountId, HostId, RuntimeId, TokenKind};

/// Verbs of leasing.
pub mod lease_verb {
    /// Lease unassigned specs.
    pub const LEASE: &str = "lease";
    /// Renew held leases.
    pub const RENEW: &str = "renew";
    /// The authoritative set of held specs.
    pub const MINE: &str = "mine";
    /// Give specs back.
    pub const RELEASE: &str = "release";
    /// List specs with their lease state.
    pub const LEASES: &str = "leases";
    /// A notice to one holder.
    pub const NOTICE: &str = "notice";
    /// Unassigned specs appeared.
    pub const AVAILABLE: &str = "available";
    /// Run a held spec now (after a remediation), not at its next interval.
    pub const RECHECK: &str = "recheck";
    /// The lease journal (stream-backed, written by the lease leader only).
    pub const JOURNAL: &str = "journal";
    /// The lease leaders' fence (one message per takeover, in the journal stream).
    pub const FENCE: &str = "fence";
}

/// The endpoints a runtime calls as itself: the acting identity is the subject's last two tokens,
/// `<host>.<runtime>` (`host` is the host a result is filed under: the edge's host id, or the
/// runtime id of a standalone runtime, as [`super::result_host_of`] says). The hub serves the
/// wildcard and takes the identity from the subject, which the server checked against the
/// caller's permissions; a host identity may publish only `<host>.<host>` (its runtime is named
/// after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityEndpoint {
    /// `jobspec.lease.<host>.<runtime>`: grant up to `max` unassigned specs.
    Lease,
    /// `jobspec.renew.<host>.<runtime>`: extend every lease the runtime holds.
    Renew,
    /// `jobspec.mine.<host>.<runtime>`: the specs the runtime holds, with epochs.
    Mine,
    /// `jobspec.release.<host>.<runtime>`: give specs back.
    Release,
    /// `result.submit.<host>.<runtime>`: results fenced by epoch, stored once each.
    Submit,
}

impl IdentityEndpoint {
    /// Every per-identity endpoint.
    pub const ALL: [IdentityEndpoint; 5] = [Self::Lease, Self::Renew, Self::Mine, Self::Release, Self::Submit];

    fn noun_verb(self) -> (&'static str, &'static str) {
        match self {
            Self::Lease => (noun::JOBSPEC, lease_verb::LEASE),
            Self::Renew => (noun::JOBSPEC, lease_verb::RENEW),
            Self::Mine => (noun::JOBSPEC, lease_verb::MINE),
            Self::Release => (noun::JOBSPEC, lease_verb::RELEASE),
            Self::Submit => (noun::RESULT, super::result_verb::SUBMIT),
        }
    }
}

/// The acting identity a per-identity subject names (slices of the subject, no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acting<'a> {
    /// The host results are filed under (edge host id, or a standalone runtime's id).
    pub host: &'a str,
    /// The runtime.
    pub runtime: &'a str,
}

/// Parses the acting identity off the subjects of one [`IdentityEndpoint`] of one account (the
/// inverse of [`Subjects::identity_subject`]); built once, used per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingParser {
    prefix: String,
}

impl ActingParser {
    /// The identity of `subject`.
    ///
    /// # Errors
    /// [`SubjectError::Foreign`] for a subject of another endpoint or account or of another
    /// shape; [`SubjectError::Token`] for an invalid host or runtime token.
    pub fn parse<'a>(&self, subject: &'a str) -> Result<Acting<'a>, SubjectError> {
        let foreign = || SubjectError::Foreign(subject.to_owned());
        let rest = subject.strip_prefix(self.prefix.as_str()).ok_or_else(foreign)?;
        let (host, runtime) = rest.split_once('.').ok_or_else(foreign)?;
        validate(TokenKind::HostId, host)?;
        validate(TokenKind::RuntimeId, runtime)?;
        Ok(Acting { host, runtime })
    }
}

impl Subjects {
    /// The subject `runtime` (on `host`, when it is an edge runtime) calls `endpoint` on:
    /// `<noun>.<verb>.<host or runtime>.<runtime>`.
    #[must_use]
    pub fn identity_subject(&self, endpoint: IdentityEndpoint, host: Option<&HostId>, runtime: &RuntimeId) -> String {
        let (noun, verb) = endpoint.noun_verb();
        let filed = host.map_or(runtime.as_str(), HostId::as_str);
        format!("{ROOT}.{VERSION}.{}.{noun}.{verb}.{filed}.{runtime}", self.account())
    }

    /// What the hub serves `endpoint` on: `<noun>.<verb>.*.*`.
    #[must_use]
    pub fn identity_wildcard(&self, endpoint: IdentityEndpoint) -> String {
        let (noun, verb) = endpoint.noun_verb();
        self.targeted(noun, verb, "*.*")
    }

    /// The parser of `endpoint`'s subjects of this account.
    #[must_use]
    pub fn identity_parser(&self, endpoint: IdentityEndpoint) -> ActingParser {
        let (noun, verb) = endpoint.noun_verb();
        ActingParser { prefix: format!("{}.", self.base(noun, verb)) }
    }

    /// `jobspec.leases`: list specs with their lease state.
    #[must_use]
    pub fn jobspec_leases(&self) -> String {
        self.base(noun::JOBSPEC, lease_verb::LEASES)
    }

    /// Notices to one holder (spec changed, removed or revoked).
    #[must_use]
    pub fn jobspec_notice(&self, runtime: &RuntimeId) -> String {
        self.targeted(noun::JOBSPEC, lease_verb::NOTICE, runtime.as_str())
    }

    /// Asks one runtime to run a spec it holds now rather than at its next interval (core NATS,
    /// plain subscription by that runtime; the remediation service publishes it when a
    /// remediation run ended, so the alarm is judged on a fresh result).
    #[must_use]
    pub fn jobspec_recheck(&self, runtime: &RuntimeId) -> String {
        self.targeted(noun::JOBSPEC, lease_verb::RECHECK, runtime.as_str())
    }

    /// Notices to every holder of this account (observers and load tests subscribe here).
    #[must_use]
    pub fn jobspec_notice_all(&self) -> String {
        self.targeted(noun::JOBSPEC, lease_verb::NOTICE, "*")
    }

    /// Broadcast: unassigned specs are available.
    #[must_use]
    pub fn jobspec_available(&self) -> String {
        self.base(noun::JOBSPEC, lease_verb::AVAILABLE)
    }

    /// The lease journal of this account (`jobspec.journal`): group-committed lease changes,
    /// appended by the lease leader with `Nats-Expected-Last-Subject-Sequence` (fencing).
    #[must_use]
    pub fn jobspec_journal(&self) -> String {
        self.base(noun::JOBSPEC, lease_verb::JOURNAL)
    }

    /// The lease fence of this account (`jobspec.fence`): a leader raises it when it takes over
    /// (one message, compare-and-set on its last sequence), and every journal append it makes
    /// expects the fence at that sequence (`Nats-Expected-Last-Subject-Sequence-Subject`), so a
    /// newer leader's fence refuses an older leader's appends, however many are in flight.
    #[must_use]
    pub fn jobspec_fence(&self) -> String {
        self.base(noun::JOBSPEC, lease_verb::FENCE)
    }
}

/// Key of a spec's lease record: `<account>.spec.<spec>` (`spec` is 32 hex digits).
#[must_use]
pub fn lease_spec_key(account: &AccountId, spec: &str) -> String {
    format!("{account}.spec.{spec}")
}

/// Key of a runtime's session record: `<account>.rt.<runtime>`.
#[must_use]
pub fn lease_session_key(account: &AccountId, runtime: &RuntimeId) -> String {
    format!("{account}.rt.{runtime}")
}

/// Key filter of every runtime session record of `account`: `<account>.rt.*`.
#[must_use]
pub fn lease_session_filter(account: &AccountId) -> String {
    format!("{account}.rt.*")
}

/// Key filter of every lease and session record of `account`: `<account>.>`.
#[must_use]
pub fn lease_account_filter(account: &AccountId) -> String {
    format!("{account}.>")
}

/// Key of the lease leader lock of `account` in `steward_leases`: `<account>.leader`.
#[must_use]
pub fn lease_leader_key(account: &AccountId) -> String {
    format!("{account}.leader")
}

/// Key of the pointer to the latest lease snapshot of `account` in `steward_leases`:
/// `<account>.snapshot`.
#[must_use]
pub fn lease_snapshot_key(account: &AccountId) -> String {
    format!("{account}.snapshot")
}

/// Name of a lease snapshot in the artifacts object store:
/// `lease-snapshots/<account>/<through_seq>`.
#[must_use]
pub fn lease_snapshot_object(account: &AccountId, through_seq: u64) -> String {
    format!("lease-snapshots/{account}/{through_seq}")
}

impl AnyAccount {
    /// `jobspec.journal` of every account (stream filter of the lease journal stream).
    #[must_use]
    pub fn lease_journal() -> String {
        Self::plain(noun::JOBSPEC, lease_verb::JOURNAL)
    }

    /// `jobspec.fence` of every account (in the lease journal stream beside the journal).
    #[must_use]
    pub fn lease_fence() -> String {
        Self::plain(noun::JOBSPEC, lease_verb::FENCE)
    }
}

/// What a key of the `steward_leases` bucket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseKey<'a> {
    /// A spec's lease record.
    Spec(&'a str),
    /// A runtime's session.
    Session(&'a str),
}

/// Splits a key of the `steward_leases` bucket of `account`; `None` for keys of other accounts
/// or of another shape.
#[must_use]
pub fn parse_lease_key<'a>(account: &AccountId, key: &'a str) -> Option<LeaseKey<'a>> {
    let rest = account_rest(account, key)?;
    if let Some(spec) = rest.strip_prefix("spec.") {
        return (!spec.is_empty() && !spec.contains('.')).then_some(LeaseKey::Spec(spec));
    }
    let rt = rest.strip_prefix("rt.")?;
    (!rt.is_empty() && !rt.contains('.')).then_some(LeaseKey::Session(rt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_round_trip() {
        let a = AccountId::parse("acme").unwrap();
        let r = RuntimeId::parse("rt-1").unwrap();
        let k = lease_spec_key(&a, "00ff");
        assert_eq!(parse_lease_key(&a, &k), Some(LeaseKey::Spec("00ff")));
        let k = lease_session_key(&a, &r);
        assert_eq!(parse_lease_key(&a, &k), Some(LeaseKey::Session("rt-1")));
        let other = AccountId::parse("acme2").unwrap();
        assert_eq!(parse_lease_key(&other, &k), None);
        assert_eq!(parse_lease_key(&a, "acme.x.y"), None);
        let s = Subjects::new(a.clone());
        assert_eq!(s.jobspec_notice(&r), "steward.v1.acme.jobspec.notice.rt-1");
        assert_eq!(s.jobspec_journal(), "steward.v1.acme.jobspec.journal");
        assert_eq!(AnyAccount::lease_journal(), "steward.v1.*.jobspec.journal");
        assert_eq!(s.jobspec_fence(), "steward.v1.acme.jobspec.fence");
        assert_eq!(AnyAccount::lease_fence(), "steward.v1.*.jobspec.fence");
        assert_eq!(parse_lease_key(&a, &lease_leader_key(&a)), None);
        assert_eq!(parse_lease_key(&a, &lease_snapshot_key(&a)), None);
    }

    #[test]
    fn identity_subjects_round_trip() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        let h = HostId::parse("web-01").unwrap();
        let r = RuntimeId::parse("rt-1").unwrap();
        let lease = s.identity_subject(IdentityEndpoint::Lease, Some(&h), &r);
        assert_eq!(lease, "steward.v1.acme.jobspec.lease.web-01.rt-1");
        let submit = s.identity_subject(IdentityEndpoint::Submit, None, &r);
        assert_eq!(submit, "steward.v1.acme.result.submit.rt-1.rt-1");
        assert_eq!(s.identity_wildcard(IdentityEndpoint::Renew), "steward.v1.acme.jobspec.renew.*.*");
        assert_eq!(s.identity_wildcard(IdentityEndpoint::Submit), "steward.v1.acme.result.submit.*.*");
        let p = s.identity_parser(IdentityEndpoint::Lease);
        assert_eq!(p.parse(&lease).unwrap(), Acting { host: "web-01", runtime: "rt-1" });
        for bad in [
            "steward.v1.acme.jobspec.lease",
            "steward.v1.acme.jobspec.lease.web-01",
            "steward.v1.acme.jobspec.lease.web-01.rt-1.x",
            "steward.v1.acme.jobspec.lease..rt-1",
            "steward.v1.acme.jobspec.renew.web-01.rt-1",
            "steward.v1.acme2.jobspec.lease.web-01.rt-1",
            "steward.v1.acme.jobspec.leases.web-01.rt-1",
        ] {
            assert!(p.parse(bad).is_err(), "{bad}");
        }
        for e in IdentityEndpoint::ALL {
            let subject = s.identity_subject(e, Some(&h), &r);
            assert_eq!(s.identity_parser(e).parse(&subject).unwrap(), Acting { host: "web-01", runtime: "rt-1" });
        }
    }
}
