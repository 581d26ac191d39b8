//! The configuration manager: per-account configuration documents as immutable revisions
//! (state archives) in the `steward_config` bucket, with apply, plan, get, history, diff,
//! rollback and source polling.
//!
//! `<account>.doc.<N>` (revision N's archive) is written first; `<account>.rev.<N>` (its
//! metadata) is created with KV `create`, the commit point: two hub instances racing for
//! revision N cannot both win, and a crash between the writes leaves only an uncommitted
//! archive the next apply overwrites. A commit is announced as `config.changed` with a
//! `Nats-Msg-Id` (stored once); on start the head revision is announced again if the last
//! announcement is older. Source polling turns a valid, changed candidate into a revision
//! labelled `source` and refuses an invalid one with `config.rejected`.
//!
//! Layout: this file is the actor and its handle; [`api`] its endpoints; [`source`] fetches
//! candidates; [`playbooks`] keeps playbooks by content reference.

pub mod api;
pub mod client;
pub mod playbooks;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::Digest;
use steward_subjects::api::config::{
    ApplyReply, ApplyRequest, ConfigChanged, ConfigRejected, DiffReply, DiffRequest, DocumentSummary, GetRequest,
    HistoryReply, HistoryRequest, PlanReply, PlanRequest, RevisionMeta, RollbackRequest, SpecDiff, StateArchive,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::diff::diff_documents;
use steward_subjects::config::spec::hex;
use steward_subjects::config::{parse_document, ConfigDocument};
use steward_subjects::envelope::ErrorDetail;
use steward_subjects::streams::{CONFIG_BUCKET, CONFIG_EVENTS_STREAM, HOSTS_BUCKET};
use steward_subjects::subject::{
    config_archive_key, config_revision_filter, config_revision_key, host_registry_filter, parse_registry_key,
};
use steward_subjects::{AccountId, Subjects, WireError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{error, info, warn, Instrument};

use self::source::SourceUrl;
use crate::renderer::render::{self, HostLabels};
use crate::renderer::{read_archive, store};
use crate::tasks::TaskSet;
use crate::ActorsError;

/// Targets listed per plan or diff reply (the rest are counted in `targets_omitted`).
pub const MAX_PLAN_TARGETS: usize = 500;
/// How long a caller waits for the manager (applies of large documents render twice).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A polled configuration source.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// `file://PATH`, `http://URL` or `https://URL`.
    pub url: String,
    /// Poll interval.
    pub poll: Duration,
}

/// Arguments of the config manager.
#[derive(Debug, Clone)]
pub struct ConfigManagerArgs {
    /// Hub connection.
    pub client: async_nats::Client,
    /// Subjects of the account managed.
    pub subjects: Subjects,
    /// Optional polled source.
    pub source: Option<ConfigSource>,
}

type Reply<T> = RpcReplyPort<Result<T, WireError>>;

/// Messages of the config manager.
pub enum ConfigManagerMsg {
    /// Apply a document (in the span of the request, which its `config.changed` event continues).
    Apply(ApplyRequest, tracing::Span, Reply<ApplyReply>),
    /// Plan a document.
    Plan(PlanRequest, Reply<PlanReply>),
    /// Read a revision.
    Get(GetRequest, Reply<StateArchive>),
    /// List revisions.
    History(HistoryRequest, Reply<HistoryReply>),
    /// Compare revisions.
    Diff(DiffRequest, Reply<DiffReply>),
    /// Re-apply a revision (in the span of the request).
    Rollback(RollbackRequest, tracing::Span, Reply<ApplyReply>),
    /// Poll the configured source now.
    PollSource,
    /// A background task ended.
    TaskEnded(&'static str),
}

/// State of the config manager.
pub struct ConfigManagerState {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    config_kv: kv::Store,
    hosts_kv: kv::Store,
    revisions: Vec<RevisionMeta>,
    current: Option<Arc<ConfigDocument>>,
    source: Option<(SourceUrl, String)>,
    last_candidate: Option<String>,
    tasks: TaskSet<ConfigManagerMsg>,
    service: Option<async_nats::service::Service>,
}

/// The config manager actor.
#[derive(Debug, Default)]
pub struct ConfigManager;

fn fail(what: &'static str) -> impl Fn(String) -> ActorProcessingErr {
    move |e| ActorProcessingErr::from(format!("{what}: {e}"))
}

fn unavailable(e: impl std::fmt::Display) -> WireError {
    WireError::unavailable(e.to_string())
}

fn now() -> String {
    crate::now_rfc3339()
}

async fn load_revisions(
    client: &async_nats::Client,
    config_kv: &kv::Store,
    account: &AccountId,
) -> Result<Vec<RevisionMeta>, WireError> {
    let latest =
        store::scan_latest(client, config_kv, &config_revision_filter(account), false).await.map_err(unavailable)?;
    let mut out: Vec<RevisionMeta> = latest
        .iter()
        .filter(|l| !l.deleted)
        .filter_map(|l| codec::decode_limited::<RevisionMeta>(Encoding::MsgPack, &l.value, usize::MAX).ok())
        .collect();
    out.sort_by_key(|m| m.revision);
    Ok(out)
}

impl Actor for ConfigManager {
    type Msg = ConfigManagerMsg;
    type State = ConfigManagerState;
    type Arguments = ConfigManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConfigManagerMsg>,
        args: ConfigManagerArgs,
    ) -> Result<ConfigManagerState, ActorProcessingErr> {
        let account = args.subjects.account().clone();
        let js = jetstream::new(args.client.clone());
        let config_kv = js.get_key_value(CONFIG_BUCKET).await.map_err(|e| fail("config bucket")(e.to_string()))?;
        let hosts_kv = js.get_key_value(HOSTS_BUCKET).await.map_err(|e| fail("hosts bucket")(e.to_string()))?;
        let revisions =
            load_revisions(&args.client, &config_kv, &account).await.map_err(|e| fail("revisions")(e.to_string()))?;
        let current = match revisions.last() {
            Some(m) => Some(Arc::new(
                read_archive(&config_kv, &account, m.revision)
                    .await
                    .map_err(|e| fail("head archive")(e.to_string()))?
                    .document,
            )),
            None => None,
        };
        let mut state = ConfigManagerState {
            client: args.client.clone(),
            js,
            subjects: args.subjects.clone(),
            config_kv,
            hosts_kv,
            revisions,
            current,
            source: None,
            last_candidate: None,
            tasks: TaskSet::new(myself.clone(), ConfigManagerMsg::TaskEnded),
            service: None,
        };
        reannounce_head(&state).await;
        if let Some(src) = &args.source {
            let url = SourceUrl::parse(&src.url).map_err(ActorProcessingErr::from)?;
            state.source = Some((url, src.url.clone()));
            let (me, poll) = (myself.clone(), src.poll.max(Duration::from_millis(100)));
            state.tasks.spawn_detached(async move {
                let mut tick = tokio::time::interval(poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if me.cast(ConfigManagerMsg::PollSource).is_err() {
                        return;
                    }
                }
            });
            info!(source = %src.url, poll_ms = poll.as_millis() as u64, "polling configuration source");
        }
        state.service = Some(api::start_service(&args, &myself, &mut state.tasks).await?);
        info!(account = %account, revision = state.revisions.last().map_or(0, |m| m.revision), "config manager ready");
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConfigManagerMsg>,
        msg: ConfigManagerMsg,
        state: &mut ConfigManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConfigManagerMsg::Apply(req, span, reply) => {
                let r = apply(state, req).instrument(span).await;
                let _ = reply.send(r);
            }
            ConfigManagerMsg::Plan(req, reply) => {
                let _ = reply.send(plan(state, req).await);
            }
            ConfigManagerMsg::Get(req, reply) => {
                let _ = reply.send(get(state, req).await);
            }
            ConfigManagerMsg::History(req, reply) => {
                let _ = reply.send(history(state, req).await);
            }
            ConfigManagerMsg::Diff(req, reply) => {
                let _ = reply.send(diff(state, req).await);
            }
            ConfigManagerMsg::Rollback(req, span, reply) => {
                let _ = reply.send(rollback(state, req).instrument(span).await);
            }
            ConfigManagerMsg::PollSource => poll_source(state).await,
            ConfigManagerMsg::TaskEnded(what) => return Err(crate::tasks::ended("config manager", what)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConfigManagerMsg>,
        state: &mut ConfigManagerState,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.stop("config-manager", state.service.take()).await;
        Ok(())
    }
}

async fn hosts(state: &ConfigManagerState) -> Result<Vec<HostLabels>, WireError> {
    let account = state.subjects.account();
    let latest = store::scan_latest(&state.client, &state.hosts_kv, &host_registry_filter(account), false)
        .await
        .map_err(unavailable)?;
    Ok(latest
        .iter()
        .filter(|l| !l.deleted)
        .filter_map(|l| {
            let id = parse_registry_key(account, &l.key)?;
            let rec = codec::decode::<steward_subjects::api::host::HostRecord>(Encoding::MsgPack, &l.value).ok()?;
            Some(HostLabels { id: id.to_string(), labels: rec.labels })
        })
        .collect())
}

async fn spec_diff(
    state: &ConfigManagerState,
    old: Option<Arc<ConfigDocument>>,
    new: Arc<ConfigDocument>,
) -> Result<SpecDiff, WireError> {
    let hosts = hosts(state).await?;
    let account = state.subjects.account().to_string();
    tokio::task::spawn_blocking(move || render::compare(&account, old.as_deref(), &new, &hosts, MAX_PLAN_TARGETS))
        .await
        .map_err(|e| WireError::internal(format!("render task failed: {e}")))
}

fn invalid(details: Vec<ErrorDetail>) -> WireError {
    let n = details.len();
    WireError::invalid(format!("the document has {n} problem{}", if n == 1 { "" } else { "s" })).with_details(details)
}

async fn parse(text: String) -> Result<(ConfigDocument, String), WireError> {
    tokio::task::spawn_blocking(move || {
        let doc = parse_document(text.as_bytes()).map_err(invalid)?;
        let hash = doc.content_hash().map_err(|e| WireError::internal(e.to_string()))?;
        Ok((doc, hash))
    })
    .await
    .map_err(|e| WireError::internal(format!("validation task failed: {e}")))?
}

struct Candidate {
    doc: ConfigDocument,
    hash: String,
    label: String,
    author: String,
    origin: &'static str,
    if_revision: Option<u64>,
    rollback_of: Option<u64>,
}

async fn apply(state: &mut ConfigManagerState, req: ApplyRequest) -> Result<ApplyReply, WireError> {
    let (doc, hash) = parse(req.document).await?;
    let author = if req.author.is_empty() { "unknown".to_owned() } else { req.author };
    let c = Candidate {
        doc,
        hash,
        label: req.label,
        author,
        origin: "api",
        if_revision: req.if_revision,
        rollback_of: None,
    };
    commit(state, c).await
}

async fn commit(state: &mut ConfigManagerState, c: Candidate) -> Result<ApplyReply, WireError> {
    let account = state.subjects.account().clone();
    let doc = Arc::new(c.doc);
    for attempt in 0..3 {
        let head = state.revisions.last().cloned();
        let head_n = head.as_ref().map_or(0, |m| m.revision);
        if let Some(expected) = c.if_revision {
            if expected != head_n {
                return Err(WireError::conflict(format!("current revision is {head_n}, not {expected}")));
            }
        }
        if let Some(h) = head.as_ref().filter(|h| h.hash == c.hash) {
            return Ok(ApplyReply { revision: h.clone(), noop: true, jobspecs: SpecDiff::default() });
        }
        let meta = RevisionMeta {
            revision: head_n + 1,
            parent: head.as_ref().map(|h| h.revision),
            hash: c.hash.clone(),
            author: c.author.clone(),
            label: c.label.clone(),
            origin: c.origin.to_owned(),
            created_at: now(),
            rollback_of: c.rollback_of,
            summary: DocumentSummary::of(&doc),
        };
        let archive = StateArchive { meta: meta.clone(), document: (*doc).clone() };
        let archive_bytes = codec::encode(Encoding::MsgPack, &archive)?;
        let meta_bytes = codec::encode(Encoding::MsgPack, &meta)?;
        state.config_kv.put(config_archive_key(&account, meta.revision), archive_bytes).await.map_err(unavailable)?;
        match state.config_kv.create(config_revision_key(&account, meta.revision), meta_bytes).await {
            Ok(_) => {
                let old = state.current.replace(doc.clone());
                state.revisions.push(meta.clone());
                announce(state, &meta).await;
                info!(revision = meta.revision, author = %meta.author, label = %meta.label, origin = %meta.origin, "configuration revision stored");
                let jobspecs = spec_diff(state, old, doc).await?;
                return Ok(ApplyReply { revision: meta, noop: false, jobspecs });
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Another instance committed this revision first: reload and decide again.
                warn!(revision = meta.revision, attempt, "revision already taken, reloading history");
                state.revisions = load_revisions(&state.client, &state.config_kv, &account).await?;
                if let Some(last) = state.revisions.last() {
                    state.current = Some(Arc::new(
                        read_archive(&state.config_kv, &account, last.revision).await.map_err(unavailable)?.document,
                    ));
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(WireError::conflict("revision number contended by other writers; retry"))
}

async fn announce(state: &ConfigManagerState, meta: &RevisionMeta) {
    let event = ConfigChanged { account: state.subjects.account().to_string(), revision: meta.clone() };
    let Ok(payload) = codec::encode(Encoding::MsgPack, &event) else { return };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("config-{}-{}", state.subjects.account(), meta.revision).as_str());
    steward_subjects::trace::inject(&mut headers);
    for attempt in 1..=3 {
        let r = match state
            .js
            .publish_with_headers(state.subjects.config_changed(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(()) => return,
            Err(e) => warn!(revision = meta.revision, attempt, error = %e, "config.changed not stored yet"),
        }
    }
    error!(revision = meta.revision, "config.changed could not be announced; it is re-announced on the next start");
}

async fn reannounce_head(state: &ConfigManagerState) {
    let Some(head) = state.revisions.last() else { return };
    let last = match state.js.get_stream(CONFIG_EVENTS_STREAM).await {
        Ok(s) => s.get_last_raw_message_by_subject(&state.subjects.config_changed()).await.ok(),
        Err(_) => None,
    };
    let announced = last
        .and_then(|m| codec::decode::<ConfigChanged>(Encoding::MsgPack, &m.payload).ok())
        .map_or(0, |c| c.revision.revision);
    if announced < head.revision {
        info!(revision = head.revision, announced, "re-announcing the head revision");
        announce(state, head).await;
    }
}

async fn plan(state: &mut ConfigManagerState, req: PlanRequest) -> Result<PlanReply, WireError> {
    let (doc, hash) = parse(req.document).await?;
    let head = state.revisions.last();
    let current_revision = head.map_or(0, |m| m.revision);
    let noop = head.is_some_and(|h| h.hash == hash);
    let empty = ConfigDocument::default();
    let document = diff_documents(state.current.as_deref().unwrap_or(&empty), &doc);
    let jobspecs = spec_diff(state, state.current.clone(), Arc::new(doc)).await?;
    Ok(PlanReply { current_revision, hash, noop, document, jobspecs })
}

async fn archive(state: &ConfigManagerState, n: u64) -> Result<StateArchive, WireError> {
    if !state.revisions.iter().any(|m| m.revision == n) {
        return Err(WireError::not_found(format!("no revision {n}")));
    }
    read_archive(&state.config_kv, state.subjects.account(), n).await.map_err(unavailable)
}

async fn refresh(state: &mut ConfigManagerState) -> Result<(), WireError> {
    let fresh = load_revisions(&state.client, &state.config_kv, state.subjects.account()).await?;
    if fresh.last().map(|m| m.revision) != state.revisions.last().map(|m| m.revision) {
        if let Some(last) = fresh.last() {
            let a =
                read_archive(&state.config_kv, state.subjects.account(), last.revision).await.map_err(unavailable)?;
            state.current = Some(Arc::new(a.document));
        }
    }
    state.revisions = fresh;
    Ok(())
}

async fn get(state: &mut ConfigManagerState, req: GetRequest) -> Result<StateArchive, WireError> {
    refresh(state).await?;
    let n = match req.revision {
        Some(n) => n,
        None => state
            .revisions
            .last()
            .map(|m| m.revision)
            .ok_or_else(|| WireError::not_found("no configuration has been applied yet"))?,
    };
    archive(state, n).await
}

fn parse_time(field: &str, s: &Option<String>) -> Result<Option<OffsetDateTime>, WireError> {
    s.as_deref()
        .map(|t| {
            OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|e| WireError::invalid(format!("{field} {t:?} is not an RFC 3339 time: {e}")))
        })
        .transpose()
}

async fn history(state: &mut ConfigManagerState, req: HistoryRequest) -> Result<HistoryReply, WireError> {
    let since = parse_time("since", &req.since)?;
    let until = parse_time("until", &req.until)?;
    refresh(state).await?;
    let limit = match req.limit {
        0 => 20,
        n => n.min(1000),
    } as usize;
    let matching: Vec<&RevisionMeta> = state
        .revisions
        .iter()
        .rev()
        .filter(|m| {
            let t = OffsetDateTime::parse(&m.created_at, &Rfc3339).ok();
            since.is_none_or(|s| t.is_some_and(|t| t >= s))
                && until.is_none_or(|u| t.is_some_and(|t| t < u))
                && req.label.as_ref().is_none_or(|l| &m.label == l)
                && req.author.as_ref().is_none_or(|a| &m.author == a)
        })
        .collect();
    let total = matching.len() as u64;
    let page: Vec<RevisionMeta> = matching
        .iter()
        .filter(|m| req.before.is_none_or(|b| m.revision < b))
        .take(limit + 1)
        .map(|m| (*m).clone())
        .collect();
    let (revisions, next_before) = if page.len() > limit {
        let rs: Vec<RevisionMeta> = page.into_iter().take(limit).collect();
        let next = rs.last().map(|m| m.revision);
        (rs, next)
    } else {
        (page, None)
    };
    Ok(HistoryReply { revisions, next_before, total })
}

async fn diff(state: &mut ConfigManagerState, req: DiffRequest) -> Result<DiffReply, WireError> {
    refresh(state).await?;
    let load = |n: u64| {
        let state = &*state;
        async move {
            if n == 0 {
                Ok(ConfigDocument::default())
            } else {
                archive(state, n).await.map(|a| a.document)
            }
        }
    };
    let (a, b) = (load(req.from).await?, load(req.to).await?);
    let document = diff_documents(&a, &b);
    let jobspecs = spec_diff(state, Some(Arc::new(a)), Arc::new(b)).await?;
    Ok(DiffReply { from: req.from, to: req.to, document, jobspecs })
}

async fn rollback(state: &mut ConfigManagerState, req: RollbackRequest) -> Result<ApplyReply, WireError> {
    refresh(state).await?;
    let old = archive(state, req.revision).await?;
    let hash = old.document.content_hash().map_err(|e| WireError::internal(e.to_string()))?;
    let c = Candidate {
        doc: old.document,
        hash,
        label: if req.label.is_empty() { "rollback".to_owned() } else { req.label },
        author: if req.author.is_empty() { "unknown".to_owned() } else { req.author },
        origin: "rollback",
        if_revision: req.if_revision,
        rollback_of: Some(req.revision),
    };
    commit(state, c).await
}

async fn poll_source(state: &mut ConfigManagerState) {
    let Some((url, text)) = state.source.clone() else { return };
    let bytes = match url.fetch().await {
        Ok(b) => b,
        Err(e) => {
            warn!(source = %text, error = %e, "cannot fetch configuration source");
            return;
        }
    };
    let hash = hex(&sha2::Sha256::digest(&bytes));
    if state.last_candidate.as_deref() == Some(hash.as_str()) {
        return;
    }
    state.last_candidate = Some(hash.clone());
    let text_doc = String::from_utf8_lossy(&bytes).into_owned();
    match parse(text_doc).await {
        Err(e) => {
            error!(source = %text, problems = e.details.len(), error = %e, details = ?e.details, "configuration candidate rejected; the running revision stays");
            let event = ConfigRejected {
                account: state.subjects.account().to_string(),
                source: text.clone(),
                hash,
                errors: if e.details.is_empty() {
                    vec![ErrorDetail { pointer: String::new(), reason: e.message }]
                } else {
                    e.details
                },
                at: now(),
            };
            if let Ok(payload) = codec::encode(Encoding::MsgPack, &event) {
                match state.js.publish(state.subjects.config_rejected(), payload).await {
                    Ok(ack) => {
                        if let Err(e) = ack.await {
                            warn!(error = %e, "config.rejected not stored");
                        }
                    }
                    Err(e) => warn!(error = %e, "config.rejected not published"),
                }
            }
        }
        Ok((doc, doc_hash)) => {
            let c = Candidate {
                doc,
                hash: doc_hash,
                label: "source".to_owned(),
                author: "source".to_owned(),
                origin: "source",
                if_revision: None,
                rollback_of: None,
            };
            match commit(state, c).await {
                Ok(r) if r.noop => {}
                Ok(r) => info!(source = %text, revision = r.revision.revision, "configuration source applied"),
                Err(e) => {
                    warn!(source = %text, error = %e, "configuration source not applied; retrying next poll");
                    state.last_candidate = None;
                }
            }
        }
    }
}

/// Typed handle in front of the config manager.
#[derive(Debug, Clone)]
pub struct ConfigManagerHandle {
    actor: ActorRef<ConfigManagerMsg>,
}

fn actor_err(e: ActorsError) -> WireError {
    WireError::unavailable(e.to_string())
}

impl ConfigManagerHandle {
    /// Wraps a running config manager.
    #[must_use]
    pub fn new(actor: ActorRef<ConfigManagerMsg>) -> Self {
        ConfigManagerHandle { actor }
    }

    /// Applies a document.
    ///
    /// # Errors
    /// `invalid` with every problem, `conflict`, or `unavailable`.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyReply, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::Apply(req, tracing::Span::current(), r), CALL_TIMEOUT)
            .await
            .map_err(actor_err)?
    }

    /// Plans a document.
    ///
    /// # Errors
    /// `invalid` with every problem, or `unavailable`.
    pub async fn plan(&self, req: PlanRequest) -> Result<PlanReply, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::Plan(req, r), CALL_TIMEOUT).await.map_err(actor_err)?
    }

    /// Reads a revision.
    ///
    /// # Errors
    /// `not_found` or `unavailable`.
    pub async fn get(&self, req: GetRequest) -> Result<StateArchive, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::Get(req, r), CALL_TIMEOUT).await.map_err(actor_err)?
    }

    /// Lists revisions.
    ///
    /// # Errors
    /// `invalid` filters or `unavailable`.
    pub async fn history(&self, req: HistoryRequest) -> Result<HistoryReply, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::History(req, r), CALL_TIMEOUT).await.map_err(actor_err)?
    }

    /// Compares two revisions.
    ///
    /// # Errors
    /// `not_found` or `unavailable`.
    pub async fn diff(&self, req: DiffRequest) -> Result<DiffReply, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::Diff(req, r), CALL_TIMEOUT).await.map_err(actor_err)?
    }

    /// Re-applies an old revision.
    ///
    /// # Errors
    /// `not_found`, `conflict` or `unavailable`.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<ApplyReply, WireError> {
        crate::call(&self.actor, |r| ConfigManagerMsg::Rollback(req, tracing::Span::current(), r), CALL_TIMEOUT)
            .await
            .map_err(actor_err)?
    }
}
