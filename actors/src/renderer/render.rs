//! Pure rendering and diffing of job specs (no I/O): the renderer actor runs these on a blocking
//! thread, the config manager uses them for plans and diffs, and the `render` benchmark measures
//! them.
//!
//! A render interns targets (hosts, then pools), resolves each attestation once into a
//! [`SpecTemplate`], matches each component's selector once against every host, and produces one
//! compact [`DesiredSpec`] (id, content hash, template and target indexes) per spec, sorted by id.
//! Full [`JobSpec`](steward_subjects::config::JobSpec)s are only materialised for the specs a
//! diff says must be written.

use std::collections::{BTreeMap, HashMap};

use steward_subjects::api::config::{SpecDiff, TargetDiff};
use steward_subjects::config::spec::{resolve_attestation, ContentHash, SpecTemplate};
use steward_subjects::config::{ConfigDocument, SpecId, SpecTarget, TargetKind};
use steward_subjects::selector::Selector;

use crate::signing::JobSigner;
use crate::spec_signing::{leaf_hash, SignedBatch, SpecLeaf};

/// A host as the renderer sees it: id and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLabels {
    /// Host id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// One spec that should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredSpec {
    /// Spec id.
    pub id: SpecId,
    /// Content hash.
    pub hash: ContentHash,
    /// Index into [`Rendered::templates`].
    pub template: u32,
    /// Index into [`Rendered::targets`].
    pub target: u32,
}

/// The result of a render: every spec that should exist, sorted by id.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// One template per rendered attestation.
    pub templates: Vec<SpecTemplate>,
    /// Interned targets.
    pub targets: Vec<SpecTarget>,
    /// The specs, sorted by id.
    pub specs: Vec<DesiredSpec>,
}

/// One spec the store holds: id, content hash and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSpec {
    /// Spec id.
    pub id: SpecId,
    /// Content hash as stored (all zeroes when unknown, which forces a rewrite).
    pub hash: ContentHash,
    /// Index into [`SpecIndex::targets`].
    pub target: u32,
}

/// What the spec store holds for one account, sorted by id.
#[derive(Debug, Clone, Default)]
pub struct SpecIndex {
    /// Interned targets.
    pub targets: Vec<SpecTarget>,
    /// The specs, sorted by id.
    pub specs: Vec<StoredSpec>,
}

impl SpecIndex {
    /// An index from unsorted entries (the spec store's load order).
    #[must_use]
    pub fn from_entries(entries: Vec<(SpecId, ContentHash, SpecTarget)>) -> Self {
        let mut interned: HashMap<SpecTarget, u32> = HashMap::new();
        let mut targets = Vec::new();
        let mut specs = Vec::with_capacity(entries.len());
        for (id, hash, target) in entries {
            let next = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            let t = *interned.entry(target.clone()).or_insert_with(|| {
                targets.push(target);
                next
            });
            specs.push(StoredSpec { id, hash, target: t });
        }
        specs.sort_unstable_by_key(|s| s.id);
        specs.dedup_by_key(|s| s.id);
        SpecIndex { targets, specs }
    }

    /// The stored spec with `id`.
    #[must_use]
    pub fn find(&self, id: &SpecId) -> Option<(&StoredSpec, &SpecTarget)> {
        let i = self.specs.binary_search_by_key(id, |s| s.id).ok()?;
        let s = &self.specs[i];
        Some((s, &self.targets[s.target as usize]))
    }

    /// Number of specs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether the index is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

impl Rendered {
    /// The index the store holds once every spec of this render is written.
    #[must_use]
    pub fn to_index(&self) -> SpecIndex {
        SpecIndex {
            targets: self.targets.clone(),
            specs: self.specs.iter().map(|d| StoredSpec { id: d.id, hash: d.hash, target: d.target }).collect(),
        }
    }
}

/// One attestation's work: template index, host indexes, pool index.
type Job<'a> = (u32, &'a [u32], Option<u32>);

/// Renders every spec of `doc` for `hosts` (host order does not matter: output is sorted).
/// Attestations that do not resolve (only possible for unvalidated documents) are skipped.
#[must_use]
pub fn render(account: &str, doc: &ConfigDocument, hosts: &[HostLabels]) -> Rendered {
    let mut targets: Vec<SpecTarget> =
        hosts.iter().map(|h| SpecTarget { kind: TargetKind::Host, id: h.id.clone() }).collect();
    let mut pool_index: HashMap<&str, u32> = HashMap::new();
    for p in &doc.pools {
        pool_index.insert(p.id.as_str(), u32::try_from(targets.len()).unwrap_or(u32::MAX));
        targets.push(SpecTarget { kind: TargetKind::Pool, id: p.id.clone() });
    }
    // Hosts of each component, computed once.
    let mut members: HashMap<&str, Vec<u32>> = HashMap::new();
    for c in &doc.components {
        let sel = Selector::parse(&c.selector).ok();
        let hosts_of: Vec<u32> = match sel {
            Some(sel) => hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| sel.matches(&h.labels))
                .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
                .collect(),
            None => Vec::new(),
        };
        members.insert(c.id.as_str(), hosts_of);
    }
    // Templates, and for each the targets it renders to.
    let mut templates = Vec::with_capacity(doc.attestations.len());
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(doc.attestations.len());
    for att in &doc.attestations {
        let Ok(t) = resolve_attestation(doc, att) else { continue };
        let ti = u32::try_from(templates.len()).unwrap_or(u32::MAX);
        templates.push(t);
        match &att.pool {
            Some(pool) => match pool_index.get(pool.as_str()) {
                Some(p) => jobs.push((ti, &[], Some(*p))),
                None => continue,
            },
            None => jobs.push((ti, members.get(att.component.as_str()).map_or(&[][..], Vec::as_slice), None)),
        }
    }
    let total: usize = jobs.iter().map(|(_, h, p)| h.len() + usize::from(p.is_some())).sum();
    let work = |chunk: &[Job<'_>]| -> Vec<DesiredSpec> {
        let mut out = Vec::new();
        for (ti, host_idx, pool) in chunk {
            let t = &templates[*ti as usize];
            let att = t.provenance.attestation.as_str();
            let mut one = |target: u32| {
                let st = &targets[target as usize];
                out.push(DesiredSpec {
                    id: SpecId::derive(account, att, st.kind, &st.id),
                    hash: t.content_hash(st.kind, &st.id),
                    template: *ti,
                    target,
                });
            };
            for h in host_idx.iter() {
                one(*h);
            }
            if let Some(p) = pool {
                one(*p);
            }
        }
        out
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(8);
    let mut specs = if total < 20_000 || threads < 2 || jobs.len() < 2 {
        work(&jobs)
    } else {
        // Split the attestations into chunks of roughly equal spec counts.
        let per = total.div_ceil(threads);
        let mut chunks: Vec<&[Job<'_>]> = Vec::new();
        let (mut start, mut acc) = (0, 0);
        for (i, (_, h, p)) in jobs.iter().enumerate() {
            acc += h.len() + usize::from(p.is_some());
            if acc >= per {
                chunks.push(&jobs[start..=i]);
                start = i + 1;
                acc = 0;
            }
        }
        if start < jobs.len() {
            chunks.push(&jobs[start..]);
        }
        let parts: Vec<Vec<DesiredSpec>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|c| s.spawn(|| work(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut all = Vec::with_capacity(total);
        for p in parts {
            all.extend(p);
        }
        all
    };
    specs.sort_unstable_by_key(|s| s.id);
    specs.dedup_by_key(|s| s.id);
    Rendered { templates, targets, specs }
}

/// One write a diff asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new spec: index into [`Rendered::specs`].
    Added(usize),
    /// A spec whose content changed: index into [`Rendered::specs`].
    Changed(usize),
    /// A spec that must go (tombstoned): index into [`SpecIndex::specs`].
    Removed(usize),
}

/// The writes that turn `stored` into `desired`.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Writes, in id order.
    pub changes: Vec<Change>,
    /// Specs that stay as they are.
    pub unchanged: u64,
}

/// Compares what should exist with what is stored (one merge pass over both id-sorted lists).
#[must_use]
pub fn diff(desired: &Rendered, stored: &SpecIndex) -> Diff {
    let (a, b) = (&desired.specs, &stored.specs);
    let (mut i, mut j) = (0, 0);
    let mut out = Diff::default();
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.id == y.id => {
                if x.hash == y.hash {
                    out.unchanged += 1;
                } else {
                    out.changes.push(Change::Changed(i));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.id < y.id => {
                out.changes.push(Change::Added(i));
                i += 1;
            }
            (Some(_), None) => {
                out.changes.push(Change::Added(i));
                i += 1;
            }
            (_, Some(_)) => {
                out.changes.push(Change::Removed(j));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Signs the specs a diff writes (its added and changed ones, in order) as one batch with revision
/// `revision`: leaf `k` is the `k`-th write of `changes` that is not a removal. `None` when
/// nothing is written.
#[must_use]
pub fn sign_changes(
    signer: &JobSigner,
    account: &str,
    revision: u64,
    desired: &Rendered,
    changes: &[Change],
) -> Option<SignedBatch> {
    let writes: Vec<usize> = changes
        .iter()
        .filter_map(|c| match *c {
            Change::Added(i) | Change::Changed(i) => Some(i),
            Change::Removed(_) => None,
        })
        .collect();
    if writes.is_empty() {
        return None;
    }
    Some(SignedBatch::sign(signer, &writes, |&i| {
        let d = &desired.specs[i];
        let target = &desired.targets[d.target as usize];
        leaf_hash(&SpecLeaf {
            account,
            kind: target.kind,
            target: &target.id,
            id: d.id,
            revision,
            content_hash: d.hash,
            template_digest: desired.templates[d.template as usize].digest,
        })
    }))
}

/// Counts of a diff, with a per-target breakdown capped at `max_targets` targets.
#[must_use]
pub fn summarize(d: &Diff, desired: &Rendered, stored: &SpecIndex, max_targets: usize) -> SpecDiff {
    let mut per: BTreeMap<&SpecTarget, TargetDiff> = BTreeMap::new();
    let mut out = SpecDiff { unchanged: d.unchanged, ..SpecDiff::default() };
    for c in &d.changes {
        let (target, slot) = match *c {
            Change::Added(i) => {
                out.added += 1;
                (&desired.targets[desired.specs[i].target as usize], 0)
            }
            Change::Changed(i) => {
                out.changed += 1;
                (&desired.targets[desired.specs[i].target as usize], 1)
            }
            Change::Removed(j) => {
                out.removed += 1;
                (&stored.targets[stored.specs[j].target as usize], 2)
            }
        };
        let e = per.entry(target).or_insert_with(|| TargetDiff { target: target.clone(), ..TargetDiff::default() });
        match slot {
            0 => e.added += 1,
            1 => e.changed += 1,
            _ => e.removed += 1,
        }
    }
    let n = per.len();
    out.targets = per.into_values().take(max_targets).collect();
    out.targets_omitted = u64::try_from(n.saturating_sub(max_targets)).unwrap_or(0);
    out
}

/// Renders `old` and `new` for the same hosts and compares them (plans and diffs).
#[must_use]
pub fn compare(
    account: &str,
    old: Option<&ConfigDocument>,
    new: &ConfigDocument,
    hosts: &[HostLabels],
    max_targets: usize,
) -> SpecDiff {
    let before = old.map(|d| render(account, d, hosts).to_index()).unwrap_or_default();
    let after = render(account, new, hosts);
    summarize(&diff(&after, &before), &after, &before, max_targets)
}
