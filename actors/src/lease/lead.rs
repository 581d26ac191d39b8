//! One leadership term: take over (raise the fence, load the snapshot and replay the journal,
//! follow every spec, append the takeover entry), serve (the commit loop and the side
//! endpoints), then step down. Stepping down drops the whole state: the next term rebuilds it
//! from the journal, so nothing that was not durable survives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ractor::ActorRef;
use steward_subjects::api::lease::LeaseJournalEntry;
use steward_subjects::{rpc, WireError};
use tracing::{debug, info};

use super::commit::{Loop, APPEND_TIMEOUT};
use super::identity::{FenceCounters, Identities};
use super::journal;
use super::leader::{LeaderGuard, LeaderLock};
use super::notices::{notices, NoticeEvent};
use super::requests::{Input, Shared};
use super::state::LeaseView;
use super::{api, feed, LeaseArgs, LeaseError, LeaseMsg};
use crate::now_ms;
use crate::tasks::TaskSet;

/// Leads until shutdown (`Ok`) or until it must step down (`Err`; the whole state is dropped).
/// Raising the fence (reading it and confirming the write) takes at most `fence_timeout`.
pub(super) async fn lead(
    args: &LeaseArgs,
    js: &jetstream::Context,
    instance: &str,
    lock: LeaderLock,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    owner: &ActorRef<LeaseMsg>,
    fence_timeout: Duration,
) -> Result<(), LeaseError> {
    let guard = lock.guard();
    let generation = lock.generation();
    let account = args.subjects.account().clone();
    let journal_subject = args.subjects.jobspec_journal();
    // The term's tasks report their end on `tx` (a step-down), not to the actor; every early
    // return below drops both sets, which aborts them (the refresher too, so a failed load
    // keeps no lock alive).
    let mut tasks = TaskSet::unreported(owner.clone());
    let mut refresher = TaskSet::unreported(owner.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    // Keep the lock fresh from the start (loading may take longer than its TTL).
    refresher.spawn_detached(refresh(lock, args.config.leader_ttl, tx.clone(), shutdown.clone()));

    // From here on no append of an older leader is stored (every append expects the fence where
    // its leader raised it), so the replay below misses nothing.
    let fence = journal::raise_fence(js, &args.subjects.jobspec_fence(), instance, fence_timeout)
        .await
        .map_err(LeaseError::Fence)?;
    let loaded_at = Instant::now();
    // Before this term's own takeover entry: when a leader last wrote the journal.
    let last_write = journal::last_write_ms(js, &journal_subject).await.map_err(LeaseError::Load)?;
    let (shared, last_seq, replayed) = load(args, js, &journal_subject).await?;
    let (ready_tx, ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    feed::spawn_spec_feed(&args.client, js, (&account, &shared), &tx, ready_tx, &mut tasks).await?;
    let mut takeover =
        LeaseJournalEntry { instance: instance.to_owned(), generation, takeover: true, ..LeaseJournalEntry::default() };
    let pending_notices = await_specs(&shared, &mut rx, ready_rx, &mut takeover, last_write).await?;

    // Fence every older leader (and refuse a takeover whose replay missed an entry).
    if !guard.is_valid() {
        return Err(LeaseError::LockLost);
    }
    let last_seq = journal::append(js, &journal_subject, last_seq, &takeover, APPEND_TIMEOUT)
        .await
        .map_err(LeaseError::Takeover)?;
    shared.metrics.journal_append();
    info!(
        account = %account,
        specs = shared.view().spec_count(),
        replayed,
        took_ms = loaded_at.elapsed().as_millis() as u64,
        "lease state loaded; serving"
    );

    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn_detached(notices(shared.clone(), notice_rx));
    let service = api::start_service(&args.client, &account).await?;
    let result = match api::serve_endpoints(&service, &shared, &tx, &guard, &mut tasks).await {
        Ok(endpoints) => {
            let commits =
                Loop::new(&shared, &guard, (&journal_subject, (instance, generation)), (fence, last_seq), endpoints);
            commits.run(&mut rx, &notice_tx, shutdown, pending_notices).await
        }
        Err(e) => Err(e),
    };
    step_down(&guard, service, tasks, refresher, result.is_ok()).await;
    result
}

/// Refreshes the lock every third of its TTL; a failed refresh becomes a step-down. On shutdown
/// it gives the lock up so a standby takes over at once.
async fn refresh(
    mut lock: LeaderLock,
    ttl: Duration,
    tx: tokio::sync::mpsc::UnboundedSender<Input>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = (ttl / 3).max(Duration::from_millis(20));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => { lock.release().await; return; }
        }
        if let Err(e) = lock.refresh().await {
            let _ = tx.send(Input::StepDown(e.into()));
            return;
        }
    }
}

/// Loads the latest snapshot and replays the journal after it. Returns the state, the last
/// journal sequence and how many entries were replayed.
async fn load(
    args: &LeaseArgs,
    js: &jetstream::Context,
    journal_subject: &str,
) -> Result<(Arc<Shared>, u64, u64), LeaseError> {
    let account = args.subjects.account();
    let (snapshot, pointer_rev) = journal::load_snapshot(js, account).await.map_err(LeaseError::Load)?;
    let mut last_seq = snapshot.as_ref().map_or(0, |s| s.through_seq);
    let now = now_ms();
    let mut entries = 0u64;
    let mut view = LeaseView::default();
    if let Some(s) = snapshot {
        view.load_snapshot(s);
    }
    last_seq = journal::replay(js, journal_subject, last_seq, |_, entry| {
        entries += 1;
        for s in entry.sessions {
            view.set_session(s, now);
        }
        for l in &entry.leases {
            view.apply_lease(l, now);
        }
    })
    .await
    .map_err(LeaseError::Load)?;
    // A snapshot written meanwhile (by a deposed leader) may have purged what was replayed
    // from: start over.
    let (_, rev) = journal::read_pointer(js, account).await.map_err(LeaseError::Load)?;
    if rev != pointer_rev {
        return Err(LeaseError::SnapshotMoved);
    }
    let shared = Arc::new(Shared {
        client: args.client.clone(),
        js: js.clone(),
        subjects: args.subjects.clone(),
        config: args.config.clone(),
        view: Mutex::new(view),
        identities: Identities::new(&args.subjects),
        fence: FenceCounters::default(),
        watermarks: Default::default(),
        metrics: crate::metrics::global().account(account),
        spec_trace: Mutex::new(None),
    });
    Ok((shared, last_seq, entries))
}

/// Applies the spec feed until every existing spec is in, then gives every session that was
/// live when the journal was last written (`last_write`, ms) a fresh TTL — runtimes could not
/// renew while no leader could write, however long that lasted — and rebuilds the free sets.
/// Returns the notices the changes call for.
async fn await_specs(
    shared: &Shared,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>,
    mut ready_rx: tokio::sync::mpsc::Receiver<()>,
    takeover: &mut LeaseJournalEntry,
    last_write: Option<u64>,
) -> Result<Vec<NoticeEvent>, LeaseError> {
    let mut notices = Vec::new();
    loop {
        tokio::select! {
            r = ready_rx.recv() => { if r.is_some() { break } return Err(LeaseError::FeedEnded) }
            i = rx.recv() => {
                let Some(i) = i else { return Err(LeaseError::Closed("input".into())) };
                apply_feed(shared, i, takeover, &mut notices, false)?;
            }
        }
    }
    while let Ok(i) = rx.try_recv() {
        apply_feed(shared, i, takeover, &mut notices, false)?;
    }
    let now = now_ms();
    let mut view = shared.view();
    view.extend_live_sessions(last_write.unwrap_or(now).min(now), now + shared.ttl_ms());
    view.rebuild(now);
    Ok(notices)
}

/// Applies a spec-feed input (loading phase); a request input cannot arrive before the
/// endpoints exist.
fn apply_feed(
    shared: &Shared,
    input: Input,
    entry: &mut LeaseJournalEntry,
    notices: &mut Vec<NoticeEvent>,
    serving: bool,
) -> Result<(), LeaseError> {
    let now = now_ms();
    match input {
        Input::SpecUpsert(id, spec) => {
            let holder = shared.view().upsert_spec(&id, spec, now, serving);
            match holder {
                Some(h) => notices.push(NoticeEvent::Changed(h, id)),
                None => notices.push(NoticeEvent::Available),
            }
        }
        Input::SpecRemoved(id) => {
            if let Some((holder, cleared)) = shared.view().remove_spec(&id) {
                entry.leases.push(cleared);
                notices.push(NoticeEvent::Removed(holder, id));
            }
        }
        Input::StepDown(reason) => return Err(reason),
        Input::Lease(_, enc, req)
        | Input::Renew(_, enc, req)
        | Input::Mine(_, enc, req)
        | Input::Release(_, enc, req) => {
            tokio::spawn(async move {
                let e = WireError::unavailable("the lease leader is not serving yet");
                let _ = rpc::respond::<()>(&req, enc, Err(e)).await;
            });
        }
    }
    Ok(())
}

/// Ends the term: stops answering, unregisters the service and stops the tasks. On shutdown the
/// refresher gives the lock up; after a failure it is stopped at once.
async fn step_down(
    guard: &LeaderGuard,
    service: async_nats::service::Service,
    tasks: TaskSet<LeaseMsg>,
    mut refresher: TaskSet<LeaseMsg>,
    shutdown: bool,
) {
    guard.revoke();
    if let Err(e) = service.stop().await {
        debug!(error = %e, "lease service did not stop cleanly");
    }
    drop(tasks);
    if shutdown {
        refresher.wait(Duration::from_secs(2)).await;
    } else {
        refresher.abort_all();
    }
}
