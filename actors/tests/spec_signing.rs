#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed job specs against a real hub (nats-server, lease service) and a real runtime: specs
//! written straight into the spec bucket unsigned, tampered after signing or re-targeted are
//! never executed (the marker file their command would create never appears) and are reported
//! as `refused: ...` results; a correctly signed spec runs. Key rotation: with two keys trusted
//! specs of both run; once the old key is retired its specs are refused, and re-signed with the
//! new key they run again.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use ractor::Actor;
use steward_actors::lease::{LeaseArgs, LeaseConfig, LeaseService};
use steward_actors::runtime::{RuntimeArgs, RuntimeHandle, RuntimeStatus};
use steward_actors::signing::JobSigner;
use steward_actors::spec_signing::{sign_specs, TrustedKeys};
use steward_actors::ConnectOptions;
use steward_deploy::{eventually, SingleNode};
use steward_subjects::api::result::{decode_stored, ResultRecord, ResultStatus};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, SpecId, SpecTarget, TargetKind};
use steward_subjects::streams::{self, Replicas, JOBSPECS_BUCKET, RESULTS_STREAM};
use steward_subjects::subject::jobspec_key;
use steward_subjects::{AccountId, HostId, RuntimeId, Subjects, Token, TokenKind};

const HOST: &str = "web-01";

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

/// A host spec for web-01 running `sh -c script` every 200 ms.
fn spec(n: usize, script: &str) -> JobSpec {
    JobSpec {
        id: SpecId::derive("acme", &format!("att-{n}"), TargetKind::Host, HOST).to_string(),
        account: "acme".into(),
        target: SpecTarget { kind: TargetKind::Host, id: HOST.into() },
        executor: Executor::Command(CommandExecutor {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }),
        interval_ms: 200,
        timeout_ms: 5_000,
        content_hash: format!("{n:032x}"),
        ..JobSpec::default()
    }
}

fn signed(signer: &JobSigner, s: &JobSpec) -> JobSpec {
    let mut v = [s.clone()];
    sign_specs(signer, &mut v);
    v[0].clone()
}

/// Writes `s` into the spec bucket as it is (as anyone allowed to write the bucket could).
async fn put_raw(js: &jetstream::Context, s: &JobSpec) {
    let key = jobspec_key(
        &account(),
        s.target.kind,
        &Token::parse(TokenKind::Name, &s.target.id).unwrap(),
        &s.id.parse().unwrap(),
    );
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    kv.put(key, codec::encode(Encoding::MsgPack, s).unwrap()).await.unwrap();
}

async fn hub(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let args = LeaseArgs {
        client,
        subjects: Subjects::new(account()),
        config: LeaseConfig { ttl: Duration::from_secs(5), ..LeaseConfig::default() },
    };
    let _ = Actor::spawn(None, LeaseService, args).await.unwrap();
    js
}

fn runtime_args(url: &str, dir: &Path, trusted: TrustedKeys) -> RuntimeArgs {
    let mut a = RuntimeArgs::new(
        ConnectOptions::new(url),
        Subjects::new(account()),
        RuntimeId::parse(HOST).unwrap(),
        dir.join("runtime"),
    );
    a.host = Some(HostId::parse(HOST).unwrap());
    a.renew_every = Some(Duration::from_millis(300));
    a.call_timeout = Duration::from_millis(1500);
    a.trusted = trusted;
    a
}

/// Every stored result.
async fn stored_results(js: &jetstream::Context) -> Vec<ResultRecord> {
    let stream = js.get_stream(RESULTS_STREAM).await.unwrap();
    let n = stream.get_info().await.unwrap().state.messages;
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let c = stream
        .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
        .await
        .unwrap();
    let mut msgs = c.fetch().max_messages(usize::try_from(n).unwrap()).messages().await.unwrap();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        out.extend(decode_stored(m.headers.as_ref(), &m.payload).unwrap());
    }
    out
}

/// Waits until `f` holds for the stored results.
async fn wait_results<F: Fn(&[ResultRecord]) -> bool>(js: &jetstream::Context, what: &str, f: F) -> Vec<ResultRecord> {
    eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        let r = stored_results(js).await;
        if f(&r) {
            Ok(r)
        } else {
            let last: Vec<String> =
                r.iter().rev().take(4).map(|x| format!("{} {:?} {}", x.spec, x.status, x.message)).collect();
            Err(format!("{what}: {} results stored, latest {last:?}", r.len()))
        }
    })
    .await
    .unwrap()
}

fn refusals<'a>(results: &'a [ResultRecord], spec: &JobSpec) -> Vec<&'a ResultRecord> {
    results.iter().filter(|r| r.spec == spec.id && r.error_kind == "refused").collect()
}

fn runs(results: &[ResultRecord], spec: &JobSpec) -> usize {
    results.iter().filter(|r| r.spec == spec.id && r.status == ResultStatus::Pass).count()
}

async fn status(rt: &RuntimeHandle) -> RuntimeStatus {
    rt.status().await.unwrap()
}

#[tokio::test]
async fn unsigned_tampered_and_retargeted_specs_never_run_and_are_reported() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let js = hub(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = |name: &str| dir.path().join(name);
    let touch = |name: &str| format!("touch {}", marker(name).display());
    let key = JobSigner::from_seed([11; 32]);

    let good = signed(&key, &spec(1, &touch("good")));
    let unsigned = spec(2, &touch("unsigned"));
    // Signed running `true`, then its command changed to create a marker.
    let mut tampered = signed(&key, &spec(3, "true"));
    tampered.executor = Executor::Command(CommandExecutor {
        argv: vec!["sh".into(), "-c".into(), touch("tampered")],
        ..Default::default()
    });
    // Signed for web-02, then rewritten to target web-01.
    let mut for_other = spec(4, &touch("retargeted"));
    for_other.target.id = "web-02".into();
    for_other.id = SpecId::derive("acme", "att-4", TargetKind::Host, "web-02").to_string();
    let mut retargeted = signed(&key, &for_other);
    retargeted.target.id = HOST.into();
    retargeted.id = SpecId::derive("acme", "att-4", TargetKind::Host, HOST).to_string();
    // Signed by a key the runtime does not know.
    let foreign = signed(&JobSigner::from_seed([12; 32]), &spec(5, &touch("foreign")));
    for s in [&good, &unsigned, &tampered, &retargeted, &foreign] {
        put_raw(&js, s).await;
    }

    let (rt, _) =
        RuntimeHandle::start(runtime_args(&url, dir.path(), TrustedKeys::new([key.verifier()]))).await.unwrap();
    let bad = [
        (&unsigned, "not signed"),
        (&tampered, "does not match"),
        (&retargeted, "does not match"),
        (&foreign, "does not trust"),
    ];
    let results = wait_results(&js, "good runs three times, each bad spec reported", |r| {
        runs(r, &good) >= 3 && bad.iter().all(|(s, _)| !refusals(r, s).is_empty())
    })
    .await;
    assert!(marker("good").exists(), "the signed spec ran");
    for name in ["unsigned", "tampered", "retargeted", "foreign"] {
        assert!(!marker(name).exists(), "{name} spec was executed");
    }
    for (s, why) in bad {
        let refused = refusals(&results, s);
        assert_eq!(refused.len(), 1, "reported once per spec version: {refused:?}");
        let r = refused[0];
        assert_eq!(r.status, ResultStatus::Error);
        assert!(r.message.starts_with("refused: ") && r.message.contains(why), "{}", r.message);
        assert_eq!(r.host, HOST);
        assert_eq!(r.epoch, 1);
        assert!(results.iter().filter(|x| x.spec == s.id).all(|x| x.error_kind == "refused"), "{s:?} ran");
    }
    let st = status(&rt).await;
    assert_eq!(st.specs_refused, 4, "{st:?}");
    assert_eq!(st.scheduled, vec![good.id.clone()]);
    rt.stop();
}

#[tokio::test]
async fn a_retired_key_is_refused_and_a_newly_added_key_accepted() {
    let node = SingleNode::start().await.unwrap();
    let url = node.client_url();
    let js = hub(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let old = JobSigner::init_dir(&dir.path().join("old")).unwrap();
    let new = JobSigner::init_dir(&dir.path().join("new")).unwrap();
    let (old_key, new_key) = (JobSigner::load(&old.secret).unwrap(), JobSigner::load(&new.secret).unwrap());
    // Both keys in one trusted file, as during a rotation.
    let both = dir.path().join("trusted.pub");
    let text = [&old.public, &new.public].map(|p| std::fs::read_to_string(p).unwrap()).concat();
    std::fs::write(&both, text).unwrap();
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let append = |name: &str| format!("echo run >> {}", log(name).display());
    let lines = |name: &str| std::fs::read_to_string(log(name)).map_or(0, |t| t.lines().count());

    let by_old = spec(1, &append("old"));
    let by_new = spec(2, &append("new"));
    put_raw(&js, &signed(&old_key, &by_old)).await;
    put_raw(&js, &signed(&new_key, &by_new)).await;
    let trusted = TrustedKeys::load(&[both]).unwrap();
    let (rt, join) = RuntimeHandle::start(runtime_args(&url, dir.path(), trusted)).await.unwrap();
    wait_results(&js, "specs of both keys run", |r| runs(r, &by_old) >= 2 && runs(r, &by_new) >= 2).await;
    rt.stop();
    join.await.unwrap();

    // The old key retired: the runtime restarts trusting only the new one.
    let trusted = TrustedKeys::load(std::slice::from_ref(&new.public)).unwrap();
    let (rt, join) = RuntimeHandle::start(runtime_args(&url, dir.path(), trusted)).await.unwrap();
    let results = wait_results(&js, "old key's spec refused", |r| !refusals(r, &by_old).is_empty()).await;
    let r = refusals(&results, &by_old)[0];
    assert!(r.message.contains(&format!("signed by key {}", old.key_id)), "{}", r.message);
    let old_runs = lines("old");
    let new_runs = lines("new");
    eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        if lines("new") >= new_runs + 3 {
            Ok(())
        } else {
            Err("new key's spec keeps running")
        }
    })
    .await
    .unwrap();
    assert_eq!(lines("old"), old_runs, "a spec signed by the retired key ran");
    assert_eq!(status(&rt).await.specs_refused, 1);

    // Re-signed with the new key (what a re-render does), it runs again.
    put_raw(&js, &signed(&new_key, &by_old)).await;
    eventually(Duration::from_secs(10), Duration::from_millis(100), || async {
        if lines("old") > old_runs {
            Ok(())
        } else {
            Err("re-signed spec runs")
        }
    })
    .await
    .unwrap();
    rt.stop();
    join.await.unwrap();
}
