//! `results`: durable result ingestion through the hub's `result.submit` endpoint. Simulated
//! runtimes each lease their specs, then submit results in batches; the hub fences each result
//! by its epoch and stores the accepted results of a request on `STEWARD_RESULTS` as one segment
//! (`Nats-Msg-Id` = `<host>.` and the first result's `<spec>:<epoch>:<seq>`, with the runtime's
//! outbox watermark and an expected last subject sequence, as real runtimes' results are). Every
//! runtime also re-sends its first batch at the end, as after a lost reply: those must come back
//! `duplicate` and not be stored again. Reports results stored per second and the ratio to `raw.js_publish_async` of
//! the same run, and checks with [`crate::checker`] that nothing acknowledged is missing from
//! the stream and nothing is stored twice.
//!
//! Sizes (`--set`): `results.count`, `results.runtimes`, `results.specs_per_runtime`,
//! `results.batch` (results per request), `results.connections` (shared; one per runtime with
//! `--conn-per-host`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use serde_json::json;
use steward_subjects::api::lease::{LeaseReply, LeaseRequest};
use steward_subjects::api::result::{
    decode_stored, ResultRecord, ResultStatus, SubmitReply, SubmitRequest, SubmitStatus,
};
use steward_subjects::rpc;
use steward_subjects::streams::{self, RESULTS_STREAM};
use steward_subjects::subject::IdentityEndpoint;
use steward_subjects::{AccountId, RuntimeId, Subjects};

use super::lease::{purge_account, start_hub, write_specs};
use super::{connect_clients, unique};
use crate::checker::{self, Event};
use crate::measure::{share, Latency};
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "results",
    about: "durable result ingestion through result.submit (epoch-fenced, stored once): results/s, zero lost, zero duplicated",
    run: |ctx| run(ctx).boxed(),
};

const NAME: &str = "results";

/// How long one `result.submit` request may take.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let mut r = measure(ctx).await?;
    ctx.compare(&mut r, "raw.js_publish_async").await?;
    Ok(vec![r])
}

/// The sizes of one measurement.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Results submitted in all.
    count: u64,
    runtimes: u64,
    specs_per_runtime: u64,
    /// Results per request.
    batch: usize,
    connections: u64,
}

impl Sizes {
    fn of(ctx: &Ctx) -> Self {
        let runtimes = ctx.size("results.runtimes", 32, 32).max(1);
        let connections =
            if ctx.options.conn_per_host { runtimes } else { ctx.size("results.connections", 4, 4).clamp(1, runtimes) };
        Sizes {
            count: ctx.size("results.count", 300_000, 10_000),
            runtimes,
            specs_per_runtime: ctx.size("results.specs_per_runtime", 20, 20).max(1),
            batch: usize::try_from(ctx.size("results.batch", 250, 250).clamp(1, 1000)).unwrap_or(250),
            connections,
        }
    }
}

/// What one runtime saw while submitting.
#[derive(Debug, Default)]
struct Tally {
    latency: Latency,
    /// Idempotency keys the hub acknowledged (stored or duplicate).
    acked: Vec<String>,
    /// `duplicate` outcomes during the run itself.
    dup_replies: u64,
    /// `duplicate` outcomes of the re-sent first batch.
    resent_dups: u64,
    errors: u64,
}

async fn measure(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    // Set-up (not measured): specs, a hub that has loaded them, and every runtime's leases.
    let sizes = Sizes::of(ctx);
    let Sizes { count: n, runtimes, specs_per_runtime: per_rt, batch, connections: conns } = sizes;
    let account = AccountId::parse(&format!("{}-r-{}", ctx.options.account, unique()))?;
    let subjects = Subjects::new(account.clone());
    let setup = ctx.deployment.connect_in(account.as_str(), "results-setup").await?;
    let js = jetstream::new(setup.clone());
    streams::ensure(&js, ctx.deployment.replicas()).await?;
    write_specs(&js, &account, runtimes * per_rt, NAME).await?;
    let hub = start_hub(ctx, &account, runtimes * per_rt).await?;
    let hub_pid = hub.pid().context("hub process has no pid")?;
    ctx.track_hub(hub_pid);
    let clients = connect_clients(ctx, account.as_str(), "results-rt", conns).await?;
    let held = lease_shares(&clients, &subjects, sizes).await?;

    // Load.
    let progress = Progress::start(NAME, n);
    let m = ctx.begin();
    let mut tasks = Vec::new();
    for (r, specs) in held.into_iter().enumerate() {
        let client = clients[r % usize::try_from(conns).unwrap_or(1)].clone();
        let count = share(n, runtimes, r as u64);
        tasks.push(tokio::spawn(submit(client, subjects.clone(), progress.clone(), r, specs, count, batch)));
    }
    let mut total = Tally::default();
    let mut history = Vec::new();
    for t in tasks {
        let tally = t.await?;
        total.latency.merge(&tally.latency);
        total.dup_replies += tally.dup_replies;
        total.resent_dups += tally.resent_dups;
        total.errors += tally.errors;
        history.extend(tally.acked.into_iter().map(|key| Event::ItemAcked { key }));
    }
    progress.finish();
    let acked = history.len() as u64;
    let mut r = m.finish(
        NAME,
        &format!("{runtimes} runtimes submitting {n} results, {batch} per request, epoch-fenced, stored as segments, stored once"),
        acked,
        Some(&total.latency),
    );
    ctx.untrack_hub(hub_pid);
    drop(hub);

    // Verify: read every stored result back and check the history.
    let stream = js.get_stream(RESULTS_STREAM).await?;
    let stored = read_back(&stream, &setup, &subjects, &mut history).await?;
    let check = checker::check(&history);
    r.errors = total.errors;
    r.lost = check.lost;
    r.duplicates = check.duplicates;
    r.params =
        json!({"results": n, "runtimes": runtimes, "batch": batch, "specs_per_runtime": per_rt, "connections": conns});
    r.extra = json!({
        "stored": stored,
        "duplicate_replies_during_run": total.dup_replies,
        "resent_batch_duplicates": total.resent_dups,
        "examples": check.examples,
    });
    purge_account(&js, &account).await?;
    stream.purge().filter(subjects.result_put_all()).await?;
    Ok(r)
}

/// Each runtime leases its share of the specs (not measured); returns `(spec, epoch)` per runtime.
async fn lease_shares(
    clients: &[async_nats::Client],
    subjects: &Subjects,
    sizes: Sizes,
) -> anyhow::Result<Vec<Vec<(String, u64)>>> {
    let mut held = Vec::new();
    for r in 0..sizes.runtimes {
        let client = &clients[usize::try_from(r % sizes.connections).unwrap_or(0)];
        let runtime = RuntimeId::parse(&format!("lt-rt-{r}"))?;
        let req = LeaseRequest {
            runtime: runtime.to_string(),
            max: u32::try_from(sizes.specs_per_runtime).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let subject = subjects.identity_subject(IdentityEndpoint::Lease, None, &runtime);
        let reply: LeaseReply = rpc::request(client, subject, &req, Duration::from_secs(10)).await?;
        if reply.granted.is_empty() {
            bail!("runtime {r} was granted no spec");
        }
        held.push(reply.granted.into_iter().map(|g| (g.spec.id, g.epoch)).collect());
    }
    Ok(held)
}

/// One runtime: submits `count` results over its `specs` in batches of `batch`, then re-sends
/// its first batch as after a lost reply.
async fn submit(
    client: async_nats::Client,
    subjects: Subjects,
    progress: Progress,
    r: usize,
    specs: Vec<(String, u64)>,
    count: u64,
    batch: usize,
) -> Tally {
    let runtime = format!("lt-rt-{r}");
    // The runtime submits as itself (a standalone runtime: its results are filed under its id).
    let submit_subject = match RuntimeId::parse(&runtime) {
        Ok(id) => subjects.identity_subject(IdentityEndpoint::Submit, None, &id),
        Err(_) => return Tally { errors: count, ..Tally::default() },
    };
    let mut seq: HashMap<String, u64> = HashMap::new();
    // Numbered like a real runtime's outbox: one incarnation, positions from 1.
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let mut tally = Tally::default();
    let mut first: Option<Vec<ResultRecord>> = None;
    let mut made = 0u64;
    let mut i = 0usize;
    while made < count {
        let take = usize::try_from((count - made).min(batch as u64)).unwrap_or(batch);
        let mut results = next_batch(&specs, &mut seq, &mut i, take, &runtime);
        for (n, r) in results.iter_mut().enumerate() {
            r.outbox = made + n as u64 + 1;
        }
        made += take as u64;
        if first.is_none() {
            first = Some(results.clone());
        }
        let t = Instant::now();
        let req = SubmitRequest { results, incarnation: incarnation.clone() };
        match rpc::request::<_, SubmitReply>(&client, submit_subject.clone(), &req, SUBMIT_TIMEOUT).await {
            Ok(reply) => {
                tally.latency.record_since(t);
                for o in reply.outcomes {
                    match o.status {
                        SubmitStatus::Stored => tally.acked.push(o.key),
                        SubmitStatus::Duplicate => {
                            tally.dup_replies += 1;
                            tally.acked.push(o.key);
                        }
                        SubmitStatus::Refused | SubmitStatus::Retry => tally.errors += 1,
                    }
                }
            }
            Err(_) => tally.errors += take as u64,
        }
        progress.add(take as u64);
    }
    // The resend of a batch whose reply was "lost": all duplicates, nothing stored.
    if let Some(results) = first {
        let len = results.len() as u64;
        let req = SubmitRequest { results, incarnation: incarnation.clone() };
        if let Ok(reply) = rpc::request::<_, SubmitReply>(&client, submit_subject.clone(), &req, SUBMIT_TIMEOUT).await {
            tally.resent_dups = reply.outcomes.iter().filter(|o| o.status == SubmitStatus::Duplicate).count() as u64;
            tally.errors += len - tally.resent_dups;
        }
    }
    tally
}

/// The next `take` results of `runtime`, round-robin over its specs (`i` is the position),
/// each spec's results numbered from 1 in `seq`.
fn next_batch(
    specs: &[(String, u64)],
    seq: &mut HashMap<String, u64>,
    i: &mut usize,
    take: usize,
    runtime: &str,
) -> Vec<ResultRecord> {
    let mut results = Vec::with_capacity(take);
    for _ in 0..take {
        let (spec, epoch) = &specs[*i % specs.len()];
        *i += 1;
        let s = seq.entry(spec.clone()).or_insert(0);
        *s += 1;
        results.push(ResultRecord {
            spec: spec.clone(),
            epoch: *epoch,
            seq: *s,
            runtime: runtime.to_owned(),
            host: runtime.to_owned(),
            executor: "command".into(),
            status: ResultStatus::Pass,
            message: "exit 0".into(),
            exit_code: Some(0),
            metrics: [("duration_ms".to_owned(), 3.0)].into_iter().collect(),
            output: "ok\n".into(),
            ..ResultRecord::default()
        });
    }
    results
}

/// Reads every stored result of the account back into `history` (one [`Event::ItemStored`] per
/// stored copy); returns how many there were. Fails when the read stops before the end (a
/// history missing stored results would count them lost). Also used by the fault scenarios.
pub(crate) async fn read_back(
    stream: &jetstream::stream::Stream,
    setup: &async_nats::Client,
    subjects: &Subjects,
    history: &mut Vec<Event>,
) -> anyhow::Result<u64> {
    let c = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: setup.new_inbox(),
            filter_subject: subjects.result_put_all(),
            ..Default::default()
        })
        .await?;
    let mut pending = c.cached_info().num_pending;
    let mut stored = 0u64;
    if pending > 0 {
        let mut msgs = c.messages().await?;
        while pending > 0 {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await else {
                bail!("reading the stored results stopped with {pending} left");
            };
            pending = msg.info().map(|i| i.pending).unwrap_or(0);
            for rec in decode_stored(msg.headers.as_ref(), &msg.payload)? {
                history.push(Event::ItemStored { key: rec.idempotency_key() });
                stored += 1;
            }
        }
    }
    Ok(stored)
}
