//! Rendered job-spec subjects and keys: the renderer's endpoints and the keys of the
//! `steward_jobspecs` bucket. (Leasing specs to runtimes is [`super::lease`].)
//!
//! Endpoints (NATS micro, queue group: any hub instance may answer):
//! `steward.v1.<account>.jobspec.{list,explain,status}`.
//!
//! Keys of the `steward_jobspecs` bucket: `<account>.<host|pool>.<target>.<spec>`, so one
//! target's specs are a key-filtered list or watch (`<account>.host.<host>.*`) and never need a
//! scan of every spec.

use super::{account_rest, noun, verb, Subjects};
use crate::config::spec::{SpecId, TargetKind};
use crate::token::{AccountId, Token};

/// Verbs of the renderer's job-spec endpoints.
pub mod jobspec_verb {
    /// List job specs.
    pub const LIST: &str = "list";
    /// Explain one job spec.
    pub const EXPLAIN: &str = "explain";
    /// Renderer progress.
    pub const STATUS: &str = super::verb::STATUS;
}

impl Subjects {
    /// `jobspec.list`: specs of the account, optionally of one target.
    #[must_use]
    pub fn jobspec_list(&self) -> String {
        self.base(noun::JOBSPEC, jobspec_verb::LIST)
    }

    /// `jobspec.explain`: one spec and why it exists.
    #[must_use]
    pub fn jobspec_explain(&self) -> String {
        self.base(noun::JOBSPEC, jobspec_verb::EXPLAIN)
    }

    /// `jobspec.status`: what the renderer last rendered and how far its writes are.
    #[must_use]
    pub fn jobspec_status(&self) -> String {
        self.base(noun::JOBSPEC, verb::STATUS)
    }
}

/// Key of a job spec: `<account>.<host|pool>.<target>.<spec>`.
#[must_use]
pub fn jobspec_key(account: &AccountId, kind: TargetKind, target: &Token, spec: &SpecId) -> String {
    format!("{account}.{}.{target}.{spec}", kind.as_str())
}

/// The key prefix of one target's specs: `<account>.<host|pool>.<target>` (append `.<spec>`
/// for a key or `.*` for a filter).
#[must_use]
pub fn jobspec_target_prefix(account: &AccountId, kind: TargetKind, target: &Token) -> String {
    format!("{account}.{}.{target}", kind.as_str())
}

/// Key filter of one target's specs: `<account>.<host|pool>.<target>.*`.
#[must_use]
pub fn jobspec_target_filter(account: &AccountId, kind: TargetKind, target: &Token) -> String {
    format!("{account}.{}.{target}.*", kind.as_str())
}

/// Key filter of every spec of `account`: `<account>.>`.
#[must_use]
pub fn jobspec_account_filter(account: &AccountId) -> String {
    format!("{account}.>")
}

/// A key of the `steward_jobspecs` bucket, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpecKey<'a> {
    /// Whether the spec targets a host or a pool.
    pub kind: TargetKind,
    /// The host or pool token.
    pub target: &'a str,
    /// The spec id.
    pub spec: SpecId,
}

/// Splits a key of the `steward_jobspecs` bucket of `account` (the inverse of [`jobspec_key`]);
/// `None` for keys of another account or of another shape.
#[must_use]
pub fn parse_jobspec_key<'a>(account: &AccountId, key: &'a str) -> Option<JobSpecKey<'a>> {
    let mut parts = account_rest(account, key)?.split('.');
    let (kind, target, spec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || target.is_empty() {
        return None;
    }
    let kind = match kind {
        "host" => TargetKind::Host,
        "pool" => TargetKind::Pool,
        _ => return None,
    };
    Some(JobSpecKey { kind, target, spec: spec.parse().ok()? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::TokenKind;

    #[test]
    fn jobspec_keys_round_trip() {
        let a = AccountId::parse("acme").unwrap();
        let t = Token::parse(TokenKind::Name, "web-01").unwrap();
        let spec: SpecId = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        let key = jobspec_key(&a, TargetKind::Pool, &t, &spec);
        let parsed = parse_jobspec_key(&a, &key).unwrap();
        assert_eq!(parsed, JobSpecKey { kind: TargetKind::Pool, target: "web-01", spec });
        assert_eq!(parse_jobspec_key(&AccountId::parse("acme2").unwrap(), &key), None);
        assert_eq!(parse_jobspec_key(&a, "acme.group.web.000102030405060708090a0b0c0d0e0f"), None);
        assert_eq!(parse_jobspec_key(&a, &format!("{key}.extra")), None);
        assert_eq!(parse_jobspec_key(&a, "acme.host.web.nothex"), None);
        let s = Subjects::new(a);
        assert_eq!(s.jobspec_list(), "steward.v1.acme.jobspec.list");
        assert_eq!(s.jobspec_status(), "steward.v1.acme.jobspec.status");
    }
}
