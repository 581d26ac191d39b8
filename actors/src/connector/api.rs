//! The `steward-connector` micro service. Every endpoint is in the micro queue group (any
//! instance may answer): `host.status`, `host.list`, `host.send`, `host.ensure_worker`,
//! `host.outcome`, `host.stats`. `host.applied` (a host's applied configuration revision) is a
//! plain subscription instead: every instance applies it to the records it keeps and answers;
//! the caller takes the first answer.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use ractor::ActorProcessingErr;
use steward_subjects::api::host::{
    AppliedRevisionRequest, AppliedRevisionResult, CommandAction, CommandOutcomeRequest, CommandReply, CommandStatus,
    EnsureWorkerRequest, EnsureWorkerResult, HostCommand, HostList, HostListRequest, HostRecord, HostStatusRequest,
    SendCommandRequest, SendCommandResult, COMMAND_ID_HEADER,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::selector::Selector;
use steward_subjects::streams::HOST_COMMANDS_STREAM;
use steward_subjects::token::{validate, TokenKind};
use steward_subjects::{ErrorCode, HostId, Subjects, WireError};
use tracing::{debug, info};

use super::{
    ConnectorArgs, ConnectorHandle, ConnectorMsg, CALL_TIMEOUT, DEFAULT_ENSURE_TIMEOUT, MAX_ENSURE_TIMEOUT,
    MAX_SEND_WAIT,
};
use crate::tasks::TaskSet;
use crate::ActorsError;

/// Answers `host.applied` (plain subscription too: every instance keeps the applied revision
/// in its records, so none writes an older one back on its next refresh).
pub(super) async fn subscribe_applied(
    args: &ConnectorArgs,
    tasks: &mut TaskSet<ConnectorMsg>,
) -> Result<(), ActorProcessingErr> {
    let mut applied = args
        .client
        .subscribe(args.subjects.host_applied())
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot subscribe to applied revisions: {e}")))?;
    let (me, client) = (tasks.actor().clone(), args.client.clone());
    tasks.spawn("applied-revision subscription", async move {
        while let Some(msg) = applied.next().await {
            let Some(reply) = msg.reply.clone() else { continue };
            let (result, enc) = match rpc::decode_request::<AppliedRevisionRequest>(&msg) {
                Ok((r, enc)) => {
                    let result = match HostId::parse(&r.host_id) {
                        Ok(host) => crate::call(
                            &me,
                            move |port| ConnectorMsg::SetAppliedRevision(host, r.revision, port),
                            CALL_TIMEOUT,
                        )
                        .await
                        .map(|recorded| AppliedRevisionResult { recorded })
                        .map_err(unavailable),
                        Err(e) => Err(WireError::from(e)),
                    };
                    (result, enc)
                }
                Err((e, enc)) => (Err(e), enc),
            };
            let payload = rpc::encode_reply(enc, result);
            if let Err(e) = client.publish_with_headers(reply, enc.headers(), payload).await {
                debug!(error = %e, "applied-revision reply not sent");
            }
        }
    });
    Ok(())
}

#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    List,
    Send,
    EnsureWorker,
    Outcome,
    Stats,
}

/// Registers the service and serves its endpoints on a task of `tasks`.
pub(super) async fn start(
    args: &ConnectorArgs,
    js: jetstream::Context,
    tasks: &mut TaskSet<ConnectorMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let s = &args.subjects;
    let description = "steward host registry, presence and host commands";
    let service = crate::start_account_service(&args.client, s.account(), "connector", description)
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot register connector service: {e}")))?;
    // Every endpoint is in the micro queue group: any connector instance may answer.
    let mut streams = Vec::new();
    for (name, subject, kind) in [
        ("status", s.host_status(), Endpoint::Status),
        ("list", s.host_list(), Endpoint::List),
        ("send", s.host_send(), Endpoint::Send),
        ("ensure_worker", s.host_ensure_worker(), Endpoint::EnsureWorker),
        ("outcome", s.host_outcome(), Endpoint::Outcome),
        ("stats", s.host_stats(), Endpoint::Stats),
    ] {
        let ep = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot add connector endpoint {name}: {e}")))?;
        streams.push(ep.map(move |r| (kind, r)).boxed());
    }
    let api = Api {
        handle: ConnectorHandle { actor: tasks.actor().clone() },
        client: args.client.clone(),
        js,
        subjects: args.subjects.clone(),
    };
    tasks.spawn("api service", async move {
        let mut requests = futures::stream::select_all(streams);
        while let Some((kind, req)) = requests.next().await {
            let api = api.clone();
            // One task per request: ensure-worker and send may wait for seconds.
            tokio::spawn(async move { api.answer(kind, req).await });
        }
    });
    Ok(service)
}

#[derive(Clone)]
struct Api {
    handle: ConnectorHandle,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
}

fn unavailable(e: ActorsError) -> WireError {
    WireError::unavailable(e.to_string())
}

impl Api {
    async fn answer(&self, kind: Endpoint, req: async_nats::service::Request) {
        let sent = match kind {
            Endpoint::Status => rpc::serve(&req, |r: HostStatusRequest| self.status(r)).await,
            Endpoint::List => rpc::serve(&req, |r: HostListRequest| self.list(r)).await,
            Endpoint::Send => rpc::serve(&req, |r: SendCommandRequest| self.send(r)).await,
            Endpoint::EnsureWorker => rpc::serve(&req, |r: EnsureWorkerRequest| self.ensure_worker(r)).await,
            Endpoint::Outcome => rpc::serve(&req, |r: CommandOutcomeRequest| self.outcome(r)).await,
            Endpoint::Stats => {
                let r = self.handle.stats().await.map_err(unavailable);
                rpc::respond(&req, Encoding::from_headers(req.message.headers.as_ref()), r).await
            }
        };
        if let Err(e) = sent {
            debug!(error = %e, "connector reply not sent");
        }
    }

    async fn known(&self, host: &HostId) -> Result<HostRecord, WireError> {
        self.handle
            .status(host)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| WireError::not_found(format!("host {host} is not registered")))
    }

    async fn status(&self, r: HostStatusRequest) -> Result<HostRecord, WireError> {
        let host = HostId::parse(&r.host_id)?;
        self.known(&host).await
    }

    async fn list(&self, r: HostListRequest) -> Result<HostList, WireError> {
        let selector = Selector::parse(&r.selector).map_err(|e| WireError::invalid(e.to_string()))?;
        let hosts = self.handle.list(selector, r.online).await.map_err(unavailable)?;
        Ok(HostList { hosts })
    }

    async fn send(&self, r: SendCommandRequest) -> Result<SendCommandResult, WireError> {
        let host = r.validate()?;
        self.known(&host).await?;
        let wait = Duration::from_millis(r.wait_ms).min(MAX_SEND_WAIT);
        let ttl = (r.ttl_ms > 0).then(|| Duration::from_millis(r.ttl_ms));
        let (cmd, sequence, replies) = self.publish_command(&host, r.action, &r.worker, ttl, !wait.is_zero()).await?;
        let reply = match replies {
            Some(sub) => wait_reply(sub, &cmd.command_id, wait).await,
            None => None,
        };
        Ok(SendCommandResult { command_id: cmd.command_id, sequence, reply })
    }

    /// Stores a command in the commands stream; subscribes to the host's replies first when
    /// asked, so a quick reply is not missed.
    async fn publish_command(
        &self,
        host: &HostId,
        action: CommandAction,
        worker: &str,
        ttl: Option<Duration>,
        want_reply: bool,
    ) -> Result<(HostCommand, u64, Option<async_nats::Subscriber>), WireError> {
        let now = time::OffsetDateTime::now_utc();
        let fmt =
            |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let cmd = HostCommand {
            command_id: uuid::Uuid::now_v7().simple().to_string(),
            host_id: host.to_string(),
            action,
            worker: worker.to_owned(),
            issued_at: fmt(now),
            expires_at: ttl.map(|d| fmt(now + time::Duration::try_from(d).unwrap_or(time::Duration::MAX))),
            work: None,
        };
        let replies = if want_reply {
            Some(
                self.client
                    .subscribe(self.subjects.host_reply(host))
                    .await
                    .map_err(|e| WireError::unavailable(format!("cannot subscribe to replies: {e}")))?,
            )
        } else {
            None
        };
        let payload = codec::encode(Encoding::MsgPack, &cmd)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, cmd.command_id.as_str());
        headers.insert(COMMAND_ID_HEADER, cmd.command_id.as_str());
        let ack = self
            .js
            .publish_with_headers(self.subjects.host_command(host), headers, payload)
            .await
            .map_err(|e| WireError::unavailable(format!("cannot queue command: {e}")))?
            .await
            .map_err(|e| WireError::unavailable(format!("command not stored: {e}")))?;
        info!(host_id = %host, command_id = %cmd.command_id, action = action.as_str(), "command queued");
        Ok((cmd, ack.sequence, replies))
    }

    async fn outcome(&self, r: CommandOutcomeRequest) -> Result<CommandReply, WireError> {
        let host = HostId::parse(&r.host_id)?;
        validate(TokenKind::Name, &r.command_id)?;
        let not_found =
            || WireError::not_found(format!("no reply recorded for command {} of host {host}", r.command_id));
        let stream = self
            .js
            .get_stream(HOST_COMMANDS_STREAM)
            .await
            .map_err(|e| WireError::unavailable(format!("cannot open {HOST_COMMANDS_STREAM}: {e}")))?;
        let filter = self.subjects.host_reply(&host);
        if stream.get_last_raw_message_by_subject(&filter).await.is_err() {
            return Err(not_found());
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| WireError::unavailable(format!("cannot read replies: {e}")))?;
        let mut messages =
            consumer.messages().await.map_err(|e| WireError::unavailable(format!("cannot read replies: {e}")))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(Ok(msg))) = next else { return Err(not_found()) };
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
                if reply.command_id == r.command_id {
                    return Ok(reply);
                }
            }
            if pending == 0 {
                return Err(not_found());
            }
        }
    }

    async fn ensure_worker(&self, r: EnsureWorkerRequest) -> Result<EnsureWorkerResult, WireError> {
        let started = Instant::now();
        let host = HostId::parse(&r.host_id)?;
        validate(TokenKind::Name, &r.worker)?;
        let timeout = match r.timeout_ms {
            0 => DEFAULT_ENSURE_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_ENSURE_TIMEOUT),
        };
        let record = self.known(&host).await?;
        if let Some(version) = record.workers.get(&r.worker) {
            return Ok(EnsureWorkerResult {
                worker: r.worker,
                version: version.clone(),
                already_present: true,
                command_id: None,
                waited_ms: 0,
            });
        }
        if record.online && !record.available_workers.is_empty() && !record.available_workers.contains_key(&r.worker) {
            return Err(WireError::invalid(format!(
                "host {host} cannot install worker {:?}: not in its catalog (available: {})",
                r.worker,
                record.available_workers.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let (cmd, _, replies) =
            self.publish_command(&host, CommandAction::InstallWorker, &r.worker, Some(timeout), true).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut replies = replies.map(|s| s.boxed());
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let state = match self.handle.status(&host).await {
                        Ok(Some(r)) if r.online => "online",
                        Ok(Some(_)) => "offline",
                        _ => "unknown",
                    };
                    return Err(WireError::new(ErrorCode::Timeout, format!(
                        "worker {:?} did not appear on host {host} within {} ms (host is {state}; the install command {} stays queued until it expires)",
                        r.worker, timeout.as_millis(), cmd.command_id
                    )));
                }
                msg = async {
                    match replies.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match msg {
                        Some(msg) => {
                            if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
                                if reply.command_id == cmd.command_id && reply.status != CommandStatus::Ok {
                                    return Err(WireError::invalid(format!(
                                        "host {host} cannot install worker {:?}: {} ({})",
                                        r.worker, reply.message, reply.status.as_str()
                                    )));
                                }
                            }
                        }
                        None => replies = None,
                    }
                }
                _ = poll.tick() => {
                    if let Ok(Some(rec)) = self.handle.status(&host).await {
                        if let Some(version) = rec.workers.get(&r.worker) {
                            return Ok(EnsureWorkerResult {
                                worker: r.worker,
                                version: version.clone(),
                                already_present: false,
                                command_id: Some(cmd.command_id),
                                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            });
                        }
                    }
                }
            }
        }
    }
}

async fn wait_reply(mut sub: async_nats::Subscriber, command_id: &str, wait: Duration) -> Option<CommandReply> {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &msg.payload) {
            if reply.command_id == command_id {
                return Some(reply);
            }
        }
    }
    None
}
