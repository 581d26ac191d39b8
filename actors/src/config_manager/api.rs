//! The config manager's micro service `steward-config`: `config.{apply,plan,get,history,diff,
//! rollback}` go through the actor (one apply at a time), `config.{playbook,store_playbook}`
//! are served straight from the playbook store, so host fetches never wait behind an apply.
//! Endpoints subscribe in the service's queue group: any hub instance may answer.

use async_nats::jetstream;
use futures::StreamExt;
use ractor::{ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_subjects::api::config::{PlaybookGetRequest, PlaybookStoreRequest};
use steward_subjects::{rpc, WireError};
use tracing::{warn, Instrument};

use super::playbooks::PlaybookStore;
use super::{fail, ConfigManagerArgs, ConfigManagerHandle, ConfigManagerMsg};
use crate::tasks::TaskSet;

/// Registers the service and serves each endpoint on a task of `tasks`.
pub(super) async fn start_service(
    args: &ConfigManagerArgs,
    myself: &ActorRef<ConfigManagerMsg>,
    tasks: &mut TaskSet<ConfigManagerMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let description = "steward configuration manager: apply, plan, get, history, diff, rollback, playbooks";
    let service = crate::start_account_service(&args.client, args.subjects.account(), "config", description)
        .await
        .map_err(|e| fail("cannot register config service")(e.to_string()))?;
    let h = ConfigManagerHandle::new(myself.clone());
    let s = &args.subjects;
    let endpoints = [
        ("apply", s.config_apply()),
        ("plan", s.config_plan()),
        ("get", s.config_get()),
        ("history", s.config_history()),
        ("diff", s.config_diff()),
        ("rollback", s.config_rollback()),
        ("playbook", s.config_playbook()),
        ("store_playbook", s.config_store_playbook()),
    ];
    let books = PlaybookStore::new(jetstream::new(args.client.clone()), s.account().clone());
    for (name, subject) in endpoints {
        let ep = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| fail("config endpoint")(e.to_string()))?;
        let (h, books) = (h.clone(), books.clone());
        tasks.spawn("endpoint", async move {
            let mut ep = ep;
            while let Some(req) = ep.next().await {
                let (h, books) = (h.clone(), books.clone());
                tokio::spawn(async move {
                    match name {
                        "playbook" => {
                            serve(req, |r: PlaybookGetRequest| async move { books.get(&r.reference).await }).await;
                        }
                        "store_playbook" => {
                            serve(req, |r: PlaybookStoreRequest| async move { books.put(&r.content).await }).await;
                        }
                        "apply" => serve(req, |r| async move { h.apply(r).await }).await,
                        "plan" => serve(req, |r| async move { h.plan(r).await }).await,
                        "get" => serve(req, |r| async move { h.get(r).await }).await,
                        "history" => serve(req, |r| async move { h.history(r).await }).await,
                        "diff" => serve(req, |r| async move { h.diff(r).await }).await,
                        _ => serve(req, |r| async move { h.rollback(r).await }).await,
                    }
                });
            }
        });
    }
    Ok(service)
}

async fn serve<Req, Resp, F, Fut>(req: async_nats::service::Request, f: F)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, WireError>>,
{
    let span = steward_subjects::trace::serving(&req.message.subject, req.message.headers.as_ref());
    let served = async {
        let (result, enc) = match rpc::decode_request::<Req>(&req.message) {
            Ok((r, enc)) => (f(r).await, enc),
            Err((e, enc)) => (Err(e), enc),
        };
        if let Err(e) = rpc::respond(&req, enc, result).await {
            warn!(error = %e, "config reply not sent");
        }
    };
    served.instrument(span).await;
}
