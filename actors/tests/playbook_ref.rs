//! Playbooks by reference end to end (the host fetches a playbook from the config manager):
//! a hub process (config manager, dispatcher with the signing key) on the hub server and an
//! edge process on the leaf. A playbook stored with the config manager and dispatched by its
//! `sha256:` reference is fetched by the host through the leaf and runs to success with its
//! events; a stored object overwritten with other bytes, an unknown reference and an object
//! over the size cap are refused before anything runs, with a clear reason. A second test checks, on a hub with rendered
//! authorization, that a host's credentials — directly and through a leaf link carrying them —
//! allow the playbook fetch and nothing else of the config API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use ractor::Actor;
use steward_actors::config_manager::client::ConfigClient;
use steward_actors::config_manager::playbooks::PlaybookStore;
use steward_actors::config_manager::{ConfigManager, ConfigManagerArgs};
use steward_actors::dispatcher::client::DispatcherClient;
use steward_actors::edge::{start_leaf, LeafConfig};
use steward_actors::signing::JobSigner;
use steward_actors::{EdgeSpec, ProcessConfig, RestartPolicy, RunningProcess};
use steward_deploy::auth::{read_seed, AuthDir, IdentityKind};
use steward_deploy::server::{NatsServer, ServerOptions};
use steward_deploy::wait::eventually;
use steward_deploy::HubLeaf;
use steward_subjects::api::config::{GetRequest, PlaybookRef};
use steward_subjects::api::run::{
    EventKind, Job, RunRequest, RunStatus, RunStatusRequest, RunView, MAX_PLAYBOOK_BYTES,
};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::streams::{self, Replicas, ARTIFACTS_STORE};
use steward_subjects::{AccountId, ErrorCode, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
const HOST: &str = "edge-a";

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

/// A playbook that creates `marker` (so a test can tell whether it ran).
fn playbook(marker: &Path, tag: &str) -> String {
    format!(
        r#"- name: steward playbook by reference ({tag})
  hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: hello from a fetched playbook
    - name: write the marker
      ansible.builtin.copy:
        dest: "{}"
        content: "{tag}\n"
"#,
        marker.display()
    )
}

struct Site {
    _topo: HubLeaf,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    hub: RunningProcess,
    edge: RunningProcess,
    config: ConfigClient,
    runs: DispatcherClient,
    store: PlaybookStore,
}

impl Site {
    async fn start() -> Site {
        let topo = HubLeaf::start().await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let keys = JobSigner::init_dir(&dir.join("keys")).unwrap();
        let mut hub_cfg = ProcessConfig::hub(&topo.hub().client_url(), account());
        hub_cfg.signing_key = Some(keys.secret.clone());
        hub_cfg.policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
        let hub = RunningProcess::start(hub_cfg).await.unwrap();

        let mut edge_cfg = ProcessConfig::hub(&topo.leaf().client_url(), account());
        edge_cfg.roles = Vec::new();
        edge_cfg.heartbeat = Duration::from_millis(200);
        edge_cfg.policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
        edge_cfg.hub_domain = Some("hub".into());
        edge_cfg.trusted_key = Some(keys.public.clone());
        edge_cfg.edges = vec![EdgeSpec {
            host_id: HostId::parse(HOST).unwrap(),
            labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
            data_dir: dir.join("edges").join(HOST),
        }];
        let edge = RunningProcess::start(edge_cfg).await.unwrap();

        let client = hub.client().clone();
        let subjects = Subjects::new(account());
        let config = ConfigClient::new(client.clone(), subjects.clone());
        let runs = DispatcherClient::new(client.clone(), subjects.clone());
        let store = PlaybookStore::new(jetstream::new(client.clone()), account());
        let hosts = steward_actors::connector::client::ConnectorClient::new(client, subjects);
        eventually(WAIT, POLL, || async {
            match hosts.status(HOST).await {
                Ok(r) if r.online => Ok(()),
                other => Err(format!("{HOST} not online: {other:?}")),
            }
        })
        .await
        .unwrap();
        Site { _topo: topo, _tmp: tmp, dir, hub, edge, config, runs, store }
    }

    /// Dispatches `job` to the host and waits until the run ends.
    async fn run_to_end(&self, job: Job) -> RunView {
        let req = RunRequest { hosts: vec![HOST.into()], job, timeout_ms: 120_000, ..RunRequest::default() };
        // The dispatcher may still be registering its endpoint right after start.
        let accepted = eventually(WAIT, POLL, || async { self.runs.dispatch(&req).await.map_err(|e| e.to_string()) })
            .await
            .unwrap();
        eventually(WAIT, POLL, || async {
            let req = RunStatusRequest { run_id: accepted.run_id.clone(), events: true, ..Default::default() };
            let v = self.runs.status(&req).await.map_err(|e| e.to_string())?;
            if v.run.status.is_terminal() {
                Ok(v)
            } else {
                Err(format!("run is {}", v.run.status))
            }
        })
        .await
        .unwrap()
    }

    async fn shutdown(self) {
        self.edge.shutdown(Duration::from_secs(5)).await.unwrap();
        self.hub.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_by_reference_run_when_intact_and_are_refused_when_tampered_or_unknown() {
    let site = Site::start().await;

    // Stored through the config manager's endpoint; the reference is the content digest.
    let ok_marker = site.dir.join("by-ref-ran");
    let content = playbook(&ok_marker, "intact");
    let stored =
        eventually(WAIT, POLL, || async { site.config.store_playbook(&content).await.map_err(|e| e.to_string()) })
            .await
            .unwrap();
    assert_eq!(stored.reference, PlaybookRef::of(content.as_bytes()).to_string());
    assert!(!stored.existed);
    assert!(site.config.store_playbook(&content).await.unwrap().existed, "same bytes are stored once");
    assert_eq!(site.config.playbook(&stored.reference).await.unwrap().content, content);

    // 1. By reference (no content in the work order): fetched through the leaf, run, events.
    let view = site.run_to_end(Job::playbook_by_ref(stored.reference.clone())).await;
    let host = &view.hosts[0];
    assert_eq!(view.run.status, RunStatus::Success, "{:#?}", host);
    assert!(view.run.job.playbook.is_empty() && view.run.job.playbook_ref == stored.reference);
    assert_eq!(std::fs::read_to_string(&ok_marker).unwrap(), "intact\n");
    let tasks: Vec<(&str, &str)> = host
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Task && e.event.starts_with("runner_on_"))
        .map(|e| (e.task.as_str(), e.event.as_str()))
        .collect();
    assert_eq!(tasks, [("say hello", "runner_on_ok"), ("write the marker", "runner_on_ok")]);
    assert_eq!(host.events.first().unwrap().kind, EventKind::Start);
    assert_eq!(host.events.last().unwrap().kind, EventKind::Last);

    // 2. Tampered: the stored object is overwritten with other bytes (a playbook that would
    // write another marker). The signed reference no longer matches: refused, nothing runs.
    let tamper_marker = site.dir.join("tampered-ran");
    let original = playbook(&site.dir.join("original-ran"), "original");
    let reference = site.config.store_playbook(&original).await.unwrap().reference;
    let objects = jetstream::new(site.hub.client().clone()).get_object_store(ARTIFACTS_STORE).await.unwrap();
    let evil = playbook(&tamper_marker, "evil");
    let name = site.store.object_name(&PlaybookRef::parse(&reference).unwrap());
    objects.put(name.as_str(), &mut evil.as_bytes()).await.unwrap();
    assert_eq!(site.config.playbook(&reference).await.unwrap().content, evil, "the store serves what it holds");
    let view = site.run_to_end(Job::playbook_by_ref(reference.clone())).await;
    let host = &view.hosts[0];
    assert_eq!(view.run.status, RunStatus::Failure);
    assert!(
        host.run.reason.contains("does not match its signed reference") && host.run.reason.contains(&reference),
        "{}",
        host.run.reason
    );
    assert!(host.events.iter().all(|e| e.kind != EventKind::Start && e.kind != EventKind::Task), "{:#?}", host.events);
    assert!(!tamper_marker.exists(), "the tampered playbook ran");
    assert!(!site.dir.join("original-ran").exists());

    // 3. Unknown reference: refused with a clear reason.
    let unknown = PlaybookRef::of(b"- hosts: all\n  tasks: []\n# never stored\n").to_string();
    let view = site.run_to_end(Job::playbook_by_ref(unknown.clone())).await;
    let host = &view.hosts[0];
    assert_eq!(view.run.status, RunStatus::Failure);
    assert!(
        host.run.reason.contains("unknown to the config manager") && host.run.reason.contains(&unknown),
        "{}",
        host.run.reason
    );
    assert!(host.events.iter().all(|e| e.kind != EventKind::Start), "{:#?}", host.events);

    // Too large: refused when stored, and a stored object over the cap is not run either.
    let huge = format!("- hosts: all\n  tasks: []\n#{}\n", "x".repeat(MAX_PLAYBOOK_BYTES));
    let e = site.config.store_playbook(&huge).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{e}");
    let huge_ref = PlaybookRef::of(huge.as_bytes());
    objects.put(site.store.object_name(&huge_ref).as_str(), &mut huge.as_bytes()).await.unwrap();
    let view = site.run_to_end(Job::playbook_by_ref(huge_ref.to_string())).await;
    let host = &view.hosts[0];
    assert_eq!(view.run.status, RunStatus::Failure);
    assert!(host.run.reason.contains("larger than"), "{}", host.run.reason);
    assert!(host.events.iter().all(|e| e.kind != EventKind::Start), "{:#?}", host.events);

    // A malformed reference never reaches a host.
    let req = RunRequest {
        hosts: vec![HOST.into()],
        job: Job::playbook_by_ref("https://example.com/x.yml"),
        ..Default::default()
    };
    let e = site.runs.dispatch(&req).await.unwrap_err();
    assert_eq!(e.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{e}");

    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_credentials_allow_the_playbook_fetch_and_nothing_else_of_the_config_api() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = Subjects::new(account());
    let auth = AuthDir::new(tmp.path().join("auth"));
    let svc = {
        let p = acme.service_permissions();
        auth.issue("acme", IdentityKind::Service, "hub", p.publish, p.subscribe).unwrap()
    };
    let host_b = HostId::parse("host-b").unwrap();
    let b = {
        let p = acme.host_permissions(&host_b);
        auth.issue("acme", IdentityKind::Host, "host-b", p.publish, p.subscribe).unwrap()
    };
    let hub_dir = tmp.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::copy(auth.authorization_file(), hub_dir.join("authorization.conf")).unwrap();
    let hub = NatsServer::start(ServerOptions {
        data_dir: Some(hub_dir),
        jetstream_domain: Some("hub".into()),
        leafnode_listen: true,
        extra_config: "include \"authorization.conf\"".into(),
        ..ServerOptions::named("hub")
    })
    .await
    .unwrap();
    let svc_client = async_nats::ConnectOptions::with_nkey(read_seed(&svc.seed_file).unwrap().unwrap())
        .connect(hub.client_url())
        .await
        .unwrap();
    streams::ensure(&jetstream::new(svc_client.clone()), Replicas::One).await.unwrap();
    let (manager, _) = Actor::spawn(
        None,
        ConfigManager,
        ConfigManagerArgs { client: svc_client.clone(), subjects: acme.clone(), source: None },
    )
    .await
    .unwrap();
    let content = "- hosts: all\n  gather_facts: false\n  tasks: []\n";
    let reference =
        ConfigClient::new(svc_client.clone(), acme.clone()).store_playbook(content).await.unwrap().reference;

    // Directly with B's credentials (replies to B's own inboxes).
    let direct = async_nats::ConnectOptions::with_nkey(read_seed(&b.seed_file).unwrap().unwrap())
        .custom_inbox_prefix(acme.host_inbox_prefix(&host_b))
        .connect(hub.client_url())
        .await
        .unwrap();
    let as_b = ConfigClient::new(direct.clone(), acme.clone()).with_timeout(Duration::from_secs(2));
    assert_eq!(as_b.playbook(&reference).await.unwrap().content, content);
    let e = as_b.get(&GetRequest::default()).await.unwrap_err();
    assert!(e.remote().is_none(), "config.get answered for a host identity: {e}");
    let e = as_b.store_playbook("- hosts: all\n").await.unwrap_err();
    assert!(e.remote().is_none(), "config.store_playbook answered for a host identity: {e}");

    // Through a leaf link carrying B's credentials: the fetch crosses, the rest does not.
    let leaf_cfg = LeafConfig {
        creds: Some(b.seed_file.clone()),
        ..LeafConfig::new(hub.leaf_url().unwrap(), tmp.path().join("leaf-b"))
    };
    let leaf = start_leaf(&host_b, &leaf_cfg).await.unwrap();
    let inbox = acme.host_inbox_prefix(&host_b);
    let local =
        steward_actors::connect_with(&leaf_cfg.local_connect(&leaf), "b-local", |o| o.custom_inbox_prefix(inbox))
            .await
            .unwrap();
    let via_leaf = ConfigClient::new(local, acme.clone()).with_timeout(Duration::from_secs(2));
    let fetched = eventually(Duration::from_secs(30), POLL, || async {
        via_leaf.playbook(&reference).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(fetched.content, content);
    assert!(PlaybookRef::parse(&reference).unwrap().matches(fetched.content.as_bytes()));
    let e = via_leaf.get(&GetRequest::default()).await.unwrap_err();
    assert!(e.remote().is_none(), "config.get crossed B's leaf link: {e}");

    manager.stop(None);
    drop(leaf);
}
