#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The lease service on a real nats-server: racing runtimes, two hub instances, expiry and
//! hand-over, fencing of results and renewals, change notices, caps; leader failover, journal
//! replay after a restart, snapshots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use ractor::{Actor, ActorRef};
use steward_actors::lease::client::LeaseClient;
use steward_actors::lease::journal::{self as lease_journal, JournalError};
use steward_actors::lease::{LeaseArgs, LeaseConfig, LeaseMsg, LeaseService};
use steward_deploy::{eventually, SingleNode};
use steward_subjects::api::lease::{
    ChangeNotice, LeaseJournalEntry, LeaseReply, LeaseRequest, LeaseSnapshot, LeasesRequest, MineRequest,
    ReleaseRequest, RenewRequest, SpecEpoch,
};
use steward_subjects::api::result::{decode_stored, ResultRecord, SubmitRequest, SubmitStatus};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, SpecId, SpecTarget, TargetKind};
use steward_subjects::streams::{self, Replicas, JOBSPECS_BUCKET, LEASE_JOURNAL_STREAM, RESULTS_STREAM};
use steward_subjects::subject::{jobspec_key, IdentityEndpoint};
use steward_subjects::{AccountId, RuntimeId, Subjects, Token, TokenKind};

fn rt(id: &str) -> RuntimeId {
    RuntimeId::parse(id).unwrap()
}

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn spec(kind: TargetKind, target: &str, n: usize, selector: &str, hash: &str) -> JobSpec {
    JobSpec {
        id: SpecId::derive("acme", &format!("att-{n}"), kind, target).to_string(),
        account: "acme".into(),
        target: SpecTarget { kind, id: target.into() },
        runtime_selector: selector.into(),
        executor: Executor::Command(CommandExecutor { argv: vec!["true".into()], ..Default::default() }),
        interval_ms: 1000,
        timeout_ms: 1000,
        content_hash: hash.into(),
        ..JobSpec::default()
    }
}

async fn put_spec(js: &jetstream::Context, s: &JobSpec) {
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    let key = jobspec_key(
        &account(),
        s.target.kind,
        &Token::parse(TokenKind::Name, &s.target.id).unwrap(),
        &s.id.parse().unwrap(),
    );
    kv.put(key, codec::encode(Encoding::MsgPack, s).unwrap()).await.unwrap();
}

async fn delete_spec(js: &jetstream::Context, s: &JobSpec) {
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    let key = jobspec_key(
        &account(),
        s.target.kind,
        &Token::parse(TokenKind::Name, &s.target.id).unwrap(),
        &s.id.parse().unwrap(),
    );
    kv.delete(key).await.unwrap();
}

struct Hub {
    node: SingleNode,
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn hub() -> Hub {
    let node = SingleNode::start().await.unwrap();
    let client = async_nats::connect(node.client_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    Hub { node, client, js }
}

async fn start_service(url: &str, config: LeaseConfig) -> ActorRef<LeaseMsg> {
    let client = async_nats::connect(url).await.unwrap();
    let args = LeaseArgs { client, subjects: Subjects::new(account()), config };
    let (actor, _) = Actor::spawn(None, LeaseService, args).await.unwrap();
    actor
}

fn lease_req(rt: &str, max: u32) -> LeaseRequest {
    LeaseRequest {
        runtime: rt.into(),
        host: String::new(),
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        max,
    }
}

async fn client(url: &str) -> LeaseClient {
    LeaseClient::new(async_nats::connect(url).await.unwrap(), Subjects::new(account()))
}

async fn wait_specs(c: &LeaseClient, n: u64) {
    eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        let r = c.leases(&LeasesRequest::default()).await.map_err(|e| e.to_string())?;
        if r.specs >= n {
            Ok(())
        } else {
            Err(format!("{} of {n} specs known", r.specs))
        }
    })
    .await
    .unwrap();
}

/// Runs `runtimes` leasing concurrently (batch `batch`) until nothing is left; returns every
/// grant as (spec, epoch, runtime).
async fn race(url: &str, runtimes: usize, batch: u32, total: usize) -> Vec<(String, u64, String)> {
    // Runtimes keep asking until every spec is granted (or a deadline passes, and the caller's
    // assertions report what is missing): with two hub instances, one may still be catching up
    // with the spec store and answer empty for a moment, which is not the end of the work.
    let granted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut tasks = Vec::new();
    for r in 0..runtimes {
        let c = client(url).await;
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            let rt = format!("rt-{r}");
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3
                || (granted.load(std::sync::atomic::Ordering::SeqCst) < total && tokio::time::Instant::now() < deadline)
            {
                let reply = c.lease(&lease_req(&rt, batch)).await.unwrap();
                if reply.granted.is_empty() {
                    empty += 1;
                    tokio::task::yield_now().await;
                } else {
                    empty = 0;
                }
                granted.fetch_add(reply.granted.len(), std::sync::atomic::Ordering::SeqCst);
                got.extend(reply.granted.into_iter().map(|g| (g.spec.id, g.epoch, rt.clone())));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn assert_no_double(grants: &[(String, u64, String)], specs: usize) {
    let mut by_spec: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for (s, e, r) in grants {
        by_spec.entry(s).or_default().push((*e, r));
    }
    for (s, gs) in &by_spec {
        assert_eq!(gs.len(), 1, "spec {s} granted more than once: {gs:?}");
        assert_eq!(gs[0].0, 1, "first grant of {s} has epoch {}", gs[0].0);
    }
    assert_eq!(by_spec.len(), specs, "every spec granted");
}

#[tokio::test]
async fn racing_runtimes_never_hold_a_spec_twice() {
    let h = hub().await;
    for i in 0..300 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "zone=a", "h1")).await;
    }
    let _svc =
        start_service(&h.node.client_url(), LeaseConfig { per_runtime_cap: 1000, ..LeaseConfig::default() }).await;
    wait_specs(&client(&h.node.client_url()).await, 300).await;
    let grants = race(&h.node.client_url(), 8, 7, 300).await;
    assert_no_double(&grants, 300);
    // `mine` agrees with the grants.
    let c = client(&h.node.client_url()).await;
    let mut total = 0;
    for r in 0..8 {
        let mine = c.mine(None, &MineRequest { runtime: format!("rt-{r}") }).await.unwrap();
        let expected: HashSet<&str> =
            grants.iter().filter(|g| g.2 == format!("rt-{r}")).map(|g| g.0.as_str()).collect();
        let got: HashSet<&str> = mine.specs.iter().map(|s| s.spec.id.as_str()).collect();
        assert_eq!(got, expected);
        total += got.len();
    }
    assert_eq!(total, 300);
}

#[tokio::test]
async fn two_hub_instances_share_the_lease_state_safely() {
    let h = hub().await;
    for i in 0..300 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "", "h1")).await;
    }
    let config = LeaseConfig { per_runtime_cap: 1000, ..LeaseConfig::default() };
    let _a = start_service(&h.node.client_url(), config.clone()).await;
    let _b = start_service(&h.node.client_url(), config).await;
    wait_specs(&client(&h.node.client_url()).await, 300).await;
    // Requests are spread over both instances by the micro queue group.
    let grants = race(&h.node.client_url(), 8, 5, 300).await;
    assert_no_double(&grants, 300);
    let info = h.client.request("$SRV.STATS.steward-lease", "".into()).await;
    assert!(info.is_ok());
}

#[tokio::test]
async fn selectors_host_specs_batch_limit_and_cap() {
    let h = hub().await;
    let host_spec = spec(TargetKind::Host, "web-01", 1, "", "h1");
    put_spec(&h.js, &host_spec).await;
    for i in 0..20 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-b", 100 + i, "zone=b", "h1")).await;
    }
    let _svc =
        start_service(&h.node.client_url(), LeaseConfig { max_batch: 4, per_runtime_cap: 6, ..LeaseConfig::default() })
            .await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 21).await;
    // Labels zone=a match no pool spec; another host's runtime never gets web-01's spec.
    let r = c.lease(&LeaseRequest { host: "web-02".into(), ..lease_req("rt-x", 50) }).await.unwrap();
    assert!(r.granted.is_empty());
    // web-01's runtime gets its host spec first.
    let r = c.lease(&LeaseRequest { host: "web-01".into(), ..lease_req("rt-web-01", 50) }).await.unwrap();
    assert_eq!(r.granted.len(), 1);
    assert_eq!(r.granted[0].spec.id, host_spec.id);
    // Batch limit 4, cap 6.
    let labels = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    let req = LeaseRequest { runtime: "rt-b".into(), labels, max: 50, ..Default::default() };
    assert_eq!(c.lease(&req).await.unwrap().granted.len(), 4);
    let r = c.lease(&req).await.unwrap();
    assert_eq!(r.granted.len(), 2);
    assert_eq!(r.held, 6);
    assert!(r.more);
    assert!(c.lease(&req).await.unwrap().granted.is_empty());
    // Hostile tokens are refused.
    let err = c.lease(&lease_req("rt.*", 1)).await.unwrap_err();
    assert_eq!(err.remote().unwrap().code, steward_subjects::ErrorCode::Invalid);
    let listed = c.leases(&LeasesRequest { unassigned: true, ..Default::default() }).await.unwrap();
    assert_eq!(listed.total, 14);
}

#[tokio::test]
async fn expired_holder_hands_over_and_its_epoch_is_fenced() {
    let h = hub().await;
    let s = spec(TargetKind::Pool, "pool-a", 1, "", "h1");
    put_spec(&h.js, &s).await;
    let ttl = Duration::from_millis(1500);
    let _svc = start_service(&h.node.client_url(), LeaseConfig { ttl, ..LeaseConfig::default() }).await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 1).await;
    let a = c.lease(&lease_req("rt-a", 10)).await.unwrap();
    assert_eq!(a.granted.len(), 1);
    assert_eq!(a.granted[0].epoch, 1);
    // A result of the holder is stored once.
    let result = ResultRecord {
        spec: s.id.clone(),
        epoch: 1,
        seq: 1,
        runtime: "rt-a".into(),
        host: "rt-a".into(),
        ..ResultRecord::default()
    };
    let r = c
        .submit(
            None,
            &rt("rt-a"),
            &SubmitRequest { results: vec![result.clone(), result.clone()], ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(r.outcomes[0].status, SubmitStatus::Stored);
    assert_eq!(r.outcomes[1].status, SubmitStatus::Duplicate);
    // rt-a stops renewing; rt-b keeps asking and gets the spec within TTL + 1 s.
    let stopped = Instant::now();
    let b = eventually(Duration::from_secs(10), Duration::from_millis(50), || async {
        let r = c.lease(&lease_req("rt-b", 10)).await.map_err(|e| e.to_string())?;
        if r.granted.is_empty() {
            Err("not yet".to_owned())
        } else {
            Ok(r)
        }
    })
    .await
    .unwrap();
    let handover = stopped.elapsed();
    assert!(handover <= ttl + Duration::from_secs(1), "hand-over took {handover:?}");
    assert!(handover >= ttl - Duration::from_millis(200), "hand-over before the ttl: {handover:?}");
    assert_eq!(b.granted[0].epoch, 2);
    // The old holder's renewal and result are refused with the stale epoch.
    let renew = c
        .renew(&RenewRequest {
            runtime: "rt-a".into(),
            held: vec![SpecEpoch { spec: s.id.clone(), epoch: 1 }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(renew.renewed, 0);
    assert_eq!(renew.refused[0].current_epoch, 2);
    let stale = ResultRecord { seq: 2, ..result.clone() };
    let r = c.submit(None, &rt("rt-a"), &SubmitRequest { results: vec![stale], ..Default::default() }).await.unwrap();
    assert_eq!(r.outcomes[0].status, SubmitStatus::Refused);
    assert!(r.outcomes[0].reason.starts_with("conflict"), "{}", r.outcomes[0].reason);
    // The new holder's result is stored; the stream holds exactly two results.
    let fresh = ResultRecord { epoch: 2, seq: 1, runtime: "rt-b".into(), host: "rt-b".into(), ..result };
    let r = c
        .submit(None, &rt("rt-b"), &SubmitRequest { results: vec![fresh.clone()], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(r.outcomes[0].status, SubmitStatus::Stored);
    assert_eq!(stored_keys(&h.js).await, vec![format!("{}:1:1", s.id), format!("{}:2:1", s.id)]);
    // A re-send after a lost reply that carries more results (produced meanwhile): what is
    // stored is answered duplicate, only the new ones are stored.
    let more: Vec<ResultRecord> = (2..=4).map(|seq| ResultRecord { seq, ..fresh.clone() }).collect();
    let resend = [vec![fresh.clone()], more.clone()].concat();
    let r =
        c.submit(None, &rt("rt-b"), &SubmitRequest { results: resend.clone(), ..Default::default() }).await.unwrap();
    let statuses: Vec<SubmitStatus> = r.outcomes.iter().map(|o| o.status).collect();
    assert_eq!(statuses, [SubmitStatus::Duplicate, SubmitStatus::Stored, SubmitStatus::Stored, SubmitStatus::Stored]);
    let r = c.submit(None, &rt("rt-b"), &SubmitRequest { results: resend, ..Default::default() }).await.unwrap();
    assert!(r.outcomes.iter().all(|o| o.status == SubmitStatus::Duplicate), "{:?}", r.outcomes);
    let keys = stored_keys(&h.js).await;
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 5, "a result stored twice: {keys:?}");
    // Release gives it back; the next grant has epoch 3.
    let rel = c
        .release(
            None,
            &ReleaseRequest { runtime: "rt-b".into(), specs: vec![SpecEpoch { spec: s.id.clone(), epoch: 2 }] },
        )
        .await
        .unwrap();
    assert_eq!(rel.released, vec![s.id.clone()]);
    let again = c.lease(&lease_req("rt-c", 10)).await.unwrap();
    assert_eq!(again.granted[0].epoch, 3);
}

#[tokio::test]
async fn holders_are_told_of_changes_within_a_second() {
    let h = hub().await;
    let s1 = spec(TargetKind::Pool, "pool-a", 1, "", "h1");
    let s2 = spec(TargetKind::Pool, "pool-a", 2, "", "h1");
    put_spec(&h.js, &s1).await;
    put_spec(&h.js, &s2).await;
    let _svc = start_service(&h.node.client_url(), LeaseConfig::default()).await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 2).await;
    assert_eq!(c.lease(&lease_req("rt-a", 10)).await.unwrap().granted.len(), 2);
    let rt = RuntimeId::parse("rt-a").unwrap();
    let mut notices = h.client.subscribe(Subjects::new(account()).jobspec_notice(&rt)).await.unwrap();
    h.client.flush().await.unwrap();

    let changed = JobSpec { content_hash: "h2".into(), ..s1.clone() };
    let t = Instant::now();
    put_spec(&h.js, &changed).await;
    let msg =
        tokio::time::timeout(Duration::from_secs(1), notices.next()).await.expect("no notice within 1 s").unwrap();
    let n: ChangeNotice = codec::decode(Encoding::MsgPack, &msg.payload).unwrap();
    assert_eq!(n.changed, vec![s1.id.clone()]);
    assert!(t.elapsed() < Duration::from_secs(1));
    let mine = c.mine(None, &MineRequest { runtime: "rt-a".into() }).await.unwrap();
    assert_eq!(mine.specs.iter().find(|l| l.spec.id == s1.id).unwrap().spec.content_hash, "h2");

    delete_spec(&h.js, &s2).await;
    let msg =
        tokio::time::timeout(Duration::from_secs(1), notices.next()).await.expect("no notice within 1 s").unwrap();
    let n: ChangeNotice = codec::decode(Encoding::MsgPack, &msg.payload).unwrap();
    assert_eq!(n.removed, vec![s2.id.clone()]);
    let mine = c.mine(None, &MineRequest { runtime: "rt-a".into() }).await.unwrap();
    assert_eq!(mine.specs.iter().map(|l| l.spec.id.clone()).collect::<Vec<_>>(), vec![s1.id.clone()]);
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let h = hub().await;
    let _svc = start_service(&h.node.client_url(), LeaseConfig::default()).await;
    let subjects = Subjects::new(account());
    let lease_subject = subjects.identity_subject(IdentityEndpoint::Lease, None, &rt("rt-a"));
    eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        h.client.request(lease_subject.clone(), "".into()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let reply = h.client.request(lease_subject.clone(), bytes::Bytes::from_static(b"\xc1garbage")).await.unwrap();
    let env: steward_subjects::Envelope<serde_json::Value> = codec::decode(Encoding::MsgPack, &reply.payload).unwrap();
    assert_eq!(env.error.unwrap().code, steward_subjects::ErrorCode::Invalid);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let reply = h
        .client
        .request_with_headers(subjects.jobspec_leases(), headers, bytes::Bytes::from_static(b"{\"unassigned\": true}"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// Every spec with its holder and epoch, as the leader lists them.
/// The idempotency keys of every stored result, in stream order (segments flattened).
/// Exactly once for any outage: a runtime's re-send long after the dedupe window (an edge cut
/// off for an hour, a reply lost on the way) is answered from its stored watermark, also by a
/// new leader that has never seen it; a new outbox (lost local store) is never mistaken for it.
#[tokio::test]
async fn a_result_resent_after_the_dedupe_window_is_still_a_duplicate() {
    let h = hub().await;
    // The window shorter than the outage, rather than an hour-long test.
    let mut cfg = h.js.get_stream(RESULTS_STREAM).await.unwrap().get_info().await.unwrap().config;
    cfg.duplicate_window = Duration::from_millis(300);
    h.js.update_stream(cfg).await.unwrap();
    let s = spec(TargetKind::Pool, "pool-a", 1, "", "h1");
    put_spec(&h.js, &s).await;
    let svc = start_service(&h.node.client_url(), LeaseConfig::default()).await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 1).await;
    assert_eq!(c.lease(&lease_req("rt-a", 10)).await.unwrap().granted.len(), 1);
    let numbered = |seq: u64, outbox: u64| ResultRecord {
        spec: s.id.clone(),
        epoch: 1,
        seq,
        outbox,
        runtime: "rt-a".into(),
        host: "rt-a".into(),
        ..ResultRecord::default()
    };
    let submit =
        |results: Vec<ResultRecord>, incarnation: &str| SubmitRequest { results, incarnation: incarnation.into() };
    let first: Vec<ResultRecord> = (1..=3).map(|n| numbered(n, n * 10)).collect();
    let r = c.submit(None, &rt("rt-a"), &submit(first.clone(), "aaaa")).await.unwrap();
    assert!(r.outcomes.iter().all(|o| o.status == SubmitStatus::Stored), "{:?}", r.outcomes);
    // The reply was "lost"; the runtime comes back well after the window with two more.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resend = [first.clone(), vec![numbered(4, 40), numbered(5, 50)]].concat();
    let r = c.submit(None, &rt("rt-a"), &submit(resend.clone(), "aaaa")).await.unwrap();
    let statuses: Vec<SubmitStatus> = r.outcomes.iter().map(|o| o.status).collect();
    use SubmitStatus::{Duplicate, Stored};
    assert_eq!(statuses, [Duplicate, Duplicate, Duplicate, Stored, Stored]);
    // A new leader (empty cache) reads the watermark back from the stream.
    svc.stop(None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _svc2 = start_service(&h.node.client_url(), LeaseConfig::default()).await;
    let r = eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        c.submit(None, &rt("rt-a"), &submit(resend.clone(), "aaaa")).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(r.outcomes.iter().all(|o| o.status == Duplicate), "{:?}", r.outcomes);
    let keys = stored_keys(&h.js).await;
    assert_eq!(keys.len(), 5, "{keys:?}");
    // The runtime lost its store: a new incarnation starting at position 1 is stored, not
    // taken for what the old one sent.
    let fresh = vec![numbered(6, 1)];
    let r = c.submit(None, &rt("rt-a"), &submit(fresh, "bbbb")).await.unwrap();
    assert_eq!(r.outcomes[0].status, Stored, "{:?}", r.outcomes);
    let keys = stored_keys(&h.js).await;
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 6, "a result stored twice: {keys:?}");
}

/// A hub outage longer than the lease TTL (no leader: every hub down, storage full, streams
/// without a leader) is not the runtimes' failure to renew: the next leader keeps each lease
/// with its holder and epoch, so results made under it during the outage are stored, and no
/// other runtime is granted the spec meanwhile.
#[tokio::test]
async fn leases_outlive_an_outage_with_no_leader_longer_than_their_ttl() {
    let h = hub().await;
    let s = spec(TargetKind::Pool, "pool-a", 1, "", "h1");
    put_spec(&h.js, &s).await;
    let config = LeaseConfig { ttl: Duration::from_millis(1500), ..LeaseConfig::default() };
    let svc = start_service(&h.node.client_url(), config.clone()).await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 1).await;
    let a = c.lease(&lease_req("rt-a", 10)).await.unwrap();
    assert_eq!(a.granted[0].epoch, 1);
    // The only leader stops; nobody leads for twice the TTL.
    svc.stop(None);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let _svc2 = start_service(&h.node.client_url(), config).await;
    wait_specs(&c, 1).await;
    // Another runtime is not granted the spec; the holder renews under its epoch and its
    // result of the outage is stored.
    let b = c.lease(&lease_req("rt-b", 10)).await.unwrap();
    assert!(b.granted.is_empty(), "granted to rt-b after the outage: {b:?}");
    let renew = c
        .renew(&RenewRequest {
            runtime: "rt-a".into(),
            held: vec![SpecEpoch { spec: s.id.clone(), epoch: 1 }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(renew.renewed, 1, "{renew:?}");
    let made = ResultRecord { spec: s.id.clone(), epoch: 1, seq: 1, runtime: "rt-a".into(), ..ResultRecord::default() };
    let r = c.submit(None, &rt("rt-a"), &SubmitRequest { results: vec![made], ..Default::default() }).await.unwrap();
    assert_eq!(r.outcomes[0].status, SubmitStatus::Stored, "{:?}", r.outcomes);
    // A holder that then stops renewing still loses it after one TTL.
    let handed = eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        let r = c.lease(&lease_req("rt-b", 10)).await.map_err(|e| e.to_string())?;
        r.granted.first().map(|g| g.epoch).ok_or_else(|| "not yet".to_owned())
    })
    .await
    .unwrap();
    assert_eq!(handed, 2);
}

async fn stored_keys(js: &jetstream::Context) -> Vec<String> {
    let stream = js.get_stream(RESULTS_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut keys = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        keys.extend(decode_stored(Some(&m.headers), &m.payload).unwrap().iter().map(ResultRecord::idempotency_key));
    }
    keys
}

async fn holders(c: &LeaseClient) -> BTreeMap<String, (String, u64)> {
    let r = c.leases(&LeasesRequest { limit: 100_000, ..Default::default() }).await.unwrap();
    r.rows.into_iter().map(|row| (row.spec, (row.holder, row.epoch))).collect()
}

/// What `rt` holds, by `mine`.
async fn mine(c: &LeaseClient, rt: &str) -> Vec<SpecEpoch> {
    let mut v: Vec<SpecEpoch> = c
        .mine(None, &MineRequest { runtime: rt.into() })
        .await
        .unwrap()
        .specs
        .into_iter()
        .map(|l| SpecEpoch { spec: l.spec.id, epoch: l.epoch })
        .collect();
    v.sort();
    v
}

/// Waits until a lease leader answers (after a takeover).
async fn wait_leader(c: &LeaseClient) {
    eventually(Duration::from_secs(15), Duration::from_millis(50), || async {
        c.leases(&LeasesRequest { limit: 1, ..Default::default() }).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn leader_failover_keeps_leases_and_fences_the_old_leader() {
    let h = hub().await;
    for i in 0..100 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "zone=a", "h1")).await;
    }
    let config = LeaseConfig {
        ttl: Duration::from_secs(20),
        leader_ttl: Duration::from_millis(900),
        per_runtime_cap: 1000,
        ..LeaseConfig::default()
    };
    let url = h.node.client_url();
    let a = start_service(&url, config.clone()).await;
    let c = client(&url).await;
    wait_specs(&c, 100).await;
    // B stands by while A leads.
    let _b = start_service(&url, config).await;
    let mut held = BTreeMap::new();
    for r in 0..4 {
        let rt = format!("rt-{r}");
        let reply = c.lease(&lease_req(&rt, 15)).await.unwrap();
        assert_eq!(reply.granted.len(), 15);
        let mut v: Vec<SpecEpoch> =
            reply.granted.into_iter().map(|g| SpecEpoch { spec: g.spec.id, epoch: g.epoch }).collect();
        v.sort();
        held.insert(rt, v);
    }
    let journal = Subjects::new(account()).jobspec_journal();
    let fence_subject = Subjects::new(account()).jobspec_fence();
    let stale = lease_journal::last_sequence(&h.js, &journal).await.unwrap();
    assert!(stale > 0);
    let stale_fence = lease_journal::Fence {
        seq: lease_journal::last_sequence(&h.js, &fence_subject).await.unwrap(),
        subject: fence_subject,
    };
    assert!(stale_fence.seq > 0, "the leader raised its fence");

    // A crashes (killed: it does not give its lock up); B takes over after the lock's TTL.
    a.kill();
    wait_leader(&c).await;
    for (rt, specs) in &held {
        let renew = c
            .renew(&RenewRequest {
                runtime: rt.clone(),
                labels: lease_req(rt, 0).labels,
                held: specs.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(renew.renewed, 15, "{rt}: {:?}", renew.refused);
        assert!(renew.refused.is_empty());
        assert_eq!(&mine(&c, rt).await, specs, "{rt} keeps its specs and epochs");
    }
    // The old leader's next append (expecting the last sequence it wrote) is refused.
    let err = lease_journal::append(&h.js, &journal, stale, &LeaseJournalEntry::default(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Fenced(_)), "{err}");
    // So is an append of the old leader under its fence, even several in flight at once.
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        in_flight.push(
            lease_journal::send(&h.js, &journal, &stale_fence, &LeaseJournalEntry::default(), Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }
    for ack in in_flight {
        let err = ack.await.unwrap_err();
        assert!(matches!(err, JournalError::Fenced(_)), "{err}");
    }
    // The rest goes to racing runtimes, each spec once, never one already held.
    let grants = race(&url, 4, 5, 40).await;
    assert_no_double(&grants, 40);
    let before: HashSet<&str> = held.values().flatten().map(|s| s.spec.as_str()).collect();
    assert!(grants.iter().all(|g| !before.contains(g.0.as_str())), "a held spec was granted again");
}

#[tokio::test]
async fn journal_replay_after_a_full_restart_keeps_holders_and_epochs() {
    let mut h = hub().await;
    for i in 0..50 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "zone=a", "h1")).await;
    }
    let url = h.node.client_url();
    let config = LeaseConfig { ttl: Duration::from_secs(30), ..LeaseConfig::default() };
    let svc = start_service(&url, config.clone()).await;
    let c = client(&url).await;
    wait_specs(&c, 50).await;
    let a = c.lease(&lease_req("rt-a", 20)).await.unwrap();
    assert_eq!(c.lease(&lease_req("rt-b", 20)).await.unwrap().granted.len(), 20);
    // rt-a gives five back, rt-c takes them (epoch 2).
    let back: Vec<SpecEpoch> =
        a.granted[..5].iter().map(|g| SpecEpoch { spec: g.spec.id.clone(), epoch: g.epoch }).collect();
    assert_eq!(
        c.release(None, &ReleaseRequest { runtime: "rt-a".into(), specs: back }).await.unwrap().released.len(),
        5
    );
    let c_got = c.lease(&lease_req("rt-c", 15)).await.unwrap();
    assert_eq!(c_got.granted.len(), 15);
    assert_eq!(c_got.granted.iter().filter(|g| g.epoch == 2).count(), 5);
    let before = holders(&c).await;
    let mine_before = (mine(&c, "rt-a").await, mine(&c, "rt-b").await, mine(&c, "rt-c").await);

    // The whole hub goes: the lease service and the server.
    svc.stop_and_wait(None, None).await.unwrap();
    h.node.stop().await;
    h.node.restart().await.unwrap();
    let _svc = start_service(&url, config).await;
    wait_specs(&c, 50).await;
    assert_eq!(holders(&c).await, before);
    assert_eq!((mine(&c, "rt-a").await, mine(&c, "rt-b").await, mine(&c, "rt-c").await), mine_before);
    let renew = c
        .renew(&RenewRequest {
            runtime: "rt-c".into(),
            labels: lease_req("rt-c", 0).labels,
            held: mine_before.2.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(renew.renewed, 15);
    // Nothing is left to grant; the epochs carry on after a release.
    assert!(c.lease(&lease_req("rt-d", 10)).await.unwrap().granted.is_empty());
}

#[tokio::test]
async fn snapshot_purge_and_replay_give_the_same_state() {
    let h = hub().await;
    for i in 0..40 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "zone=a", "h1")).await;
    }
    let url = h.node.client_url();
    let config = LeaseConfig { snapshot_entries: 4, ttl: Duration::from_secs(30), ..LeaseConfig::default() };
    let svc = start_service(&url, config.clone()).await;
    let c = client(&url).await;
    wait_specs(&c, 40).await;
    // One spec per request, one request at a time: one journal entry each.
    for i in 0..30 {
        assert_eq!(c.lease(&lease_req(&format!("rt-{}", i % 3), 1)).await.unwrap().granted.len(), 1);
    }
    let rt0 = mine(&c, "rt-0").await;
    let rel = c.release(None, &ReleaseRequest { runtime: "rt-0".into(), specs: rt0[..2].to_vec() }).await.unwrap();
    assert_eq!(rel.released.len(), 2);
    // A snapshot was taken and the journal purged below it.
    let journal = Subjects::new(account()).jobspec_journal();
    let (pointer, _) = eventually(Duration::from_secs(10), Duration::from_millis(50), || async {
        match lease_journal::read_pointer(&h.js, &account()).await {
            Ok((Some(p), rev)) if p.through_seq >= 20 => Ok((p, rev)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    // (A later snapshot may have moved the pointer meanwhile.)
    let (snap, _) = lease_journal::load_snapshot(&h.js, &account()).await.unwrap();
    assert!(snap.unwrap().through_seq >= pointer.through_seq);
    let stream = h.js.get_stream(LEASE_JOURNAL_STREAM).await.unwrap().info().await.unwrap().state.clone();
    let last = lease_journal::last_sequence(&h.js, &journal).await.unwrap();
    // (The fence message of the leader's takeover stays: it is not a journal entry.)
    let js_stream = h.js.get_stream(LEASE_JOURNAL_STREAM).await.unwrap();
    for seq in 1..pointer.through_seq.min(last) {
        if let Ok(m) = js_stream.get_raw_message(seq).await {
            assert_ne!(m.subject.as_str(), journal, "journal entry {seq} kept below the snapshot: {stream:?}");
        }
    }
    assert!(stream.messages < last, "purged: {} entries kept of {last}", stream.messages);
    let before = holders(&c).await;
    let mine_before = (mine(&c, "rt-0").await, mine(&c, "rt-1").await, mine(&c, "rt-2").await);

    svc.stop_and_wait(None, None).await.unwrap();
    let _svc = start_service(&url, config).await;
    wait_specs(&c, 40).await;
    assert_eq!(holders(&c).await, before);
    assert_eq!((mine(&c, "rt-0").await, mine(&c, "rt-1").await, mine(&c, "rt-2").await), mine_before);
    // The two released specs come back at epoch 2, the never-granted ones at epoch 1.
    let more = c.lease(&lease_req("rt-9", 100)).await.unwrap();
    assert_eq!(more.granted.len(), 12);
    assert_eq!(more.granted.iter().filter(|g| g.epoch == 2).count(), 2);
}

#[tokio::test]
async fn a_snapshot_read_while_a_newer_one_is_written_follows_the_pointer() {
    let h = hub().await;
    let journal = Subjects::new(account()).jobspec_journal();
    let js = h.js.clone();
    // Each write moves the pointer and deletes the object it named before.
    let writer = tokio::spawn(async move {
        for seq in 1..=60u64 {
            let snap = LeaseSnapshot { through_seq: seq, ..LeaseSnapshot::default() };
            let encoded = codec::encode(Encoding::MsgPack, &snap).unwrap();
            lease_journal::write_snapshot(&js, &account(), &journal, seq, encoded.to_vec(), || true).await.unwrap();
        }
    });
    let mut loaded = 0;
    let mut last_seen = 0;
    while !writer.is_finished() {
        let (snap, _) = lease_journal::load_snapshot(&h.js, &account()).await.unwrap();
        if let Some(snap) = snap {
            assert!(snap.through_seq >= last_seen, "snapshots went backwards: {} after {last_seen}", snap.through_seq);
            last_seen = snap.through_seq;
            loaded += 1;
        }
    }
    writer.await.unwrap();
    assert!(loaded > 0, "no snapshot was read while they were written");
    let (snap, _) = lease_journal::load_snapshot(&h.js, &account()).await.unwrap();
    assert_eq!(snap.unwrap().through_seq, 60);
}

/// The caller's identity is the subject's, not the body's: a body naming another runtime or
/// host is refused `forbidden` (and counted), a result naming another runtime is refused, and
/// stored segments carry the subject's host in their message id, so ids of two hosts never
/// collide.
#[tokio::test]
async fn the_subject_not_the_body_names_the_caller() {
    let h = hub().await;
    let host_spec = spec(TargetKind::Host, "web-01", 1, "", "h1");
    put_spec(&h.js, &host_spec).await;
    let pool = spec(TargetKind::Pool, "pool-a", 2, "", "h1");
    put_spec(&h.js, &pool).await;
    let _svc = start_service(&h.node.client_url(), LeaseConfig::default()).await;
    let c = client(&h.node.client_url()).await;
    wait_specs(&c, 2).await;
    let s = Subjects::new(account());
    let as_x = |e| s.identity_subject(e, None, &rt("rt-x"));
    let forbidden = |r: steward_subjects::Envelope<serde_json::Value>| {
        let e = r.error.expect("refused");
        assert_eq!(e.code, steward_subjects::ErrorCode::Forbidden, "{e:?}");
    };
    // rt-x asks as web-01's runtime, or for web-01's specs: refused, nothing granted.
    let req = LeaseRequest { runtime: "web-01".into(), host: "web-01".into(), max: 10, ..Default::default() };
    forbidden(envelope(&h.client, as_x(IdentityEndpoint::Lease), &req).await);
    let req = LeaseRequest { runtime: "rt-x".into(), host: "web-01".into(), max: 10, ..Default::default() };
    forbidden(envelope(&h.client, as_x(IdentityEndpoint::Lease), &req).await);
    let req = RenewRequest { runtime: "rt-y".into(), ..Default::default() };
    forbidden(envelope(&h.client, as_x(IdentityEndpoint::Renew), &req).await);
    forbidden(envelope(&h.client, as_x(IdentityEndpoint::Mine), &MineRequest { runtime: "rt-y".into() }).await);
    let req = ReleaseRequest { runtime: "rt-y".into(), specs: Vec::new() };
    forbidden(envelope(&h.client, as_x(IdentityEndpoint::Release), &req).await);
    assert_eq!(holders(&c).await[&host_spec.id].0, "", "web-01's spec stays unassigned");
    // An empty body runtime is the subject's: rt-x leases the pool spec as itself.
    let req = LeaseRequest { max: 10, ..Default::default() };
    let granted: LeaseReply =
        steward_subjects::rpc::request(&h.client, as_x(IdentityEndpoint::Lease), &req, Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(granted.granted.len(), 1);
    assert_eq!(holders(&c).await[&pool.id], ("rt-x".to_owned(), 1));
    // A result naming another runtime or host is refused; rt-x's own is stored under its id.
    let own = ResultRecord { spec: pool.id.clone(), epoch: 1, seq: 1, ..ResultRecord::default() };
    let foreign_rt = ResultRecord { seq: 2, runtime: "rt-y".into(), ..own.clone() };
    let foreign_host = ResultRecord { seq: 3, host: "web-01".into(), ..own.clone() };
    let r = c
        .submit(
            None,
            &rt("rt-x"),
            &SubmitRequest { results: vec![foreign_rt, foreign_host, own], ..Default::default() },
        )
        .await
        .unwrap();
    let statuses: Vec<SubmitStatus> = r.outcomes.iter().map(|o| o.status).collect();
    assert_eq!(statuses, [SubmitStatus::Refused, SubmitStatus::Refused, SubmitStatus::Stored], "{:?}", r.outcomes);
    assert!(r.outcomes[0].reason.starts_with("forbidden"), "{}", r.outcomes[0].reason);
    // Another runtime submitting rt-x's result as itself: not the holder.
    let theirs = ResultRecord { spec: pool.id.clone(), epoch: 1, seq: 9, ..ResultRecord::default() };
    let r = c.submit(None, &rt("rt-y"), &SubmitRequest { results: vec![theirs], ..Default::default() }).await.unwrap();
    assert!(r.outcomes[0].reason.starts_with("conflict"), "{:?}", r.outcomes);
    let stream = h.js.get_stream(RESULTS_STREAM).await.unwrap();
    let m = stream.get_last_raw_message_by_subject(&s.result_put_all()).await.unwrap();
    assert_eq!(m.subject.as_str(), "steward.v1.acme.result.put.rt-x.rt-x");
    assert_eq!(m.headers.get("Nats-Msg-Id").unwrap().as_str(), format!("rt-x.{}:1:1", pool.id));
    let stored = decode_stored(Some(&m.headers), &m.payload).unwrap();
    assert_eq!((stored[0].runtime.as_str(), stored[0].host.as_str()), ("rt-x", "rt-x"));
    // Every refusal is counted.
    let fence = c.leases(&LeasesRequest::default()).await.unwrap().fence;
    assert_eq!((fence.foreign_requests, fence.foreign_results, fence.stale_results), (5, 2, 1), "{fence:?}");
}

/// The reply envelope of a request sent as is (MessagePack) to `subject`.
async fn envelope<T: serde::Serialize>(
    client: &async_nats::Client,
    subject: String,
    req: &T,
) -> steward_subjects::Envelope<serde_json::Value> {
    let payload = codec::encode(Encoding::MsgPack, req).unwrap();
    let reply = client.request(subject, payload).await.unwrap();
    codec::decode(Encoding::MsgPack, &reply.payload).unwrap()
}

/// Every journal entry names the leadership that wrote it (instance and lock generation), not
/// only the takeover entry: so a write of a deposed leader after a takeover can be told apart
/// in the journal (the `leader_pause` fault scenario reads it so).
#[tokio::test]
async fn every_journal_entry_names_its_leader_and_generation() {
    let h = hub().await;
    for i in 0..10 {
        put_spec(&h.js, &spec(TargetKind::Pool, "pool-a", i, "zone=a", "h1")).await;
    }
    let url = h.node.client_url();
    let _svc = start_service(&url, LeaseConfig { ttl: Duration::from_secs(30), ..LeaseConfig::default() }).await;
    let c = client(&url).await;
    wait_specs(&c, 10).await;
    for r in 0..3 {
        assert!(!c.lease(&lease_req(&format!("rt-{r}"), 3)).await.unwrap().granted.is_empty());
    }
    let journal = Subjects::new(account()).jobspec_journal();
    let stream = h.js.get_stream(LEASE_JOURNAL_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut entries = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        if m.subject.as_str() == journal {
            entries.push(codec::decode::<LeaseJournalEntry>(Encoding::MsgPack, &m.payload).unwrap());
        }
    }
    let takeover = entries.iter().find(|e| e.takeover).expect("a takeover entry");
    assert!(!takeover.instance.is_empty() && takeover.generation > 0, "{takeover:?}");
    let grants: Vec<&LeaseJournalEntry> = entries.iter().filter(|e| !e.leases.is_empty()).collect();
    assert!(grants.len() >= 3, "{entries:?}");
    for e in &entries {
        assert_eq!((e.instance.as_str(), e.generation), (takeover.instance.as_str(), takeover.generation), "{e:?}");
    }
}
