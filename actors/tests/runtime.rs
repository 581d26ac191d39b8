#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The runtime actor against a real hub: leasing and running specs, hand-over when a runtime
//! dies, dropping changed and removed specs within a second, and offline operation with the
//! outbox delivered exactly once after the hub comes back; large output in the object store
//! (also across a hub outage); leases released at once by a clean stop.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use ractor::{Actor, ActorRef};
use steward_actors::lease::{LeaseArgs, LeaseConfig, LeaseMsg, LeaseService};
use steward_actors::runtime::{RuntimeArgs, RuntimeHandle, RuntimeStatus};
use steward_actors::signing::JobSigner;
use steward_actors::spec_signing::{sign_specs, TrustedKeys};
use steward_actors::ConnectOptions;
use steward_deploy::{eventually, SingleNode};
use steward_subjects::api::result::{decode_stored, ResultRecord, ResultStatus, MAX_INLINE_OUTPUT};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, SpecId, SpecTarget, TargetKind};
use steward_subjects::streams::{self, Replicas, JOBSPECS_BUCKET, RESULTS_STREAM};
use steward_subjects::subject::{jobspec_key, OutputRef};
use steward_subjects::{AccountId, HostId, RuntimeId, Subjects, Token, TokenKind};

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

/// The key the test hub signs specs with (every runtime of these tests trusts it).
fn signer() -> JobSigner {
    JobSigner::from_seed([42; 32])
}

/// A content hash (32 hex digits) named by a short label.
fn content(label: &str) -> String {
    format!("{:0>32}", label.bytes().map(|b| format!("{b:02x}")).collect::<String>())
}

fn command_spec(kind: TargetKind, target: &str, n: usize, argv: &[&str], interval_ms: u64, hash: &str) -> JobSpec {
    JobSpec {
        id: SpecId::derive("acme", &format!("att-{n}"), kind, target).to_string(),
        account: "acme".into(),
        target: SpecTarget { kind, id: target.into() },
        executor: Executor::Command(CommandExecutor {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        interval_ms,
        timeout_ms: interval_ms.max(1000),
        content_hash: content(hash),
        ..JobSpec::default()
    }
}

fn key_of(s: &JobSpec) -> String {
    jobspec_key(
        &account(),
        s.target.kind,
        &Token::parse(TokenKind::Name, &s.target.id).unwrap(),
        &s.id.parse().unwrap(),
    )
}

/// Writes `s` signed by the test hub's key.
async fn put_spec(js: &jetstream::Context, s: &JobSpec) {
    let mut signed = [s.clone()];
    sign_specs(&signer(), &mut signed);
    put_raw(js, &signed[0]).await;
}

/// Writes `s` as it is.
async fn put_raw(js: &jetstream::Context, s: &JobSpec) {
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    kv.put(key_of(s), codec::encode(Encoding::MsgPack, s).unwrap()).await.unwrap();
}

async fn delete_spec(js: &jetstream::Context, s: &JobSpec) {
    js.get_key_value(JOBSPECS_BUCKET).await.unwrap().delete(key_of(s)).await.unwrap();
}

async fn start_hub(url: &str, ttl: Duration) -> ActorRef<LeaseMsg> {
    let client = async_nats::connect(url).await.unwrap();
    streams::ensure(&jetstream::new(client.clone()), Replicas::One).await.unwrap();
    let args =
        LeaseArgs { client, subjects: Subjects::new(account()), config: LeaseConfig { ttl, ..LeaseConfig::default() } };
    Actor::spawn(None, LeaseService, args).await.unwrap().0
}

fn runtime_args(url: &str, id: &str, host: Option<&str>, dir: &Path) -> RuntimeArgs {
    let mut a = RuntimeArgs::new(
        ConnectOptions::new(url),
        Subjects::new(account()),
        RuntimeId::parse(id).unwrap(),
        dir.join(id),
    );
    a.host = host.map(|h| HostId::parse(h).unwrap());
    a.renew_every = Some(Duration::from_millis(300));
    a.call_timeout = Duration::from_millis(1500);
    a.trusted = TrustedKeys::new([signer().verifier()]);
    a
}

async fn wait_status<F>(rt: &RuntimeHandle, timeout: Duration, what: &str, f: F) -> RuntimeStatus
where
    F: Fn(&RuntimeStatus) -> bool,
{
    eventually(timeout, Duration::from_millis(25), || async {
        let s = rt.status().await.map_err(|e| e.to_string())?;
        if f(&s) {
            Ok(s)
        } else {
            Err(format!("{what}: {s:?}"))
        }
    })
    .await
    .unwrap()
}

/// Every stored result, by idempotency key, with how often it is stored.
async fn stored_results(js: &jetstream::Context) -> (Vec<ResultRecord>, HashMap<String, u32>) {
    let stream = js.get_stream(RESULTS_STREAM).await.unwrap();
    let n = stream.get_info().await.unwrap().state.messages;
    let mut out = Vec::new();
    let mut counts = HashMap::new();
    if n == 0 {
        return (out, counts);
    }
    let c = stream
        .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
        .await
        .unwrap();
    let mut msgs = c.fetch().max_messages(usize::try_from(n).unwrap()).messages().await.unwrap();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        for r in decode_stored(m.headers.as_ref(), &m.payload).unwrap() {
            *counts.entry(r.idempotency_key()).or_insert(0) += 1;
            out.push(r);
        }
    }
    (out, counts)
}

#[tokio::test]
async fn runtime_leases_runs_and_reports_each_result_once() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let _hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let pass = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", "echo '{\"answer\": 42}'"], 200, "h1");
    let fail = command_spec(TargetKind::Pool, "p", 2, &["sh", "-c", "exit 2"], 200, "h1");
    put_spec(&js, &pass).await;
    put_spec(&js, &fail).await;
    let dir = tempfile::tempdir().unwrap();
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-a", None, dir.path())).await.unwrap();
    wait_status(&rt, Duration::from_secs(10), "two specs held and results delivered", |s| {
        s.held.len() == 2 && s.delivered >= 6
    })
    .await;
    let (results, counts) = stored_results(&js).await;
    assert!(counts.values().all(|n| *n == 1), "a result stored twice: {counts:?}");
    let p = results.iter().find(|r| r.spec == pass.id).unwrap();
    assert_eq!(p.status, ResultStatus::Pass);
    assert_eq!(p.metrics.get("answer"), Some(&42.0));
    assert_eq!(p.epoch, 1);
    assert_eq!(p.host, "rt-a");
    let f = results.iter().find(|r| r.spec == fail.id).unwrap();
    assert_eq!(f.status, ResultStatus::Fail);
    assert_eq!(f.exit_code, Some(2));
    rt.stop();
}

#[tokio::test]
async fn killed_runtime_hands_its_specs_over_within_ttl_plus_one_second() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let ttl = Duration::from_secs(2);
    let _hub = start_hub(&url, ttl).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let specs: Vec<JobSpec> = (0..10).map(|i| command_spec(TargetKind::Pool, "p", i, &["true"], 500, "h1")).collect();
    for s in &specs {
        put_spec(&js, s).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = RuntimeHandle::start(runtime_args(&url, "rt-a", None, dir.path())).await.unwrap();
    wait_status(&a, Duration::from_secs(10), "rt-a holds everything", |s| s.held.len() == 10).await;
    let mut b_args = runtime_args(&url, "rt-b", None, dir.path());
    b_args.renew_every = Some(Duration::from_secs(5)); // b learns of free specs through notices
    let (b, _) = RuntimeHandle::start(b_args).await.unwrap();
    wait_status(&b, Duration::from_secs(10), "rt-b online", |s| s.online).await;
    assert!(b.status().await.unwrap().held.is_empty());
    a.kill();
    let killed = Instant::now();
    let s = wait_status(&b, ttl + Duration::from_secs(3), "rt-b takes over", |s| s.held.len() == 10).await;
    let took = killed.elapsed();
    assert!(took <= ttl + Duration::from_secs(1), "hand-over took {took:?}");
    assert!(s.held.values().all(|e| *e == 2), "epochs bumped: {:?}", s.held);
    b.stop();
}

/// Whether `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn changed_and_removed_specs_are_dropped_within_a_second() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let _hub = start_hub(&url, Duration::from_secs(10)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let long = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", &script], 60_000, "h1");
    let other = command_spec(TargetKind::Pool, "p", 2, &["true"], 60_000, "h1");
    put_spec(&js, &long).await;
    put_spec(&js, &other).await;
    let mut args = runtime_args(&url, "rt-a", None, dir.path());
    args.renew_every = Some(Duration::from_secs(30)); // only notices can make it re-sync in time
    let (rt, _) = RuntimeHandle::start(args).await.unwrap();
    wait_status(&rt, Duration::from_secs(10), "both held", |s| s.held.len() == 2).await;
    let pid: u32 = eventually(Duration::from_secs(10), Duration::from_millis(20), || async {
        std::fs::read_to_string(&pid_file).map_err(|e| e.to_string())?.trim().parse::<u32>().map_err(|e| e.to_string())
    })
    .await
    .unwrap();

    // A configuration change rewrites `other`: the holder adopts the new content within 1 s.
    let changed = JobSpec { content_hash: content("h2"), ..other.clone() };
    let t = Instant::now();
    put_spec(&js, &changed).await;
    wait_status(&rt, Duration::from_secs(1), "new content adopted", |s| {
        s.content.get(&other.id).is_some_and(|h| *h == content("h2"))
    })
    .await;
    assert!(t.elapsed() <= Duration::from_secs(1));

    // Removing `long` stops it within 1 s and kills its running process.
    let t = Instant::now();
    delete_spec(&js, &long).await;
    wait_status(&rt, Duration::from_secs(1), "removed spec dropped", |s| {
        !s.held.contains_key(&long.id) && !s.scheduled.contains(&long.id)
    })
    .await;
    assert!(t.elapsed() <= Duration::from_secs(1));
    eventually(Duration::from_secs(2), Duration::from_millis(20), || async {
        if gone(pid) {
            Ok(())
        } else {
            Err(format!("process {pid} of the removed spec still runs"))
        }
    })
    .await
    .unwrap();
    rt.stop();
}

#[tokio::test]
async fn edge_runtime_keeps_checking_through_a_30s_hub_outage_and_delivers_exactly_once() {
    let mut node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let check = command_spec(TargetKind::Host, "web-01", 1, &["sh", "-c", "echo '{\"up\": 1}'"], 200, "h1");
    put_spec(&js, &check).await;
    let dir = tempfile::tempdir().unwrap();
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-web-01", Some("web-01"), dir.path())).await.unwrap();
    wait_status(&rt, Duration::from_secs(10), "results flowing", |s| s.delivered >= 3).await;

    // The hub goes away for 30 s; the runtime keeps checking into its outbox.
    node.stop().await;
    let down = Instant::now();
    let outage = Duration::from_secs(30);
    let during = wait_status(&rt, outage + Duration::from_secs(10), "30 s of buffered checks", |s| {
        down.elapsed() >= outage && !s.online && s.outbox >= 100
    })
    .await;
    assert_eq!(during.scheduled, vec![check.id.clone()], "host spec keeps running offline");

    // Back: everything buffered is delivered, in order, each result stored once.
    node.restart().await.unwrap();
    let after = wait_status(&rt, Duration::from_secs(30), "outbox drained", |s| {
        s.online && s.outbox == 0 && s.delivered > during.delivered + 100
    })
    .await;
    assert_eq!(after.refused, 0);
    // Stop producing, then compare the stream with what the runtime ran.
    rt.stop();
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let (results, counts) = eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        let (results, counts) = stored_results(&js).await;
        if counts.values().all(|n| *n == 1) {
            Ok((results, counts))
        } else {
            Err("duplicates".to_owned())
        }
    })
    .await
    .unwrap();
    assert!(counts.values().all(|n| *n == 1), "a result stored twice");
    let mut seqs: Vec<u64> = results.iter().filter(|r| r.spec == check.id).map(|r| r.seq).collect();
    let stored_order = seqs.clone();
    seqs.sort_unstable();
    assert_eq!(stored_order, seqs, "results stored in production order");
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no result lost: sequences are contiguous");
    assert!(seqs.len() as u64 >= after.delivered, "{} stored, {} delivered", seqs.len(), after.delivered);
    let by_epoch: BTreeMap<u64, usize> = results.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.epoch).or_default() += 1;
        m
    });
    assert_eq!(by_epoch.keys().copied().collect::<Vec<_>>(), vec![1], "one epoch throughout");
    drop(hub);
}

/// The full output a result names: its message of the outputs stream, which was stored on the
/// result's own host's output subject.
async fn output_bytes(js: &jetstream::Context, r: &ResultRecord) -> Vec<u8> {
    let Some(OutputRef::Stream(seq)) = r.output_ref.as_deref().and_then(OutputRef::parse) else {
        panic!("{} names no stored output: {:?}", r.idempotency_key(), r.output_ref)
    };
    let (subject, bytes) = streams::read_output(js, seq).await.unwrap();
    assert_eq!(subject, Subjects::new(account()).result_output(&HostId::parse(&r.host).unwrap()));
    bytes.to_vec()
}

/// 200 KiB of `0123456789` lines (20,480 lines of 10 bytes each: 9 digits and a newline).
const BIG_OUTPUT: &str = "seq 100000000 100020479";
const BIG_LEN: usize = 20_480 * 10;

fn big_expected() -> Vec<u8> {
    (100_000_000u64..100_020_480).flat_map(|n| format!("{n}\n").into_bytes()).collect()
}

fn check_big_result(r: &ResultRecord) {
    assert_eq!(r.output.len(), MAX_INLINE_OUTPUT, "inline head of {}", r.idempotency_key());
    assert!(r.output_truncated);
    assert!(big_expected().starts_with(r.output.as_bytes()), "inline head is the start of the output");
    assert!(r.output_ref.as_deref().is_some_and(|o| o.starts_with("out:")), "{:?}", r.output_ref);
}

#[tokio::test]
async fn large_output_goes_to_the_outputs_stream_with_the_head_inline() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let _hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let big = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", BIG_OUTPUT], 60_000, "h1");
    let small = command_spec(TargetKind::Pool, "p", 2, &["echo", "hi"], 60_000, "h1");
    put_spec(&js, &big).await;
    put_spec(&js, &small).await;
    let dir = tempfile::tempdir().unwrap();
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-a", None, dir.path())).await.unwrap();
    wait_status(&rt, Duration::from_secs(15), "both results delivered", |s| s.delivered >= 2).await;
    let (results, counts) = stored_results(&js).await;
    assert!(counts.values().all(|n| *n == 1));
    let r = results.iter().find(|r| r.spec == big.id).unwrap();
    assert_eq!(r.status, ResultStatus::Pass);
    check_big_result(r);
    let bytes = output_bytes(&js, r).await;
    assert_eq!(bytes.len(), BIG_LEN);
    assert_eq!(bytes, big_expected());
    let s = results.iter().find(|r| r.spec == small.id).unwrap();
    assert_eq!(s.output, "hi\n");
    assert!(!s.output_truncated);
    assert_eq!(s.output_ref, None, "short output stays inline only");
    rt.stop();
}

#[tokio::test]
async fn large_output_survives_a_hub_outage_through_the_outbox() {
    let mut node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let check = command_spec(TargetKind::Host, "web-01", 1, &["sh", "-c", BIG_OUTPUT], 500, "h1");
    put_spec(&js, &check).await;
    let dir = tempfile::tempdir().unwrap();
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-web-01", Some("web-01"), dir.path())).await.unwrap();
    wait_status(&rt, Duration::from_secs(10), "spec held and online", |s| s.online && s.held.len() == 1).await;

    // The hub goes away; runs with large output pile up in the outbox.
    node.stop().await;
    let during =
        wait_status(&rt, Duration::from_secs(20), "large results buffered", |s| !s.online && s.outbox >= 4).await;
    assert!(during.outbox >= 4);
    node.restart().await.unwrap();
    let after = wait_status(&rt, Duration::from_secs(30), "outbox drained", |s| {
        s.online && s.outbox == 0 && s.runs > during.runs
    })
    .await;
    assert_eq!(after.refused, 0);
    rt.stop();

    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let (results, counts) = stored_results(&js).await;
    assert!(counts.values().all(|n| *n == 1), "a result stored twice: {counts:?}");
    let mine: Vec<&ResultRecord> = results.iter().filter(|r| r.spec == check.id).collect();
    assert!(mine.len() as u64 >= during.outbox, "{} stored, {} were buffered", mine.len(), during.outbox);
    let expected = big_expected();
    for r in mine {
        check_big_result(r);
        assert_eq!(output_bytes(&js, r).await, expected, "output of {}", r.idempotency_key());
    }
    drop(hub);
}

#[tokio::test]
async fn cleanly_stopped_runtime_releases_its_pool_specs_at_once() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let ttl = Duration::from_secs(30);
    let _hub = start_hub(&url, ttl).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let specs: Vec<JobSpec> = (0..10).map(|i| command_spec(TargetKind::Pool, "p", i, &["true"], 500, "h1")).collect();
    for s in &specs {
        put_spec(&js, s).await;
    }
    let host_spec = command_spec(TargetKind::Host, "web-01", 99, &["true"], 500, "h1");
    put_spec(&js, &host_spec).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, a_join) = RuntimeHandle::start(runtime_args(&url, "rt-web-01", Some("web-01"), dir.path())).await.unwrap();
    wait_status(&a, Duration::from_secs(10), "rt-web-01 holds everything", |s| s.held.len() == 11).await;
    let mut b_args = runtime_args(&url, "rt-b", None, dir.path());
    b_args.renew_every = Some(Duration::from_secs(10)); // b learns of released specs through the notice
    let (b, _) = RuntimeHandle::start(b_args).await.unwrap();
    wait_status(&b, Duration::from_secs(10), "rt-b online", |s| s.online).await;
    assert!(b.status().await.unwrap().held.is_empty());

    let stopped = Instant::now();
    a.stop();
    a_join.await.unwrap();
    let s = wait_status(&b, Duration::from_secs(5), "rt-b takes the released pool specs", |s| s.held.len() == 10).await;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "hand-over took {took:?} (TTL {ttl:?})");
    assert!(!s.held.contains_key(&host_spec.id), "a host spec goes to no other runtime");
    assert!(s.held.values().all(|e| *e == 2), "epochs bumped: {:?}", s.held);

    // The stopped runtime kept its host spec (and only that) for the next start.
    let store =
        steward_storage::runtime::RuntimeStore::open(&dir.path().join("rt-web-01").join("runtime.redb")).unwrap();
    let cached: Vec<String> = store.specs().unwrap().into_iter().map(|c| c.spec.id).collect();
    assert_eq!(cached, vec![host_spec.id.clone()]);
    b.stop();
}

#[tokio::test]
async fn result_is_sent_without_its_output_when_the_outputs_stream_keeps_refusing() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let _hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    // The hub answers, but there is no outputs stream to store in.
    js.delete_stream(streams::OUTPUTS_STREAM).await.unwrap();
    let big = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", BIG_OUTPUT], 60_000, "h1");
    put_spec(&js, &big).await;
    let dir = tempfile::tempdir().unwrap();
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-a", None, dir.path())).await.unwrap();
    let s = wait_status(&rt, Duration::from_secs(30), "result delivered after the upload attempts", |s| {
        s.delivered >= 1 && s.outbox == 0
    })
    .await;
    assert!(s.online, "the outputs stream refusing does not make the hub count as away");
    let (results, _) = stored_results(&js).await;
    let r = results.iter().find(|r| r.spec == big.id).unwrap();
    assert_eq!(r.output_ref, None);
    assert_eq!(r.output.len(), MAX_INLINE_OUTPUT, "the inline head is kept");
    assert!(r.output_truncated);
    assert!(r.message.contains("full output not stored"), "{}", r.message);
    rt.stop();
}

#[tokio::test]
async fn edge_behind_a_leaf_stores_large_output_in_the_hub_stream() {
    let topo = steward_deploy::HubLeaf::start().await.unwrap();
    let hub_url = topo.hub().client_url();
    let _hub = start_hub(&hub_url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&hub_url).await.unwrap());
    let check = command_spec(TargetKind::Host, "web-01", 1, &["sh", "-c", BIG_OUTPUT], 60_000, "h1");
    put_spec(&js, &check).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = runtime_args(&topo.leaf().client_url(), "rt-web-01", Some("web-01"), dir.path());
    args.hub_domain = Some("hub".into());
    let (rt, _) = RuntimeHandle::start(args).await.unwrap();
    wait_status(&rt, Duration::from_secs(20), "result delivered", |s| s.delivered >= 1 && s.outbox == 0).await;
    let (results, _) = stored_results(&js).await;
    let r = results.iter().find(|r| r.spec == check.id).unwrap();
    check_big_result(r);
    assert_eq!(output_bytes(&js, r).await, big_expected(), "the output is in the hub's stream");
    rt.stop();
}

/// A full output larger than the server's max payload is cut to what fits in one message, and
/// the result says so.
#[tokio::test]
async fn large_output_is_cut_to_the_servers_max_payload() {
    use steward_deploy::server::{NatsServer, ServerOptions};
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start(ServerOptions {
        data_dir: Some(tmp.path().join("nats")),
        extra_config: "max_payload: 65536".into(),
        ..ServerOptions::named("small-payload")
    })
    .await
    .unwrap();
    let url = server.client_url();
    let _hub = start_hub(&url, Duration::from_secs(5)).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let big = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", BIG_OUTPUT], 60_000, "h1");
    put_spec(&js, &big).await;
    let (rt, _) = RuntimeHandle::start(runtime_args(&url, "rt-a", None, tmp.path())).await.unwrap();
    wait_status(&rt, Duration::from_secs(15), "result delivered", |s| s.delivered >= 1 && s.outbox == 0).await;
    let (results, _) = stored_results(&js).await;
    let r = results.iter().find(|r| r.spec == big.id).unwrap();
    check_big_result(r);
    let bytes = output_bytes(&js, r).await;
    assert!(bytes.len() < 65536 && bytes.len() > 60_000, "cut to {} bytes", bytes.len());
    assert!(big_expected().starts_with(&bytes), "the cut output is the start of the output");
    let note = format!("full output cut to {} of {BIG_LEN} bytes", bytes.len());
    assert!(r.message.contains(&note), "{}", r.message);
    let outputs = js.get_stream(streams::OUTPUTS_STREAM).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(outputs, 1, "one output stored");
    rt.stop();
}

/// A standalone runtime given a file holding only an nkey user seed (what `steward creds issue`
/// writes, and what `steward runtime --creds` passes on) connects to a hub that requires nkey
/// authorization, leases its spec and delivers results.
#[tokio::test]
async fn runtime_connects_with_an_nkey_seed_file() {
    use steward_deploy::auth::{read_seed, AuthDir, IdentityKind};
    use steward_deploy::server::{NatsServer, ServerOptions};

    let tmp = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(tmp.path().join("auth"));
    let subjects = Subjects::new(account());
    let p = subjects.service_permissions();
    let svc = auth.issue("acme", IdentityKind::Service, "hub", p.publish.clone(), p.subscribe.clone()).unwrap();
    let rt_creds = auth.issue("acme", IdentityKind::Service, "runtime", p.publish, p.subscribe).unwrap();
    let hub_dir = tmp.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::copy(auth.authorization_file(), hub_dir.join("authorization.conf")).unwrap();
    let hub = NatsServer::start(ServerOptions {
        data_dir: Some(hub_dir),
        extra_config: "include \"authorization.conf\"".into(),
        ..ServerOptions::named("nkey-hub")
    })
    .await
    .unwrap();
    let url = hub.client_url();
    assert!(async_nats::connect(&url).await.is_err(), "the hub must refuse a client without credentials");

    let seed = read_seed(&svc.seed_file).unwrap().unwrap();
    let client = async_nats::ConnectOptions::with_nkey(seed).connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let args = LeaseArgs {
        client,
        subjects: subjects.clone(),
        config: LeaseConfig { ttl: Duration::from_secs(5), ..LeaseConfig::default() },
    };
    let _lease = Actor::spawn(None, LeaseService, args).await.unwrap().0;
    let spec = command_spec(TargetKind::Pool, "p", 1, &["sh", "-c", "echo ok"], 200, "h1");
    put_spec(&js, &spec).await;

    let dir = tempfile::tempdir().unwrap();
    let mut a = runtime_args(&url, "rt-nkey", None, dir.path());
    a.connect = ConnectOptions { creds: Some(rt_creds.seed_file.clone()), ..ConnectOptions::new(url.clone()) };
    let (rt, _) = RuntimeHandle::start(a).await.expect("a runtime with an nkey seed file starts");
    let s =
        wait_status(&rt, Duration::from_secs(10), "spec leased and results delivered over the nkey connection", |s| {
            s.online && s.held.len() == 1 && s.delivered >= 1
        })
        .await;
    assert!(s.held.contains_key(&spec.id));
    rt.stop();
}
