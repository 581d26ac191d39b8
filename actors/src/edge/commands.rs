//! Host commands. A durable consumer on the hub's `STEWARD_HOST_COMMANDS` stream, filtered to
//! this host, delivers commands sent while the host was away when it returns. Each command is
//! run once: its reply is journalled in redb before the message is acknowledged, so a
//! redelivery is answered from the journal. Replies go to
//! `steward.v1.<account>.host.reply.<host>` (recorded by the stream). A `run` command (the
//! dispatcher's work order) is handed to the host's run worker instead, without a command
//! reply; an order the worker took is journalled before it is acknowledged, so a redelivery
//! after a restart of the agent (or of the whole host) does not run it again.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use ractor::ActorRef;
use steward_storage::edge::EdgeStore;
use steward_subjects::api::host::{CommandAction, CommandReply, CommandStatus, HostCommand, COMMAND_ID_HEADER};
use steward_subjects::api::run::WorkAck;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::{self, RequestErrorKind};
use steward_subjects::streams::HOST_COMMANDS_STREAM;
use steward_subjects::token::{validate, TokenKind};
use steward_subjects::{trace, HostId, Subjects};
use tracing::{debug, info, warn, Instrument};

use super::{blocking, publish_heartbeat, EdgeMsg, EdgeState};
use crate::ActorsError;

/// Why the command consumer stopped reading (it reconnects with back-off).
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The durable consumer could not be created.
    #[error("cannot create the command consumer: {0}")]
    Consumer(#[from] jetstream::stream::ConsumerError),
    /// The pull subscription could not be started.
    #[error("cannot read commands: {0}")]
    Stream(#[from] jetstream::consumer::StreamError),
    /// The pull subscription failed.
    #[error("command stream failed: {0}")]
    Messages(#[from] consumer::pull::MessagesError),
    /// The stream of commands ended.
    #[error("command stream ended")]
    Ended,
    /// The agent is gone.
    #[error("agent stopped")]
    AgentStopped,
    /// The agent did not answer.
    #[error(transparent)]
    Agent(#[from] ActorsError),
    /// A command reply could not be encoded.
    #[error(transparent)]
    Encode(#[from] steward_subjects::codec::CodecError),
    /// A command reply was not published or not stored.
    #[error("reply not stored: {0}")]
    Reply(jetstream::context::PublishError),
    /// A message could not be acknowledged (or negatively acknowledged).
    #[error("ack failed: {0}")]
    Ack(async_nats::Error),
}

fn is_expired(expires_at: Option<&str>) -> bool {
    expires_at
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .is_some_and(|t| t < time::OffsetDateTime::now_utc())
}

pub(super) async fn run_command(state: &mut EdgeState, cmd: HostCommand) -> CommandReply {
    let id = cmd.command_id.clone();
    let store = state.store.clone();
    if let Ok(Some(bytes)) = blocking(move || store.command_reply(&id)).await {
        if let Ok(reply) = codec::decode::<CommandReply>(Encoding::MsgPack, &bytes) {
            state.stats.duplicates += 1;
            debug!(host_id = %state.host, command_id = %cmd.command_id, "command already handled, answering from the journal");
            return reply;
        }
    }
    let mut reply = CommandReply {
        command_id: cmd.command_id.clone(),
        host_id: state.host.to_string(),
        action: cmd.action,
        status: CommandStatus::Ok,
        message: String::new(),
        workers: BTreeMap::new(),
        draining: state.identity.draining,
        incarnation: state.identity.starts,
        replied_at: String::new(),
    };
    let mut changed = false;
    let (status, message) = if is_expired(cmd.expires_at.as_deref()) {
        state.stats.expired += 1;
        (CommandStatus::Expired, format!("command expired at {}", cmd.expires_at.as_deref().unwrap_or_default()))
    } else if cmd.action.needs_worker() && validate(TokenKind::Name, &cmd.worker).is_err() {
        (CommandStatus::Failed, format!("invalid worker name {:?}", cmd.worker))
    } else {
        state.stats.commands_run += 1;
        let (status, message, did_change) = perform(state, &cmd).await;
        changed = did_change;
        (status, message)
    };
    reply.status = status;
    reply.message = message;
    reply.workers = state.workers.clone();
    reply.draining = state.identity.draining;
    reply.replied_at = crate::now_rfc3339();
    state.stats.workers = state.workers.clone();
    state.stats.draining = state.identity.draining;
    match codec::encode(Encoding::MsgPack, &reply) {
        Ok(bytes) => {
            let (store, id) = (state.store.clone(), cmd.command_id.clone());
            if let Err(e) = blocking(move || store.record_command(&id, &bytes)).await {
                warn!(host_id = %state.host, command_id = %cmd.command_id, error = %e, "command reply not journalled");
            }
        }
        Err(e) => warn!(host_id = %state.host, error = %e, "command reply not encoded"),
    }
    info!(host_id = %state.host, command_id = %cmd.command_id, action = cmd.action.as_str(), status = reply.status.as_str(), "command handled");
    if changed {
        publish_heartbeat(state, false).await;
    }
    reply
}

/// Performs a valid, unexpired command; returns its status, message and whether the state a
/// heartbeat reports changed.
async fn perform(state: &mut EdgeState, cmd: &HostCommand) -> (CommandStatus, String, bool) {
    let mut changed = false;
    let (status, message) = match cmd.action {
        CommandAction::Ping => (CommandStatus::Ok, "pong".to_owned()),
        CommandAction::InstallWorker => match state.catalog.version(&cmd.worker).map(str::to_owned) {
            None => (
                CommandStatus::Failed,
                format!(
                    "unknown worker {:?} (catalog: {})",
                    cmd.worker,
                    state.catalog.all().keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(version) => {
                let (store, name, v) = (state.store.clone(), cmd.worker.clone(), version.clone());
                match blocking(move || store.enable_worker(&name, &v)).await {
                    Ok(()) => {
                        changed = state.workers.insert(cmd.worker.clone(), version.clone()).as_ref() != Some(&version);
                        (CommandStatus::Ok, format!("worker {} enabled at version {version}", cmd.worker))
                    }
                    Err(e) => (CommandStatus::Failed, format!("cannot enable worker {}: {e}", cmd.worker)),
                }
            }
        },
        CommandAction::RemoveWorker => {
            let (store, name) = (state.store.clone(), cmd.worker.clone());
            match blocking(move || store.disable_worker(&name)).await {
                Ok(was) => {
                    state.workers.remove(&cmd.worker);
                    changed = was;
                    let m = if was { "disabled" } else { "was not enabled" };
                    (CommandStatus::Ok, format!("worker {} {m}", cmd.worker))
                }
                Err(e) => (CommandStatus::Failed, format!("cannot disable worker {}: {e}", cmd.worker)),
            }
        }
        CommandAction::Drain | CommandAction::Resume => {
            let draining = cmd.action == CommandAction::Drain;
            let store = state.store.clone();
            match blocking(move || store.set_draining(draining)).await {
                Ok(identity) => {
                    changed = state.identity.draining != identity.draining;
                    state.identity = identity;
                    let m = if draining { "draining: no new work is taken" } else { "taking new work" };
                    (CommandStatus::Ok, m.to_owned())
                }
                Err(e) => (CommandStatus::Failed, format!("cannot change the drain state: {e}")),
            }
        }
        // Handed to the run worker by the command consumer before it gets here.
        CommandAction::Run => (CommandStatus::Failed, "run commands go to the run worker".to_owned()),
        CommandAction::Unknown => (CommandStatus::Failed, "unknown command action".to_owned()),
    };
    (status, message, changed)
}

/// Reads this host's commands from its durable consumer, hands each to the actor, publishes
/// the reply and acknowledges; reconnects with back-off whenever the hub is out of reach.
pub(super) async fn command_loop(
    js: jetstream::Context,
    subjects: Subjects,
    host: HostId,
    actor: ActorRef<EdgeMsg>,
    store: Weak<EdgeStore>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if store.strong_count() == 0 {
            debug!(host_id = %host, "agent gone; command consumer ends");
            return;
        }
        match consume(&js, &subjects, &host, &actor, &store).await {
            Ok(()) => return,
            Err(e) => {
                debug!(host_id = %host, error = %e, backoff_ms = backoff.as_millis() as u64, "command consumer interrupted, retrying");
            }
        }
        // Back-off between reconnect attempts of a long-running loop (not a test wait).
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// How long a command delivered to this host's consumer waits for its acknowledgement before
/// it is offered again. It bounds the delay of a command that reached an agent which stopped or
/// died before acknowledging it: the pull request of a stopped agent stays at the hub until its
/// going away has crossed the leaf link, and a command stored in that window is delivered to
/// it. Handling a command takes milliseconds (a redb write, a local request to the run
/// worker); one delivered twice is answered from the journal or dropped by the worker.
const COMMAND_ACK_WAIT: Duration = Duration::from_secs(5);

async fn consume(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    actor: &ActorRef<EdgeMsg>,
    store: &Weak<EdgeStore>,
) -> Result<(), ConsumeError> {
    let name = subjects.host_command_consumer(host);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("commands of host {host}")),
        filter_subject: subjects.host_command(host),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: COMMAND_ACK_WAIT,
        // A host away longer than the commands stream keeps commands loses nothing by losing
        // its consumer; decommissioned hosts' consumers go away on their own.
        inactive_threshold: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = js.create_consumer_on_stream(config, HOST_COMMANDS_STREAM).await?;
    let mut messages =
        consumer.stream().heartbeat(Duration::from_secs(2)).expires(Duration::from_secs(10)).messages().await?;
    debug!(host_id = %host, consumer = %name, "command consumer ready");
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let cmd = match codec::decode::<HostCommand>(Encoding::MsgPack, &msg.payload) {
            Ok(cmd) if cmd.host_id == host.as_str() && validate(TokenKind::Name, &cmd.command_id).is_ok() => cmd,
            Ok(cmd) => {
                warn!(host_id = %host, command_host = %cmd.host_id, "command for another host or without id dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
            Err(e) => {
                warn!(host_id = %host, error = %e, "malformed command dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        if cmd.action == CommandAction::Run {
            // The work order's hand-over continues the dispatcher's trace while tracing is on.
            let span = trace::hop(
                msg.headers.as_ref(),
                || tracing::info_span!("edge.work_order", otel.kind = "consumer", host_id = %host, command_id = %cmd.command_id),
            );
            hand_over(js, subjects, host, &msg, cmd, store).instrument(span).await?;
            continue;
        }
        let reply = crate::call(actor, |r| EdgeMsg::Command(Box::new(cmd), r), Duration::from_secs(30)).await?;
        publish_reply(js, subjects, host, &reply).await?;
        msg.double_ack().await.map_err(ConsumeError::Ack)?;
    }
    Err(ConsumeError::Ended)
}

/// How long a work order waits before it is offered again when the host's run worker did not
/// answer (not started yet, restarting).
const WORKER_RETRY: Duration = Duration::from_secs(1);

/// Hands a `run` command's work order to this host's run worker (a request on
/// `run.work.<host>` over the agent's own connection: the worker is a separate actor with its
/// own connection and may restart on its own) and acknowledges the command once the worker
/// answered, whether it took the order or refused it (the refusal is the worker's to report).
/// An expired or malformed order is terminated; a worker that does not answer gets it again
/// after [`WORKER_RETRY`]. An order the worker took is journalled (its command id) before the
/// acknowledgement, and a journalled order is acknowledged without being handed over again: the
/// worker's own (run, attempt) memory does not survive its restart. No command reply: the
/// run's job events are the answer. A restart between the worker's answer and the journal
/// write can still run an order twice.
async fn hand_over(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    msg: &jetstream::Message,
    cmd: HostCommand,
    store: &Weak<EdgeStore>,
) -> Result<(), ConsumeError> {
    let order = match cmd.work {
        Some(order) if order.host_id == host.as_str() => order,
        _ => {
            warn!(host_id = %host, command_id = %cmd.command_id, "run command without a work order for this host dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return Ok(());
        }
    };
    if is_expired(cmd.expires_at.as_deref()) {
        info!(host_id = %host, run_id = %order.run_id, attempt = order.attempt, "work order reached the host after its deadline; not run");
        let _ = msg.ack_with(AckKind::Term).await;
        return Ok(());
    }
    let st = store.upgrade().ok_or(ConsumeError::AgentStopped)?;
    let id = cmd.command_id.clone();
    if let Ok(Some(_)) = blocking(move || st.command_reply(&id)).await {
        // Handed over before (the agent, or the host, restarted before acknowledging it): the
        // worker may have restarted too and forgotten it, so it is not offered again.
        debug!(host_id = %host, run_id = %order.run_id, attempt = order.attempt, "work order already handed to the run worker");
        return msg.double_ack().await.map_err(ConsumeError::Ack);
    }
    let client = js.client();
    match rpc::request::<_, WorkAck>(&client, subjects.run_work(host), &order, Duration::from_secs(5)).await {
        Ok(ack) => {
            if ack.accepted {
                // Journalled while the job already runs (off its path), before the acknowledgement.
                let reply = CommandReply {
                    command_id: cmd.command_id.clone(),
                    host_id: host.to_string(),
                    action: CommandAction::Run,
                    status: CommandStatus::Ok,
                    message: format!("handed to the run worker (run {}, attempt {})", order.run_id, order.attempt),
                    replied_at: crate::now_rfc3339(),
                    ..CommandReply::default()
                };
                match codec::encode(Encoding::MsgPack, &reply) {
                    Ok(bytes) => {
                        let st = store.upgrade().ok_or(ConsumeError::AgentStopped)?;
                        let id = cmd.command_id.clone();
                        if let Err(e) = blocking(move || st.record_command(&id, &bytes)).await {
                            warn!(host_id = %host, command_id = %cmd.command_id, error = %e, "work order hand-over not journalled");
                        }
                    }
                    Err(e) => warn!(host_id = %host, error = %e, "work order hand-over not encoded"),
                }
            } else {
                info!(host_id = %host, run_id = %order.run_id, message = %ack.message, "work order refused by the run worker");
            }
            msg.double_ack().await.map_err(ConsumeError::Ack)
        }
        Err(e) if matches!(e.kind(), RequestErrorKind::Remote(_) | RequestErrorKind::Codec) => {
            warn!(host_id = %host, run_id = %order.run_id, error = %e, "work order rejected by the run worker");
            let _ = msg.ack_with(AckKind::Term).await;
            Ok(())
        }
        Err(e) => {
            debug!(host_id = %host, run_id = %order.run_id, error = %e, "run worker not answering; work order offered again later");
            msg.ack_with(AckKind::Nak(Some(WORKER_RETRY))).await.map_err(ConsumeError::Ack)
        }
    }
}

async fn publish_reply(
    js: &jetstream::Context,
    subjects: &Subjects,
    host: &HostId,
    reply: &CommandReply,
) -> Result<(), ConsumeError> {
    let payload = codec::encode(Encoding::MsgPack, reply)?;
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("reply-{}", reply.command_id).as_str());
    headers.insert(COMMAND_ID_HEADER, reply.command_id.as_str());
    js.publish_with_headers(subjects.host_reply(host), headers, payload)
        .await
        .map_err(ConsumeError::Reply)?
        .await
        .map_err(ConsumeError::Reply)?;
    Ok(())
}
