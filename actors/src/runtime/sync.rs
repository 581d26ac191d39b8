//! The runtime's dealings with the lease service.
//!
//! A sync runs every renew interval, on a change notice, and when specs become available: it
//! renews with the epochs held (refused ones are dropped and their runs canceled), asks `mine`
//! after a notice, a refusal or a reconnection and adopts that authoritative set, then leases up
//! to the runtime's capacity. The network calls run in a spawned task; the actor only applies
//! their outcome, so it stays responsive while the hub is away.
//!
//! On a clean stop the runtime releases the pool specs it holds, so another runtime can lease
//! them at once instead of after the TTL, and forgets them locally. Host specs are kept (no
//! other runtime may run them), so a restarted edge goes on checking them under the same epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::ActorRef;
use steward_storage::runtime::CachedSpec;
use steward_subjects::api::lease::{LeaseRequest, LeasedSpec, MineRequest, ReleaseRequest, RenewRequest, SpecEpoch};
use steward_subjects::config::TargetKind;
use steward_subjects::{trace, HostId};
use tracing::{debug, info, warn, Instrument};

use super::{set_online, RuntimeMsg, RuntimeState};
use crate::lease::client::{is_unreachable, LeaseClient};
use crate::now_ms;

/// Longest the lease release of a clean stop may take (together with the drain, within the
/// 2 s a supervisor gives each component to stop).
const STOP_RELEASE_BUDGET: Duration = Duration::from_millis(800);

/// What a sync task learned.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    online: bool,
    ttl_ms: Option<u64>,
    refused: Vec<String>,
    authoritative: Option<Vec<LeasedSpec>>,
    granted: Vec<LeasedSpec>,
    more: bool,
    /// When the renew was sent: the hub counts the lease TTL from when it handled the renew,
    /// which is after this, so a lease trusted until `sent_at_ms + ttl` never outlives the
    /// hub's (a reply that is slow in coming must not lengthen it).
    sent_at_ms: u64,
    /// The context of the sync's span, when it continued a traced notice.
    trace: Option<trace::Context>,
}

pub(super) fn start_sync(state: &mut RuntimeState, myself: &ActorRef<RuntimeMsg>) {
    if state.syncing {
        return;
    }
    state.syncing = true;
    let full = state.resync || state.was_offline;
    state.resync = false;
    let lease = state.lease.clone();
    let runtime = state.args.runtime.to_string();
    let host = state.args.host.clone();
    let labels = state.args.labels.clone();
    let held: Vec<SpecEpoch> =
        state.held.values().map(|c| SpecEpoch { spec: c.spec.id.clone(), epoch: c.epoch }).collect();
    let room = (state.args.capacity as usize).saturating_sub(state.held.len());
    let batch = state.args.batch;
    let capacity = state.args.capacity as usize;
    let me = myself.clone();
    // Only a sync that follows a traced notice gets a span (the periodic ones make none).
    let span = match state.sync_trace.take() {
        Some(cx) => trace::follow(Some(&cx), || tracing::info_span!("runtime.sync", runtime = %runtime)),
        None => tracing::Span::none(),
    };
    let traced = trace::context_of_span(&span);
    let synced = async move {
        let mut outcome = sync(lease, runtime, host, labels, held, room, capacity, batch, full).await;
        outcome.trace = traced;
        let _ = me.cast(RuntimeMsg::SyncDone(Box::new(outcome)));
    };
    tokio::spawn(synced.instrument(span));
}

#[allow(clippy::too_many_arguments)]
async fn sync(
    lease: LeaseClient,
    runtime: String,
    host_id: Option<HostId>,
    labels: BTreeMap<String, String>,
    held: Vec<SpecEpoch>,
    room: usize,
    capacity: usize,
    batch: u32,
    full: bool,
) -> SyncOutcome {
    let mut out = SyncOutcome { sent_at_ms: now_ms(), ..SyncOutcome::default() };
    let host = host_id.as_ref().map(ToString::to_string).unwrap_or_default();
    let renew =
        lease.renew(&RenewRequest { runtime: runtime.clone(), host: host.clone(), labels: labels.clone(), held }).await;
    match renew {
        Ok(r) => {
            out.online = true;
            out.ttl_ms = Some(r.ttl_ms);
            out.refused = r.refused.into_iter().map(|x| x.spec).collect();
        }
        Err(e) => {
            if !is_unreachable(&e) {
                warn!(runtime, error = %e, "renew refused");
            }
            return out;
        }
    }
    let mut room = room.saturating_add(out.refused.len());
    if full || !out.refused.is_empty() {
        match lease.mine(host_id.as_ref(), &MineRequest { runtime: runtime.clone() }).await {
            Ok(m) => {
                room = capacity.saturating_sub(m.specs.len());
                out.authoritative = Some(m.specs);
            }
            Err(e) => {
                debug!(runtime, error = %e, "mine failed");
                out.online = !is_unreachable(&e);
                return out;
            }
        }
    }
    if room > 0 {
        let max = u32::try_from(room).unwrap_or(u32::MAX).min(batch.max(1));
        match lease.lease(&LeaseRequest { runtime: runtime.clone(), host, labels, max }).await {
            Ok(r) => {
                out.more = r.more && !r.granted.is_empty();
                out.granted = r.granted;
            }
            Err(e) => debug!(runtime, error = %e, "lease failed"),
        }
    }
    out
}

/// Applies a sync outcome; returns whether another sync should follow at once (more specs
/// are available and there is room).
pub(super) async fn apply_sync(state: &mut RuntimeState, outcome: SyncOutcome) -> bool {
    if !outcome.online {
        set_online(state, false);
        return false;
    }
    // Confirmed as of when the renew left, not when its reply came back.
    let now = outcome.sent_at_ms;
    if let Some(ttl) = outcome.ttl_ms {
        state.ttl_ms = ttl;
    }
    state.confirmed_at_ms = now;
    set_online(state, true);
    state.was_offline = false;
    let mut removed: Vec<String> = outcome.refused.clone();
    let mut set: BTreeMap<String, CachedSpec> = match outcome.authoritative {
        Some(specs) => {
            let set: BTreeMap<String, CachedSpec> = specs
                .into_iter()
                .map(|l| (l.spec.id.clone(), CachedSpec { spec: l.spec, epoch: l.epoch, confirmed_at_ms: now }))
                .collect();
            removed.extend(state.held.keys().filter(|k| !set.contains_key(*k)).cloned());
            if let Some(cx) = &outcome.trace {
                // The first run of each spec this traced sync brought (new or changed) continues it.
                for (id, c) in &set {
                    if state.held.get(id).is_none_or(|old| old.epoch != c.epoch || old.spec != c.spec) {
                        state.spec_traces.insert(id.clone(), cx.clone());
                    }
                }
            }
            set
        }
        None => {
            let mut set = std::mem::take(&mut state.held);
            for r in &outcome.refused {
                set.remove(r);
            }
            for c in set.values_mut() {
                c.confirmed_at_ms = now;
            }
            set
        }
    };
    for l in outcome.granted {
        if let Some(cx) = &outcome.trace {
            state.spec_traces.insert(l.spec.id.clone(), cx.clone());
        }
        set.insert(l.spec.id.clone(), CachedSpec { spec: l.spec, epoch: l.epoch, confirmed_at_ms: now });
    }
    removed.sort();
    removed.dedup();
    if !removed.is_empty() {
        info!(runtime = %state.args.runtime, dropped = removed.len(), "stale specs dropped");
    }
    for id in &removed {
        state.running.remove(id);
    }
    state.held = set;
    let snapshot: Vec<CachedSpec> = state.held.values().cloned().collect();
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.replace_specs(&snapshot)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "spec cache not written"),
        Err(e) => warn!(runtime = %state.args.runtime, error = %e, "spec cache task failed"),
    }
    outcome.more && state.held.len() < state.args.capacity as usize
}

pub(super) async fn drop_specs(state: &mut RuntimeState, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    for id in ids {
        state.running.remove(id);
        state.held.remove(id);
    }
    let store = state.store.clone();
    let ids = ids.to_vec();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.remove_specs(&ids)).await {
        warn!(runtime = %state.args.runtime, error = %e, "spec cache not written");
    }
}

/// Releases the pool specs the runtime holds (bounded by [`STOP_RELEASE_BUDGET`]) and forgets the
/// released ones locally.
pub(super) async fn release_pool_specs(state: &mut RuntimeState) {
    let specs: Vec<SpecEpoch> = state
        .held
        .values()
        .filter(|c| c.spec.target.kind == TargetKind::Pool)
        .map(|c| SpecEpoch { spec: c.spec.id.clone(), epoch: c.epoch })
        .collect();
    if specs.is_empty() {
        return;
    }
    let req = ReleaseRequest { runtime: state.args.runtime.to_string(), specs };
    match tokio::time::timeout(STOP_RELEASE_BUDGET, state.lease.release(state.args.host.as_ref(), &req)).await {
        Ok(Ok(reply)) => {
            info!(runtime = %state.args.runtime, released = reply.released.len(), refused = reply.refused.len(), "leases released");
            let store = state.store.clone();
            let ids = reply.released;
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.remove_specs(&ids)).await {
                warn!(runtime = %state.args.runtime, error = %e, "spec cache not written");
            }
        }
        Ok(Err(e)) => warn!(runtime = %state.args.runtime, error = %e, "leases not released"),
        Err(_) => warn!(runtime = %state.args.runtime, "leases not released: the hub did not answer in time"),
    }
}
