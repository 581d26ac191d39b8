//! `tenants`: one hub process (`steward server --tenant ...`) serving many tenant accounts.
//! Starts the hub with one tenant, then with `tenants.count` tenants, waits until every tenant's
//! config manager answers, lets it settle idle, and reports the hub's resident memory per idle
//! tenant (the difference between the two, over the added tenants), the time until every
//! tenant answered, and the latency of one configuration read per tenant.
//!
//! Sizes (`--set` names): `tenants.count`, `tenants.settle_secs`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::FutureExt;
use serde_json::json;
use steward_deploy::wait::eventually;
use steward_subjects::api::config::{HistoryReply, HistoryRequest};
use steward_subjects::{rpc, AccountId, Subjects};

use crate::env::HubProcess;
use crate::measure::Latency;
use crate::procstat::rss_bytes;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "tenants",
    about: "one hub process serving 100 tenant accounts: memory per idle tenant, start time",
    run: |ctx| run(ctx).boxed(),
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn accounts(run: &str, n: u64) -> anyhow::Result<Vec<AccountId>> {
    (0..n).map(|i| AccountId::parse(&format!("t{run}-{i:03}")).context("tenant account name")).collect()
}

/// One client per tenant for the reads: in open mode one connection shared by all (every
/// account lives in the server's global account), with `--auth` one per tenant account.
async fn clients(ctx: &Ctx, tenants: &[AccountId], name: &str) -> anyhow::Result<Vec<async_nats::Client>> {
    if ctx.deployment.auth_mode() == "open" {
        let client = ctx.deployment.connect(name).await?;
        return Ok(vec![client; tenants.len()]);
    }
    let mut out = Vec::with_capacity(tenants.len());
    for t in tenants {
        out.push(ctx.deployment.connect_in(t.as_str(), name).await?);
    }
    Ok(out)
}

/// One history read per tenant (through its client); fails until every tenant's config
/// manager answers.
async fn read_all(
    clients: &[async_nats::Client],
    tenants: &[AccountId],
    latency: Option<&mut Latency>,
) -> Result<(), String> {
    let mut latency = latency;
    for (account, client) in tenants.iter().zip(clients) {
        let subjects = Subjects::new(account.clone());
        let req = HistoryRequest { limit: 1, ..HistoryRequest::default() };
        let t = Instant::now();
        let _: HistoryReply = rpc::request(client, subjects.config_history(), &req, TIMEOUT)
            .await
            .map_err(|e| format!("tenant {account}: {e}"))?;
        if let Some(l) = latency.as_deref_mut() {
            l.record(t.elapsed());
        }
    }
    Ok(())
}

/// Starts a hub serving `tenants`, waits until all answer and `settle` passed; its RSS and the
/// time until all answered (identities and observer connections are made before the clock).
async fn idle_hub(ctx: &Ctx, tenants: &[AccountId], settle: Duration) -> anyhow::Result<(HubProcess, u64, Duration)> {
    let mut args = vec!["server".to_owned()];
    for t in tenants {
        args.extend(["--tenant".to_owned(), ctx.deployment.tenant_arg(t.as_str()).await?]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let observers = clients(ctx, tenants, "tenants-observer").await?;
    let started = Instant::now();
    let hub = HubProcess::start(&ctx.deployment, tenants[0].as_str(), &args).await?;
    eventually(Duration::from_secs(120), Duration::from_millis(200), || read_all(&observers, tenants, None))
        .await
        .map_err(|e| anyhow::anyhow!("not every tenant answered: {e}"))?;
    let ready = started.elapsed();
    tokio::time::sleep(settle).await; // idle on purpose: memory of a settled, idle hub
    let pid = hub.pid().context("hub process has no pid")?;
    let rss = rss_bytes(pid).context("cannot read the hub's memory")?;
    Ok((hub, rss, ready))
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    let count = ctx.size("tenants.count", 100, 10).max(2);
    let settle = Duration::from_secs(ctx.size("tenants.settle_secs", 5, 2));
    let all = accounts(&super::unique(), count)?;

    let (one, rss_one, _) = idle_hub(ctx, &all[..1], settle).await?;
    drop(one);
    let (many, rss_many, ready) = idle_hub(ctx, &all, settle).await?;
    let readers = clients(ctx, &all, "tenants-reader").await?;
    let mut latency = Latency::new();
    let m = ctx.begin();
    read_all(&readers, &all, Some(&mut latency)).await.map_err(|e| anyhow::anyhow!(e))?;
    let mut report = m.finish(
        "tenants.idle",
        "one hub process serving many tenant accounts: memory per idle tenant, one config read per tenant",
        count,
        Some(&latency),
    );
    // The reads are serial requests, one per tenant: against the raw serial request/reply.
    ctx.compare(&mut report, "raw.request_reply_serial").await?;
    drop(many);
    let per_tenant = rss_many.saturating_sub(rss_one) as f64 / (count - 1) as f64;
    report.params = json!({ "tenants": count, "settle_secs": settle.as_secs() });
    report.extra = json!({
        "hub_rss_bytes_one_tenant": rss_one,
        "hub_rss_bytes_all_tenants": rss_many,
        "hub_rss_bytes_per_idle_tenant": per_tenant,
        "secs_until_every_tenant_answered": ready.as_secs_f64(),
    });
    Ok(vec![report])
}
