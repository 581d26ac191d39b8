//! `apply`: apply a configuration change that touches every spec held by runtimes, and measure
//! the time from the apply request until every holder has the change notice.
//!
//! Set-up (not measured): one hub (`steward server`), `apply.hosts` simulated hosts written into
//! the host registry as online, a document with `apply.attestations` attestations over all of
//! them (hosts × attestations specs), and one simulated runtime per host that leases all of its
//! host's specs and keeps renewing. Then the document's one control parameter changes: every
//! spec's content changes, the renderer rewrites them, the lease service tells each holder.
//! Reports notices per second, the latency of each spec's notice since the apply request, and
//! `lost` = specs whose holder never heard of the change. Compared with `raw.kv_put` (every
//! changed spec is one KV write by the renderer).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use steward_deploy::wait::eventually;
use steward_subjects::api::config::{ApplyReply, ApplyRequest};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::lease::{ChangeNotice, LeaseReply, LeaseRequest, RenewReply, RenewRequest};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc;
use steward_subjects::streams::HOSTS_BUCKET;
use steward_subjects::subject::{host_registry_key, IdentityEndpoint};
use steward_subjects::{AccountId, HostId, RuntimeId, Subjects};

use crate::env::HubProcess;
use crate::measure::Latency;
use crate::progress::Progress;
use crate::report::ScenarioReport;
use crate::scenario::{Ctx, ScenarioDef};

/// The registry entry.
pub const DEF: ScenarioDef = ScenarioDef {
    name: "apply",
    about: "a config change touching every leased spec: time until every holder has the notice",
    run: |ctx| run(ctx).boxed(),
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn document(attestations: u64, value: u64) -> String {
    let assessments: Vec<_> = (0..attestations)
        .map(|i| {
            json!({
                "id": format!("check-{i}"),
                "executor": {"kind": "command", "argv": ["test", "{{control.limit}}", "-gt", format!("{i}")]},
                "interval": "60s",
                "timeout": "5s",
            })
        })
        .collect();
    let attests: Vec<_> = (0..attestations)
        .map(|i| {
            json!({"id": format!("att-{i}"), "assessment": format!("check-{i}"), "component": "fleet", "controls": ["limits"]})
        })
        .collect();
    json!({
        "version": 1,
        "description": "loadtest apply scenario",
        "controls": [{"id": "limits", "parameters": {"limit": value}}],
        "components": [{"id": "fleet", "selector": "sim=true", "controls": ["limits"]}],
        "assessments": assessments,
        "attestations": attests,
    })
    .to_string()
}

async fn apply(client: &async_nats::Client, s: &Subjects, doc: String) -> anyhow::Result<ApplyReply> {
    let req = ApplyRequest { document: doc, label: "loadtest".into(), author: "loadtest".into(), if_revision: None };
    Ok(rpc::request(client, s.config_apply(), &req, Duration::from_secs(120)).await?)
}

async fn run(ctx: &Ctx) -> anyhow::Result<Vec<ScenarioReport>> {
    // Set-up (not measured): a hub on a fresh account, hosts online, every spec leased.
    let hosts_n = ctx.size("apply.hosts", 1_000, 40);
    let atts = ctx.size("apply.attestations", 100, 5);
    let total = hosts_n * atts;
    // A fresh account per round: each round starts from an empty spec store and lease state.
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let round = ROUND.fetch_add(1, Ordering::Relaxed);
    let account = AccountId::parse(&format!("apply{}r{round}", std::process::id()))?;
    let subjects = Subjects::new(account.clone());
    // The hub signs what it renders, as in production (`steward keys init`, `--signing-key`);
    // it reads the key at start, so the key folder goes once the hub is up.
    let keys = std::env::temp_dir().join(format!("steward-loadtest-keys-{account}"));
    let secret = crate::env::signing_key(&keys).await?;
    let secret = secret.to_string_lossy();
    let hub = HubProcess::start(&ctx.deployment, account.as_str(), &["server", "--signing-key", &secret]).await;
    let _ = std::fs::remove_dir_all(&keys);
    let hub = hub?;
    if let Some(pid) = hub.pid() {
        ctx.track_hub(pid);
    }
    let client = ctx.deployment.connect_in(account.as_str(), "loadtest-apply").await?;
    let js = jetstream::new(client.clone());
    let hosts = register_hosts(&js, &account, hosts_n).await?;
    apply(&client, &subjects, document(atts, 1)).await.context("first apply")?;
    lease_every_spec(&client, &subjects, &hosts, atts, total).await?;
    let renewer = spawn_renewer(client.clone(), subjects.clone(), hosts);

    // Load and report.
    let mut r = measure_change(ctx, &client, &subjects, atts, total, renewer).await?;
    r.params = json!({"hosts": hosts_n, "attestations": atts, "specs": total});
    ctx.compare(&mut r, "raw.kv_put").await?;
    if let Some(pid) = hub.pid() {
        ctx.untrack_hub(pid);
    }
    drop(hub);
    if r.lost > 0 && r.operations == 0 {
        bail!("no holder was notified of the change");
    }
    Ok(vec![r])
}

/// Writes `n` simulated hosts into the host registry as online; returns their ids.
async fn register_hosts(js: &jetstream::Context, account: &AccountId, n: u64) -> anyhow::Result<Vec<HostId>> {
    let kv = js.get_key_value(HOSTS_BUCKET).await.context("host registry bucket")?;
    let hosts: Vec<HostId> = (0..n).map(|i| HostId::parse(&format!("sim-{i:05}"))).collect::<Result<_, _>>()?;
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    for h in &hosts {
        let rec = HostRecord {
            host_id: h.to_string(),
            online: true,
            connected_since: Some(now.clone()),
            last_seen: now.clone(),
            labels: BTreeMap::from([("sim".to_owned(), "true".to_owned())]),
            ..Default::default()
        };
        kv.put(host_registry_key(account, h), codec::encode(Encoding::MsgPack, &rec)?).await?;
    }
    Ok(hosts)
}

/// One runtime per host leases its host's specs, again and again until together they hold
/// all `total` specs.
async fn lease_every_spec(
    client: &async_nats::Client,
    subjects: &Subjects,
    hosts: &[HostId],
    atts: u64,
    total: u64,
) -> anyhow::Result<()> {
    let fill = Progress::start("apply: leasing", total);
    let held = Arc::new(AtomicU64::new(0));
    eventually(Duration::from_secs(300), Duration::from_millis(200), || {
        let (client, subjects, hosts, held, fill) =
            (client.clone(), subjects.clone(), hosts.to_vec(), held.clone(), fill.clone());
        async move {
            let mut tasks = futures::stream::iter(hosts.into_iter().map(|h| {
                let (client, subjects) = (client.clone(), subjects.clone());
                async move {
                    let req = LeaseRequest {
                        runtime: h.to_string(),
                        host: h.to_string(),
                        labels: BTreeMap::new(),
                        max: u32::try_from(atts).unwrap_or(u32::MAX),
                    };
                    let runtime = RuntimeId::parse(h.as_str()).map_err(|e| e.to_string())?;
                    let subject = subjects.identity_subject(IdentityEndpoint::Lease, Some(&h), &runtime);
                    rpc::request::<_, LeaseReply>(&client, subject, &req, TIMEOUT).await.map_err(|e| e.to_string())
                }
            }))
            .buffer_unordered(64);
            let mut now_held = 0u64;
            while let Some(r) = tasks.next().await {
                let r = r?;
                now_held += u64::from(r.held);
            }
            let before = held.swap(now_held, Ordering::Relaxed);
            fill.add(now_held.saturating_sub(before));
            if now_held >= total {
                Ok(())
            } else {
                Err(format!("{now_held} of {total} specs held"))
            }
        }
    })
    .await
    .context("runtimes did not come to hold every spec")?;
    fill.finish();
    Ok(())
}

/// Keeps every host's leases alive (aborted by the caller when the measurement ends).
fn spawn_renewer(client: async_nats::Client, subjects: Subjects, hosts: Vec<HostId>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await; // the renewal period, not a wait for a condition
            let mut renewals = futures::stream::iter(hosts.clone().into_iter().map(|h| {
                let req = RenewRequest { runtime: h.to_string(), ..Default::default() };
                let subject = RuntimeId::parse(h.as_str())
                    .map(|rt| subjects.identity_subject(IdentityEndpoint::Renew, Some(&h), &rt));
                let client = client.clone();
                async move {
                    let subject = subject.map_err(|e| e.to_string())?;
                    rpc::request::<_, RenewReply>(&client, subject, &req, TIMEOUT).await.map_err(|e| e.to_string())
                }
            }))
            .buffer_unordered(64);
            while renewals.next().await.is_some() {}
        }
    })
}

/// The change: applies revision 2 and counts each spec's notice once, with its latency since
/// the apply request; stops `renewer` when the notices are in.
async fn measure_change(
    ctx: &Ctx,
    client: &async_nats::Client,
    subjects: &Subjects,
    atts: u64,
    total: u64,
    renewer: tokio::task::JoinHandle<()>,
) -> anyhow::Result<ScenarioReport> {
    let mut notices = client.subscribe(subjects.jobspec_notice_all()).await?;
    client.flush().await?;
    let progress = Progress::start("apply: notices", total);
    let m = ctx.begin();
    let started = Instant::now();
    let reply = apply(client, subjects, document(atts, 2)).await.context("changing apply")?;
    let apply_secs = started.elapsed().as_secs_f64();
    let mut seen: HashSet<String> = HashSet::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut latency = Latency::new();
    let mut duplicates = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (seen.len() as u64) < total {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, notices.next()).await else { break };
        let Ok(n) = codec::decode::<ChangeNotice>(Encoding::MsgPack, &msg.payload) else { continue };
        for spec in n.changed.into_iter().chain(n.removed) {
            if seen.insert(spec) {
                latency.record_since(started);
                progress.add(1);
            } else {
                duplicates += 1;
            }
        }
    }
    let all_notified = started.elapsed();
    progress.finish();
    renewer.abort();
    let notified = seen.len() as u64;
    let mut r = m.finish(
        "apply",
        "config change touching every leased spec: notices to holders per second, latency since the apply request",
        notified,
        Some(&latency),
    );
    r.lost = total.saturating_sub(notified);
    r.extra = json!({
        "all_notified_secs": all_notified.as_secs_f64(),
        "apply_reply_secs": apply_secs,
        "repeated_notices": duplicates,
        "revision": reply.revision.revision,
        "target": "every holder notified within 1 s of the apply",
    });
    Ok(r)
}
