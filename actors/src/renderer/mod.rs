//! The job-spec renderer: turns the current configuration revision and the host registry into
//! job specs in the spec store (KV bucket `steward_jobspecs`).
//!
//! It consumes `config.changed` through a durable consumer (acknowledged once the revision is
//! fully written) and watches the host registry; a host joining, leaving or changing labels
//! re-renders. Renders are level-triggered: desired = render(current revision, current hosts),
//! diffed against what the store holds (loaded header-only at start), and only added, changed
//! and removed specs are written (removals as KV delete markers). After a `kill -9` mid-render
//! the restarted renderer reloads the store's index and converges to the same spec set: ids
//! are deterministic and each key holds one spec. Rendering runs on a blocking thread, writes
//! in a task; the actor only keeps state.
//!
//! Layout: [`render`] is the pure render and diff, [`store`] the KV I/O, [`api`] the endpoints
//! (`jobspec.list`, `jobspec.explain`, `jobspec.status`).

pub mod api;
pub mod client;
pub mod render;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use steward_subjects::api::config::{ConfigChanged, StateArchive};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::jobspec::RenderStatus;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{ConfigDocument, SpecId};
use steward_subjects::streams::{CONFIG_BUCKET, CONFIG_EVENTS_STREAM, HOSTS_BUCKET, JOBSPECS_BUCKET};
use steward_subjects::subject::{
    config_archive_key, config_revision_filter, host_registry_filter, parse_registry_key, parse_revision_key,
};
use steward_subjects::{trace, AccountId, Subjects, Token, TokenKind};
use tracing::{debug, info, warn, Instrument};

use self::render::{HostLabels, SpecIndex};
use self::store::SpecStoreError;
use crate::signing::JobSigner;
use crate::tasks::TaskSet;
use crate::ActorsError;

/// Delay that coalesces bursts of host changes into one render.
pub const HOST_DEBOUNCE: Duration = Duration::from_millis(200);
/// Delay before a failed render is retried.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Arguments of the renderer.
#[derive(Debug, Clone)]
pub struct RendererArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account rendered.
    pub subjects: Subjects,
    /// The hub's signing key: every render batch is signed with it (see
    /// [`crate::spec_signing`]); without one specs are written unsigned and runtimes refuse them.
    pub signer: Option<JobSigner>,
}

/// Messages of the renderer.
pub enum RendererMsg {
    /// A revision became current (from the durable consumer; acknowledged once rendered).
    ConfigChanged {
        /// The revision.
        revision: u64,
        /// The event to acknowledge.
        ack: Option<Box<jetstream::Message>>,
    },
    /// A host record was written.
    HostUpsert(HostLabels, u64),
    /// A host record was deleted.
    HostRemoved(String, u64),
    /// Render now (if nothing is rendering).
    RenderDue,
    /// A render finished.
    RenderDone(Result<RenderOutcome, RenderError>),
    /// Where the spec with this id is stored.
    Locate(SpecId, RpcReplyPort<Option<String>>),
    /// A background task ended (its subscription closed).
    TaskEnded(&'static str),
}

/// Why a render failed (the next render reloads the spec index and tries again).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec store could not be read or written.
    #[error(transparent)]
    Store(#[from] SpecStoreError),
    /// The blocking render task panicked or was canceled.
    #[error("render task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a finished render did.
#[derive(Debug)]
pub struct RenderOutcome {
    /// Revision rendered.
    pub revision: u64,
    /// The store's index now.
    pub index: Arc<SpecIndex>,
    /// Specs added.
    pub added: u64,
    /// Specs changed.
    pub changed: u64,
    /// Specs removed.
    pub removed: u64,
}

/// State of the renderer.
pub struct RendererState {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    signer: Option<JobSigner>,
    config_kv: kv::Store,
    specs_kv: kv::Store,
    doc: Option<(u64, Arc<ConfigDocument>)>,
    hosts: BTreeMap<String, (u64, BTreeMap<String, String>)>,
    index: Option<Arc<SpecIndex>>,
    rendering: bool,
    dirty: bool,
    scheduled: bool,
    acks: Vec<(u64, Box<jetstream::Message>)>,
    /// Trace context of the `config.changed` event of the revision to render next.
    trace: Option<trace::Context>,
    status: Arc<Mutex<RenderStatus>>,
    written: Arc<AtomicU64>,
    tasks: TaskSet<RendererMsg>,
    service: Option<async_nats::service::Service>,
}

/// The renderer actor.
#[derive(Debug, Default)]
pub struct Renderer;

fn fail(what: &str) -> impl Fn(String) -> ActorProcessingErr + '_ {
    move |e| ActorProcessingErr::from(format!("{what}: {e}"))
}

fn host_from(key: &str, account: &AccountId, value: &[u8]) -> Option<HostLabels> {
    let id = parse_registry_key(account, key)?;
    let labels = codec::decode::<HostRecord>(Encoding::MsgPack, value).map(|r| r.labels).unwrap_or_default();
    Some(HostLabels { id: id.to_string(), labels })
}

/// Reads revision `n`'s state archive.
///
/// # Errors
/// [`SpecStoreError`] when it is missing or cannot be decoded.
pub async fn read_archive(config_kv: &kv::Store, account: &AccountId, n: u64) -> Result<StateArchive, SpecStoreError> {
    let bytes = config_kv
        .get(config_archive_key(account, n))
        .await
        .map_err(|e| SpecStoreError { what: "cannot read state archive", reason: e.to_string() })?
        .ok_or_else(|| SpecStoreError { what: "state archive missing", reason: format!("revision {n}") })?;
    codec::decode_limited(Encoding::MsgPack, &bytes, usize::MAX)
        .map_err(|e| SpecStoreError { what: "cannot decode state archive", reason: e.to_string() })
}

/// The highest committed revision of `account` (0 when none), from the revision keys.
///
/// # Errors
/// [`SpecStoreError`] when the scan fails.
pub async fn head_revision(
    client: &async_nats::Client,
    config_kv: &kv::Store,
    account: &AccountId,
) -> Result<u64, SpecStoreError> {
    let latest = store::scan_latest(client, config_kv, &config_revision_filter(account), true).await?;
    Ok(latest.iter().filter(|l| !l.deleted).filter_map(|l| parse_revision_key(account, &l.key)).max().unwrap_or(0))
}

impl Actor for Renderer {
    type Msg = RendererMsg;
    type State = RendererState;
    type Arguments = RendererArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RendererMsg>,
        args: RendererArgs,
    ) -> Result<RendererState, ActorProcessingErr> {
        let account = args.subjects.account().clone();
        let js = jetstream::new(args.client.clone());
        let get = |name: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(name).await.map_err(|e| fail(name)(e.to_string())) }
        };
        let (config_kv, specs_kv, hosts_kv) =
            (get(CONFIG_BUCKET).await?, get(JOBSPECS_BUCKET).await?, get(HOSTS_BUCKET).await?);
        let mut tasks = TaskSet::new(myself.clone(), RendererMsg::TaskEnded);

        let hosts = watch_hosts(&args.client, &hosts_kv, &account, &myself, &mut tasks).await?;
        follow_config_events(&js, &args.subjects, &mut tasks).await?;

        // Current revision and what the store holds.
        let head =
            head_revision(&args.client, &config_kv, &account).await.map_err(|e| fail("config")(e.to_string()))?;
        let doc = if head > 0 {
            let a = read_archive(&config_kv, &account, head).await.map_err(|e| fail("config")(e.to_string()))?;
            Some((head, Arc::new(a.document)))
        } else {
            None
        };
        let index = store::load_index(&args.client, &specs_kv, &account, args.signer.as_ref().map(JobSigner::key_id))
            .await
            .map_err(|e| fail("spec index")(e.to_string()))?;
        let status = Arc::new(Mutex::new(RenderStatus {
            specs: index.len() as u64,
            hosts: hosts.len() as u64,
            ..RenderStatus::default()
        }));
        let signing_key = args.signer.as_ref().map(JobSigner::key_id);
        info!(account = %account, revision = head, hosts = hosts.len(), specs = index.len(), signing_key, "renderer loaded");
        if signing_key.is_none() {
            warn!(account = %account, "renderer has no signing key: specs are written unsigned, runtimes refuse them");
        }

        let service = api::start_service(&args, &myself, &specs_kv, &status, &mut tasks).await?;
        let _ = myself.cast(RendererMsg::RenderDue);
        Ok(RendererState {
            client: args.client.clone(),
            js,
            subjects: args.subjects,
            signer: args.signer,
            config_kv,
            specs_kv,
            doc,
            hosts,
            index: Some(Arc::new(index)),
            rendering: false,
            dirty: false,
            scheduled: false,
            acks: Vec::new(),
            trace: None,
            status,
            written: Arc::new(AtomicU64::new(0)),
            tasks,
            service: Some(service),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RendererMsg>,
        msg: RendererMsg,
        state: &mut RendererState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RendererMsg::ConfigChanged { revision, ack } => {
                let current = state.doc.as_ref().map_or(0, |d| d.0);
                if revision > current {
                    match read_archive(&state.config_kv, state.subjects.account(), revision).await {
                        Ok(a) => {
                            state.doc = Some((revision, Arc::new(a.document)));
                            state.trace = ack.as_ref().and_then(|m| trace::context_of(m.headers.as_ref()));
                            schedule(&myself, state, Duration::ZERO);
                        }
                        Err(e) => warn!(revision, error = %e, "cannot read announced revision"),
                    }
                }
                if let Some(m) = ack {
                    state.acks.push((revision, m));
                }
                ack_rendered(state).await;
            }
            RendererMsg::HostUpsert(h, rev) => {
                let changed = match state.hosts.get(&h.id) {
                    Some((r, _)) if *r >= rev => false,
                    Some((_, labels)) => *labels != h.labels,
                    None => true,
                };
                let prev_rev = state.hosts.get(&h.id).map_or(0, |x| x.0);
                if rev > prev_rev {
                    state.hosts.insert(h.id, (rev, h.labels));
                }
                if changed {
                    schedule(&myself, state, HOST_DEBOUNCE);
                }
            }
            RendererMsg::HostRemoved(id, rev) => {
                if state.hosts.get(&id).is_some_and(|(r, _)| *r < rev) {
                    state.hosts.remove(&id);
                    schedule(&myself, state, HOST_DEBOUNCE);
                }
            }
            RendererMsg::RenderDue => {
                state.scheduled = false;
                start_render(&myself, state);
            }
            RendererMsg::RenderDone(result) => {
                state.rendering = false;
                match result {
                    Ok(out) => {
                        info!(
                            revision = out.revision,
                            added = out.added,
                            changed = out.changed,
                            removed = out.removed,
                            specs = out.index.len(),
                            "render complete"
                        );
                        if let Ok(mut s) = state.status.lock() {
                            s.rendered_revision = out.revision;
                            s.rendering_revision = None;
                            s.specs = out.index.len() as u64;
                            s.added = out.added;
                            s.changed = out.changed;
                            s.removed = out.removed;
                            s.last_error = None;
                        }
                        state.index = Some(out.index);
                        ack_rendered(state).await;
                        if state.dirty {
                            state.dirty = false;
                            schedule(&myself, state, Duration::ZERO);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "render failed, reloading the spec index and retrying");
                        if let Ok(mut s) = state.status.lock() {
                            s.rendering_revision = None;
                            s.last_error = Some(e.to_string());
                        }
                        state.index = None;
                        schedule(&myself, state, RETRY_DELAY);
                    }
                }
            }
            RendererMsg::Locate(id, reply) => {
                let key = state.index.as_ref().and_then(|ix| {
                    let (_, target) = ix.find(&id)?;
                    let token = Token::parse(TokenKind::Name, &target.id).ok()?;
                    Some(steward_subjects::subject::jobspec_key(state.subjects.account(), target.kind, &token, &id))
                });
                let _ = reply.send(key);
            }
            RendererMsg::TaskEnded(what) => return Err(crate::tasks::ended("renderer", what)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RendererMsg>,
        state: &mut RendererState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.stop("renderer", state.service.take()).await;
        Ok(())
    }
}

/// Follows the host registry of `account` (a task of `tasks` casts each change to the
/// actor) and answers the hosts it holds now.
async fn watch_hosts(
    client: &async_nats::Client,
    hosts_kv: &kv::Store,
    account: &AccountId,
    myself: &ActorRef<RendererMsg>,
    tasks: &mut TaskSet<RendererMsg>,
) -> Result<BTreeMap<String, (u64, BTreeMap<String, String>)>, ActorProcessingErr> {
    // Host registry: watch new changes first, then read the current state, so nothing falls
    // in between (older watch events are ignored by revision).
    let filter = host_registry_filter(account);
    let mut watch = hosts_kv.watch(&filter).await.map_err(|e| fail("cannot watch hosts")(e.to_string()))?;
    let me = myself.clone();
    let acct = account.clone();
    tasks.spawn("host watch", async move {
        while let Some(Ok(entry)) = watch.next().await {
            let msg = match entry.operation {
                kv::Operation::Put => {
                    host_from(&entry.key, &acct, &entry.value).map(|h| RendererMsg::HostUpsert(h, entry.revision))
                }
                kv::Operation::Delete | kv::Operation::Purge => parse_registry_key(&acct, &entry.key)
                    .map(|id| RendererMsg::HostRemoved(id.to_string(), entry.revision)),
            };
            if let Some(m) = msg {
                if me.cast(m).is_err() {
                    return;
                }
            }
        }
    });
    let mut hosts = BTreeMap::new();
    for l in store::scan_latest(client, hosts_kv, &filter, false).await.map_err(|e| fail("hosts")(e.to_string()))? {
        if l.deleted {
            continue;
        }
        if let Some(h) = host_from(&l.key, account, &l.value) {
            hosts.insert(h.id, (l.revision, h.labels));
        }
    }
    Ok(hosts)
}

/// The name of the renderer's durable consumer of the account's `config.changed` events.
#[must_use]
pub fn config_events_consumer(account: &steward_subjects::AccountId) -> String {
    format!("renderer-{account}")
}

/// Follows `config.changed` of the account on a task of `tasks` that casts each announced
/// revision to the actor.
async fn follow_config_events(
    js: &jetstream::Context,
    subjects: &Subjects,
    tasks: &mut TaskSet<RendererMsg>,
) -> Result<(), ActorProcessingErr> {
    // Durable consumer of config.changed: events that arrive while this renderer is down are
    // delivered when it comes back; each is acknowledged once its revision is written.
    let stream = js.get_stream(CONFIG_EVENTS_STREAM).await.map_err(|e| fail("config events")(e.to_string()))?;
    let durable = config_events_consumer(subjects.account());
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: subjects.config_changed(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(300),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| fail("config events consumer")(e.to_string()))?;
    let mut events = consumer.messages().await.map_err(|e| fail("config events")(e.to_string()))?;
    let me = tasks.actor().clone();
    tasks.spawn("config events", async move {
        while let Some(Ok(msg)) = events.next().await {
            let revision = codec::decode::<ConfigChanged>(Encoding::MsgPack, &msg.payload).map(|c| c.revision.revision);
            match revision {
                Ok(revision) => {
                    if me.cast(RendererMsg::ConfigChanged { revision, ack: Some(Box::new(msg)) }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "undecodable config.changed event, dropping it");
                    let _ = msg.ack().await;
                }
            }
        }
    });
    Ok(())
}

fn schedule(myself: &ActorRef<RendererMsg>, state: &mut RendererState, delay: Duration) {
    if state.rendering {
        state.dirty = true;
        return;
    }
    if state.scheduled {
        return;
    }
    state.scheduled = true;
    if delay.is_zero() {
        let _ = myself.cast(RendererMsg::RenderDue);
    } else {
        myself.send_after(delay, || RendererMsg::RenderDue);
    }
}

async fn ack_rendered(state: &mut RendererState) {
    let done = state.status.lock().map(|s| s.rendered_revision).unwrap_or(0);
    let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.acks).into_iter().partition(|(r, _)| *r <= done);
    state.acks = keep;
    for (_, m) in ready {
        if let Err(e) = m.ack().await {
            debug!(error = %e, "config event ack failed (it will be redelivered)");
        }
    }
}

fn start_render(myself: &ActorRef<RendererMsg>, state: &mut RendererState) {
    if state.rendering {
        state.dirty = true;
        return;
    }
    let Some((revision, doc)) = state.doc.clone() else { return };
    state.rendering = true;
    let hosts: Vec<HostLabels> =
        state.hosts.iter().map(|(id, (_, labels))| HostLabels { id: id.clone(), labels: labels.clone() }).collect();
    if let Ok(mut s) = state.status.lock() {
        s.rendering_revision = Some(revision);
        s.hosts = hosts.len() as u64;
        s.total = 0;
        s.written = 0;
    }
    let stored = state.index.clone();
    let (client, js, specs_kv, account) =
        (state.client.clone(), state.js.clone(), state.specs_kv.clone(), state.subjects.account().clone());
    let (written, status, me) = (state.written.clone(), state.status.clone(), myself.clone());
    let signer = state.signer.clone();
    let key_id = signer.as_ref().map(|s| s.key_id().to_owned());
    let span = trace::follow(state.trace.take().as_ref(), || tracing::info_span!("render", revision));
    let render = async move {
        let result: Result<RenderOutcome, RenderError> = async {
            let stored = match stored {
                Some(s) => s,
                None => Arc::new(store::load_index(&client, &specs_kv, &account, key_id.as_deref()).await?),
            };
            let acct = account.to_string();
            let (desired, diff, stored, batch) = tokio::task::spawn_blocking(move || {
                let desired = render::render(&acct, &doc, &hosts);
                let diff = render::diff(&desired, &stored);
                let batch = signer.and_then(|s| render::sign_changes(&s, &acct, revision, &desired, &diff.changes));
                (desired, diff, stored, batch)
            })
            .await?;
            written.store(0, Ordering::Relaxed);
            if let Ok(mut s) = status.lock() {
                s.total = diff.changes.len() as u64;
            }
            let progress = {
                let (written, status) = (written.clone(), status.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(mut s) = status.lock() {
                            s.written = written.load(Ordering::Relaxed);
                        }
                    }
                })
            };
            let r = store::write_changes(
                &js,
                &account,
                revision,
                &desired,
                &stored,
                &diff.changes,
                batch.as_ref(),
                &written,
            )
            .await;
            progress.abort();
            if let Ok(mut s) = status.lock() {
                s.written = written.load(Ordering::Relaxed);
            }
            r?;
            let mut out =
                RenderOutcome { revision, index: Arc::new(desired.to_index()), added: 0, changed: 0, removed: 0 };
            for c in &diff.changes {
                match c {
                    render::Change::Added(_) => out.added += 1,
                    render::Change::Changed(_) => out.changed += 1,
                    render::Change::Removed(_) => out.removed += 1,
                }
            }
            Ok(out)
        }
        .await;
        let _ = me.cast(RendererMsg::RenderDone(result));
    };
    tokio::spawn(render.instrument(span));
}

/// Typed handle in front of the renderer.
#[derive(Debug, Clone)]
pub struct RendererHandle {
    actor: ActorRef<RendererMsg>,
}

impl RendererHandle {
    /// Wraps a running renderer.
    #[must_use]
    pub fn new(actor: ActorRef<RendererMsg>) -> Self {
        RendererHandle { actor }
    }

    /// The store key of spec `id`, if the renderer's index has it.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`] when the renderer is gone or busy for too long.
    pub async fn locate(&self, id: SpecId) -> Result<Option<String>, ActorsError> {
        crate::call(&self.actor, move |r| RendererMsg::Locate(id, r), Duration::from_secs(5)).await
    }
}
