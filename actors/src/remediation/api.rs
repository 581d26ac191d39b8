//! The remediation service's endpoints, in its micro service `steward-remediation`:
//! `alarm.approve` (start a held remediation; operators with role admin) and
//! `alarm.remediations` (list them; viewers too). Endpoints subscribe in the service's queue
//! group, so any hub instance answers; each request is answered on a task of its own.

use std::sync::Arc;

use futures::StreamExt;
use ractor::ActorProcessingErr;
use steward_subjects::api::remediation::{
    ApproveReply, ApproveRequest, ListRemediationsReply, ListRemediationsRequest, Remediation,
};
use steward_subjects::codec::Encoding;
use steward_subjects::envelope::WireError;
use steward_subjects::rpc;
use steward_subjects::subject::alarm_verb;
use tracing::debug;

use super::flow::{ApproveError, Core, FlowError};
use super::{RemediationArgs, RemediationMsg};
use crate::tasks::TaskSet;

/// Registers the service and answers its requests on a task of `tasks` (named "service").
pub(super) async fn serve(
    args: &RemediationArgs,
    core: Arc<Core>,
    tasks: &mut TaskSet<RemediationMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let description = "steward remediation: guarded runs for firing alarms";
    let service = crate::start_account_service(&args.client, args.subjects.account(), "remediation", description)
        .await
        .map_err(|e| ActorProcessingErr::from(format!("cannot register remediation service: {e}")))?;
    let mut endpoints = Vec::new();
    for verb in [alarm_verb::APPROVE, alarm_verb::REMEDIATIONS] {
        // Queue group of the service: any hub instance answers.
        let ep = service
            .endpoint_builder()
            .name(verb)
            .add(args.subjects.alarm_request(verb))
            .await
            .map_err(|e| ActorProcessingErr::from(format!("cannot add remediation endpoint {verb}: {e}")))?;
        endpoints.push(ep.map(move |r| (verb, r)).boxed());
    }
    let mut requests = futures::stream::select_all(endpoints);
    tasks.spawn("service", async move {
        while let Some((verb, req)) = requests.next().await {
            let core = core.clone();
            tokio::spawn(async move { answer(&core, verb, req).await });
        }
    });
    Ok(service)
}

async fn answer(core: &Core, verb: &'static str, req: async_nats::service::Request) {
    let enc = Encoding::from_headers(req.message.headers.as_ref());
    let sent = match verb {
        alarm_verb::APPROVE => rpc::serve(&req, |r: ApproveRequest| approve(core, r)).await,
        alarm_verb::REMEDIATIONS => rpc::serve(&req, |r: ListRemediationsRequest| list(core, r)).await,
        other => rpc::respond::<()>(&req, enc, Err(WireError::not_found(format!("no endpoint {other}")))).await,
    };
    if let Err(e) = sent {
        debug!(endpoint = verb, error = %e, "remediation reply not sent");
    }
}

fn flow_err(e: FlowError) -> WireError {
    WireError::unavailable(e.to_string())
}

async fn approve(core: &Core, r: ApproveRequest) -> Result<ApproveReply, WireError> {
    if r.id.trim().is_empty() {
        return Err(WireError::invalid("give the remediation id"));
    }
    let author = if r.author.trim().is_empty() { "operator" } else { r.author.trim() };
    match core.approve(&r.id, author).await {
        Ok(remediation) => Ok(ApproveReply { remediation }),
        Err(ApproveError::NotFound(id)) => Err(WireError::not_found(format!("no remediation {id}"))),
        Err(ApproveError::Conflict(why)) => Err(WireError::conflict(why)),
        Err(ApproveError::Flow(e)) => Err(flow_err(e)),
    }
}

async fn list(core: &Core, r: ListRemediationsRequest) -> Result<ListRemediationsReply, WireError> {
    let state = r.state.trim().to_owned();
    if !["", "held", "starting", "running", "finished"].contains(&state.as_str()) {
        return Err(WireError::invalid(format!("unknown state {state:?} (held, starting, running, finished)")));
    }
    let keep = |x: &Remediation| {
        (state.is_empty() || x.state.as_str() == state)
            && (r.alarm.is_empty() || x.alarm == r.alarm)
            && (r.rule.is_empty() || x.rule == r.rule)
    };
    let remediations = core.list(keep).await.map_err(flow_err)?;
    Ok(ListRemediationsReply { remediations })
}
