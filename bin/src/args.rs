//! Value parsers of the command line, one per kind of argument, shared by every subcommand.
//!
//! Each returns `Result<_, String>` because that is what clap's `value_parser` wants; the
//! message is what the user sees after `error: invalid value ... for '--flag':`.
//!
//! Durations use the configuration document's grammar
//! ([`steward_subjects::config::duration::parse`]): an integer and a unit, `ms`, `s`, `m` or
//! `h`. A bare number is refused (is `30` seconds or milliseconds?) with a hint to add a unit.

use std::collections::BTreeMap;
use std::time::Duration;

use steward_subjects::selector::Selector;
use steward_subjects::token::{validate, Name, TokenKind};
use steward_subjects::{AccountId, HostId, RuntimeId};

/// Parsed `k=v,k2=v2` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

/// Parses `250ms`, `30s`, `5m` or `1h`; a bare number is refused with a hint to add a unit.
///
/// ```
/// use std::time::Duration;
/// use steward::args::parse_duration;
/// assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
/// assert!(parse_duration("30").unwrap_err().contains("add a unit: 30s"));
/// ```
///
/// # Errors
/// A message saying what is wrong with the text and what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("duration {t:?} has no unit; add a unit: {t}s (or ms, m, h)"));
    }
    steward_subjects::config::duration::parse(s).map_err(|e| e.to_string())
}

/// Parses a duration that may also be given in days (`400d`), for retention times; otherwise
/// as [`parse_duration`].
///
/// ```
/// use std::time::Duration;
/// use steward::args::parse_long_duration;
/// assert_eq!(parse_long_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
/// assert_eq!(parse_long_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
/// assert!(parse_long_duration("0d").is_err());
/// ```
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_long_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.strip_suffix('d') {
        Some(days) if !days.is_empty() && days.chars().all(|c| c.is_ascii_digit()) => {
            let n: u64 = days.parse().map_err(|_| format!("duration {t:?} is too large"))?;
            Duration::from_secs(n.checked_mul(86_400).ok_or_else(|| format!("duration {t:?} is too large"))?)
        }
        _ => parse_duration(t)?,
    };
    if d.is_zero() {
        return Err(format!("duration {t:?} must be more than zero"));
    }
    Ok(d)
}

/// Parses an account id (letters, digits, '-' and '_').
///
/// # Errors
/// A message naming the bad token.
pub fn parse_account(s: &str) -> Result<AccountId, String> {
    AccountId::parse(s).map_err(|e| e.to_string())
}

/// One tenant a hub process serves: `ACCOUNT` (connecting with the global `--creds`) or
/// `ACCOUNT=CREDS_FILE` (that account's own service credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's account.
    pub account: AccountId,
    /// Its service credentials, when not the global ones.
    pub creds: Option<std::path::PathBuf>,
}

/// Parses `ACCOUNT` or `ACCOUNT=CREDS_FILE`.
///
/// ```
/// use steward::args::parse_tenant;
/// let t = parse_tenant("acme=/etc/steward/acme.creds").unwrap();
/// assert_eq!(t.account.as_str(), "acme");
/// assert!(parse_tenant("acme=").unwrap_err().contains("credentials file"));
/// assert!(parse_tenant("bad name").is_err());
/// ```
///
/// # Errors
/// A message naming the bad account token or the empty credentials path.
pub fn parse_tenant(s: &str) -> Result<Tenant, String> {
    let (account, creds) = match s.split_once('=') {
        Some((a, c)) if c.trim().is_empty() => {
            return Err(format!("tenant {a:?} names no credentials file after '='"));
        }
        Some((a, c)) => (a, Some(std::path::PathBuf::from(c.trim()))),
        None => (s, None),
    };
    Ok(Tenant { account: parse_account(account.trim())?, creds })
}

/// Parses a host id (letters, digits, '-' and '_').
///
/// # Errors
/// A message naming the bad token.
pub fn parse_host(s: &str) -> Result<HostId, String> {
    HostId::parse(s).map_err(|e| e.to_string())
}

/// Parses a runtime id (letters, digits, '-' and '_').
///
/// # Errors
/// A message naming the bad token.
pub fn parse_runtime(s: &str) -> Result<RuntimeId, String> {
    RuntimeId::parse(s).map_err(|e| e.to_string())
}

/// Parses a name (a worker, a service identity, a command id).
///
/// # Errors
/// A message naming the bad token.
pub fn parse_name(s: &str) -> Result<Name, String> {
    Name::parse(s).map_err(|e| e.to_string())
}

/// Parses a label selector: `k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`.
///
/// # Errors
/// `bad selector: ...` with the reason.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s).map_err(|e| format!("bad selector: {e}"))
}

/// Parses `k=v,k2=v2`; every key and value must be a valid token.
///
/// # Errors
/// A message naming the bad pair or token.
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("label {pair:?} is not of the form key=value"))?;
        validate(TokenKind::LabelKey, k).map_err(|e| e.to_string())?;
        validate(TokenKind::LabelValue, v).map_err(|e| e.to_string())?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("label key {k:?} given twice"));
        }
    }
    Ok(Labels(out))
}

/// Parses one run label `k=v` (trimmed; run labels are free text, not subject tokens).
///
/// # Errors
/// When there is no `=`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} is not k=v"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let bare = parse_duration("30").unwrap_err();
        assert!(bare.contains("add a unit: 30s"), "{bare}");
        for bad in ["", "s", "30x", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selector_errors_say_selector() {
        assert!(parse_selector("env in (a").unwrap_err().starts_with("bad selector"));
        assert!(parse_selector("").is_ok());
    }

    #[test]
    fn labels_refuse_bad_tokens_and_repeats() {
        assert_eq!(parse_labels("a=1,b=2").unwrap().0.len(), 2);
        assert!(parse_labels("").unwrap().0.is_empty());
        for bad in ["env=prod.eu", "env", "k*=v", "env=a,env=b"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_label(" k = v "), Ok(("k".to_owned(), "v".to_owned())));
        assert!(parse_label("kv").is_err());
    }
}
