//! The connector and edge agents on real servers: an edge through a leaf node shows up online
//! on the hub; cutting the leaf link marks it offline within two heartbeat intervals; restoring
//! it brings it back with the same identity; commands sent while it was away are delivered
//! once; ensure-worker succeeds and fails clearly; a clean stop is offline at once; a restarted
//! agent keeps its identity; malformed heartbeats and hostile API input are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use steward_actors::connector::client::ConnectorClient;
use steward_actors::connector::{ConnectorArgs, ConnectorHandle};
use steward_actors::edge::{start_leaf, EdgeArgs, EdgeHandle, LeafConfig};
use steward_actors::ConnectOptions;
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::host::{
    CommandAction, CommandStatus, Heartbeat, HostEvent, HostEventKind, HostRecord, SendCommandRequest,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::streams::{self, Replicas, HOST_COMMANDS_STREAM, HOST_EVENTS_STREAM};
use steward_subjects::{AccountId, ErrorCode, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

fn acme() -> Subjects {
    Subjects::new(AccountId::parse("acme").unwrap())
}

struct Hub {
    server: NatsServer,
    client: async_nats::Client,
    connector: ConnectorHandle,
    api: ConnectorClient,
}

async fn hub(leaf: bool) -> Hub {
    let opts =
        ServerOptions { jetstream_domain: Some("hub".into()), leafnode_listen: leaf, ..ServerOptions::named("hub") };
    let server = NatsServer::start(opts).await.unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    streams::ensure(&jetstream::new(client.clone()), Replicas::One).await.unwrap();
    let mut args = ConnectorArgs::new(client.clone(), acme());
    args.sweep_every = Duration::from_millis(25);
    let (connector, _join) = ConnectorHandle::start(args).await.unwrap();
    let api = ConnectorClient::new(client.clone(), acme());
    Hub { server, client, connector, api }
}

fn edge_args(url: &str, host: &str, data: &std::path::Path, interval: Duration) -> EdgeArgs {
    let mut args = EdgeArgs::new(ConnectOptions::new(url), acme(), HostId::parse(host).unwrap(), data.to_path_buf());
    args.heartbeat = interval;
    args.labels = BTreeMap::from([("env".to_owned(), "test".to_owned()), ("zone".to_owned(), "a".to_owned())]);
    args
}

async fn wait_record(api: &ConnectorClient, host: &str, what: &str, f: impl Fn(&HostRecord) -> bool) -> HostRecord {
    eventually(WAIT, POLL, || async {
        let r = api.status(host).await.map_err(|e| e.to_string())?;
        if f(&r) {
            Ok(r)
        } else {
            Err(format!("{host} not {what} yet: {r:?}"))
        }
    })
    .await
    .unwrap()
}

/// Every event of one host in the events stream, in order.
async fn events(client: &async_nats::Client, host: &str) -> Vec<HostEvent> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(HOST_EVENTS_STREAM).await.unwrap();
    let filter = acme().host_event(&HostId::parse(host).unwrap());
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig { filter_subject: filter, ..Default::default() })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.unwrap();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        out.push(codec::decode::<HostEvent>(Encoding::MsgPack, &m.payload).unwrap());
        if m.info().unwrap().pending == 0 {
            break;
        }
    }
    out
}

fn send(host: &str, action: CommandAction, worker: &str, ttl_ms: u64, wait_ms: u64) -> SendCommandRequest {
    SendCommandRequest { host_id: host.into(), action, worker: worker.into(), ttl_ms, wait_ms }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_through_a_leaf_presence_commands_and_workers() {
    let hub = hub(true).await;
    let data = tempfile::tempdir().unwrap();
    let host = HostId::parse("web-01").unwrap();
    let leaf_cfg = LeafConfig::new(hub.server.leaf_url().unwrap(), data.path().join("leaf"));
    let mut leaf = start_leaf(&host, &leaf_cfg).await.unwrap();
    let interval = Duration::from_millis(400);
    let mut args = edge_args(&leaf.client_url(), "web-01", &data.path().join("edge"), interval);
    args.connect = leaf_cfg.local_connect(&leaf);
    args.hub_domain = Some("hub".into());
    let (edge, _join) = EdgeHandle::start(args).await.unwrap();

    // Online on the hub, with labels, facts and the worker catalog.
    let first = wait_record(&hub.api, "web-01", "online", |r| r.online).await;
    assert_eq!(first.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(first.facts.os, std::env::consts::OS);
    assert!(first.available_workers.contains_key("command") && first.available_workers.contains_key("playbook"));
    assert!(first.workers.is_empty());
    let listed = hub.api.list("env=test,zone in (a,b)", Some(true)).await.unwrap();
    assert_eq!(listed.hosts.iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>(), vec!["web-01"]);
    assert!(hub.api.list("zone notin (a)", None).await.unwrap().hosts.is_empty());
    assert!(hub.api.list("", Some(false)).await.unwrap().hosts.is_empty());

    // ensure-worker: success for an installable worker, a clear failure for an unknown one.
    let ok = hub.api.ensure_worker("web-01", "command", Duration::from_secs(10)).await.unwrap();
    assert!(!ok.already_present && ok.command_id.is_some(), "{ok:?}");
    let again = hub.api.ensure_worker("web-01", "command", Duration::from_secs(10)).await.unwrap();
    assert!(again.already_present);
    let err = hub.api.ensure_worker("web-01", "nosuch", Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{err}");
    assert!(err.to_string().contains("cannot install worker \"nosuch\""), "{err}");
    wait_record(&hub.api, "web-01", "showing the command worker", |r| r.workers.contains_key("command")).await;

    // Cut the leaf link: offline within two heartbeat intervals.
    let cut = Instant::now();
    leaf.stop().await;
    let off = wait_record(&hub.api, "web-01", "offline", |r| !r.online).await;
    let detected = cut.elapsed();
    println!("offline detected {detected:?} after the leaf link was cut (interval {interval:?})");
    assert!(detected <= interval * 2, "offline after {detected:?}, more than two intervals");
    assert_eq!(off.offline_reason.as_deref(), Some("missed heartbeats"));

    // Commands sent while it is away: one that waits for it, one that expires first.
    let ping = hub.api.send(&send("web-01", CommandAction::Ping, "", 0, 0)).await.unwrap();
    assert!(ping.reply.is_none());
    let short = hub.api.send(&send("web-01", CommandAction::InstallWorker, "playbook", 1, 0)).await.unwrap();
    let missing = hub.api.outcome("web-01", &ping.command_id).await.unwrap_err();
    assert_eq!(missing.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));

    // Restore the link: online again with the same identity, the queued commands delivered once.
    leaf.restart().await.unwrap();
    let back = wait_record(&hub.api, "web-01", "online again", |r| r.online).await;
    assert_eq!(back.incarnation, first.incarnation, "same agent, same identity");
    assert_ne!(back.connected_since, first.connected_since);
    let pong = eventually(WAIT, POLL, || hub.api.outcome("web-01", &ping.command_id)).await.unwrap();
    assert_eq!((pong.status, pong.message.as_str()), (CommandStatus::Ok, "pong"));
    let expired = eventually(WAIT, POLL, || hub.api.outcome("web-01", &short.command_id)).await.unwrap();
    assert_eq!(expired.status, CommandStatus::Expired, "{expired:?}");
    assert!(!expired.workers.contains_key("playbook"));

    let stats = edge.stats().await.unwrap();
    assert_eq!((stats.commands_run, stats.expired, stats.duplicates), (2, 1, 0), "{stats:?}");
    let js = jetstream::new(hub.client.clone());
    let info = eventually(WAIT, POLL, || {
        let js = js.clone();
        let name = acme().host_command_consumer(&host);
        async move {
            let mut c: jetstream::consumer::PullConsumer =
                js.get_consumer_from_stream(name, HOST_COMMANDS_STREAM).await.map_err(|e| e.to_string())?;
            let i = c.info().await.map_err(|e| e.to_string())?.clone();
            if i.num_pending == 0 && i.num_ack_pending == 0 {
                Ok(i)
            } else {
                Err(format!("pending {} ack pending {}", i.num_pending, i.num_ack_pending))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(info.delivered.stream_sequence, info.ack_floor.stream_sequence);
    let replies = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap().info_with_subjects(acme().host_reply(&host)).await;
    let mut per_subject = replies.unwrap();
    let mut n = 0;
    while let Some(Ok((_, count))) = per_subject.next().await {
        n += count;
    }
    assert_eq!(n, 3, "one recorded reply per command (install command, ping, expired install)");

    // Online: a command with a wait gets its reply back; drain shows in the registry.
    let drained = hub.api.send(&send("web-01", CommandAction::Drain, "", 0, 10_000)).await.unwrap();
    assert_eq!(drained.reply.map(|r| r.status), Some(CommandStatus::Ok));
    wait_record(&hub.api, "web-01", "draining", |r| r.draining).await;

    // Events: online, changed (worker), offline, online, changed (drain), in that order.
    // The event follows the registry write it describes, so it may land a moment after the
    // registry shows the drain: wait until five events are stored, then check their order.
    let kinds: Vec<HostEventKind> = eventually(WAIT, POLL, || async {
        let kinds: Vec<HostEventKind> = events(&hub.client, "web-01").await.iter().map(|e| e.kind).collect();
        if kinds.len() >= 5 {
            Ok(kinds)
        } else {
            Err(format!("{} events so far: {kinds:?}", kinds.len()))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            HostEventKind::Online,
            HostEventKind::Changed,
            HostEventKind::Offline,
            HostEventKind::Online,
            HostEventKind::Changed
        ]
    );

    // Clean stop: offline at once (well before the sweep would notice).
    let stop = Instant::now();
    edge.stop().await;
    let gone = wait_record(&hub.api, "web-01", "offline after stop", |r| !r.online).await;
    assert!(stop.elapsed() < interval, "clean stop took {:?} to show", stop.elapsed());
    assert_eq!(gone.offline_reason.as_deref(), Some("clean shutdown"));
    hub.connector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_revision_reaches_every_connector_instance_over_nats() {
    let hub = hub(false).await;
    // A second instance that refreshes its records often: it must not write an older applied
    // revision back.
    let mut args = ConnectorArgs::new(hub.client.clone(), acme());
    args.sweep_every = Duration::from_millis(25);
    args.refresh_every = Duration::from_millis(100);
    let (second, _) = ConnectorHandle::start(args).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let (edge, _) =
        EdgeHandle::start(edge_args(&hub.server.client_url(), "app-01", data.path(), Duration::from_millis(100)))
            .await
            .unwrap();
    let host = HostId::parse("app-01").unwrap();
    eventually(WAIT, POLL, || async {
        let a = hub.connector.status(&host).await.unwrap().is_some_and(|r| r.online);
        let b = second.status(&host).await.unwrap().is_some_and(|r| r.online);
        if a && b {
            Ok(())
        } else {
            Err("host not online on both instances")
        }
    })
    .await
    .unwrap();

    // From another connection, as a hub process without a connector would.
    let caller = async_nats::connect(hub.server.client_url()).await.unwrap();
    let api = ConnectorClient::new(caller, acme());
    assert!(api.set_applied_revision("app-01", 7).await.unwrap().recorded);
    for c in [&hub.connector, &second] {
        assert_eq!(c.status(&host).await.unwrap().unwrap().applied_revision, Some(7));
    }
    // Refreshes of both instances (several writes after the one that set it) keep it in the
    // registry.
    let kv = jetstream::new(hub.client.clone()).get_key_value(streams::HOSTS_BUCKET).await.unwrap();
    let key = steward_subjects::subject::host_registry_key(&AccountId::parse("acme").unwrap(), &host);
    let set_at = kv.entry(&key).await.unwrap().unwrap().revision;
    let stored: HostRecord = eventually(WAIT, POLL, || async {
        let e = kv.entry(&key).await.map_err(|e| e.to_string())?.ok_or("no record")?;
        if e.revision >= set_at + 4 {
            codec::decode(Encoding::MsgPack, &e.value).map_err(|e| e.to_string())
        } else {
            Err(format!("registry record not refreshed yet (revision {})", e.revision))
        }
    })
    .await
    .unwrap();
    assert_eq!(stored.applied_revision, Some(7));

    // Bad input: an unknown host is not recorded, a hostile id is refused; nothing changes.
    assert!(!api.set_applied_revision("ghost-01", 8).await.unwrap().recorded);
    let e = api.set_applied_revision("app-01.>", 8).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{e}");
    assert_eq!(hub.api.status("app-01").await.unwrap().applied_revision, Some(7));
    edge.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_identity_labels_and_workers() {
    let hub = hub(false).await;
    let data = tempfile::tempdir().unwrap();
    let url = hub.server.client_url();
    let interval = Duration::from_millis(200);
    let (edge, _) = EdgeHandle::start(edge_args(&url, "db-01", data.path(), interval)).await.unwrap();
    let first = wait_record(&hub.api, "db-01", "online", |r| r.online).await;
    hub.api.ensure_worker("db-01", "playbook", Duration::from_secs(10)).await.unwrap();
    edge.kill().await;

    // Same data folder, a different host id and no labels given: the stored identity wins.
    let mut args = edge_args(&url, "other-id", data.path(), interval);
    args.labels.clear();
    let (edge, _) = EdgeHandle::start(args).await.unwrap();
    let again = wait_record(&hub.api, "db-01", "restarted", |r| r.incarnation == first.incarnation + 1).await;
    assert!(again.online);
    assert_eq!(again.labels, first.labels);
    assert!(again.workers.contains_key("playbook"));
    assert!(hub.api.status("other-id").await.is_err());
    let last = events(&hub.client, "db-01").await.pop().unwrap();
    assert_eq!(last.kind, HostEventKind::Changed);
    assert!(last.reason.starts_with("agent restarted"), "{}", last.reason);
    edge.stop().await;
    // The agent's leaving heartbeat is recorded before the hub goes.
    wait_record(&hub.api, "db-01", "offline after stop", |r| !r.online).await;

    // A new connector (hub restart) loads the registry and keeps the record.
    hub.connector.stop().await;
    let (connector, _) = ConnectorHandle::start(ConnectorArgs::new(hub.client.clone(), acme())).await.unwrap();
    let loaded = connector.status(&HostId::parse("db-01").unwrap()).await.unwrap().unwrap();
    assert_eq!((loaded.online, loaded.incarnation), (false, first.incarnation + 1));
    connector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heartbeats_are_dropped_and_counted_and_hostile_input_refused() {
    let hub = hub(false).await;
    let s = acme();
    let good = Heartbeat { host_id: "ok-1".into(), interval_ms: 60_000, ..Heartbeat::default() };
    let hostile_label = Heartbeat {
        host_id: "ok-2".into(),
        labels: BTreeMap::from([("env".to_owned(), "pr.od".to_owned())]),
        ..Heartbeat::default()
    };
    let subject = |h: &str| s.host_heartbeat(&HostId::parse(h).unwrap());
    let bad: Vec<(String, Vec<u8>)> = vec![
        (subject("ok-1"), b"\xc1\xff not msgpack".to_vec()),
        (subject("ok-1"), codec::encode(Encoding::MsgPack, &vec![1, 2, 3]).unwrap().to_vec()),
        (subject("ok-9"), codec::encode(Encoding::MsgPack, &good).unwrap().to_vec()),
        (subject("ok-2"), codec::encode(Encoding::MsgPack, &hostile_label).unwrap().to_vec()),
        (subject("ok-1"), vec![0x91; 70_000]),
        // A token no HostId would accept, sent raw on the wildcard.
        (
            "steward.v1.acme.host.heartbeat.a b".replace(' ', "\u{7f}"),
            codec::encode(Encoding::MsgPack, &good).unwrap().to_vec(),
        ),
    ];
    for (subj, payload) in &bad {
        hub.client.publish(subj.clone(), payload.clone().into()).await.unwrap();
    }
    hub.client.publish(subject("ok-1"), codec::encode(Encoding::MsgPack, &good).unwrap()).await.unwrap();
    hub.client.flush().await.unwrap();
    wait_record(&hub.api, "ok-1", "online", |r| r.online).await;
    let stats = eventually(WAIT, POLL, || async {
        let st = hub.api.stats().await.map_err(|e| e.to_string())?;
        if st.malformed == bad.len() as u64 {
            Ok(st)
        } else {
            Err(format!("malformed {} of {}", st.malformed, bad.len()))
        }
    })
    .await
    .unwrap();
    assert_eq!((stats.heartbeats, stats.hosts), (1, 1), "{stats:?}");
    assert!(hub.api.status("ok-2").await.is_err() && hub.api.status("ok-9").await.is_err());

    // Hostile API input gets `invalid` with a clear message; nothing is published.
    for host in ["a.b", "a*", ">", "a b", ""] {
        let e = hub.api.status(host).await.unwrap_err();
        assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{host:?}: {e}");
        assert!(e.to_string().contains("invalid host id"), "{e}");
        let e = hub.api.send(&send(host, CommandAction::Ping, "", 0, 0)).await.unwrap_err();
        assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{host:?}: {e}");
    }
    for sel in ["env=pr.od", "env=*", "a b=c", "env in (a,>)", "env="] {
        let e = hub.api.list(sel, None).await.unwrap_err();
        assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{sel:?}: {e}");
    }
    let e = hub.api.send(&send("ok-1", CommandAction::InstallWorker, "bad.name", 0, 0)).await.unwrap_err();
    assert!(e.to_string().contains("invalid name"), "{e}");
    let e = hub.api.send(&send("ghost", CommandAction::Ping, "", 0, 0)).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));
    let js = jetstream::new(hub.client.clone());
    assert_eq!(js.get_stream(HOST_COMMANDS_STREAM).await.unwrap().info().await.unwrap().state.messages, 0);

    // Plain NATS clients can use JSON; malformed JSON is a clear `invalid`.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Content-Type", "application/json");
    let m = hub
        .client
        .request_with_headers(s.host_list(), h.clone(), r#"{"selector":"","online":true}"#.into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["data"]["hosts"][0]["host_id"], "ok-1", "{v}");
    let m = hub.client.request_with_headers(s.host_list(), h, "{not json".into()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["error"]["code"], "invalid", "{v}");

    // The connector survived all of it.
    assert!(hub.connector.stats().await.is_ok());
}

/// Every connector instance sees every heartbeat and judges the same transitions; the events
/// stream must hold each transition once, not once per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connector_instances_record_each_host_event_once() {
    let hub = hub(false).await;
    let mut args = ConnectorArgs::new(hub.client.clone(), acme());
    args.sweep_every = Duration::from_millis(25);
    let (second, _) = ConnectorHandle::start(args).await.unwrap();
    let host = HostId::parse("web-02").unwrap();
    let on_both = |online: bool| {
        let (first, second, host) = (hub.connector.clone(), second.clone(), host.clone());
        async move {
            eventually(WAIT, POLL, || async {
                let a = first.status(&host).await.unwrap().is_some_and(|r| r.online == online);
                let b = second.status(&host).await.unwrap().is_some_and(|r| r.online == online);
                if a && b {
                    Ok(())
                } else {
                    Err(format!("not online={online} on both instances yet"))
                }
            })
            .await
            .unwrap();
        }
    };
    let data = tempfile::tempdir().unwrap();
    let url = hub.server.client_url();
    let interval = Duration::from_millis(100);
    // Online, then a clean shutdown.
    let (edge, _) = EdgeHandle::start(edge_args(&url, "web-02", data.path(), interval)).await.unwrap();
    on_both(true).await;
    edge.stop().await;
    on_both(false).await;
    // Back (a new incarnation), then gone without a word: both instances time it out.
    let (edge, _) = EdgeHandle::start(edge_args(&url, "web-02", data.path(), interval)).await.unwrap();
    on_both(true).await;
    edge.kill().await;
    on_both(false).await;
    // Each instance stored its four events (a duplicate's acknowledgement counts too).
    eventually(WAIT, POLL, || async {
        let a = hub.connector.stats().await.map_err(|e| e.to_string())?.events;
        let b = second.stats().await.map_err(|e| e.to_string())?.events;
        if a >= 4 && b >= 4 {
            Ok(())
        } else {
            Err(format!("events stored by the instances so far: {a} and {b}"))
        }
    })
    .await
    .unwrap();
    let kinds: Vec<HostEventKind> = events(&hub.client, "web-02").await.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [HostEventKind::Online, HostEventKind::Offline, HostEventKind::Online, HostEventKind::Offline],
        "each transition once"
    );
    second.stop().await;
    hub.connector.stop().await;
}
