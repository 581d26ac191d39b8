//! `lease`: simulated runtimes leasing pool specs from one hub (`steward server`, its lease
//! service), at batch 10 and at batch 1. The hub's lease leader grants in memory and
//! group-commits every batch of requests into the lease journal before answering. Reports specs
//! granted per second and the ratio to `raw.js_pull_consume_ack` of the same run, and checks
//! the grant history (what the runtimes were granted, with epochs, not what the hub says) with
//! [`crate::checker`]: no spec granted twice, no epoch granted to two runtimes, every spec granted.
//!
//! The runtimes' client side is kept lean (the request is encoded once, replies are decoded
//! into the few fields the check needs), so the figure measures the hub, not the generator.
//! Specs are written straight into the spec store (as the renderer would) under an account of
//! their own per measurement, before the hub starts; the hub loads them, then the clock starts.
//!
//! Sizes (`--set`): `lease.specs`, `lease.runtimes`, `lease.connections` (shared; one per
//! runtime with `--conn-per-host`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use steward_deploy::wait::eventually;
use steward_subjects::api::lease::{LeaseRequest, LeasesReply, LeasesRequest};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, SpecId, SpecTarget, TargetKind};
use steward_subjects::rpc;
use steward_subjects::streams::{self, JOBSPECS_BUCKET, LEASES_BUCKET, LEASE_JOURNAL_STREAM};
use steward_subjects::subject::{
    jobspec_account_filter, jobspec_key, kv_subject, lease_account_filter, IdentityEndpoint,
};
use steward_subjects::{AccountId, Envelope, RuntimeId, Subjects, Token, TokenKind};

use super::{connect_clients, unique};
use crate::checker::{self, CheckReport, Event};
use crate::env::HubProcess;
use crate::measure::Latency;
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "lease",
    about: "32 runtimes leasing 200,000 job specs (batch 10 and batch 1): specs/s, zero double assignments",
    run: |ctx| run(ctx).boxed(),
};

/// Writes `n` small pool specs for `account` into the spec store (pipelined), as the renderer
/// would; returns their ids.
pub async fn write_specs(
    js: &jetstream::Context,
    account: &AccountId,
    n: u64,
    label: &str,
) -> anyhow::Result<Vec<String>> {
    let pool = Token::parse(TokenKind::Name, "loadtest")?;
    let progress = Progress::start(&format!("{label} fill"), n);
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        let id = SpecId::derive(account.as_str(), &format!("lt-{i}"), TargetKind::Pool, pool.as_str());
        let spec = JobSpec {
            id: id.to_string(),
            account: account.to_string(),
            target: SpecTarget { kind: TargetKind::Pool, id: pool.to_string() },
            executor: Executor::Command(CommandExecutor { argv: vec!["true".into()], ..Default::default() }),
            interval_ms: 60_000,
            timeout_ms: 10_000,
            content_hash: format!("{:032x}", i),
            ..JobSpec::default()
        };
        let payload = codec::encode(Encoding::MsgPack, &spec)?;
        let subject = kv_subject(JOBSPECS_BUCKET, &jobspec_key(account, TargetKind::Pool, &pool, &id));
        let ack = js.publish_with_headers(subject, HeaderMap::new(), payload).await?;
        pending.push(std::future::IntoFuture::into_future(ack));
        ids.push(id.to_string());
        while pending.len() >= 1024 {
            if let Some(r) = pending.next().await {
                r.context("spec write not acknowledged")?;
                progress.add(1);
            }
        }
    }
    while let Some(r) = pending.next().await {
        r.context("spec write not acknowledged")?;
        progress.add(1);
    }
    progress.finish();
    Ok(ids)
}

/// Removes every spec, lease journal entry and lease coordination key (leader lock, snapshot
/// pointer) of `account`. Snapshot objects, if the run lasted long enough to write one, stay in
/// the artifacts store (small; named `lease-snapshots/<account>/...`).
pub async fn purge_account(js: &jetstream::Context, account: &AccountId) -> anyhow::Result<()> {
    for (bucket, filter) in
        [(JOBSPECS_BUCKET, jobspec_account_filter(account)), (LEASES_BUCKET, lease_account_filter(account))]
    {
        let stream = js.get_stream(format!("KV_{bucket}")).await?;
        stream.purge().filter(kv_subject(bucket, &filter)).await?;
    }
    let journal = js.get_stream(LEASE_JOURNAL_STREAM).await?;
    journal.purge().filter(Subjects::new(account.clone()).jobspec_journal()).await?;
    Ok(())
}

/// The part of a `jobspec.lease` reply the runtimes need (the spec ids and epochs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GrantedLite {
    granted: Vec<LeasedLite>,
    more: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LeasedLite {
    spec: SpecIdLite,
    epoch: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpecIdLite {
    id: String,
}

/// One `jobspec.lease` call with a pre-encoded request (MessagePack, which a request without a
/// content type means, so no headers).
async fn lease_once(client: &async_nats::Client, subject: &str, payload: &bytes::Bytes) -> anyhow::Result<GrantedLite> {
    let msg = tokio::time::timeout(Duration::from_secs(10), client.request(subject.to_owned(), payload.clone()))
        .await
        .context("no lease reply within 10 s")??;
    let env: Envelope<GrantedLite> = codec::decode_limited(Encoding::MsgPack, &msg.payload, usize::MAX)?;
    match (env.data, env.error) {
        (Some(d), _) => Ok(d),
        (None, Some(e)) => bail!("lease refused: {e}"),
        (None, None) => bail!("lease reply without data"),
    }
}

/// Starts a hub for `account` and waits until its lease service knows `n` specs.
pub async fn start_hub(ctx: &Ctx, account: &AccountId, n: u64) -> anyhow::Result<HubProcess> {
    let hub = HubProcess::start(&ctx.deployment, account.as_str(), &["server"]).await?;
    let client = ctx.deployment.connect_in(account.as_str(), "lease-wait").await?;
    let subjects = Subjects::new(account.clone());
    eventually(Duration::from_secs(120), Duration::from_millis(100), || {
        let (client, subjects) = (client.clone(), subjects.clone());
        async move {
            let r: LeasesReply = rpc::request(
                &client,
                subjects.jobspec_leases(),
                &LeasesRequest { limit: 1, ..Default::default() },
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| e.to_string())?;
            if r.specs >= n {
                Ok(())
            } else {
                Err(format!("lease service knows {} of {n} specs", r.specs))
            }
        }
    })
    .await
    .context("the lease service did not load the specs")?;
    Ok(hub)
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let mut out = Vec::new();
    for batch in [10u32, 1] {
        let mut r = measure(ctx, batch).await?;
        ctx.compare(&mut r, "raw.js_pull_consume_ack").await?;
        out.push(r);
    }
    Ok(out)
}

async fn measure(ctx: &Ctx, batch: u32) -> anyhow::Result<ScenarioReport> {
    // Set-up (not measured): specs in the store and a hub that has loaded them.
    let name = format!("lease.batch{batch}");
    let n = ctx.size("lease.specs", 200_000, 5_000);
    let runtimes = ctx.size("lease.runtimes", 32, 32).max(1);
    let conns =
        if ctx.options.conn_per_host { runtimes } else { ctx.size("lease.connections", 4, 4).clamp(1, runtimes) };
    let account = AccountId::parse(&format!("{}-l{batch}-{}", ctx.options.account, unique()))?;
    let subjects = Subjects::new(account.clone());
    let setup = ctx.deployment.connect_in(account.as_str(), "lease-setup").await?;
    let js = jetstream::new(setup.clone());
    streams::ensure(&js, ctx.deployment.replicas()).await?;
    let ids = write_specs(&js, &account, n, &name).await?;
    let hub = start_hub(ctx, &account, n).await?;
    let hub_pid = hub.pid().context("hub process has no pid")?;
    ctx.track_hub(hub_pid);
    let clients = connect_clients(ctx, account.as_str(), "lease-rt", conns).await?;

    // Load: every runtime leases until the pool is empty.
    let progress = Progress::start(&name, n);
    let t0 = Instant::now();
    let m = ctx.begin();
    let mut tasks = Vec::new();
    for r in 0..runtimes {
        let client = clients[usize::try_from(r % conns).unwrap_or(0)].clone();
        tasks.push(tokio::spawn(lease_until_empty(client, subjects.clone(), progress.clone(), r, batch, t0)));
    }
    let mut lat = Latency::new();
    let mut history = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e, err) = t.await?;
        lat.merge(&l);
        history.extend(e);
        errors += err;
    }
    progress.finish();
    let granted = history.len() as u64;
    let mut r = m.finish(
        &name,
        &format!("{runtimes} runtimes leasing {n} job specs, {batch} per request (leader in memory, group-committed journal)"),
        granted,
        Some(&lat),
    );
    ctx.untrack_hub(hub_pid);
    drop(hub);

    // Verify the grant history and report.
    let (check, distinct, never) = check_grants(&history, &ids);
    r.errors = errors;
    r.duplicates = check.double_leases + granted.saturating_sub(distinct);
    r.lost = never;
    r.params = json!({"specs": n, "runtimes": runtimes, "batch": batch, "connections": conns});
    r.extra = json!({
        "double_assignments": check.double_leases,
        "specs_never_granted": never,
        "examples": check.examples,
        "requests": lat.count(),
    });
    purge_account(&js, &account).await?;
    if r.duplicates > 0 {
        bail!("{name}: {} double assignments: {:?}", r.duplicates, check.examples);
    }
    Ok(r)
}

/// One runtime: leases `batch` specs per request until two replies in a row grant nothing and
/// say there is no more (or after too many errors). Returns its latencies, its grants as
/// history events (`at` in ns since `t0`) and its error count.
async fn lease_until_empty(
    client: async_nats::Client,
    subjects: Subjects,
    progress: Progress,
    r: u64,
    batch: u32,
    t0: Instant,
) -> (Latency, Vec<Event>, u64) {
    let runtime = format!("lt-rt-{r}");
    let req = LeaseRequest { runtime: runtime.clone(), max: batch, ..Default::default() };
    let payload = codec::encode(Encoding::MsgPack, &req).unwrap_or_default();
    let subject = match RuntimeId::parse(&runtime) {
        Ok(id) => subjects.identity_subject(IdentityEndpoint::Lease, None, &id),
        Err(_) => return (Latency::new(), Vec::new(), 1),
    };
    let mut lat = Latency::new();
    let mut events = Vec::new();
    let mut errors = 0u64;
    let mut empty = 0;
    while empty < 2 {
        let t = Instant::now();
        match lease_once(&client, &subject, &payload).await {
            Ok(reply) => {
                lat.record_since(t);
                let at = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if reply.granted.is_empty() {
                    empty += if reply.more { 0 } else { 1 };
                } else {
                    empty = 0;
                }
                progress.add(reply.granted.len() as u64);
                events.extend(reply.granted.into_iter().map(|g| Event::LeaseGranted {
                    spec: g.spec.id,
                    holder: runtime.clone(),
                    epoch: g.epoch,
                    at,
                }));
            }
            Err(_) => {
                errors += 1;
                if errors > 100 {
                    break;
                }
            }
        }
    }
    (lat, events, errors)
}

/// Checks the grant history: the checker's report, how many distinct specs were granted, and
/// how many of `ids` were never granted.
fn check_grants(history: &[Event], ids: &[String]) -> (CheckReport, u64, u64) {
    let check = checker::check(history);
    let distinct: HashSet<&str> = history
        .iter()
        .filter_map(|e| match e {
            Event::LeaseGranted { spec, .. } => Some(spec.as_str()),
            _ => None,
        })
        .collect();
    let never: u64 = ids.iter().filter(|id| !distinct.contains(id.as_str())).count() as u64;
    (check, distinct.len() as u64, never)
}
