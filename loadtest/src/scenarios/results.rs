//! `results`: durable result ingestion through the hub's `result.submit` endpoint. 32 simulated
//! runtimes each lease their specs, then submit results in batches (each result fenced by its
//! epoch on the hub; the accepted results of a request stored on `STEWARD_RESULTS` as one
//! segment, `Nats-Msg-Id` = the first result's `<spec>:<epoch>:<seq>`).
//! Every runtime also re-sends its first batch at the end, as after a lost reply: those must
//! come back `duplicate` and not be stored again. Reports results stored per second and the
//! ratio to `raw.js_publish_async` of the same run (target: ≥ 100,000/s and ≥ 0.5× raw), and
//! checks with [`crate::checker`] that nothing acknowledged is missing from the stream and
//! nothing is stored twice.
//!
//! Sizes (`--set`): `results.count` (300,000; quick 10,000), `results.runtimes` (32),
//! `results.specs_per_runtime` (20), `results.batch` (250 per request), `results.connections`
//! (4 shared; one per runtime with `--conn-per-host`).

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
use steward_subjects::{AccountId, Subjects};

use super::lease::{purge_account, start_hub, write_specs};
use crate::checker::{self, Event};
use crate::measure::Latency;
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "results",
    about: "durable result ingestion through result.submit (epoch-fenced, stored once): results/s, zero lost, zero duplicated",
    run: |ctx| run(ctx).boxed(),
};

fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let mut r = measure(ctx).await?;
    ctx.compare(&mut r, "raw.js_publish_async").await?;
    Ok(vec![r])
}

#[allow(clippy::too_many_lines)]
async fn measure(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let name = "results";
    let n = ctx.size("results.count", 300_000, 10_000);
    let runtimes = ctx.size("results.runtimes", 32, 32).max(1);
    let per_rt = ctx.size("results.specs_per_runtime", 20, 20).max(1);
    let batch = usize::try_from(ctx.size("results.batch", 250, 250).clamp(1, 1000)).unwrap_or(250);
    let conns =
        if ctx.options.conn_per_host { runtimes } else { ctx.size("results.connections", 4, 4).clamp(1, runtimes) };
    let account = AccountId::parse(&format!("{}-r-{}", ctx.options.account, unique()))?;
    let subjects = Subjects::new(account.clone());
    let setup = ctx.deployment.connect("results-setup").await?;
    let js = jetstream::new(setup.clone());
    streams::ensure(&js, ctx.deployment.replicas()).await?;
    write_specs(&js, &account, runtimes * per_rt, "results").await?;
    let hub = start_hub(ctx, &account, runtimes * per_rt).await?;
    let hub_pid = hub.pid().context("hub process has no pid")?;
    ctx.track_hub(hub_pid);

    let mut clients = Vec::new();
    for c in 0..conns {
        clients.push(ctx.deployment.connect(&format!("results-rt-{c}")).await?);
    }
    // Each runtime leases its share of the specs first (not measured).
    let mut held: Vec<Vec<(String, u64)>> = Vec::new();
    for r in 0..runtimes {
        let client = &clients[usize::try_from(r % conns).unwrap_or(0)];
        let req = LeaseRequest {
            runtime: format!("lt-rt-{r}"),
            max: u32::try_from(per_rt).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let reply: LeaseReply = rpc::request(client, subjects.jobspec_lease(), &req, Duration::from_secs(10)).await?;
        if reply.granted.is_empty() {
            bail!("runtime {r} was granted no spec");
        }
        held.push(reply.granted.into_iter().map(|g| (g.spec.id, g.epoch)).collect());
    }

    let progress = Progress::start(name, n);
    let m = ctx.begin();
    let mut tasks = Vec::new();
    for (r, specs) in held.into_iter().enumerate() {
        let client = clients[r % usize::try_from(conns).unwrap_or(1)].clone();
        let (subjects, progress) = (subjects.clone(), progress.clone());
        let count = n / runtimes + u64::from((r as u64) < n % runtimes);
        tasks.push(tokio::spawn(async move {
            let runtime = format!("lt-rt-{r}");
            let mut seq: HashMap<String, u64> = HashMap::new();
            let mut lat = Latency::new();
            let (mut acked, mut dup_replies, mut errors) = (Vec::new(), 0u64, 0u64);
            let mut first: Option<Vec<ResultRecord>> = None;
            let mut made = 0u64;
            let mut i = 0usize;
            while made < count {
                let take = usize::try_from((count - made).min(batch as u64)).unwrap_or(batch);
                let mut results = Vec::with_capacity(take);
                for _ in 0..take {
                    let (spec, epoch) = &specs[i % specs.len()];
                    i += 1;
                    let s = seq.entry(spec.clone()).or_insert(0);
                    *s += 1;
                    results.push(ResultRecord {
                        spec: spec.clone(),
                        epoch: *epoch,
                        seq: *s,
                        runtime: runtime.clone(),
                        host: runtime.clone(),
                        executor: "command".into(),
                        status: ResultStatus::Pass,
                        message: "exit 0".into(),
                        exit_code: Some(0),
                        metrics: [("duration_ms".to_owned(), 3.0)].into_iter().collect(),
                        output: "ok\n".into(),
                        ..ResultRecord::default()
                    });
                }
                made += take as u64;
                if first.is_none() {
                    first = Some(results.clone());
                }
                let t = Instant::now();
                let req = SubmitRequest { results };
                match rpc::request::<_, SubmitReply>(&client, subjects.result_submit(), &req, Duration::from_secs(30))
                    .await
                {
                    Ok(reply) => {
                        lat.record_since(t);
                        for o in reply.outcomes {
                            match o.status {
                                SubmitStatus::Stored => acked.push(o.key),
                                SubmitStatus::Duplicate => {
                                    dup_replies += 1;
                                    acked.push(o.key);
                                }
                                SubmitStatus::Refused | SubmitStatus::Retry => errors += 1,
                            }
                        }
                    }
                    Err(_) => errors += take as u64,
                }
                progress.add(take as u64);
            }
            // The resend of a batch whose reply was "lost": all duplicates, nothing stored.
            let mut resent_dups = 0u64;
            if let Some(results) = first {
                let len = results.len() as u64;
                if let Ok(reply) = rpc::request::<_, SubmitReply>(
                    &client,
                    subjects.result_submit(),
                    &SubmitRequest { results },
                    Duration::from_secs(30),
                )
                .await
                {
                    resent_dups = reply.outcomes.iter().filter(|o| o.status == SubmitStatus::Duplicate).count() as u64;
                    errors += len - resent_dups;
                }
            }
            (lat, acked, dup_replies, resent_dups, errors)
        }));
    }
    let mut lat = Latency::new();
    let mut history = Vec::new();
    let (mut errors, mut dup_replies, mut resent_dups) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (l, acked, d, rd, e) = t.await?;
        lat.merge(&l);
        dup_replies += d;
        resent_dups += rd;
        errors += e;
        history.extend(acked.into_iter().map(|key| Event::ItemAcked { key }));
    }
    progress.finish();
    let acked = history.len() as u64;
    let mut r = m.finish(
        name,
        &format!("{runtimes} runtimes submitting {n} results, {batch} per request, epoch-fenced, stored as segments, stored once"),
        acked,
        Some(&lat),
    );
    ctx.untrack_hub(hub_pid);
    drop(hub);

    // Read back every stored result of this account.
    let stream = js.get_stream(RESULTS_STREAM).await?;
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
            let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await else { break };
            pending = msg.info().map(|i| i.pending).unwrap_or(0);
            for rec in decode_stored(msg.headers.as_ref(), &msg.payload)? {
                history.push(Event::ItemStored { key: rec.idempotency_key() });
                stored += 1;
            }
        }
    }
    let check = checker::check(&history);
    r.errors = errors;
    r.lost = check.lost;
    r.duplicates = check.duplicates;
    r.params =
        json!({"results": n, "runtimes": runtimes, "batch": batch, "specs_per_runtime": per_rt, "connections": conns});
    r.extra = json!({
        "stored": stored,
        "duplicate_replies_during_run": dup_replies,
        "resent_batch_duplicates": resent_dups,
        "examples": check.examples,
    });
    purge_account(&js, &account).await?;
    stream.purge().filter(subjects.result_put_all()).await?;
    Ok(r)
}
