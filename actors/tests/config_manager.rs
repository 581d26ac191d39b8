//! The config manager and renderer against a real nats-server: apply, no-op apply, conflict,
//! invalid documents, history filters and paging, diff, rollback, JSON requests, source polling
//! (valid → invalid → valid), and job specs following documents and host labels.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorRef};
use steward_actors::config_manager::client::ConfigClient;
use steward_actors::config_manager::{ConfigManager, ConfigManagerArgs, ConfigManagerMsg, ConfigSource};
use steward_actors::renderer::client::JobSpecClient;
use steward_actors::renderer::{Renderer, RendererArgs, RendererMsg};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_subjects::api::config::{
    ApplyRequest, ConfigRejected, DiffRequest, GetRequest, HistoryRequest, PlanRequest, RollbackRequest,
};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::jobspec::JobSpecListRequest;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::TargetKind;
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::streams::{self, Replicas, HOSTS_BUCKET, JOBSPECS_BUCKET};
use steward_subjects::subject::host_registry_key;
use steward_subjects::{AccountId, ErrorCode, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

struct Hub {
    _server: NatsServer,
    client: async_nats::Client,
    subjects: Subjects,
    api: ConfigClient,
    specs: JobSpecClient,
    manager: ActorRef<ConfigManagerMsg>,
    renderer: ActorRef<RendererMsg>,
}

impl Hub {
    async fn start(name: &str, source: Option<ConfigSource>) -> Hub {
        let server = NatsServer::single(ServerOptions::named(name)).await.unwrap();
        let client = async_nats::connect(server.client_url()).await.unwrap();
        streams::ensure(&async_nats::jetstream::new(client.clone()), Replicas::One).await.unwrap();
        let subjects = Subjects::new(AccountId::parse("acme").unwrap());
        let (manager, _) = Actor::spawn(
            None,
            ConfigManager,
            ConfigManagerArgs { client: client.clone(), subjects: subjects.clone(), source },
        )
        .await
        .unwrap();
        let (renderer, _) = Actor::spawn(
            None,
            Renderer,
            RendererArgs { client: client.clone(), subjects: subjects.clone(), signer: None },
        )
        .await
        .unwrap();
        let api = ConfigClient::new(client.clone(), subjects.clone());
        let specs = JobSpecClient::new(client.clone(), subjects.clone());
        Hub { _server: server, client, subjects, api, specs, manager, renderer }
    }

    async fn put_host(&self, id: &str, labels: &[(&str, &str)]) {
        let js = async_nats::jetstream::new(self.client.clone());
        let kv = js.get_key_value(HOSTS_BUCKET).await.unwrap();
        let rec = HostRecord {
            host_id: id.to_owned(),
            online: true,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            ..HostRecord::default()
        };
        let key = host_registry_key(self.subjects.account(), &HostId::parse(id).unwrap());
        kv.put(key, codec::encode(Encoding::MsgPack, &rec).unwrap()).await.unwrap();
    }

    async fn apply(&self, doc: &str, label: &str, author: &str) -> steward_subjects::api::config::ApplyReply {
        let req =
            ApplyRequest { document: doc.to_owned(), label: label.into(), author: author.into(), if_revision: None };
        self.api.apply(&req).await.unwrap()
    }

    /// Spec count per target once the renderer has caught up with `revision`.
    async fn specs_settled(&self, revision: u64, expect: usize) -> Vec<steward_subjects::config::JobSpec> {
        eventually(WAIT, POLL, || async {
            let st = self.specs.status().await.map_err(|e| e.to_string())?;
            if st.rendered_revision < revision || st.rendering_revision.is_some() {
                return Err(format!("rendered {} of {revision}", st.rendered_revision));
            }
            let list = self
                .specs
                .list(&JobSpecListRequest { limit: 1000, ..Default::default() })
                .await
                .map_err(|e| e.to_string())?;
            if list.specs.len() == expect {
                Ok(list.specs)
            } else {
                Err(format!("{} specs, want {expect}", list.specs.len()))
            }
        })
        .await
        .unwrap()
    }

    fn stop(&self) {
        self.manager.stop(None);
        self.renderer.stop(None);
    }
}

fn doc(max_sessions: u32, with_disk: bool) -> String {
    let disk_att = if with_disk { r#",{"id": "root-disk", "assessment": "disk", "component": "web"}"# } else { "" };
    format!(
        r#"{{
      "controls": [{{"id": "ssh", "parameters": {{"max_sessions": {max_sessions}}}}}, {{"id": "disk", "parameters": {{"mount": "/"}}}}],
      "components": [{{"id": "web", "selector": "role=web", "controls": ["ssh", "disk"]}}, {{"id": "site", "controls": []}}],
      "assessments": [
        {{"id": "sessions", "executor": {{"kind": "command", "argv": ["check", "{{{{control.max_sessions}}}}"]}}, "interval": "30s", "timeout": "5s"}},
        {{"id": "disk", "executor": {{"kind": "command", "argv": ["df", "{{{{control.mount}}}}"]}}}},
        {{"id": "url", "executor": {{"kind": "http", "url": "https://example.invalid/"}}}}
      ],
      "attestations": [
        {{"id": "ssh-sessions", "assessment": "sessions", "component": "web", "controls": ["ssh"]}},
        {{"id": "probe", "assessment": "url", "component": "site", "pool": "probers"}}{disk_att}
      ],
      "pools": [{{"id": "probers", "selector": "net=public"}}]
    }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_noop_conflict_invalid_history_diff_rollback_and_specs() {
    let hub = Hub::start("config-manager", None).await;
    hub.put_host("web-1", &[("role", "web")]).await;
    hub.put_host("web-2", &[("role", "web")]).await;
    hub.put_host("db-1", &[("role", "db")]).await;

    // Nothing applied yet.
    let e = hub.api.get(&GetRequest::default()).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));

    // Apply: revision 1 with its job-spec diff (2 web hosts × 1 attestation + 1 pool spec).
    let r1 = hub.apply(&doc(10, false), "first", "alice").await;
    assert!(!r1.noop);
    assert_eq!(r1.revision.revision, 1);
    assert_eq!(r1.revision.parent, None);
    assert_eq!(r1.jobspecs.added, 3, "{:?}", r1.jobspecs);
    let specs = hub.specs_settled(1, 3).await;
    assert_eq!(specs.iter().filter(|s| s.target.kind == TargetKind::Pool).count(), 1);
    let pool = specs.iter().find(|s| s.target.kind == TargetKind::Pool).unwrap();
    assert_eq!(pool.runtime_selector, "net=public");
    let host_spec = specs.iter().find(|s| s.target.id == "web-1").unwrap();
    match &host_spec.executor {
        steward_subjects::config::Executor::Command(c) => assert_eq!(c.argv, ["check", "10"]),
        other => panic!("{other:?}"),
    }

    // The same document again is a no-op that says so.
    let same = hub.apply(&doc(10, false), "again", "bob").await;
    assert!(same.noop);
    assert_eq!(same.revision.revision, 1);

    // Conflict with a stale --if-revision, nothing stored.
    let stale = ApplyRequest { document: doc(12, false), if_revision: Some(0), ..Default::default() };
    let e = hub.api.apply(&stale).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Conflict), "{e}");

    // Invalid document: several problems with pointers, nothing changed.
    let bad = doc(10, false)
        .replace(r#""selector": "role=web""#, r#""selector": "role in (web""#)
        .replace(r#""component": "site""#, r#""component": "nowhere""#)
        .replace(r#""interval": "30s""#, r#""interval": "soon""#);
    let e = hub.api.apply(&ApplyRequest { document: bad.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid));
    let details = &e.remote().unwrap().details;
    let ptrs: Vec<&str> = details.iter().map(|d| d.pointer.as_str()).collect();
    assert!(ptrs.contains(&"/components/0/selector"), "{details:?}");
    assert!(ptrs.contains(&"/attestations/1/component"), "{details:?}");
    assert!(ptrs.contains(&"/assessments/0/interval"), "{details:?}");
    let e = hub.api.plan(&PlanRequest { document: bad }).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid));
    assert_eq!(hub.api.get(&GetRequest::default()).await.unwrap().meta.revision, 1);

    // Plan: a parameter change touches both web specs, adding an attestation adds two.
    let plan = hub.api.plan(&PlanRequest { document: doc(20, true) }).await.unwrap();
    assert_eq!(plan.current_revision, 1);
    assert_eq!((plan.jobspecs.added, plan.jobspecs.changed, plan.jobspecs.removed), (2, 2, 0), "{:?}", plan.jobspecs);
    assert_eq!(plan.jobspecs.targets.len(), 2);
    assert!(plan.document.iter().any(|c| c.section == "controls" && c.id == "ssh"));
    assert_eq!(hub.api.get(&GetRequest::default()).await.unwrap().meta.revision, 1, "plan stores nothing");

    // Revision 2 with --if-revision 1; renderer rewrites only what changed.
    let r2 = hub
        .api
        .apply(&ApplyRequest {
            document: doc(20, true),
            label: "bump".into(),
            author: "bob".into(),
            if_revision: Some(1),
        })
        .await
        .unwrap();
    assert_eq!((r2.revision.revision, r2.revision.parent), (2, Some(1)));
    let specs = hub.specs_settled(2, 5).await;
    let unchanged_pool = specs.iter().find(|s| s.target.kind == TargetKind::Pool).unwrap();
    assert_eq!(unchanged_pool.provenance.revision, 1, "an unchanged spec is not rewritten");
    let st = hub.specs.status().await.unwrap();
    assert_eq!((st.added, st.changed, st.removed), (2, 2, 0));

    // Explain says why a spec exists.
    let ex = hub.specs.explain(&host_spec.id).await.unwrap();
    assert_eq!(ex.spec.target.id, "web-1");
    assert!(ex.why.iter().any(|l| l.contains("ssh-sessions")), "{:?}", ex.why);
    assert!(ex.why.iter().any(|l| l.contains("role=web")), "{:?}", ex.why);
    let e = hub.specs.explain("00000000000000000000000000000000").await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));

    // A third revision by alice, then history filters and paging.
    let r3 = hub.apply(&doc(30, true), "bump", "alice").await;
    assert_eq!(r3.revision.revision, 3);
    let all = hub.api.history(&HistoryRequest::default()).await.unwrap();
    assert_eq!(all.revisions.iter().map(|m| m.revision).collect::<Vec<_>>(), [3, 2, 1]);
    let alice = hub.api.history(&HistoryRequest { author: Some("alice".into()), ..Default::default() }).await.unwrap();
    assert_eq!(alice.revisions.iter().map(|m| m.revision).collect::<Vec<_>>(), [3, 1]);
    let bumps = hub.api.history(&HistoryRequest { label: Some("bump".into()), ..Default::default() }).await.unwrap();
    assert_eq!(bumps.revisions.iter().map(|m| m.revision).collect::<Vec<_>>(), [3, 2]);
    let page1 = hub.api.history(&HistoryRequest { limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(page1.revisions.iter().map(|m| m.revision).collect::<Vec<_>>(), [3, 2]);
    assert_eq!((page1.total, page1.next_before), (3, Some(2)));
    let page2 =
        hub.api.history(&HistoryRequest { limit: 2, before: page1.next_before, ..Default::default() }).await.unwrap();
    assert_eq!(page2.revisions.iter().map(|m| m.revision).collect::<Vec<_>>(), [1]);
    assert_eq!(page2.next_before, None);
    let future = hub
        .api
        .history(&HistoryRequest { since: Some("2999-01-01T00:00:00Z".into()), ..Default::default() })
        .await
        .unwrap();
    assert!(future.revisions.is_empty());
    let past = hub
        .api
        .history(&HistoryRequest { until: Some("2999-01-01T00:00:00Z".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(past.total, 3);
    let e =
        hub.api.history(&HistoryRequest { since: Some("yesterday".into()), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid));

    // Diff between revisions 1 and 3.
    let d = hub.api.diff(&DiffRequest { from: 1, to: 3 }).await.unwrap();
    assert!(d.document.iter().any(|c| c.section == "attestations" && c.id == "root-disk"));
    assert_eq!((d.jobspecs.added, d.jobspecs.changed, d.jobspecs.removed), (2, 2, 0));
    let e = hub.api.diff(&DiffRequest { from: 1, to: 9 }).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));

    // Rollback to 1: a new revision 4 with revision 1's content; the disk specs are tombstoned.
    let mut watch = async_nats::jetstream::new(hub.client.clone())
        .get_key_value(JOBSPECS_BUCKET)
        .await
        .unwrap()
        .watch("acme.host.web-2.*")
        .await
        .unwrap();
    let rb =
        hub.api.rollback(&RollbackRequest { revision: 1, author: "carol".into(), ..Default::default() }).await.unwrap();
    assert_eq!(rb.revision.revision, 4);
    assert_eq!(rb.revision.rollback_of, Some(1));
    assert_eq!(rb.revision.hash, r1.revision.hash);
    assert_eq!(rb.revision.label, "rollback");
    assert_eq!((rb.jobspecs.removed, rb.jobspecs.changed), (2, 2));
    hub.specs_settled(4, 3).await;
    // The web-2 holder sees one change notice and one tombstone.
    let mut ops = Vec::new();
    while ops.len() < 2 {
        let e = tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap().unwrap();
        ops.push(e.operation);
    }
    assert!(ops.contains(&async_nats::jetstream::kv::Operation::Delete), "{ops:?}");
    assert!(ops.contains(&async_nats::jetstream::kv::Operation::Put), "{ops:?}");
    let e = hub.api.rollback(&RollbackRequest { revision: 42, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::NotFound));
    let get1 = hub.api.get(&GetRequest { revision: Some(1) }).await.unwrap();
    assert_eq!(get1.meta.author, "alice");

    // Host registry changes re-render: db-1 becomes a web host, web-1 leaves.
    hub.put_host("db-1", &[("role", "web")]).await;
    let js = async_nats::jetstream::new(hub.client.clone());
    js.get_key_value(HOSTS_BUCKET).await.unwrap().delete("acme.web-1").await.unwrap();
    let specs = eventually(WAIT, POLL, || async {
        let l = hub
            .specs
            .list(&JobSpecListRequest { limit: 1000, ..Default::default() })
            .await
            .map_err(|e| e.to_string())?;
        let hosts: Vec<&str> =
            l.specs.iter().filter(|s| s.target.kind == TargetKind::Host).map(|s| s.target.id.as_str()).collect();
        if hosts.contains(&"db-1") && !hosts.contains(&"web-1") {
            Ok(l.specs)
        } else {
            Err(format!("{hosts:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(specs.len(), 3);
    let only_db = hub
        .specs
        .list(&JobSpecListRequest { kind: Some(TargetKind::Host), target: Some("db-1".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(only_db.specs.len(), 1);

    // JSON requests are answered in JSON.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let reply = hub
        .client
        .request_with_headers(hub.subjects.config_get(), headers.clone(), r#"{"revision": 2}"#.into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["data"]["meta"]["revision"], 2);
    let reply =
        hub.client.request_with_headers(hub.subjects.config_apply(), headers, "{not json".into()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "invalid");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_polling_valid_invalid_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, doc(10, false)).unwrap();
    let source = ConfigSource { url: format!("file://{}", path.display()), poll: Duration::from_millis(100) };
    let hub = Hub::start("config-source", Some(source)).await;
    let mut rejected = hub.client.subscribe(hub.subjects.config_rejected()).await.unwrap();

    let first =
        eventually(WAIT, POLL, || async { hub.api.get(&GetRequest::default()).await.map_err(|e| e.to_string()) })
            .await
            .unwrap();
    assert_eq!(first.meta.revision, 1);
    assert_eq!(first.meta.label, "source");
    assert_eq!(first.meta.origin, "source");

    // Invalid candidate: rejected with an event carrying the problems; revision 1 stays.
    std::fs::write(&path, doc(10, false).replace(r#""kind": "http""#, r#""kind": "gopher""#)).unwrap();
    let ev = tokio::time::timeout(WAIT, rejected.next()).await.unwrap().unwrap();
    let ev: ConfigRejected = codec::decode(Encoding::MsgPack, &ev.payload).unwrap();
    assert!(ev.errors.iter().any(|d| d.pointer == "/assessments/2"), "{:?}", ev.errors);
    assert_eq!(hub.api.get(&GetRequest::default()).await.unwrap().meta.revision, 1);

    // Valid again (and changed): revision 2.
    std::fs::write(&path, doc(11, false)).unwrap();
    let second = eventually(WAIT, POLL, || async {
        let a = hub.api.get(&GetRequest::default()).await.map_err(|e| e.to_string())?;
        if a.meta.revision == 2 {
            Ok(a)
        } else {
            Err(format!("at revision {}", a.meta.revision))
        }
    })
    .await
    .unwrap();
    assert_eq!(second.meta.parent, Some(1));
    // Polling the same content again stores nothing new.
    let h = hub.api.history(&HistoryRequest { label: Some("source".into()), ..Default::default() }).await.unwrap();
    assert_eq!(h.total, 2);
    hub.stop();
}

/// The shared key reader (`steward_actors::kv`): a scan gives the latest message of each key in
/// stream order (a deleted key as its marker); a follower gives that snapshot, then later puts,
/// deletes and purges.
#[tokio::test]
async fn kv_scan_and_follow_tell_puts_from_deletes() {
    use steward_actors::kv;
    let server = NatsServer::single(ServerOptions::named("kv-follow")).await.unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let bucket = "t_follow";
    let store = js
        .create_key_value(async_nats::jetstream::kv::Config { bucket: bucket.into(), ..Default::default() })
        .await
        .unwrap();
    store.put("a.one", "1".into()).await.unwrap();
    store.put("a.two", "2".into()).await.unwrap();
    store.put("b.three", "3".into()).await.unwrap();
    store.delete("a.one").await.unwrap();

    let scanned = kv::scan(&client, &store.stream, bucket, "a.>", false, WAIT).await.unwrap();
    let seen: Vec<(&str, bool)> = scanned.iter().map(|k| (k.key.as_str(), k.deleted)).collect();
    assert_eq!(seen, vec![("a.two", false), ("a.one", true)]);
    assert_eq!(scanned[0].value.as_ref(), b"2");
    let headers_only = kv::scan(&client, &store.stream, bucket, "a.>", true, WAIT).await.unwrap();
    assert!(headers_only[0].value.is_empty());
    assert!(kv::scan(&client, &store.stream, bucket, "c.>", false, WAIT).await.unwrap().is_empty());

    let mut keys = kv::follow(&client, &store.stream, bucket, "a.>", false).await.unwrap();
    assert_eq!(keys.snapshot_len(), 2);
    for _ in 0..2 {
        tokio::time::timeout(WAIT, keys.next()).await.unwrap().unwrap().unwrap();
    }
    store.put("a.four", "4".into()).await.unwrap();
    store.purge("a.two").await.unwrap();
    let put = tokio::time::timeout(WAIT, keys.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((put.key.as_str(), put.deleted, put.value.as_ref()), ("a.four", false, &b"4"[..]));
    let purged = tokio::time::timeout(WAIT, keys.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((purged.key.as_str(), purged.deleted), ("a.two", true));
    assert!(purged.revision > put.revision);
}
