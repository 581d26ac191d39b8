//! Decentralized JWT auth on a real nats-server in operator mode: identities issued by
//! [`Authority`] with the permission lists of `steward-subjects`, accounts and revocations
//! pushed to the running server's full resolver (never restarted).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use steward_deploy::authority::{Authority, IssueRequest, Kind};
use steward_deploy::{eventually, NatsServer, ServerOptions};
use steward_subjects::subject::OperatorRole;
use steward_subjects::{AccountId, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

struct Fixture {
    _tmp: tempfile::TempDir,
    auth: Authority,
    server: NatsServer,
}

async fn operator_mode() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let auth = Authority::open(tmp.path().join("auth")).unwrap();
    // Accounts issued before the start are preloaded; later ones are pushed.
    issue(&auth, "acme", Kind::Service, "hub", None);
    let extra_config = auth.server_config(&tmp.path().join("resolver")).unwrap();
    let server = NatsServer::single(ServerOptions { extra_config, ..ServerOptions::named("jwt") }).await.unwrap();
    Fixture { _tmp: tmp, auth, server }
}

fn subjects(account: &str) -> Subjects {
    Subjects::new(AccountId::parse(account).unwrap())
}

fn issue(auth: &Authority, account: &str, kind: Kind, name: &str, role: Option<OperatorRole>) -> (PathBuf, String) {
    let s = subjects(account);
    let perms = match (kind, role) {
        (Kind::Host, _) => s.host_permissions(&HostId::parse(name).unwrap()),
        (Kind::Operator, Some(role)) => s.operator_permissions(role),
        _ => s.service_permissions(),
    };
    let req = IssueRequest {
        account: account.into(),
        kind,
        name: name.into(),
        role: role.map(|r| r.as_str().to_owned()),
        publish: perms.publish,
        subscribe: perms.subscribe,
    };
    let issued = auth.issue(&req).unwrap();
    (issued.creds_file, issued.account_jwt)
}

type Events = Arc<Mutex<Vec<String>>>;

async fn connect(url: &str, creds: &Path, inbox: Option<String>) -> Result<(async_nats::Client, Events), String> {
    let events: Events = Arc::default();
    let sink = events.clone();
    let mut opts = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .event_callback(move |e| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(e.to_string().to_lowercase()) }
        });
    if let Some(prefix) = inbox {
        opts = opts.custom_inbox_prefix(prefix);
    }
    opts.connect(url).await.map(|c| (c, events)).map_err(|e| e.to_string())
}

async fn violation(events: &Events, subject: &str) {
    let want = format!("permissions violation for publish to \"{}\"", subject.to_lowercase());
    eventually(WAIT, POLL, || {
        let seen = events.lock().unwrap().clone();
        let want = want.clone();
        async move {
            if seen.iter().any(|e| e.contains(&want)) {
                Ok(())
            } else {
                Err(format!("{want} not in {seen:?}"))
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_refused_host_limited_jetstream_works_accounts_isolated() {
    let f = operator_mode().await;
    let url = f.server.client_url();
    let anon = async_nats::ConnectOptions::new().connect(&url).await;
    assert!(anon.is_err(), "anonymous connection accepted");

    let hub_creds = f.auth.root().join("accounts/acme/services/hub.creds");
    let (hub, _) = connect(&url, &hub_creds, None).await.unwrap();
    let s = subjects("acme");
    let mut beats = hub.subscribe(s.host_heartbeat_all()).await.unwrap();
    hub.flush().await.unwrap();

    let a = HostId::parse("web-01").unwrap();
    let b = HostId::parse("web-02").unwrap();
    let (creds, _) = issue(&f.auth, "acme", Kind::Host, "web-01", None);
    let (host, events) = connect(&url, &creds, Some(s.host_inbox_prefix(&a))).await.unwrap();
    host.publish(s.host_heartbeat(&b), "forged".into()).await.unwrap();
    host.publish(s.host_heartbeat(&a), "mine".into()).await.unwrap();
    host.flush().await.unwrap();
    violation(&events, &s.host_heartbeat(&b)).await;
    let got = tokio::time::timeout(WAIT, beats.next()).await.unwrap().unwrap();
    assert_eq!((got.subject.as_str(), got.payload.as_ref()), (s.host_heartbeat(&a).as_str(), &b"mine"[..]));

    // JetStream is enabled in the tenant account: the service creates a stream and stores.
    let js = jetstream::new(hub.clone());
    let cfg = stream::Config { name: "JWT_T".into(), subjects: vec![format!("{}", s.all())], ..Default::default() };
    js.create_stream(cfg).await.unwrap();
    js.publish(s.host_heartbeat(&a), "stored".into()).await.unwrap().await.unwrap();

    // A second account sees nothing of the first, even allowed every subject.
    let other = f
        .auth
        .issue(&IssueRequest {
            account: "globex".into(),
            kind: Kind::Service,
            name: "hub".into(),
            role: None,
            publish: vec![">".into()],
            subscribe: vec![">".into()],
        })
        .unwrap();
    f.auth.push(&url, &other.account_jwt).await.unwrap();
    let (spy, _) = connect(&url, &other.creds_file, None).await.unwrap();
    let mut all = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    hub.publish(s.host_heartbeat(&a), "secret".into()).await.unwrap();
    hub.flush().await.unwrap();
    spy.publish("probe.end", "".into()).await.unwrap();
    let first = tokio::time::timeout(WAIT, all.next()).await.unwrap().unwrap();
    assert_eq!(first.subject.as_str(), "probe.end", "globex saw acme traffic");
    let spy_js = jetstream::new(spy);
    assert!(spy_js.get_stream("JWT_T").await.is_err(), "globex sees acme's stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_host_is_cut_off_within_5s_and_new_tenants_need_no_restart() {
    let f = operator_mode().await;
    let url = f.server.client_url();
    let pid = f.server.pid().unwrap();
    let s = subjects("acme");
    let a = HostId::parse("web-01").unwrap();
    let (creds, _) = issue(&f.auth, "acme", Kind::Host, "web-01", None);
    let (host, events) = connect(&url, &creds, Some(s.host_inbox_prefix(&a))).await.unwrap();
    host.publish(s.host_heartbeat(&a), "up".into()).await.unwrap();
    host.flush().await.unwrap();

    let started = Instant::now();
    let (record, account_jwt) = f.auth.revoke("acme", Kind::Host, "web-01").unwrap();
    assert!(record.revoked.is_some());
    f.auth.push(&url, &account_jwt).await.unwrap();
    let creds2 = creds.clone();
    let url2 = url.clone();
    eventually(Duration::from_secs(5), POLL, || {
        let seen = events.lock().unwrap().clone();
        let (creds, url) = (creds2.clone(), url2.clone());
        async move {
            if !seen.iter().any(|e| e == "disconnected") {
                return Err(format!("still connected: {seen:?}"));
            }
            match connect(&url, &creds, None).await {
                Ok(_) => Err("revoked creds accepted".to_owned()),
                Err(e) => Ok(e),
            }
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    println!("revoked host disconnected and refused after {took:?}");
    assert!(took < Duration::from_secs(5));
    assert_eq!(f.server.pid(), Some(pid), "server restarted");

    // A tenant created after the server started: pushed, then usable with JetStream.
    let (creds, account_jwt) = issue(&f.auth, "initech", Kind::Service, "hub", None);
    assert!(connect(&url, &creds, None).await.is_err(), "unknown account accepted before the push");
    f.auth.push(&url, &account_jwt).await.unwrap();
    let (svc, _) = connect(&url, &creds, None).await.unwrap();
    let js = jetstream::new(svc);
    let t = subjects("initech");
    let cfg = stream::Config { name: "LATE".into(), subjects: vec![t.all()], ..Default::default() };
    js.create_stream(cfg).await.unwrap();
    js.publish(t.health_status(), "x".into()).await.unwrap().await.unwrap();
    assert_eq!(f.server.pid(), Some(pid), "server restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_reads_but_cannot_apply_or_dispatch() {
    let f = operator_mode().await;
    let url = f.server.client_url();
    let s = subjects("acme");
    let (hub, _) = connect(&url, &f.auth.root().join("accounts/acme/services/hub.creds"), None).await.unwrap();
    let mut list = hub.subscribe(s.host_list()).await.unwrap();
    let mut apply = hub.subscribe(s.config_apply()).await.unwrap();
    hub.flush().await.unwrap();
    let answer = tokio::spawn(async move {
        let msg = list.next().await.unwrap();
        hub.publish(msg.reply.unwrap(), "hosts".into()).await.unwrap();
        hub.flush().await.unwrap();
        hub
    });
    let (creds, _) = issue(&f.auth, "acme", Kind::Operator, "ann", Some(OperatorRole::Viewer));
    let (viewer, events) = connect(&url, &creds, None).await.unwrap();
    let reply = tokio::time::timeout(WAIT, viewer.request(s.host_list(), "".into())).await.unwrap().unwrap();
    assert_eq!(reply.payload.as_ref(), b"hosts");
    let _hub = answer.await.unwrap();
    for write in [s.config_apply(), s.run_dispatch()] {
        viewer.publish(write.clone(), "{}".into()).await.unwrap();
        viewer.flush().await.unwrap();
        violation(&events, &write).await;
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), apply.next()).await.is_err(), "apply reached the hub");

    // `steward results` as a viewer: an ordered consumer on the results stream reads what the
    // hub stored; creating or deleting streams is refused.
    let hub_js = jetstream::new(_hub.clone());
    let results = steward_subjects::streams::RESULTS_STREAM;
    let cfg = stream::Config { name: results.into(), subjects: vec![s.result_put_all()], ..Default::default() };
    hub_js.create_stream(cfg).await.unwrap();
    let put = s.result_put(&HostId::parse("web-01").unwrap(), &steward_subjects::RuntimeId::parse("web-01").unwrap());
    hub_js.publish(put.clone(), "r1".into()).await.unwrap().await.unwrap();
    let js = jetstream::new(viewer.clone());
    let consumer = js
        .get_stream(results)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: viewer.new_inbox(),
            filter_subject: s.result_put_all(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let m = tokio::time::timeout(WAIT, msgs.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((m.subject.as_str(), m.payload.as_ref()), (put.as_str(), &b"r1"[..]));
    let mut js = js;
    js.set_timeout(Duration::from_secs(1));
    let cfg = stream::Config { name: "EVIL".into(), subjects: vec!["evil.>".into()], ..Default::default() };
    assert!(tokio::time::timeout(WAIT, js.create_stream(cfg)).await.unwrap().is_err(), "viewer created a stream");
    assert!(tokio::time::timeout(WAIT, js.delete_stream(results)).await.unwrap().is_err(), "viewer deleted a stream");
    // An admin may apply.
    let (creds, _) = issue(&f.auth, "acme", Kind::Operator, "root", Some(OperatorRole::Admin));
    let (admin, _) = connect(&url, &creds, None).await.unwrap();
    admin.publish(s.config_apply(), "{}".into()).await.unwrap();
    admin.flush().await.unwrap();
    assert!(tokio::time::timeout(WAIT, apply.next()).await.unwrap().is_some());
}

#[tokio::test]
async fn creds_readable_by_others_are_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let auth = Authority::open(tmp.path()).unwrap();
    let (creds, _) = issue(&auth, "acme", Kind::Host, "web-01", None);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = steward_deploy::auth::read_seed(&creds).unwrap_err().to_string();
    assert!(e.contains(&format!("permissions 0644 for '{}' are too open", creds.display())), "{e}");
    // The system user's creds, used to push, are checked the same way.
    std::fs::set_permissions(auth.system_creds(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = auth.push("nats://127.0.0.1:1", &auth.account_jwt("acme").unwrap()).await.unwrap_err().to_string();
    assert!(e.contains(&auth.system_creds().display().to_string()) && e.contains("too open"), "{e}");
}

#[test]
fn hub_jwt_conf_with_rendered_server_conf_is_valid() {
    let work = tempfile::tempdir().unwrap();
    let auth = Authority::open(work.path().join("auth")).unwrap();
    issue(&auth, "acme", Kind::Service, "hub", None);
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/hub-jwt.conf");
    std::fs::copy(source, work.path().join("hub-jwt.conf")).unwrap();
    std::fs::copy(auth.server_config_file(), work.path().join("server.conf")).unwrap();
    let output = std::process::Command::new(steward_deploy::find_nats_server().unwrap())
        .current_dir(work.path())
        .args(["-t", "-c", "hub-jwt.conf"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && out.contains("is valid"), "{out}");
}
