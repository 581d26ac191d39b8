//! The remediation ledger in `steward_alarms` (key [`remediation_ledger_key`]): every recent
//! remediation and the guards' state, one value updated with compare-and-set, so two hub
//! instances deciding at once never exceed a cap between them (the loser re-reads and decides
//! again on the ledger the winner wrote). The guards themselves are pure functions of the ledger.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use steward_subjects::api::remediation::{Remediation, RemediationLedger, RemediationState};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::subject::remediation_ledger_key;
use steward_subjects::AccountId;

/// Most remediations kept in the ledger; past it the oldest finished ones go first, then the
/// oldest held ones.
pub const MAX_KEPT: usize = 1000;

/// Most compare-and-set attempts of one update.
const MAX_ATTEMPTS: usize = 64;

/// Starts counted against the hourly cap are those within this window.
pub const HOUR_MS: u64 = 3_600_000;

/// A failed ledger operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The bucket did not answer or refused.
    #[error("remediation ledger unavailable: {0}")]
    Unavailable(String),
    /// The stored ledger cannot be decoded.
    #[error("remediation ledger is corrupt: {0}")]
    Corrupt(String),
    /// Too many writers at once.
    #[error("remediation ledger too contended")]
    Contended,
}

/// The ledger of one account.
#[derive(Debug, Clone)]
pub struct LedgerStore {
    kv: kv::Store,
    key: String,
}

impl LedgerStore {
    /// The ledger of `account` in the alarms bucket `kv`.
    #[must_use]
    pub fn new(kv: kv::Store, account: &AccountId) -> Self {
        LedgerStore { kv, key: remediation_ledger_key(account) }
    }

    /// The ledger and its revision (0: never written).
    ///
    /// # Errors
    /// [`LedgerError`] when the bucket cannot be read or the value decoded.
    pub async fn read(&self) -> Result<(RemediationLedger, u64), LedgerError> {
        match self.kv.entry(&self.key).await.map_err(|e| LedgerError::Unavailable(e.to_string()))? {
            Some(e) if e.operation == kv::Operation::Put => {
                let l = codec::decode(Encoding::MsgPack, &e.value).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                Ok((l, e.revision))
            }
            Some(e) => Ok((RemediationLedger::default(), e.revision)),
            None => Ok((RemediationLedger::default(), 0)),
        }
    }

    /// Applies `f` to the current ledger and writes the result with compare-and-set, again on
    /// a fresh read when another writer came first. `f` returns `None` to write nothing.
    ///
    /// # Errors
    /// [`LedgerError`] when the bucket fails or stays contended.
    pub async fn update<T, F>(&self, mut f: F) -> Result<T, LedgerError>
    where
        F: FnMut(&mut RemediationLedger) -> (T, bool),
    {
        for _ in 0..MAX_ATTEMPTS {
            let (mut ledger, revision) = self.read().await?;
            let (out, changed) = f(&mut ledger);
            if !changed {
                return Ok(out);
            }
            prune(&mut ledger);
            let bytes = codec::encode(Encoding::MsgPack, &ledger).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            let written = if revision == 0 {
                self.kv.create(&self.key, bytes).await.is_ok()
            } else {
                self.kv.update(&self.key, bytes, revision).await.is_ok()
            };
            if written {
                return Ok(out);
            }
        }
        Err(LedgerError::Contended)
    }
}

/// Key of the cooldown of `rule` on `host`.
#[must_use]
pub fn cooldown_key(rule: &str, host: &str) -> String {
    format!("{rule}/{host}")
}

/// The guards of one rule, as the configuration gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guards {
    /// Least time between two starts on one host, ms.
    pub cooldown_ms: u64,
    /// Most in flight at once.
    pub max_in_flight: u32,
    /// Most started per rolling hour.
    pub max_per_hour: u32,
    /// Hold until an operator approves.
    pub approval: bool,
}

/// Why `rule` may not start a remediation on `host` at `now` (`None`: it may). The approval
/// guard is checked last and only when `approved` is false.
#[must_use]
pub fn held_reason(
    l: &RemediationLedger,
    rule: &str,
    host: &str,
    g: Guards,
    now: u64,
    approved: bool,
) -> Option<String> {
    if let Some(last) = l.last_start.get(&cooldown_key(rule, host)) {
        let until = last.saturating_add(g.cooldown_ms);
        if now < until {
            return Some(format!("cooldown until {}", rfc3339(until)));
        }
    }
    let in_flight = l.remediations.values().filter(|r| r.rule == rule && r.state.in_flight()).count();
    if in_flight >= g.max_in_flight as usize {
        return Some(format!("{in_flight}/{} in flight", g.max_in_flight));
    }
    let started = l.starts.get(rule).map_or(0, |s| s.iter().filter(|t| now < t.saturating_add(HOUR_MS)).count());
    if started >= g.max_per_hour as usize {
        return Some(format!("hourly cap {} reached", g.max_per_hour));
    }
    (g.approval && !approved).then(|| "waiting for approval".to_owned())
}

/// Takes a slot for `r` (it becomes [`RemediationState::Starting`]): counts the start against
/// the cooldown and the hourly cap.
pub fn reserve(l: &mut RemediationLedger, r: &mut Remediation, now: u64) {
    r.state = RemediationState::Starting;
    r.reason.clear();
    r.started_ms = now;
    l.last_start.insert(cooldown_key(&r.rule, &r.host), now);
    let starts = l.starts.entry(r.rule.clone()).or_default();
    starts.retain(|t| now < t.saturating_add(HOUR_MS));
    starts.push(now);
}

/// Keeps the ledger bounded: at most [`MAX_KEPT`] remediations (finished first, then held,
/// oldest first; in-flight ones always stay), starts of the last hour only.
fn prune(l: &mut RemediationLedger) {
    if l.remediations.len() > MAX_KEPT {
        let mut old: Vec<(u8, u64, String)> = l
            .remediations
            .values()
            .filter(|r| !r.state.in_flight())
            .map(|r| (u8::from(r.state != RemediationState::Finished), r.created_ms, r.id.clone()))
            .collect();
        old.sort();
        let excess = l.remediations.len() - MAX_KEPT;
        for (_, _, id) in old.into_iter().take(excess) {
            l.remediations.remove(&id);
        }
    }
    let newest = l.starts.values().flatten().copied().max().unwrap_or(0);
    for starts in l.starts.values_mut() {
        starts.retain(|t| newest < t.saturating_add(HOUR_MS));
    }
    l.starts.retain(|_, s| !s.is_empty());
    let kept: BTreeMap<String, u64> = std::mem::take(&mut l.last_start)
        .into_iter()
        .filter(|(_, t)| newest < t.saturating_add(HOUR_MS * 24))
        .collect();
    l.last_start = kept;
}

/// `ms` since the Unix epoch as RFC 3339 text (UTC, whole seconds).
#[must_use]
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn guards() -> Guards {
        Guards { cooldown_ms: 600_000, max_in_flight: 2, max_per_hour: 3, approval: false }
    }

    fn new(id: &str, host: &str) -> Remediation {
        Remediation { id: id.into(), rule: "fix".into(), host: host.into(), ..Remediation::default() }
    }

    #[test]
    fn guards_hold_in_order_cooldown_in_flight_hourly_approval() {
        let mut l = RemediationLedger::default();
        let now = 10 * HOUR_MS;
        assert_eq!(held_reason(&l, "fix", "a", guards(), now, false), None);
        for (id, host) in [("1", "a"), ("2", "b")] {
            let mut r = new(id, host);
            reserve(&mut l, &mut r, now);
            l.remediations.insert(r.id.clone(), r);
        }
        assert!(held_reason(&l, "fix", "a", guards(), now + 1, false).unwrap().starts_with("cooldown until "));
        assert_eq!(held_reason(&l, "fix", "c", guards(), now + 1, false).unwrap(), "2/2 in flight");
        assert_eq!(held_reason(&l, "other", "c", guards(), now + 1, false), None);
        l.remediations.get_mut("1").unwrap().state = RemediationState::Finished;
        assert_eq!(held_reason(&l, "fix", "c", guards(), now + 1, false), None);
        let mut r = new("3", "c");
        reserve(&mut l, &mut r, now + 2);
        r.state = RemediationState::Finished;
        l.remediations.insert(r.id.clone(), r);
        assert_eq!(held_reason(&l, "fix", "d", guards(), now + 3, false).unwrap(), "hourly cap 3 reached");
        // An hour later the starts no longer count, and the approval guard comes last.
        l.remediations.get_mut("2").unwrap().state = RemediationState::Finished;
        let g = Guards { approval: true, ..guards() };
        assert_eq!(held_reason(&l, "fix", "d", g, now + HOUR_MS + 3, false).unwrap(), "waiting for approval");
        assert_eq!(held_reason(&l, "fix", "d", g, now + HOUR_MS + 3, true), None);
    }

    #[test]
    fn prune_keeps_in_flight_and_drops_oldest_finished_first() {
        let mut l = RemediationLedger::default();
        for i in 0..(MAX_KEPT as u64 + 10) {
            let mut r = new(&format!("r{i:05}"), "h");
            r.created_ms = i;
            r.state = match i {
                0..=4 => RemediationState::Running,
                5..=9 => RemediationState::Held,
                _ => RemediationState::Finished,
            };
            l.remediations.insert(r.id.clone(), r);
        }
        prune(&mut l);
        assert_eq!(l.remediations.len(), MAX_KEPT);
        assert!((0..10).all(|i| l.remediations.contains_key(&format!("r{i:05}"))));
        assert!(!l.remediations.contains_key("r00010") && l.remediations.contains_key("r00020"));
    }
}
