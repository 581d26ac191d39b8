//! The lease leader's in-memory state: what specs exist (followed from `steward_jobspecs`),
//! who holds each spec at which epoch, and every runtime's session — and the decisions taken on
//! it (which specs to offer, what is held, what expired). Pure and synchronous: the leader loop
//! in [`crate::lease`] owns it, makes every change durable in the lease journal
//! ([`crate::lease::journal`]) before it answers, and replays the journal into it on takeover.
//!
//! A spec is *free* when it exists and its lease names no holder or a holder whose session has
//! expired. Free specs wait in per-host sets (host specs) and per-selector sets (pool specs);
//! entries there are re-checked when taken, so a stale entry is dropped instead of granted.
//! Epochs only grow: a lease entry outlives its spec (a re-added spec continues its epochs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use steward_subjects::api::lease::{JournalLease, LeaseRow, LeaseSnapshot, RuntimeSession};
use steward_subjects::config::{JobSpec, TargetKind};
use steward_subjects::selector::Selector;

/// A fast non-cryptographic hasher (the multiply-rotate scheme of rustc's `FxHasher`) for the
/// maps keyed by spec id. Spec ids are derived by the hub (hex digests), never chosen by a
/// caller, so the flooding resistance of the default SipHash buys nothing there; maps keyed by
/// caller-chosen runtime ids keep SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpecHasher(u64);

impl Hasher for SpecHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type SpecMap<V> = HashMap<String, V, BuildHasherDefault<SpecHasher>>;
type SpecSet = HashSet<String, BuildHasherDefault<SpecHasher>>;

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
    /// The spec as stored (MessagePack).
    pub raw: Bytes,
    /// The spec decoded (granted specs are answered from it without decoding again).
    pub spec: Arc<JobSpec>,
}

impl SpecEntry {
    /// Builds the entry of a decoded spec with its stored bytes.
    #[must_use]
    pub fn new(spec: JobSpec, raw: Bytes) -> Self {
        SpecEntry {
            kind: spec.target.kind,
            target: spec.target.id.clone(),
            selector: spec.runtime_selector.clone(),
            content_hash: spec.content_hash.clone(),
            executor: spec.executor.kind(),
            raw,
            spec: Arc::new(spec),
        }
    }
}

/// What the view knows of one spec's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Holder, empty when none.
    pub holder: String,
    /// Current epoch.
    pub epoch: u64,
}

/// A runtime session.
#[derive(Debug, Clone, Default)]
pub struct SessionEntry {
    /// The record.
    pub record: RuntimeSession,
    /// The sweep has put this session's specs back among the free ones (it expired).
    pub expired: bool,
}

#[derive(Debug)]
struct Pool {
    selector: Option<Selector>,
    free: BTreeSet<String>,
}

/// One grant made by [`LeaseView::grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Spec id.
    pub spec: String,
    /// The epoch granted.
    pub epoch: u64,
    /// The previous holder, when this takes the spec over from an expired one.
    pub previous: Option<String>,
}

/// Why a release or renewal of one spec was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHeld {
    /// The spec no longer exists.
    Removed,
    /// Another runtime (or nobody) holds it.
    NotHolder(u64),
    /// The caller holds it at another epoch.
    StaleEpoch(u64),
}

/// The in-memory state.
#[derive(Debug, Default)]
pub struct LeaseView {
    specs: SpecMap<SpecEntry>,
    leases: SpecMap<LeaseEntry>,
    sessions: HashMap<String, SessionEntry>,
    held: HashMap<String, SpecSet>,
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

    /// Existing specs `runtime` holds (by the leases), ordered by id.
    #[must_use]
    pub fn held_by(&self, runtime: &str) -> Vec<String> {
        let mut v: Vec<String> = self.held.get(runtime).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Number of existing specs `runtime` holds.
    #[must_use]
    pub fn held_count(&self, runtime: &str) -> usize {
        self.held.get(runtime).map_or(0, HashSet::len)
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
            Some(l) => !self.is_live(&l.holder, now_ms),
        }
    }

    fn unhold(&mut self, holder: &str, id: &str) {
        if let Some(set) = self.held.get_mut(holder) {
            set.remove(id);
            if set.is_empty() {
                self.held.remove(holder);
            }
        }
    }

    /// Sets or replaces a spec (from the spec store). Returns the live holder to notify when the
    /// content or the stored bytes (e.g. a signature re-made with a new key) changed, or when `notify_new` and a spec that did not exist comes back to a live
    /// holder recorded before.
    pub fn upsert_spec(&mut self, id: &str, entry: SpecEntry, now_ms: u64, notify_new: bool) -> Option<String> {
        let changed = match self.specs.get(id) {
            Some(old) => old.content_hash != entry.content_hash || old.raw != entry.raw,
            None => notify_new,
        };
        let existed = self.specs.insert(id.to_owned(), entry).is_some();
        let holder = self.leases.get(id).map(|l| l.holder.clone()).filter(|h| !h.is_empty());
        if let (false, Some(h)) = (existed, &holder) {
            self.held.entry(h.clone()).or_default().insert(id.to_owned());
        }
        if self.is_free(id, now_ms) {
            self.mark_free(id);
        }
        holder.filter(|h| changed && self.is_live(h, now_ms))
    }

    /// Removes a spec (deleted from the spec store). When it had a holder, the lease is cleared
    /// (its epoch kept) and the holder returned with the cleared lease, to journal and notify.
    pub fn remove_spec(&mut self, id: &str) -> Option<(String, JournalLease)> {
        self.specs.remove(id)?;
        let lease = self.leases.get_mut(id)?;
        if lease.holder.is_empty() {
            return None;
        }
        let holder = std::mem::take(&mut lease.holder);
        let cleared = JournalLease { spec: id.to_owned(), holder: String::new(), epoch: lease.epoch };
        self.unhold(&holder, id);
        Some((holder, cleared))
    }

    /// Applies a journaled (or snapshotted) lease.
    pub fn apply_lease(&mut self, l: &JournalLease, now_ms: u64) {
        let old = self.leases.insert(l.spec.clone(), LeaseEntry { holder: l.holder.clone(), epoch: l.epoch });
        if let Some(old) = old.filter(|o| !o.holder.is_empty() && o.holder != l.holder) {
            self.unhold(&old.holder, &l.spec);
        }
        if !l.holder.is_empty() && self.specs.contains_key(&l.spec) {
            self.held.entry(l.holder.clone()).or_default().insert(l.spec.clone());
        }
        if self.is_free(&l.spec, now_ms) {
            self.mark_free(&l.spec);
        }
    }

    /// Sets a runtime's session (a renewal, a lease request, the journal).
    pub fn set_session(&mut self, record: RuntimeSession, now_ms: u64) {
        let runtime = record.runtime.clone();
        let expired = record.expires_at_ms <= now_ms;
        self.sessions.insert(runtime.clone(), SessionEntry { record, expired });
        if expired {
            for id in self.held_by(&runtime) {
                self.mark_free(&id);
            }
        }
    }

    /// Gives every session still live at `since_ms` an expiry of at least `until_ms`. A new
    /// leader does so once, before [`Self::rebuild`], with `since_ms` the time the journal was
    /// last written: a session that expired after that expired while no leader could take its
    /// renewals (leadership moving, a leaderless stream, storage full), not because its runtime
    /// stopped renewing, and its runtime may still hold results made under its epoch. No lease
    /// was granted meanwhile (nobody led), so keeping it with its holder only delays hand-overs.
    pub fn extend_live_sessions(&mut self, since_ms: u64, until_ms: u64) {
        for s in self.sessions.values_mut() {
            if s.record.expires_at_ms > since_ms {
                s.record.expires_at_ms = s.record.expires_at_ms.max(until_ms);
            }
        }
    }

    /// Rebuilds the holder index and the free sets from the specs, leases and sessions (after a
    /// snapshot load and journal replay).
    pub fn rebuild(&mut self, now_ms: u64) {
        self.held.clear();
        self.free_host.clear();
        self.pools.clear();
        let ids: Vec<String> = self.specs.keys().cloned().collect();
        for id in ids {
            if let Some(l) = self.leases.get(&id).filter(|l| !l.holder.is_empty()) {
                self.held.entry(l.holder.clone()).or_default().insert(id.clone());
            }
            if self.is_free(&id, now_ms) {
                self.mark_free(&id);
            }
        }
        for s in self.sessions.values_mut() {
            s.expired = s.record.expires_at_ms <= now_ms;
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

    /// Grants up to `n` free specs `runtime` may run — its host's specs first, then pool specs
    /// whose selector matches its labels — at once in memory (the caller journals them before
    /// answering). Each grant bumps the epoch, except a spec whose lease already names `runtime`
    /// (it comes back after its session expired), which keeps its epoch.
    pub fn grant(
        &mut self,
        runtime: &str,
        host: Option<&str>,
        labels: &BTreeMap<String, String>,
        n: usize,
        now_ms: u64,
    ) -> Vec<Grant> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let mut picked: Vec<String> = Vec::with_capacity(n);
        // Stale entries (no longer free) are dropped while picking, so a grant of `n` is not cut
        // short by them.
        if let Some(host) = host {
            while picked.len() < n {
                let Some(id) = self.free_host.get_mut(host).and_then(BTreeSet::pop_first) else { break };
                if self.is_free(&id, now_ms) {
                    picked.push(id);
                }
            }
        }
        if picked.len() < n {
            let texts: Vec<String> = self.pools.keys().cloned().collect();
            for text in texts {
                if picked.len() >= n {
                    break;
                }
                if !self.pools.get(&text).is_some_and(|p| p.selector.as_ref().is_some_and(|s| s.matches(labels))) {
                    continue;
                }
                while picked.len() < n {
                    let Some(id) = self.pools.get_mut(&text).and_then(|p| p.free.pop_first()) else { break };
                    if self.is_free(&id, now_ms) {
                        picked.push(id);
                    }
                }
            }
        }
        for id in picked {
            let lease = self.leases.entry(id.clone()).or_default();
            let same = lease.holder == runtime;
            let previous = (!lease.holder.is_empty() && !same).then(|| std::mem::take(&mut lease.holder));
            lease.epoch = if same { lease.epoch.max(1) } else { lease.epoch + 1 };
            lease.holder = runtime.to_owned();
            let epoch = lease.epoch;
            if let Some(prev) = &previous {
                self.unhold(prev, &id);
            }
            match self.held.get_mut(runtime) {
                Some(set) => {
                    set.insert(id.clone());
                }
                None => {
                    self.held.insert(runtime.to_owned(), SpecSet::from_iter([id.clone()]));
                }
            }
            out.push(Grant { spec: id, epoch, previous });
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

    /// Whether `runtime` holds `spec` at `epoch`.
    ///
    /// # Errors
    /// Why not.
    pub fn check_held(&self, spec: &str, runtime: &str, epoch: u64) -> Result<(), NotHeld> {
        if !self.specs.contains_key(spec) {
            return Err(NotHeld::Removed);
        }
        let Some(l) = self.leases.get(spec) else { return Err(NotHeld::NotHolder(0)) };
        if l.holder != runtime {
            Err(NotHeld::NotHolder(l.epoch))
        } else if l.epoch != epoch {
            Err(NotHeld::StaleEpoch(l.epoch))
        } else {
            Ok(())
        }
    }

    /// Releases `spec` when `runtime` holds it at `epoch`: clears the holder (the epoch stays)
    /// and returns the lease to journal.
    ///
    /// # Errors
    /// Why it was not released.
    pub fn release(&mut self, spec: &str, runtime: &str, epoch: u64, now_ms: u64) -> Result<JournalLease, NotHeld> {
        let l = self.leases.get_mut(spec).ok_or(NotHeld::NotHolder(0))?;
        if l.holder != runtime {
            return Err(NotHeld::NotHolder(l.epoch));
        }
        if l.epoch != epoch {
            return Err(NotHeld::StaleEpoch(l.epoch));
        }
        l.holder.clear();
        let out = JournalLease { spec: spec.to_owned(), holder: String::new(), epoch };
        self.unhold(runtime, spec);
        if self.is_free(spec, now_ms) {
            self.mark_free(spec);
        }
        Ok(out)
    }

    /// The durable part of the state (leases and sessions) at journal sequence `through_seq`.
    #[must_use]
    pub fn snapshot(&self, through_seq: u64) -> LeaseSnapshot {
        let mut leases: Vec<JournalLease> = self
            .leases
            .iter()
            .map(|(spec, l)| JournalLease { spec: spec.clone(), holder: l.holder.clone(), epoch: l.epoch })
            .collect();
        leases.sort_unstable_by(|a, b| a.spec.cmp(&b.spec));
        let mut sessions: Vec<RuntimeSession> = self.sessions.values().map(|s| s.record.clone()).collect();
        sessions.sort_unstable_by(|a, b| a.runtime.cmp(&b.runtime));
        LeaseSnapshot { through_seq, leases, sessions }
    }

    /// Loads a snapshot's leases and sessions (before replay; call [`Self::rebuild`] after).
    pub fn load_snapshot(&mut self, snap: LeaseSnapshot) {
        for l in snap.leases {
            self.leases.insert(l.spec, LeaseEntry { holder: l.holder, epoch: l.epoch });
        }
        for s in snap.sessions {
            self.sessions.insert(s.runtime.clone(), SessionEntry { record: s, expired: false });
        }
    }

    /// Every lease and session, comparable across views (tests: a replayed view equals the
    /// original).
    #[must_use]
    pub fn durable_state(&self) -> (BTreeMap<String, LeaseEntry>, BTreeMap<String, u64>) {
        (
            self.leases.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            self.sessions.iter().map(|(k, v)| (k.clone(), v.record.expires_at_ms)).collect(),
        )
    }

    /// Rows for `jobspec.leases`: the first `limit` matching specs by id, and how many match.
    /// Keeps only `limit` ids while walking (a listing of one row does not sort every spec).
    #[must_use]
    pub fn rows(&self, filter: RowFilter<'_>, limit: usize, now_ms: u64) -> (Vec<LeaseRow>, u64) {
        let RowFilter { runtime, spec, unassigned } = filter;
        let ids: Box<dyn Iterator<Item = &String>> = match (spec, runtime) {
            (Some(s), _) => Box::new(self.specs.get_key_value(s).map(|(k, _)| k).into_iter()),
            (None, Some(r)) => Box::new(self.held.get(r).into_iter().flatten()),
            (None, None) => Box::new(self.specs.keys()),
        };
        let mut total = 0u64;
        let mut first: std::collections::BinaryHeap<&String> = std::collections::BinaryHeap::with_capacity(limit + 1);
        for id in ids {
            if !self.specs.contains_key(id) {
                continue;
            }
            if runtime.is_some_and(|r| self.leases.get(id).is_none_or(|l| l.holder != r)) {
                continue;
            }
            if unassigned && self.leases.get(id).is_some_and(|l| self.is_live(&l.holder, now_ms)) {
                continue;
            }
            total += 1;
            if first.len() < limit {
                first.push(id);
            } else if first.peek().is_some_and(|top| id < *top) {
                first.pop();
                first.push(id);
            }
        }
        let rows = first
            .into_sorted_vec()
            .into_iter()
            .filter_map(|id| {
                let spec = self.specs.get(id)?;
                let lease = self.leases.get(id).cloned().unwrap_or_default();
                Some(LeaseRow {
                    spec: id.clone(),
                    target: format!("{}/{}", spec.kind.as_str(), spec.target),
                    executor: spec.executor.to_owned(),
                    expires_at_ms: if lease.holder.is_empty() {
                        0
                    } else {
                        self.sessions.get(&lease.holder).map_or(0, |s| s.record.expires_at_ms)
                    },
                    live: self.is_live(&lease.holder, now_ms),
                    holder: lease.holder,
                    epoch: lease.epoch,
                })
            })
            .collect();
        (rows, total)
    }

    /// Every session record, ordered by runtime id.
    #[must_use]
    pub fn sessions(&self) -> Vec<RuntimeSession> {
        let mut v: Vec<RuntimeSession> = self.sessions.values().map(|s| s.record.clone()).collect();
        v.sort_by(|a, b| a.runtime.cmp(&b.runtime));
        v
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

/// Which specs [`LeaseView::rows`] lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowFilter<'a> {
    /// Only specs held by this runtime.
    pub runtime: Option<&'a str>,
    /// Only this spec.
    pub spec: Option<&'a str>,
    /// Only specs without a live holder.
    pub unassigned: bool,
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
        (id.to_owned(), SpecEntry::new(s, Bytes::new()))
    }

    fn session(view: &mut LeaseView, rt: &str, expires: u64, now: u64) {
        view.set_session(RuntimeSession { runtime: rt.into(), expires_at_ms: expires, ..Default::default() }, now);
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
            v.upsert_spec(&id, e, 0, false);
        }
        session(&mut v, "a", 1000, 0);
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let g = v.grant("a", Some("host-a"), &labels, 10, 10);
        let ids: Vec<&str> = g.iter().map(|p| p.spec.as_str()).collect();
        assert_eq!(ids, vec!["h1", "p1"]);
        assert!(g.iter().all(|p| p.epoch == 1));
        // Held specs are not offered twice.
        assert!(v.grant("b", Some("host-a"), &labels, 10, 10).is_empty());
        assert_eq!(v.held_by("a"), vec!["h1", "p1"]);
        // The session expires: the sweep frees the specs, another runtime takes over with a
        // higher epoch, and the old holder loses them.
        assert_eq!(v.sweep(2000), 2);
        session(&mut v, "b", 5000, 2000);
        let g = v.grant("b", None, &labels, 10, 2000);
        assert_eq!(g, vec![Grant { spec: "p1".into(), epoch: 2, previous: Some("a".into()) }]);
        assert_eq!(v.held_by("a"), vec!["h1"]);
        assert_eq!(v.held_by("b"), vec!["p1"]);
        assert_eq!(v.check_held("p1", "a", 1), Err(NotHeld::NotHolder(2)));
        assert_eq!(v.check_held("p1", "b", 1), Err(NotHeld::StaleEpoch(2)));
        assert_eq!(v.check_held("p1", "b", 2), Ok(()));
    }

    #[test]
    fn release_removal_and_readdition_keep_epochs_growing() {
        let mut v = LeaseView::default();
        let (id, e) = spec("p1", TargetKind::Pool, "x", "");
        v.upsert_spec(&id, e.clone(), 0, false);
        session(&mut v, "a", 10_000, 0);
        session(&mut v, "b", 10_000, 0);
        let g = v.grant("a", None, &BTreeMap::new(), 1, 0);
        assert_eq!(g[0].epoch, 1);
        assert_eq!(v.release("p1", "a", 2, 0), Err(NotHeld::StaleEpoch(1)));
        assert_eq!(v.release("p1", "b", 1, 0), Err(NotHeld::NotHolder(1)));
        assert_eq!(v.release("p1", "a", 1, 0).unwrap().holder, "");
        assert!(v.held_by("a").is_empty());
        let g = v.grant("b", None, &BTreeMap::new(), 1, 0);
        assert_eq!(g[0].epoch, 2);
        let (holder, cleared) = v.remove_spec("p1").unwrap();
        assert_eq!((holder.as_str(), cleared.epoch), ("b", 2));
        assert!(v.held_by("b").is_empty());
        v.upsert_spec(&id, e, 0, true);
        assert_eq!(v.grant("a", None, &BTreeMap::new(), 1, 0)[0].epoch, 3);
    }

    #[test]
    fn snapshot_and_replay_rebuild_the_same_state() {
        let mut v = LeaseView::default();
        let mut journal = Vec::new();
        for i in 0..20 {
            let (id, e) = spec(&format!("p{i:02}"), TargetKind::Pool, "x", "");
            v.upsert_spec(&id, e, 0, false);
        }
        session(&mut v, "a", 10_000, 0);
        session(&mut v, "b", 10_000, 0);
        for g in v.grant("a", None, &BTreeMap::new(), 7, 0) {
            journal.push(JournalLease { spec: g.spec, holder: "a".into(), epoch: g.epoch });
        }
        let snap = v.snapshot(1);
        for g in v.grant("b", None, &BTreeMap::new(), 5, 0) {
            journal.push(JournalLease { spec: g.spec, holder: "b".into(), epoch: g.epoch });
        }
        journal.push(v.release("p00", "a", 1, 0).unwrap());
        let mut w = LeaseView::default();
        w.load_snapshot(snap);
        for l in &journal[7..] {
            w.apply_lease(l, 0);
        }
        for i in 0..20 {
            let (id, e) = spec(&format!("p{i:02}"), TargetKind::Pool, "x", "");
            w.upsert_spec(&id, e, 0, false);
        }
        w.rebuild(0);
        assert_eq!(v.durable_state(), w.durable_state());
        assert_eq!(w.held_by("a"), v.held_by("a"));
        assert_eq!(w.held_by("b"), v.held_by("b"));
        let (rows, total) = w.rows(RowFilter::default(), 3, 0);
        assert_eq!(total, 20);
        assert_eq!(rows.iter().map(|r| r.spec.as_str()).collect::<Vec<_>>(), vec!["p00", "p01", "p02"]);
        let (rows, total) = w.rows(RowFilter { runtime: Some("b"), ..RowFilter::default() }, 100, 0);
        assert_eq!((rows.len(), total), (5, 5));
        let held = rows[0].spec.clone();
        let (rows, total) = w.rows(RowFilter { spec: Some(&held), ..RowFilter::default() }, 100, 0);
        assert_eq!((rows.len(), total, rows[0].holder.as_str()), (1, 1, "b"));
        let (_, total) = w.rows(RowFilter { spec: Some(&held), runtime: Some("a"), ..RowFilter::default() }, 100, 0);
        assert_eq!(total, 0, "held by b, not a");
        let (_, total) = w.rows(RowFilter { spec: Some("nope"), ..RowFilter::default() }, 100, 0);
        assert_eq!(total, 0);
        assert_eq!(w.grant("c", None, &BTreeMap::new(), 100, 0).len(), 9);
        let (rows, total) = w.rows(RowFilter { unassigned: true, ..RowFilter::default() }, 100, 0);
        assert_eq!((rows.len(), total), (9, 9), "c has no session: its specs are not live");
    }
}
