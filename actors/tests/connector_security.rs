//! Per-host identities and tenant isolation on a real hub whose authorization is rendered by
//! `steward_deploy::auth` from the subject lists in `steward_subjects`: with host A's
//! credentials the server refuses subscribing to host B's commands and publishing presence or
//! results as B; a leaf link carrying B's credentials cannot speak for A; a user of another
//! account cannot read this account's registry or call its API. An edge's runtime holding its
//! host's credentials leases that host's spec and gets its results stored through the fence;
//! with A's credentials no lease or result request acts as B, and B's results are all stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use steward_actors::connector::client::ConnectorClient;
use steward_actors::connector::{ConnectorArgs, ConnectorHandle};
use steward_actors::edge::{start_leaf, EdgeArgs, EdgeHandle, LeafConfig};
use steward_actors::lease::client::LeaseClient;
use steward_actors::lease::{LeaseArgs, LeaseConfig, LeaseService};
use steward_actors::results::client::{ResultQuery, ResultsClient};
use steward_actors::runtime::{RuntimeArgs, RuntimeHandle};
use steward_actors::ConnectOptions;
use steward_deploy::auth::{read_seed, AuthDir, IdentityKind, Issued};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::{CommandAction, CommandStatus, Heartbeat, SendCommandRequest};
use steward_subjects::api::lease::{LeaseReply, LeaseRequest, LeasesRequest, RenewRequest};
use steward_subjects::api::result::{
    stored_msg_id, ResultRecord, ResultStatus, SubmitRequest, SubmitStatus, MAX_INLINE_OUTPUT,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{CommandExecutor, Executor, JobSpec, SpecId, SpecTarget, TargetKind};
use steward_subjects::rpc::{self, RequestErrorKind};
use steward_subjects::streams::{self, Replicas, HOSTS_BUCKET, JOBSPECS_BUCKET};
use steward_subjects::subject::{jobspec_key, kv_subject, IdentityEndpoint, OutputRef};
use steward_subjects::{AccountId, ErrorCode, HostId, RuntimeId, Subjects, Token, TokenKind};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

fn subjects(account: &str) -> Subjects {
    Subjects::new(AccountId::parse(account).unwrap())
}

fn host(id: &str) -> HostId {
    HostId::parse(id).unwrap()
}

fn rt(id: &str) -> RuntimeId {
    RuntimeId::parse(id).unwrap()
}

fn issue_host(auth: &AuthDir, account: &str, id: &str) -> Issued {
    let p = subjects(account).host_permissions(&host(id));
    auth.issue(account, IdentityKind::Host, id, p.publish, p.subscribe).unwrap()
}

fn issue_service(auth: &AuthDir, account: &str) -> Issued {
    let p = subjects(account).service_permissions();
    auth.issue(account, IdentityKind::Service, "hub", p.publish, p.subscribe).unwrap()
}

async fn connect_seed(
    url: &str,
    seed_file: &Path,
    inbox: Option<String>,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seed = read_seed(seed_file).unwrap().unwrap();
    let mut opts = async_nats::ConnectOptions::with_nkey(seed).event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string().to_lowercase());
            }
        }
    });
    if let Some(prefix) = inbox {
        opts = opts.custom_inbox_prefix(prefix);
    }
    (opts.connect(url).await.unwrap(), rx)
}

async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {what} {subject}"))
            .unwrap();
        if e.contains("permissions violation") && e.contains(what) && e.contains(&subject.to_lowercase()) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_credentials_and_account_isolation() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(tmp.path().join("auth"));
    let svc = issue_service(&auth, "acme");
    let a = issue_host(&auth, "acme", "host-a");
    let b = issue_host(&auth, "acme", "host-b");
    let globex_svc = issue_service(&auth, "globex");
    let hub = authorized_hub(&auth, tmp.path(), |o| ServerOptions {
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        ..o
    })
    .await;
    let url = hub.client_url();
    let acme = subjects("acme");

    // The acme control plane: streams and connector, as the acme service identity.
    let (svc_client, _) = connect_seed(&url, &svc.seed_file, None).await;
    streams::ensure(&jetstream::new(svc_client.clone()), Replicas::One).await.unwrap();
    let mut args = ConnectorArgs::new(svc_client.clone(), acme.clone());
    args.sweep_every = Duration::from_millis(50);
    let (connector, _) = ConnectorHandle::start(args).await.unwrap();
    let api = ConnectorClient::new(svc_client.clone(), acme.clone());

    // Host A's agent straight to the hub with A's credentials: presence and commands work.
    let data = tmp.path().join("edges");
    let mut edge_a = EdgeArgs::new(
        ConnectOptions { creds: Some(a.seed_file.clone()), ..ConnectOptions::new(url.clone()) },
        acme.clone(),
        host("host-a"),
        data.join("a"),
    );
    edge_a.heartbeat = Duration::from_millis(200);
    let (agent_a, _) = EdgeHandle::start(edge_a).await.unwrap();
    eventually(WAIT, POLL, || async {
        api.status("host-a").await.map(|r| r.online).map_err(|e| e.to_string()).and_then(|o| {
            if o {
                Ok(())
            } else {
                Err("offline".into())
            }
        })
    })
    .await
    .unwrap();
    let pong = api
        .send(&SendCommandRequest {
            host_id: "host-a".into(),
            action: CommandAction::Ping,
            wait_ms: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pong.reply.map(|r| r.status), Some(CommandStatus::Ok));

    // A raw client holding A's credentials tries to act as B: the server refuses each attempt.
    let (as_a, mut errors) = connect_seed(&url, &a.seed_file, Some(acme.host_inbox_prefix(&host("host-a")))).await;
    let b_commands = acme.host_command(&host("host-b"));
    let _sub = as_a.subscribe(b_commands.clone()).await.unwrap();
    as_a.flush().await.unwrap();
    expect_violation(&mut errors, "subscription", &b_commands).await;
    let spoof = Heartbeat { host_id: "host-b".into(), interval_ms: 60_000, ..Heartbeat::default() };
    let b_heartbeat = acme.host_heartbeat(&host("host-b"));
    as_a.publish(b_heartbeat.clone(), codec::encode(Encoding::MsgPack, &spoof).unwrap()).await.unwrap();
    as_a.flush().await.unwrap();
    expect_violation(&mut errors, "publish", &b_heartbeat).await;
    let b_results = acme.result_put(&host("host-b"), &rt("host-b"));
    as_a.publish(b_results.clone(), "{}".into()).await.unwrap();
    as_a.flush().await.unwrap();
    expect_violation(&mut errors, "publish", &b_results).await;
    // Results enter storage only through the hub's epoch check: not even its own result subject.
    let a_results = acme.result_put(&host("host-a"), &rt("host-a"));
    as_a.publish(a_results.clone(), "{}".into()).await.unwrap();
    as_a.flush().await.unwrap();
    expect_violation(&mut errors, "publish", &a_results).await;
    // Nor can a host read the registry or call the operator API.
    let js_a = jetstream::ContextBuilder::new().timeout(Duration::from_millis(500)).build(as_a.clone());
    assert!(js_a.get_key_value(HOSTS_BUCKET).await.is_err(), "a host must not read the registry");
    assert!(ConnectorClient::new(as_a.clone(), acme.clone()).list("", None).await.is_err());
    assert!(api.status("host-b").await.is_err(), "spoofed presence must not register host B");

    // Host B through its own leaf node, the link carrying B's credentials.
    let leaf_cfg = LeafConfig {
        creds: Some(b.seed_file.clone()),
        ..LeafConfig::new(hub.leaf_url().unwrap(), tmp.path().join("leaf-b"))
    };
    let leaf = start_leaf(&host("host-b"), &leaf_cfg).await.unwrap();
    let mut edge_b = EdgeArgs::new(leaf_cfg.local_connect(&leaf), acme.clone(), host("host-b"), data.join("b"));
    edge_b.heartbeat = Duration::from_millis(200);
    edge_b.hub_domain = Some("hub".into());
    let (agent_b, _) = EdgeHandle::start(edge_b).await.unwrap();
    eventually(WAIT, POLL, || async {
        api.status("host-b").await.map(|r| r.online).map_err(|e| e.to_string()).and_then(|o| {
            if o {
                Ok(())
            } else {
                Err("offline".into())
            }
        })
    })
    .await
    .unwrap();
    let installed = api.ensure_worker("host-b", "command", Duration::from_secs(10)).await.unwrap();
    assert_eq!(installed.worker, "command");

    // A process of host B on B's leaf may try to speak for A; the link only carries B's
    // subjects. The marker heartbeat for B, published after the spoof on the same connection,
    // proves the spoof had its chance to arrive.
    let local = steward_actors::connect(&leaf_cfg.local_connect(&leaf), "spoofer").await.unwrap();
    let spoof_a = Heartbeat {
        host_id: "host-a".into(),
        labels: BTreeMap::from([("spoofed".to_owned(), "yes".to_owned())]),
        interval_ms: 200,
        ..Heartbeat::default()
    };
    local
        .publish(acme.host_heartbeat(&host("host-a")), codec::encode(Encoding::MsgPack, &spoof_a).unwrap())
        .await
        .unwrap();
    let marker = Heartbeat {
        host_id: "host-b".into(),
        labels: BTreeMap::from([("marker".to_owned(), "1".to_owned())]),
        interval_ms: 200,
        incarnation: 1,
        ..Heartbeat::default()
    };
    let mut events = svc_client.subscribe(acme.host_event(&host("host-b"))).await.unwrap();
    local
        .publish(acme.host_heartbeat(&host("host-b")), codec::encode(Encoding::MsgPack, &marker).unwrap())
        .await
        .unwrap();
    local.flush().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while let Some(m) = events.next().await {
            let e: steward_subjects::api::host::HostEvent = codec::decode(Encoding::MsgPack, &m.payload).unwrap();
            if e.record.labels.contains_key("marker") {
                return;
            }
        }
    })
    .await
    .expect("marker heartbeat through the leaf never arrived");
    let a_now = api.status("host-a").await.unwrap();
    assert!(!a_now.labels.contains_key("spoofed"), "presence spoofed through B's leaf: {a_now:?}");

    // Tenant isolation: globex's service user sees its own registry, never acme's, and cannot
    // reach acme's API.
    let globex = subjects("globex");
    let (gx, mut gx_errors) = connect_seed(&url, &globex_svc.seed_file, None).await;
    let gx_js = jetstream::new(gx.clone());
    streams::ensure(&gx_js, Replicas::One).await.unwrap();
    let gx_kv = gx_js.get_key_value(HOSTS_BUCKET).await.unwrap();
    assert_eq!(gx_kv.get("acme.host-a").await.unwrap(), None);
    let keys: Vec<String> = gx_kv.keys().await.unwrap().filter_map(|k| async { k.ok() }).collect().await;
    assert!(keys.is_empty(), "globex sees registry keys {keys:?}");
    let acme_list = acme.host_list();
    let r: Result<serde_json::Value, _> = rpc::request(&gx, acme_list.clone(), &(), Duration::from_millis(500)).await;
    assert!(r.is_err());
    expect_violation(&mut gx_errors, "publish", &acme_list).await;
    let (gx_connector, _) = ConnectorHandle::start(ConnectorArgs::new(gx.clone(), globex.clone())).await.unwrap();
    assert!(ConnectorClient::new(gx.clone(), globex).list("", None).await.unwrap().hosts.is_empty());

    gx_connector.stop().await;
    agent_b.stop().await;
    agent_a.stop().await;
    connector.stop().await;
}

/// A host spec for `host` running `true` every 200 ms.
fn host_spec(host: &str) -> JobSpec {
    JobSpec {
        id: SpecId::derive("acme", "att-perm", TargetKind::Host, host).to_string(),
        account: "acme".into(),
        target: SpecTarget { kind: TargetKind::Host, id: host.into() },
        executor: Executor::Command(CommandExecutor { argv: vec!["true".into()], ..Default::default() }),
        interval_ms: 200,
        timeout_ms: 5_000,
        content_hash: "00000000000000000000000000006831".into(),
        ..JobSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_runtime_with_host_credentials_leases_its_specs_and_stores_results() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(tmp.path().join("auth"));
    let svc = issue_service(&auth, "acme");
    let a = issue_host(&auth, "acme", "host-a");
    let hub = authorized_hub(&auth, tmp.path(), |o| o).await;
    let url = hub.client_url();
    let acme = subjects("acme");

    // The hub side, as the service identity: streams, the lease leader, one spec for host-a.
    let (svc_client, _) = connect_seed(&url, &svc.seed_file, None).await;
    let js = jetstream::new(svc_client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let lease_args = LeaseArgs { client: svc_client.clone(), subjects: acme.clone(), config: LeaseConfig::default() };
    let (lease, _) = ractor::Actor::spawn(None, LeaseService, lease_args).await.unwrap();
    let signer = steward_actors::signing::JobSigner::from_seed([5; 32]);
    let mut signed = [host_spec("host-a")];
    steward_actors::spec_signing::sign_specs(&signer, &mut signed);
    let [spec] = signed;
    let key = jobspec_key(
        &AccountId::parse("acme").unwrap(),
        TargetKind::Host,
        &Token::parse(TokenKind::Name, "host-a").unwrap(),
        &spec.id.parse().unwrap(),
    );
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    kv.put(key, codec::encode(Encoding::MsgPack, &spec).unwrap()).await.unwrap();

    // Host-a's runtime, as `steward edge --host-id host-a --creds ...` starts it.
    let mut args = RuntimeArgs::new(
        ConnectOptions { creds: Some(a.seed_file.clone()), ..ConnectOptions::new(url.clone()) },
        acme.clone(),
        RuntimeId::parse("host-a").unwrap(),
        tmp.path().join("runtime-a"),
    );
    args.host = Some(host("host-a"));
    args.renew_every = Some(Duration::from_millis(300));
    args.trusted = steward_actors::spec_signing::TrustedKeys::new([signer.verifier()]);
    let (rt, _) = RuntimeHandle::start(args).await.unwrap();
    let results = ResultsClient::new(svc_client.clone(), acme.clone());
    let query = ResultQuery { spec: Some(spec.id.clone()), host: Some(host("host-a")), ..ResultQuery::default() };
    let stored = eventually(WAIT, POLL, || async {
        let status = rt.status().await.map_err(|e| e.to_string())?;
        let stored = results.query(&query).await.map_err(|e| e.to_string())?;
        if stored.is_empty() {
            Err(format!("no result stored yet; runtime: {status:?}"))
        } else {
            Ok((status, stored))
        }
    })
    .await
    .unwrap();
    assert!(stored.0.held.contains_key(&spec.id), "the spec is leased by host-a's runtime");
    assert_eq!(stored.0.refused, 0);
    assert!(stored.1.iter().all(|r| r.spec == spec.id && r.status == ResultStatus::Pass), "{:?}", stored.1);

    rt.stop();
    lease.stop(None);
}

/// Starts a hub with rendered authorization, the lease leader (as the service identity) and one
/// host spec per host; returns the hub, the service connection and the specs.
async fn fenced_hub(auth: &AuthDir, dir: &Path, hosts: &[&str]) -> (NatsServer, async_nats::Client, Vec<JobSpec>) {
    fenced_hub_with(auth, dir, hosts, host_spec).await
}

/// A hub nats-server in `dir/hub` that includes the authorization `auth` rendered, with
/// `adjust` applied to its options.
async fn authorized_hub(auth: &AuthDir, dir: &Path, adjust: impl FnOnce(ServerOptions) -> ServerOptions) -> NatsServer {
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::copy(auth.authorization_file(), hub_dir.join("authorization.conf")).unwrap();
    let opts = ServerOptions {
        data_dir: Some(hub_dir),
        extra_config: "include \"authorization.conf\"".into(),
        ..ServerOptions::named("hub")
    };
    NatsServer::start(adjust(opts)).await.unwrap()
}

/// As [`fenced_hub`], with the spec of each host made by `spec`.
async fn fenced_hub_with(
    auth: &AuthDir,
    dir: &Path,
    hosts: &[&str],
    spec: fn(&str) -> JobSpec,
) -> (NatsServer, async_nats::Client, Vec<JobSpec>) {
    let svc = issue_service(auth, "acme");
    let hub = authorized_hub(auth, dir, |o| o).await;
    let (svc_client, _) = connect_seed(&hub.client_url(), &svc.seed_file, None).await;
    let js = jetstream::new(svc_client.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let lease_args =
        LeaseArgs { client: svc_client.clone(), subjects: subjects("acme"), config: LeaseConfig::default() };
    ractor::Actor::spawn(None, LeaseService, lease_args).await.unwrap();
    let kv = js.get_key_value(JOBSPECS_BUCKET).await.unwrap();
    // Signed as the renderer signs them (one batch); the runtimes trust the signer.
    let mut specs: Vec<JobSpec> = hosts.iter().map(|h| spec(h)).collect();
    steward_actors::spec_signing::sign_specs(&fence_signer(), &mut specs);
    for (spec, h) in specs.iter().zip(hosts) {
        kv.put(spec_key(spec, h), codec::encode(Encoding::MsgPack, spec).unwrap()).await.unwrap();
    }
    (hub, svc_client, specs)
}

/// The hub signing key of the fenced hub's specs.
fn fence_signer() -> steward_actors::signing::JobSigner {
    steward_actors::signing::JobSigner::from_seed([7; 32])
}

fn spec_key(spec: &JobSpec, host: &str) -> String {
    jobspec_key(
        &AccountId::parse("acme").unwrap(),
        TargetKind::Host,
        &Token::parse(TokenKind::Name, host).unwrap(),
        &spec.id.parse().unwrap(),
    )
}

/// With host-a's identity: leasing or submitting as host-b (on b's subjects: the server refuses;
/// on a's own subjects with a body naming b: the hub refuses), publishing on any `result.put`,
/// pre-publishing b's next result message id, subscribing to b's commands and writing the spec
/// bucket are all refused, while host-b's runtime gets every result stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_cannot_lease_or_submit_as_host_b() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(tmp.path().join("auth"));
    let a = issue_host(&auth, "acme", "host-a");
    let b = issue_host(&auth, "acme", "host-b");
    let (hub, svc_client, specs) = fenced_hub(&auth, tmp.path(), &["host-a", "host-b"]).await;
    let (spec_a, spec_b) = (&specs[0], &specs[1]);
    let url = hub.client_url();
    let acme = subjects("acme");
    let lease = LeaseClient::new(svc_client.clone(), acme.clone());

    // Host-b's runtime, with b's credentials, leases its spec and stores results.
    let mut args = RuntimeArgs::new(
        ConnectOptions { creds: Some(b.seed_file.clone()), ..ConnectOptions::new(url.clone()) },
        acme.clone(),
        RuntimeId::parse("host-b").unwrap(),
        tmp.path().join("runtime-b"),
    );
    args.host = Some(host("host-b"));
    args.renew_every = Some(Duration::from_millis(300));
    args.trusted = steward_actors::spec_signing::TrustedKeys::new([fence_signer().verifier()]);
    let (rt_b, _) = RuntimeHandle::start(args).await.unwrap();
    let epoch_b = eventually(WAIT, POLL, || async {
        let status = rt_b.status().await.map_err(|e| e.to_string())?;
        match (status.held.get(&spec_b.id), status.delivered) {
            (Some(epoch), d) if d > 0 => Ok(*epoch),
            _ => Err(format!("host-b has not stored a result yet: {status:?}")),
        }
    })
    .await
    .unwrap();

    let (client_a, mut errors_a) =
        connect_seed(&url, &a.seed_file, Some(acme.host_inbox_prefix(&host("host-a")))).await;
    let as_a = LeaseClient::new(client_a.clone(), acme.clone()).with_timeout(Duration::from_millis(500));
    let (rt_a, rt_b_id) = (RuntimeId::parse("host-a").unwrap(), RuntimeId::parse("host-b").unwrap());
    let b_req = LeaseRequest { runtime: "host-b".into(), host: "host-b".into(), max: 10, ..Default::default() };

    // On b's subjects: the server refuses the publish, nobody answers.
    assert!(as_a.lease(&b_req).await.is_err());
    let b_lease = acme.identity_subject(IdentityEndpoint::Lease, Some(&host("host-b")), &rt_b_id);
    expect_violation(&mut errors_a, "publish", &b_lease).await;
    let forged = ResultRecord {
        spec: spec_b.id.clone(),
        epoch: epoch_b,
        seq: 1_000_000,
        runtime: "host-b".into(),
        host: "host-b".into(),
        status: ResultStatus::Fail,
        ..ResultRecord::default()
    };
    let req = SubmitRequest { results: vec![forged.clone()], ..Default::default() };
    assert!(as_a.submit(Some(&host("host-b")), &rt_b_id, &req).await.is_err());
    let b_submit = acme.identity_subject(IdentityEndpoint::Submit, Some(&host("host-b")), &rt_b_id);
    expect_violation(&mut errors_a, "publish", &b_submit).await;

    // On a's own subjects with a body naming b: the hub refuses `forbidden`.
    let a_lease = acme.identity_subject(IdentityEndpoint::Lease, Some(&host("host-a")), &rt_a);
    let r: Result<LeaseReply, _> = rpc::request(&client_a, a_lease.clone(), &b_req, Duration::from_secs(5)).await;
    assert_eq!(r.unwrap_err().kind(), RequestErrorKind::Remote(ErrorCode::Forbidden));
    let half = LeaseRequest { runtime: "host-a".into(), ..b_req.clone() };
    let r: Result<LeaseReply, _> = rpc::request(&client_a, a_lease.clone(), &half, Duration::from_secs(5)).await;
    assert_eq!(r.unwrap_err().kind(), RequestErrorKind::Remote(ErrorCode::Forbidden));
    let a_renew = acme.identity_subject(IdentityEndpoint::Renew, Some(&host("host-a")), &rt_a);
    let renew = RenewRequest { runtime: "host-b".into(), ..Default::default() };
    let r: Result<serde_json::Value, _> = rpc::request(&client_a, a_renew, &renew, Duration::from_secs(5)).await;
    assert_eq!(r.unwrap_err().kind(), RequestErrorKind::Remote(ErrorCode::Forbidden));
    let reply = as_a.submit(Some(&host("host-a")), &rt_a, &req).await.unwrap();
    assert_eq!(reply.outcomes[0].status, SubmitStatus::Refused);
    assert!(reply.outcomes[0].reason.starts_with("forbidden"), "{:?}", reply.outcomes);
    // As itself, for b's spec: not the holder.
    let own = ResultRecord { runtime: String::new(), host: String::new(), ..forged.clone() };
    let reply = as_a
        .submit(Some(&host("host-a")), &rt_a, &SubmitRequest { results: vec![own], ..Default::default() })
        .await
        .unwrap();
    assert!(reply.outcomes[0].reason.starts_with("conflict"), "{:?}", reply.outcomes);
    // As itself, for itself: its own spec is granted (the refusals above are about identity).
    let mine = LeaseRequest { runtime: "host-a".into(), host: "host-a".into(), max: 10, ..Default::default() };
    let granted = as_a.lease(&mine).await.unwrap();
    assert_eq!(granted.granted.iter().map(|g| g.spec.id.clone()).collect::<Vec<_>>(), vec![spec_a.id.clone()]);

    // No `result.put` at all, not even with b's next message id; not b's commands; not the
    // spec bucket.
    for h in ["host-a", "host-b"] {
        let put = acme.result_put(&host(h), &rt(h));
        let mut headers = async_nats::HeaderMap::new();
        let next = ResultRecord { seq: 1_000_000, ..forged.clone() }.idempotency_key();
        headers.insert("Nats-Msg-Id", stored_msg_id("host-b", &next).as_str());
        let payload = codec::encode(Encoding::MsgPack, &forged).unwrap();
        client_a.publish_with_headers(put.clone(), headers, payload).await.unwrap();
        expect_violation(&mut errors_a, "publish", &put).await;
    }
    let b_commands = acme.host_command(&host("host-b"));
    let _sub = client_a.subscribe(b_commands.clone()).await.unwrap();
    expect_violation(&mut errors_a, "subscription", &b_commands).await;
    let spec_subject = kv_subject(JOBSPECS_BUCKET, &spec_key(spec_b, "host-b"));
    client_a.publish(spec_subject.clone(), "x".into()).await.unwrap();
    expect_violation(&mut errors_a, "publish", &spec_subject).await;

    // Host-b's results are all stored, under b, by b, none refused; nothing of a's is among them.
    let status = eventually(WAIT, POLL, || async {
        let s = rt_b.status().await.map_err(|e| e.to_string())?;
        if s.delivered >= 3 && s.outbox == 0 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(status.refused, 0);
    let results = ResultsClient::new(svc_client.clone(), acme.clone());
    let query = ResultQuery { host: Some(host("host-b")), limit: 10_000, ..ResultQuery::default() };
    let stored = results.query(&query).await.unwrap();
    assert!(stored.len() as u64 >= status.delivered, "{} stored, {} delivered", stored.len(), status.delivered);
    assert!(stored.iter().all(|r| r.runtime == "host-b" && r.host == "host-b" && r.status == ResultStatus::Pass));
    let mut seqs: Vec<u64> = stored.iter().filter(|r| r.epoch == epoch_b).map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "b's results stored once each, none missing");
    let fence = lease.leases(&LeasesRequest::default()).await.unwrap().fence;
    assert!(fence.foreign_requests >= 3 && fence.foreign_results >= 1 && fence.stale_results >= 1, "{fence:?}");
    rt_b.stop();
}

/// Bytes the large-output spec prints: more than the 4 KiB kept inline.
const LARGE: usize = 20_000;

fn large_output_spec(host: &str) -> JobSpec {
    let argv = ["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' x"].map(str::to_owned).to_vec();
    JobSpec {
        executor: Executor::Command(CommandExecutor { argv, ..Default::default() }),
        interval_ms: 500,
        ..host_spec(host)
    }
}

/// Starts the runtime of `host` with its host credentials, trusting the fenced hub's signer.
async fn host_runtime(url: &str, issued: &Issued, h: &str, dir: &Path) -> RuntimeHandle {
    let mut args = RuntimeArgs::new(
        ConnectOptions { creds: Some(issued.seed_file.clone()), ..ConnectOptions::new(url.to_owned()) },
        subjects("acme"),
        RuntimeId::parse(h).unwrap(),
        dir.join(format!("runtime-{h}")),
    );
    args.host = Some(host(h));
    args.renew_every = Some(Duration::from_millis(300));
    args.trusted = steward_actors::spec_signing::TrustedKeys::new([fence_signer().verifier()]);
    RuntimeHandle::start(args).await.unwrap().0
}

/// The first stored result of `spec` that names a stored output, and that output's sequence.
async fn stored_output(results: &ResultsClient, spec: &JobSpec, h: &str) -> (ResultRecord, u64) {
    let query = ResultQuery { spec: Some(spec.id.clone()), host: Some(host(h)), ..ResultQuery::default() };
    eventually(WAIT, POLL, || async {
        let stored = results.query(&query).await.map_err(|e| e.to_string())?;
        let r = stored.into_iter().next().ok_or_else(|| format!("no result of {h} stored yet"))?;
        match r.output_ref.as_deref().map(OutputRef::parse) {
            Some(Some(OutputRef::Stream(seq))) => Ok((r, seq)),
            _ => Err(format!("result of {h} names no stored output: {:?} {:?}", r.output_ref, r.message)),
        }
    })
    .await
    .unwrap()
}

/// Under host credentials a runtime stores a full output longer than the inline head in
/// `STEWARD_OUTPUTS` on its own host's subject, and the result names it; it reads back whole.
/// Host-a cannot publish on host-b's output subject, and a result of host-a naming host-b's
/// output (or one that does not exist) is refused by the fence and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_outputs_are_stored_per_host_and_cannot_be_borrowed() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = AuthDir::new(tmp.path().join("auth"));
    let a = issue_host(&auth, "acme", "host-a");
    let b = issue_host(&auth, "acme", "host-b");
    let (hub, svc_client, specs) = fenced_hub_with(&auth, tmp.path(), &["host-a", "host-b"], large_output_spec).await;
    let (spec_a, spec_b) = (&specs[0], &specs[1]);
    let url = hub.client_url();
    let acme = subjects("acme");
    let rt_a = host_runtime(&url, &a, "host-a", tmp.path()).await;
    let rt_b = host_runtime(&url, &b, "host-b", tmp.path()).await;

    let results = ResultsClient::new(svc_client.clone(), acme.clone());
    let js = jetstream::new(svc_client.clone());
    let (r_a, seq_a) = stored_output(&results, spec_a, "host-a").await;
    let (_, seq_b) = stored_output(&results, spec_b, "host-b").await;
    assert_eq!(r_a.output.len(), MAX_INLINE_OUTPUT, "the head stays inline");
    assert!(r_a.output_truncated);
    for (seq, h) in [(seq_a, "host-a"), (seq_b, "host-b")] {
        let (subject, bytes) = streams::read_output(&js, seq).await.unwrap();
        assert_eq!(subject, acme.result_output(&host(h)));
        assert_eq!(bytes.as_ref(), vec![b'x'; LARGE].as_slice(), "the full output of {h} reads back whole");
    }

    // Host-a's identity may not publish on host-b's output subject.
    let (client_a, mut errors_a) =
        connect_seed(&url, &a.seed_file, Some(acme.host_inbox_prefix(&host("host-a")))).await;
    let b_outputs = acme.result_output(&host("host-b"));
    client_a.publish(b_outputs.clone(), "forged".into()).await.unwrap();
    expect_violation(&mut errors_a, "publish", &b_outputs).await;

    // A result of host-a for its own spec and epoch, naming b's output or none stored: refused.
    let as_a = LeaseClient::new(client_a.clone(), acme.clone());
    let rt_a_id = RuntimeId::parse("host-a").unwrap();
    let own = |seq: u64, output_ref: String| ResultRecord {
        seq,
        output_ref: Some(output_ref),
        runtime: String::new(),
        host: String::new(),
        ..r_a.clone()
    };
    let req = SubmitRequest {
        results: vec![
            own(1_000_000, format!("out:{seq_b}")),
            own(1_000_001, "out:999999".into()),
            own(1_000_002, "results/acme/other/1/1".into()),
            own(1_000_003, "nonsense".into()),
            own(1_000_004, format!("out:{seq_a}")),
        ],
        ..Default::default()
    };
    let reply = as_a.submit(Some(&host("host-a")), &rt_a_id, &req).await.unwrap();
    let statuses: Vec<(SubmitStatus, &str)> =
        reply.outcomes.iter().map(|o| (o.status, o.reason.split(':').next().unwrap_or(""))).collect();
    assert_eq!(
        statuses,
        vec![
            (SubmitStatus::Refused, "forbidden"),
            (SubmitStatus::Refused, "forbidden"),
            (SubmitStatus::Refused, "forbidden"),
            (SubmitStatus::Refused, "invalid"),
            (SubmitStatus::Stored, ""),
        ],
        "{:?}",
        reply.outcomes
    );
    let fence =
        LeaseClient::new(svc_client.clone(), acme.clone()).leases(&LeasesRequest::default()).await.unwrap().fence;
    assert_eq!((fence.foreign_outputs, fence.invalid_results), (3, 1), "{fence:?}");
    assert_eq!(rt_a.status().await.unwrap().refused, 0, "the runtimes' own results all pass the fence");
    assert_eq!(rt_b.status().await.unwrap().refused, 0);
    rt_a.stop();
    rt_b.stop();
}
