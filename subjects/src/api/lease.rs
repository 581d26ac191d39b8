//! Job-spec leasing: the requests and replies of the `jobspec.{lease,renew,mine,release,leases}`
//! endpoints, the notices sent to holders, and the records the lease leader keeps durable.
//!
//! Model: every runtime has one *session* whose expiry is pushed forward by `renew` (and by
//! `lease`); every spec has one *lease* naming its holder and epoch. A lease is live while its
//! holder's session is unexpired. One lease leader per account (the [`LeaderRecord`] lock) owns
//! the state in memory and makes every change durable in the lease journal
//! ([`LeaseJournalEntry`], fenced by expected last sequence) before it answers; granting a spec
//! bumps its epoch, and results and renewals carrying an older epoch are refused with
//! `conflict`. [`LeaseRecord`] is the per-spec record form (listings, older versions' bucket).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::JobSpec;

/// A spec id with the epoch the caller believes it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecEpoch {
    /// Spec id (32 hex digits).
    pub spec: String,
    /// Lease epoch.
    pub epoch: u64,
}

/// A spec granted to (or held by) a runtime, with its epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeasedSpec {
    /// The spec as rendered.
    pub spec: JobSpec,
    /// Lease epoch: results must carry it.
    pub epoch: u64,
}

/// `jobspec.lease`: give me up to `max` unassigned specs I may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRequest {
    /// The asking runtime (a validated token). The hub takes the runtime from the request
    /// subject (`jobspec.lease.<host>.<runtime>`): empty means that one, another is refused
    /// `forbidden`.
    pub runtime: String,
    /// The host the runtime runs on, when it is an edge runtime: its host specs are offered
    /// first. Empty for a standalone (pool) runtime; any other than the subject's host is
    /// refused `forbidden`.
    pub host: String,
    /// The runtime's labels, matched against pool specs' runtime selectors.
    pub labels: BTreeMap<String, String>,
    /// Most specs wanted by this request (the hub also applies its batch limit and the
    /// per-runtime cap).
    pub max: u32,
}

/// Reply to `jobspec.lease`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseReply {
    /// Newly granted specs (and specs this runtime already held that were re-adopted).
    pub granted: Vec<LeasedSpec>,
    /// How many specs the runtime holds now.
    pub held: u32,
    /// The per-runtime cap.
    pub cap: u32,
    /// Lease time-to-live in milliseconds: renew well within it.
    pub ttl_ms: u64,
    /// Whether unassigned eligible specs remain after this grant.
    pub more: bool,
}

/// `jobspec.renew`: extend every lease I hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenewRequest {
    /// The renewing runtime.
    pub runtime: String,
    /// Its host (edge runtimes), or empty.
    pub host: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The specs and epochs the runtime believes it holds; stale ones are refused.
    pub held: Vec<SpecEpoch>,
}

/// Why one spec of a renewal, release or result was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Refusal {
    /// Spec id.
    pub spec: String,
    /// The epoch the caller sent.
    pub epoch: u64,
    /// The current epoch (0 when the spec has no lease record or no longer exists).
    pub current_epoch: u64,
    /// `stale_epoch`, `not_holder` or `removed`.
    pub reason: String,
}

/// Reply to `jobspec.renew`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenewReply {
    /// How many of the given leases are live and now extended.
    pub renewed: u32,
    /// Leases the runtime no longer holds (stop running them).
    pub refused: Vec<Refusal>,
    /// Lease time-to-live in milliseconds.
    pub ttl_ms: u64,
    /// When the session expires unless renewed again, ms since the Unix epoch (hub clock).
    pub expires_at_ms: u64,
}

/// `jobspec.mine`: the authoritative set of specs I hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MineRequest {
    /// The asking runtime.
    pub runtime: String,
}

/// Reply to `jobspec.mine`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MineReply {
    /// Every live lease of the runtime, with the current spec content.
    pub specs: Vec<LeasedSpec>,
    /// Lease time-to-live in milliseconds.
    pub ttl_ms: u64,
}

/// `jobspec.release`: give these specs back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseRequest {
    /// The releasing runtime.
    pub runtime: String,
    /// The specs and epochs to release.
    pub specs: Vec<SpecEpoch>,
}

/// Reply to `jobspec.release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseReply {
    /// Specs released.
    pub released: Vec<String>,
    /// Specs not released (not held at that epoch).
    pub refused: Vec<Refusal>,
}

/// `jobspec.leases`: list specs with their lease state (for operators).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeasesRequest {
    /// Only specs held by this runtime.
    pub runtime: Option<String>,
    /// Only specs without a live holder.
    pub unassigned: bool,
    /// Most rows returned (0 = the hub's default of 1000).
    pub limit: u32,
    /// Only this spec (for `steward jobspecs --explain`).
    pub spec: Option<String>,
    /// Also return every runtime session the hub knows (live or expired).
    pub sessions: bool,
}

/// One spec and its lease, as listed by `jobspec.leases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRow {
    /// Spec id.
    pub spec: String,
    /// `host/<id>` or `pool/<id>`.
    pub target: String,
    /// Executor kind.
    pub executor: String,
    /// Holding runtime, empty when unassigned.
    pub holder: String,
    /// Current epoch (0 = never leased).
    pub epoch: u64,
    /// Whether the holder's session is live.
    pub live: bool,
    /// When the holder's session expires, ms since the Unix epoch (0 when unassigned).
    pub expires_at_ms: u64,
}

/// Reply to `jobspec.leases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeasesReply {
    /// Matching specs, ordered by spec id.
    pub rows: Vec<LeaseRow>,
    /// Matching specs in total (may exceed `rows.len()`).
    pub total: u64,
    /// Specs known to the hub.
    pub specs: u64,
    /// Live runtimes.
    pub runtimes: u64,
    /// Every runtime session the hub knows, ordered by runtime id (only when asked for).
    pub sessions: Vec<RuntimeSession>,
    /// What the lease fence refused since the answering leader took over.
    pub fence: FenceStats,
}

/// Counters of the lease fence (requests and results refused for their identity or epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FenceStats {
    /// Lease, renew, mine or release requests whose body named another runtime or host than
    /// the subject they were sent on.
    pub foreign_requests: u64,
    /// Results naming another runtime or host than the subject they were submitted on.
    pub foreign_results: u64,
    /// Results whose runtime did not hold their spec at their epoch (forged or replayed).
    pub stale_results: u64,
    /// Malformed results.
    pub invalid_results: u64,
    /// Results already stored (answered `duplicate`, nothing written).
    pub duplicate_results: u64,
    /// Results naming a full output their host did not store (another host's, or none).
    pub foreign_outputs: u64,
}

/// Notice to a holder, on `steward.v1.<account>.jobspec.notice.<runtime>`: re-sync with `mine`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeNotice {
    /// The runtime told.
    pub runtime: String,
    /// Specs whose content changed.
    pub changed: Vec<String>,
    /// Specs removed from the store.
    pub removed: Vec<String>,
    /// Specs the runtime lost (expired and granted to another runtime).
    pub revoked: Vec<String>,
}

/// Broadcast on `steward.v1.<account>.jobspec.available` when unassigned specs appear (new
/// specs, releases, expired holders), so runtimes with spare capacity lease at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AvailableNotice {
    /// Unassigned specs known to the hub that sent it.
    pub unassigned: u64,
}

/// A spec's lease record (holder, epoch, grant time). Epochs only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRecord {
    /// Spec id.
    pub spec: String,
    /// Holding runtime; empty when released or never granted.
    pub holder: String,
    /// Epoch of the current (or last) grant.
    pub epoch: u64,
    /// When it was granted, ms since the Unix epoch (hub clock).
    pub granted_at_ms: u64,
}

/// A runtime's session record (journaled by the lease leader).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSession {
    /// Runtime id.
    pub runtime: String,
    /// Its host, or empty.
    pub host: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Session expiry, ms since the Unix epoch (hub clock); the runtime's leases are live until
    /// then.
    pub expires_at_ms: u64,
    /// Last renewal, ms since the Unix epoch.
    pub renewed_at_ms: u64,
}

/// The lease leader lock of an account (`<account>.leader` in `steward_leases`): only the
/// instance named here serves the lease endpoints. Created with a compare-and-set create,
/// refreshed with compare-and-set updates; a candidate takes it over once it has expired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaderRecord {
    /// The holding lease-service instance (random per start).
    pub instance: String,
    /// Grows by one at every takeover.
    pub generation: u64,
    /// The lock is void after this time, ms since the Unix epoch (hub clock).
    pub expires_at_ms: u64,
}

/// A spec's lease as journaled and snapshotted: its holder (empty when released, removed or
/// never granted) and its epoch (only grows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JournalLease {
    /// Spec id.
    pub spec: String,
    /// Holding runtime, or empty.
    pub holder: String,
    /// Epoch of the current (or last) grant.
    pub epoch: u64,
}

/// One append to the lease journal (`steward.v1.<account>.jobspec.journal`): every lease and
/// session change of one group commit of the lease leader, applied in order on replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseJournalEntry {
    /// The appending leader instance.
    pub instance: String,
    /// Its lock generation.
    pub generation: u64,
    /// A takeover record: the leader replayed the journal up to here and now owns it (the
    /// append fences every older leader, whose next append finds another last sequence).
    pub takeover: bool,
    /// Session records written (lease with a new or near-expiry session, renewals).
    pub sessions: Vec<RuntimeSession>,
    /// Lease changes (grants, releases, removals), in the order they were made.
    pub leases: Vec<JournalLease>,
}

/// The full lease state of an account at one journal sequence, stored in the artifacts object
/// store; replay continues after `through_seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseSnapshot {
    /// Journal sequence the state includes.
    pub through_seq: u64,
    /// Every lease record.
    pub leases: Vec<JournalLease>,
    /// Every session record.
    pub sessions: Vec<RuntimeSession>,
}

/// Pointer to the latest lease snapshot (`<account>.snapshot` in `steward_leases`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotPointer {
    /// Object name in the artifacts store.
    pub object: String,
    /// Journal sequence the snapshot includes.
    pub through_seq: u64,
}
