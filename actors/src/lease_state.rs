//! The lease service's in-memory view of the `steward_jobspecs` and `steward_leases` buckets,
//! and the decisions taken on it (which specs to offer, what is held, what expired). Pure and
//! synchronous: the service in [`crate::lease`] does the I/O and calls in here under a short
//! lock. The buckets stay the source of truth: every grant, renewal and release is a
//! compare-and-set write there, and this view only chooses candidates and answers reads.
//!
//! A spec is *free* when it exists, no write about it is in flight, and its lease record names
//! no holder or a holder whose session has expired. Free specs wait in per-host sets (host
//! specs) and per-selector sets (pool specs); entries there are re-checked when taken, so a
//! stale entry is dropped instead of granted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use steward_subjects::api::lease::{LeaseRecord, LeaseRow, RuntimeSession};
use steward_subjects::config::{JobSpec, TargetKind};
use steward_subjects::selector::Selector;

/// What the view knows of one spec.
#[derive(Debug, Clone)]
pub struct SpecEntry {
    /// Host or pool spec.
    pub kind: TargetKind,
    /// Host id or pool id.
    pub target: String,
    /// Runtime selector (pool specs).
    pub selector: String,
    /// Content hash.
    pub content_hash: String,
    /// Executor kind.
    pub executor: &'static str,
    /// The spec as stored (MessagePack), decoded when granted.
    pub raw: Bytes,
}

impl SpecEntry {
    /// Builds the entry of a decoded spec with its stored bytes.
    #[must_use]
    pub fn new(spec: &JobSpec, raw: Bytes) -> Self {
        SpecEntry {
            kind: spec.target.kind,
            target: spec.target.id.clone(),
            selector: spec.runtime_selector.clone(),
            content_hash: spec.content_hash.clone(),
            executor: spec.executor.kind(),
            raw,
        }
    }
}

/// What the view knows of one spec's lease record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Holder, empty when none.
    pub holder: String,
    /// Current epoch.
    pub epoch: u64,
    /// KV revision of the record (0 = no record yet).
    pub revision: u64,
    /// A compare-and-set on this record is in flight from this process.
    pub pending: bool,
}

/// A runtime session and its record revision.
#[derive(Debug, Clone, Default)]
pub struct SessionEntry {
    /// The record.
    pub record: RuntimeSession,
    /// KV revision (0 = no record yet).
    pub revision: u64,
    /// The sweep has released this session's specs (it expired).
    pub expired: bool,
}

#[derive(Debug)]
struct Pool {
    selector: Option<Selector>,
    free: BTreeSet<String>,
}

/// A planned write of one spec's lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGrant {
    /// Spec id.
    pub spec: String,
    /// The record to write.
    pub record: LeaseRecord,
    /// Revision the write must find (0 = the record must not exist).
    pub expected: u64,
    /// The previous holder, when this takes the spec over from an expired one.
    pub previous: Option<String>,
}

/// The in-memory view.
#[derive(Debug, Default)]
pub struct LeaseView {
    specs: HashMap<String, SpecEntry>,
    leases: HashMap<String, LeaseEntry>,
    sessions: HashMap<String, SessionEntry>,
    held: HashMap<String, BTreeSet<String>>,
    free_host: HashMap<String, BTreeSet<String>>,
    pools: BTreeMap<String, Pool>,
    selector_cache: HashMap<String, Arc<Option<Selector>>>,
}

impl LeaseView {
    /// Number of specs known.
    #[must_use]
    pub fn spec_count(&self) -> usize {
        self.specs.len()
    }

    /// One spec.
    #[must_use]
    pub fn spec(&self, id: &str) -> Option<&SpecEntry> {
        self.specs.get(id)
    }

    /// One lease.
    #[must_use]
    pub fn lease(&self, id: &str) -> Option<&LeaseEntry> {
        self.leases.get(id)
    }

    /// One session.
    #[must_use]
    pub fn session(&self, runtime: &str) -> Option<&SessionEntry> {
        self.sessions.get(runtime)
    }

    /// Whether `runtime` has an unexpired session at `now_ms`.
    #[must_use]
    pub fn is_live(&self, runtime: &str, now_ms: u64) -> bool {
        !runtime.is_empty() && self.sessions.get(runtime).is_some_and(|s| s.record.expires_at_ms > now_ms)
    }

    /// Live sessions at `now_ms`.
    #[must_use]
    pub fn live_runtimes(&self, now_ms: u64) -> usize {
        self.sessions.values().filter(|s| s.record.expires_at_ms > now_ms).count()
    }

    /// Specs `runtime` holds (by the records), ordered by id.
    #[must_use]
    pub fn held_by(&self, runtime: &str) -> Vec<String> {
        self.held.get(runtime).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Number of specs `runtime` holds.
    #[must_use]
    pub fn held_count(&self, runtime: &str) -> usize {
        self.held.get(runtime).map_or(0, BTreeSet::len)
    }

    fn selector(&mut self, text: &str) -> Arc<Option<Selector>> {
        if let Some(s) = self.selector_cache.get(text) {
            return s.clone();
        }
        // An unparsable selector matches nothing (the renderer validates selectors; this only
        // guards against a bad record).
        let parsed = Arc::new(text.parse::<Selector>().ok());
        self.selector_cache.insert(text.to_owned(), parsed.clone());
        parsed
    }

    fn mark_free(&mut self, id: &str) {
        let Some(spec) = self.specs.get(id) else { return };
        match spec.kind {
            TargetKind::Host => {
                self.free_host.entry(spec.target.clone()).or_default().insert(id.to_owned());
            }
            TargetKind::Pool => {
                let text = spec.selector.clone();
                if !self.pools.contains_key(&text) {
                    let selector = (*self.selector(&text)).clone();
                    self.pools.insert(text.clone(), Pool { selector, free: BTreeSet::new() });
                }
                if let Some(p) = self.pools.get_mut(&text) {
                    p.free.insert(id.to_owned());
                }
            }
        }
    }

    fn is_free(&self, id: &str, now_ms: u64) -> bool {
        if !self.specs.contains_key(id) {
            return false;
        }
        match self.leases.get(id) {
            None => true,
            Some(l) => !l.pending && !self.is_live(&l.holder, now_ms),
        }
    }

    /// Sets or replaces a spec (from the spec store). Returns the live holder to notify when
    /// the content changed.
    pub fn upsert_spec(&mut self, id: &str, entry: SpecEntry, now_ms: u64) -> Option<String> {
        let changed = self.specs.get(id).is_some_and(|old| old.content_hash != entry.content_hash);
        self.specs.insert(id.to_owned(), entry);
        if self.is_free(id, now_ms) {
            self.mark_free(id);
        }
        let holder = self.leases.get(id).map(|l| l.holder.clone()).filter(|h| self.is_live(h, now_ms));
        if changed {
            holder
        } else {
            None
        }
    }

    /// Removes a spec (deleted from the spec store). Returns its lease record when it had a
    /// holder, so the caller can release it and notify the holder.
    pub fn remove_spec(&mut self, id: &str) -> Option<(String, LeaseEntry)> {
        self.specs.remove(id)?;
        let lease = self.leases.get(id).cloned()?;
        if lease.holder.is_empty() {
            return None;
        }
        if let Some(set) = self.held.get_mut(&lease.holder) {
            set.remove(id);
        }
        Some((lease.holder.clone(), lease))
    }

    /// Whether the view already has revision `revision` (or a newer one) of `spec`'s lease
    /// record: such a record (typically the echo of this process's own write) can be skipped
    /// without decoding it.
    #[must_use]
    pub fn has_lease_revision(&self, spec: &str, revision: u64) -> bool {
        self.leases.get(spec).is_some_and(|l| l.revision >= revision)
    }

    /// Applies a lease record read from the bucket (watch, refresh) when it is newer than what
    /// the view has.
    pub fn apply_lease(&mut self, id: &str, record: &LeaseRecord, revision: u64, now_ms: u64) {
        let current = self.leases.get(id).cloned().unwrap_or_default();
        if revision <= current.revision {
            return;
        }
        if !current.holder.is_empty() && current.holder != record.holder {
            if let Some(set) = self.held.get_mut(&current.holder) {
                set.remove(id);
            }
        }
        if !record.holder.is_empty() && self.specs.contains_key(id) {
            self.held.entry(record.holder.clone()).or_default().insert(id.to_owned());
        }
        self.leases.insert(
            id.to_owned(),
            LeaseEntry { holder: record.holder.clone(), epoch: record.epoch, revision, pending: current.pending },
        );
        if self.is_free(id, now_ms) {
            self.mark_free(id);
        }
    }

    /// Applies a session record read from the bucket when it is newer.
    pub fn apply_session(&mut self, record: RuntimeSession, revision: u64, now_ms: u64) {
        let runtime = record.runtime.clone();
        let entry = self.sessions.entry(runtime.clone()).or_default();
        if revision <= entry.revision {
            return;
        }
        entry.record = record;
        entry.revision = revision;
        entry.expired = entry.record.expires_at_ms <= now_ms;
        if entry.expired {
            for id in self.held_by(&runtime) {
                self.mark_free(&id);
            }
        }
    }

    /// Finds sessions that expired since the last sweep and puts their specs back among the
    /// free ones. Returns how many specs were freed.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let expired: Vec<String> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| !s.expired && s.record.expires_at_ms <= now_ms)
            .map(|(r, s)| {
                s.expired = true;
                r.clone()
            })
            .collect();
        let mut freed = 0;
        for r in expired {
            for id in self.held_by(&r) {
                if self.is_free(&id, now_ms) {
                    self.mark_free(&id);
                    freed += 1;
                }
            }
        }
        freed
    }

    /// Picks up to `n` free specs `runtime` may run — its host's specs first, then pool specs
    /// whose selector matches its labels — marks them pending and returns the writes to make.
    /// Each grant bumps the epoch, except a spec whose record already names `runtime` (it
    /// comes back after its session expired), which keeps its epoch.
    pub fn plan_grants(
        &mut self,
        runtime: &str,
        host: Option<&str>,
        labels: &BTreeMap<String, String>,
        n: usize,
        now_ms: u64,
    ) -> Vec<PlannedGrant> {
        let mut picked: Vec<String> = Vec::with_capacity(n);
        if n == 0 {
            return Vec::new();
        }
        if let Some(host) = host {
            if let Some(set) = self.free_host.get_mut(host) {
                let mut taken = Vec::new();
                while picked.len() + taken.len() < n {
                    let Some(id) = set.pop_first() else { break };
                    taken.push(id);
                }
                picked.extend(taken);
            }
        }
        if picked.len() < n {
            let texts: Vec<String> = self.pools.keys().cloned().collect();
            for text in texts {
                if picked.len() >= n {
                    break;
                }
                let Some(pool) = self.pools.get_mut(&text) else { continue };
                if !pool.selector.as_ref().is_some_and(|s| s.matches(labels)) {
                    continue;
                }
                while picked.len() < n {
                    let Some(id) = pool.free.pop_first() else { break };
                    picked.push(id);
                }
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for id in picked {
            if !self.is_free(&id, now_ms) {
                continue;
            }
            let lease = self.leases.entry(id.clone()).or_default();
            lease.pending = true;
            let same = lease.holder == runtime;
            let previous = (!lease.holder.is_empty() && !same).then(|| lease.holder.clone());
            out.push(PlannedGrant {
                spec: id.clone(),
                record: LeaseRecord {
                    spec: id,
                    holder: runtime.to_owned(),
                    epoch: if same { lease.epoch.max(1) } else { lease.epoch + 1 },
                    granted_at_ms: now_ms,
                },
                expected: lease.revision,
                previous,
            });
        }
        out
    }

    /// Whether unassigned specs `runtime` could run remain (cheap estimate: any free entry in
    /// its host's set or a matching pool).
    #[must_use]
    pub fn has_free_for(&self, host: Option<&str>, labels: &BTreeMap<String, String>) -> bool {
        host.and_then(|h| self.free_host.get(h)).is_some_and(|s| !s.is_empty())
            || self.pools.values().any(|p| !p.free.is_empty() && p.selector.as_ref().is_some_and(|s| s.matches(labels)))
    }

    /// Records a successful write of a planned grant at `revision`.
    pub fn commit_grant(&mut self, grant: &PlannedGrant, revision: u64) {
        if let Some(prev) = &grant.previous {
            if let Some(set) = self.held.get_mut(prev) {
                set.remove(&grant.spec);
            }
        }
        let lease = self.leases.entry(grant.spec.clone()).or_default();
        lease.pending = false;
        if revision > lease.revision {
            lease.holder = grant.record.holder.clone();
            lease.epoch = grant.record.epoch;
            lease.revision = revision;
        }
        if self.specs.contains_key(&grant.spec) {
            self.held.entry(grant.record.holder.clone()).or_default().insert(grant.spec.clone());
        }
    }

    /// Forgets a planned grant whose write failed; the spec is free again unless the caller
    /// learns a newer record (pass it to [`Self::apply_lease`]).
    pub fn abort_grant(&mut self, spec: &str, now_ms: u64) {
        if let Some(l) = self.leases.get_mut(spec) {
            l.pending = false;
        }
        if self.is_free(spec, now_ms) {
            self.mark_free(spec);
        }
    }

    /// Marks a lease record as being written (release, removal) so it is not granted meanwhile.
    /// Returns the expected revision, or `None` when `runtime` does not hold `spec` at `epoch`.
    pub fn begin_release(&mut self, spec: &str, runtime: &str, epoch: u64) -> Option<u64> {
        let l = self.leases.get_mut(spec)?;
        if l.pending || l.holder != runtime || l.epoch != epoch {
            return None;
        }
        l.pending = true;
        Some(l.revision)
    }

    /// Records a successful release write.
    pub fn commit_release(&mut self, spec: &str, runtime: &str, revision: u64, now_ms: u64) {
        if let Some(set) = self.held.get_mut(runtime) {
            set.remove(spec);
        }
        if let Some(l) = self.leases.get_mut(spec) {
            l.pending = false;
            if revision > l.revision {
                l.holder.clear();
                l.revision = revision;
            }
        }
        if self.is_free(spec, now_ms) {
            self.mark_free(spec);
        }
    }

    /// Stores a session written by this process.
    pub fn commit_session(&mut self, record: RuntimeSession, revision: u64) {
        let entry = self.sessions.entry(record.runtime.clone()).or_default();
        if revision > entry.revision {
            entry.record = record;
            entry.revision = revision;
            entry.expired = false;
        }
    }

    /// Rows for `jobspec.leases`.
    #[must_use]
    pub fn rows(&self, runtime: Option<&str>, unassigned: bool, limit: usize, now_ms: u64) -> (Vec<LeaseRow>, u64) {
        let mut ids: Vec<&String> = match runtime {
            Some(r) => self.held.get(r).map(|s| s.iter().collect()).unwrap_or_default(),
            None => self.specs.keys().collect(),
        };
        ids.sort_unstable();
        let mut rows = Vec::new();
        let mut total = 0u64;
        for id in ids {
            let Some(spec) = self.specs.get(id) else { continue };
            let lease = self.leases.get(id).cloned().unwrap_or_default();
            let live = self.is_live(&lease.holder, now_ms);
            if unassigned && live {
                continue;
            }
            total += 1;
            if rows.len() < limit {
                rows.push(LeaseRow {
                    spec: id.clone(),
                    target: format!("{}/{}", spec.kind.as_str(), spec.target),
                    executor: spec.executor.to_owned(),
                    expires_at_ms: if lease.holder.is_empty() {
                        0
                    } else {
                        self.sessions.get(&lease.holder).map_or(0, |s| s.record.expires_at_ms)
                    },
                    holder: lease.holder,
                    epoch: lease.epoch,
                    live,
                });
            }
        }
        (rows, total)
    }

    /// Unassigned specs (no live holder); walks every spec, for listings.
    #[must_use]
    pub fn unassigned(&self, now_ms: u64) -> u64 {
        self.specs.keys().filter(|id| self.is_free(id, now_ms)).count() as u64
    }

    /// Cheap upper bound of the free specs (entries waiting in the free sets, some of which may
    /// be stale), for notices.
    #[must_use]
    pub fn free_estimate(&self) -> u64 {
        let hosts: usize = self.free_host.values().map(BTreeSet::len).sum();
        let pools: usize = self.pools.values().map(|p| p.free.len()).sum();
        (hosts + pools) as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use steward_subjects::config::SpecTarget;

    use super::*;

    fn spec(id: &str, kind: TargetKind, target: &str, selector: &str) -> (String, SpecEntry) {
        let s = JobSpec {
            id: id.into(),
            target: SpecTarget { kind, id: target.into() },
            runtime_selector: selector.into(),
            content_hash: "h1".into(),
            ..JobSpec::default()
        };
        (id.to_owned(), SpecEntry::new(&s, Bytes::new()))
    }

    fn session(view: &mut LeaseView, rt: &str, expires: u64, rev: u64) {
        view.commit_session(RuntimeSession { runtime: rt.into(), expires_at_ms: expires, ..Default::default() }, rev);
    }

    #[test]
    fn host_specs_first_then_matching_pools_and_epochs_grow() {
        let mut v = LeaseView::default();
        for (id, e) in [
            spec("p1", TargetKind::Pool, "web", "env=prod"),
            spec("p2", TargetKind::Pool, "db", "env=dev"),
            spec("h1", TargetKind::Host, "host-a", ""),
            spec("h2", TargetKind::Host, "host-b", ""),
        ] {
            v.upsert_spec(&id, e, 0);
        }
        session(&mut v, "a", 1000, 1);
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let plan = v.plan_grants("a", Some("host-a"), &labels, 10, 10);
        let ids: Vec<&str> = plan.iter().map(|p| p.spec.as_str()).collect();
        assert_eq!(ids, vec!["h1", "p1"]);
        assert!(plan.iter().all(|p| p.record.epoch == 1 && p.expected == 0));
        // Pending specs are not offered twice.
        assert!(v.plan_grants("b", Some("host-a"), &labels, 10, 10).is_empty());
        for (i, p) in plan.iter().enumerate() {
            v.commit_grant(p, 10 + i as u64);
        }
        assert_eq!(v.held_by("a"), vec!["h1", "p1"]);
        // The session expires: the sweep frees the specs, another runtime takes over with a
        // higher epoch, and the old holder loses them.
        assert_eq!(v.sweep(2000), 2);
        session(&mut v, "b", 5000, 2);
        let plan = v.plan_grants("b", None, &labels, 10, 2000);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].spec, "p1");
        assert_eq!(plan[0].record.epoch, 2);
        assert_eq!(plan[0].previous.as_deref(), Some("a"));
        v.commit_grant(&plan[0], 20);
        assert_eq!(v.held_by("a"), vec!["h1"]);
        assert_eq!(v.held_by("b"), vec!["p1"]);
    }

    #[test]
    fn a_stale_free_entry_is_not_granted() {
        let mut v = LeaseView::default();
        let (id, e) = spec("p1", TargetKind::Pool, "x", "");
        v.upsert_spec(&id, e, 0);
        session(&mut v, "other", 10_000, 1);
        // Another hub granted it meanwhile: the record arrives through the watch.
        v.apply_lease(
            "p1",
            &LeaseRecord { spec: "p1".into(), holder: "other".into(), epoch: 3, granted_at_ms: 0 },
            5,
            0,
        );
        assert!(v.plan_grants("me", None, &BTreeMap::new(), 5, 0).is_empty());
        assert_eq!(v.held_by("other"), vec!["p1"]);
    }

    #[test]
    fn release_and_removal() {
        let mut v = LeaseView::default();
        let (id, e) = spec("p1", TargetKind::Pool, "x", "");
        v.upsert_spec(&id, e, 0);
        session(&mut v, "a", 10_000, 1);
        let plan = v.plan_grants("a", None, &BTreeMap::new(), 1, 0);
        v.commit_grant(&plan[0], 7);
        assert_eq!(v.begin_release("p1", "a", 2), None, "wrong epoch");
        assert_eq!(v.begin_release("p1", "b", 1), None, "not the holder");
        assert_eq!(v.begin_release("p1", "a", 1), Some(7));
        v.commit_release("p1", "a", 8, 0);
        assert!(v.held_by("a").is_empty());
        let plan = v.plan_grants("b", None, &BTreeMap::new(), 1, 0);
        assert_eq!(plan[0].record.epoch, 2);
        v.commit_grant(&plan[0], 9);
        let (holder, _) = v.remove_spec("p1").unwrap();
        assert_eq!(holder, "b");
        assert!(v.held_by("b").is_empty());
    }
}
