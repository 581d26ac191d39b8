//! The renderer's micro service `steward-jobspec`: `jobspec.list` (pages of stored specs),
//! `jobspec.explain` (why a spec exists) and `jobspec.status` (the render's progress). The
//! endpoints subscribe in the service's queue group, so any instance may answer; they read
//! the spec store directly and ask the actor only where a spec is stored.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use futures::StreamExt;
use ractor::{ActorProcessingErr, ActorRef};
use steward_subjects::api::jobspec::{
    ExplainReply, ExplainRequest, JobSpecListReply, JobSpecListRequest, RenderStatus, RenderStatusRequest,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{JobSpec, SpecId, TargetKind};
use steward_subjects::subject::{jobspec_account_filter, jobspec_target_filter};
use steward_subjects::{rpc, AccountId, Token, TokenKind, WireError};

use super::{fail, store, RendererArgs, RendererHandle, RendererMsg};
use crate::tasks::TaskSet;

/// Registers the service and serves its endpoints on tasks of `tasks`.
pub(super) async fn start_service(
    args: &RendererArgs,
    myself: &ActorRef<RendererMsg>,
    specs_kv: &kv::Store,
    status: &Arc<Mutex<RenderStatus>>,
    tasks: &mut TaskSet<RendererMsg>,
) -> Result<async_nats::service::Service, ActorProcessingErr> {
    let description = "steward job-spec renderer: list, explain, status";
    let service = crate::start_account_service(&args.client, args.subjects.account(), "jobspec", description)
        .await
        .map_err(|e| fail("cannot register jobspec service")(e.to_string()))?;
    let add = |name: &'static str, subject: String| {
        let service = &service;
        async move {
            service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(|e| fail("jobspec endpoint")(e.to_string()))
        }
    };
    let list = add("list", args.subjects.jobspec_list()).await?;
    let explain = add("explain", args.subjects.jobspec_explain()).await?;
    let stat = add("status", args.subjects.jobspec_status()).await?;
    let ctx = Arc::new(ServeCtx {
        client: args.client.clone(),
        account: args.subjects.account().clone(),
        specs_kv: specs_kv.clone(),
        handle: RendererHandle { actor: myself.clone() },
        status: status.clone(),
    });
    let c = ctx.clone();
    tasks.spawn_detached(async move {
        let mut list = list;
        while let Some(req) = list.next().await {
            let c = c.clone();
            tokio::spawn(async move { c.list(req).await });
        }
    });
    let c = ctx.clone();
    tasks.spawn_detached(async move {
        let mut explain = explain;
        while let Some(req) = explain.next().await {
            c.explain(req).await;
        }
    });
    let c = ctx;
    tasks.spawn_detached(async move {
        let mut stat = stat;
        while let Some(req) = stat.next().await {
            c.status(req).await;
        }
    });
    Ok(service)
}

struct ServeCtx {
    client: async_nats::Client,
    account: AccountId,
    specs_kv: kv::Store,
    handle: RendererHandle,
    status: Arc<Mutex<RenderStatus>>,
}

fn decode_spec(bytes: &[u8]) -> Result<JobSpec, WireError> {
    codec::decode_limited(Encoding::MsgPack, bytes, usize::MAX)
        .map_err(|e| WireError::internal(format!("stored spec: {e}")))
}

impl ServeCtx {
    async fn list(&self, req: async_nats::service::Request) {
        let (r, enc) = match rpc::decode_request::<JobSpecListRequest>(&req.message) {
            Ok((r, enc)) => (self.list_specs(r).await, enc),
            Err((e, enc)) => (Err(e), enc),
        };
        let _ = rpc::respond(&req, enc, r).await;
    }

    async fn list_specs(&self, r: JobSpecListRequest) -> Result<JobSpecListReply, WireError> {
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let filter = match (&r.kind, &r.target) {
            (Some(kind), Some(t)) => jobspec_target_filter(&self.account, *kind, &Token::parse(TokenKind::Name, t)?),
            (None, Some(t)) => {
                jobspec_target_filter(&self.account, TargetKind::Host, &Token::parse(TokenKind::Name, t)?)
            }
            (_, None) => jobspec_account_filter(&self.account),
        };
        let latest = store::scan_latest(&self.client, &self.specs_kv, &filter, true)
            .await
            .map_err(|e| WireError::unavailable(e.to_string()))?;
        let mut keys: Vec<String> = latest.into_iter().filter(|l| !l.deleted).map(|l| l.key).collect();
        keys.sort();
        let total = keys.len() as u64;
        let start = match &r.after {
            Some(a) => keys.partition_point(|k| k <= a),
            None => 0,
        };
        let page: Vec<String> = keys[start..].iter().take(limit).cloned().collect();
        let next_after = if start + page.len() < keys.len() { page.last().cloned() } else { None };
        let mut specs = Vec::with_capacity(page.len());
        for k in &page {
            if let Some(v) = self.specs_kv.get(k).await.map_err(|e| WireError::unavailable(e.to_string()))? {
                specs.push(decode_spec(&v)?);
            }
        }
        Ok(JobSpecListReply { specs, next_after, total })
    }

    async fn explain(&self, req: async_nats::service::Request) {
        let (r, enc) = match rpc::decode_request::<ExplainRequest>(&req.message) {
            Ok((r, enc)) => (self.explain_spec(&r.id).await, enc),
            Err((e, enc)) => (Err(e), enc),
        };
        let _ = rpc::respond(&req, enc, r).await;
    }

    async fn explain_spec(&self, id: &str) -> Result<ExplainReply, WireError> {
        let sid: SpecId =
            id.parse().map_err(|e: steward_subjects::config::HexIdError| WireError::invalid(e.to_string()))?;
        let key = self
            .handle
            .locate(sid)
            .await
            .map_err(|e| WireError::unavailable(e.to_string()))?
            .ok_or_else(|| WireError::not_found(format!("no job spec {id}")))?;
        let bytes = self
            .specs_kv
            .get(&key)
            .await
            .map_err(|e| WireError::unavailable(e.to_string()))?
            .ok_or_else(|| WireError::not_found(format!("no job spec {id}")))?;
        let spec = decode_spec(&bytes)?;
        let p = &spec.provenance;
        let mut why = vec![format!(
            "attestation {:?} runs assessment {:?} ({}) to attest controls [{}] of component {:?}",
            p.attestation,
            p.assessment,
            spec.executor.kind(),
            p.controls.join(", "),
            p.component
        )];
        match spec.target.kind {
            TargetKind::Host => why.push(format!(
                "host {:?} is in the host registry and matches the component's selector {:?}",
                spec.target.id,
                if p.component_selector.is_empty() { "(every host)" } else { &p.component_selector }
            )),
            TargetKind::Pool => why.push(format!(
                "the attestation targets pool {:?}: any runtime matching {:?} may run it",
                spec.target.id,
                if spec.runtime_selector.is_empty() { "(any runtime)" } else { &spec.runtime_selector }
            )),
        }
        why.push(format!("last written by configuration revision {} (content hash {})", p.revision, spec.content_hash));
        Ok(ExplainReply { key, spec, why })
    }

    async fn status(&self, req: async_nats::service::Request) {
        let (r, enc) = match rpc::decode_request::<RenderStatusRequest>(&req.message) {
            Ok((_, enc)) => {
                (self.status.lock().map(|s| s.clone()).map_err(|_| WireError::internal("status lock poisoned")), enc)
            }
            Err((e, enc)) => (Err(e), enc),
        };
        let _ = rpc::respond(&req, enc, r).await;
    }
}
