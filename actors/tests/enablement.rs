//! The service-enablement loop end to end on real servers through a hub + leaf topology: a hub
//! process (config manager, connector, dispatcher, enablement loop; signing key from
//! `steward keys init`'s code) on the hub server, and two edge processes (edge agent, run worker
//! with the trusted key, runtime) on the leaf, reaching the hub's JetStream through its domain —
//! the deployment shape the loop serves (edges behind a network boundary). The edges start
//! without the service's worker; applying a configuration that enables the service must install
//! the worker, run the real playbook on both, and record the revision as each host's applied
//! revision. An edge that is away for the next revision is brought up to date when it returns.
//! The playbook travels by reference: each run's signed job carries only `sha256:<hex>` of the
//! service playbook, which the hosts fetch from the config manager through the leaf.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use steward_actors::config_manager::client::ConfigClient;
use steward_actors::connector::client::ConnectorClient;
use steward_actors::dispatcher::client::DispatcherClient;
use steward_actors::signing::JobSigner;
use steward_actors::{EdgeSpec, ProcessConfig, RestartPolicy, RunningProcess};
use steward_deploy::wait::eventually;
use steward_deploy::HubLeaf;
use steward_subjects::api::config::{ApplyRequest, PlaybookRef};
use steward_subjects::api::host::HostRecord;
use steward_subjects::api::run::{RunListRequest, RunStatus};
use steward_subjects::{AccountId, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
const HOSTS: [&str; 2] = ["edge-a", "edge-b"];

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn edge_config(leaf_url: &str, host: &str, data: &Path, trusted: &Path) -> ProcessConfig {
    let mut cfg = ProcessConfig::hub(leaf_url, account());
    cfg.roles = Vec::new();
    cfg.heartbeat = Duration::from_millis(200);
    cfg.policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
    cfg.hub_domain = Some("hub".into());
    cfg.trusted_key = Some(trusted.to_owned());
    cfg.edges = vec![EdgeSpec {
        host_id: HostId::parse(host).unwrap(),
        labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
        data_dir: data.join(host),
    }];
    cfg
}

/// A playbook that appends `<tag> <its own folder>` to `log`: the folder lies under the edge's
/// data folder, so each line says which host ran it.
fn write_playbook(path: &Path, log: &Path, tag: &str) {
    let book = format!(
        r#"- name: steward enablement test
  hosts: all
  gather_facts: false
  tasks:
    - name: record the run
      ansible.builtin.shell: echo "{tag} {{{{ playbook_dir }}}}" >> "{}"
"#,
        log.display()
    );
    std::fs::write(path, book).unwrap();
}

fn document(playbook: &Path, title: &str) -> String {
    format!(
        r#"{{"services": [{{"id": "baseline", "title": "{title}", "worker": "playbook", "playbook": "{}", "selector": "env=test"}}]}}"#,
        playbook.display()
    )
}

fn ran(log: &Path, tag: &str, data: &Path, host: &str) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let dir = data.join(host).display().to_string();
    text.lines().any(|l| l.starts_with(&format!("{tag} ")) && l.contains(&dir))
}

async fn record(hosts: &ConnectorClient, host: &str) -> Result<HostRecord, String> {
    hosts.status(host).await.map_err(|e| e.to_string())
}

async fn wait_applied(hosts: &ConnectorClient, host: &str, revision: u64) -> HostRecord {
    eventually(WAIT, POLL, || async {
        let r = record(hosts, host).await?;
        if r.applied_revision == Some(revision) {
            Ok(r)
        } else {
            Err(format!("{host} at {:?} (online {}), want {revision}", r.applied_revision, r.online))
        }
    })
    .await
    .unwrap()
}

/// The jobs of the runs labelled with `revision`: (content, reference) pairs, deduplicated.
async fn jobs_of(runs: &DispatcherClient, revision: u64) -> Vec<(String, String)> {
    let req = RunListRequest {
        labels: BTreeMap::from([("revision".to_owned(), revision.to_string())]),
        ..RunListRequest::default()
    };
    let mut out = Vec::new();
    for run in runs.list(&req).await.unwrap().runs {
        let view = runs
            .status(&steward_subjects::api::run::RunStatusRequest { run_id: run.run_id.clone(), ..Default::default() })
            .await
            .unwrap();
        out.push((view.run.job.playbook, view.run.job.playbook_ref));
    }
    out.sort();
    out.dedup();
    out
}

/// Runs labelled with `revision` and the service, per host.
async fn runs_of(runs: &DispatcherClient, revision: u64) -> Vec<(String, RunStatus)> {
    let req = RunListRequest {
        labels: BTreeMap::from([
            ("revision".to_owned(), revision.to_string()),
            ("service".to_owned(), "baseline".to_owned()),
        ]),
        ..RunListRequest::default()
    };
    let mut out = Vec::new();
    for run in runs.list(&req).await.unwrap().runs {
        let view = runs
            .status(&steward_subjects::api::run::RunStatusRequest { run_id: run.run_id.clone(), ..Default::default() })
            .await
            .unwrap();
        for h in view.hosts {
            out.push((h.run.host_id, h.run.status));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_a_service_takes_hosts_to_the_applied_revision_and_catches_up_a_returning_host() {
    let topo = HubLeaf::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("edges");
    let keys = JobSigner::init_dir(&tmp.path().join("keys")).unwrap();

    let mut hub_cfg = ProcessConfig::hub(&topo.hub().client_url(), account());
    hub_cfg.signing_key = Some(keys.secret.clone());
    hub_cfg.policy = RestartPolicy { initial_backoff: Duration::from_millis(50), ..RestartPolicy::default() };
    let hub = RunningProcess::start(hub_cfg).await.unwrap();
    let client = hub.client().clone();
    let subjects = Subjects::new(account());
    let hosts = ConnectorClient::new(client.clone(), subjects.clone());
    let config = ConfigClient::new(client.clone(), subjects.clone()).with_timeout(Duration::from_secs(60));
    let runs = DispatcherClient::new(client.clone(), subjects.clone());

    let leaf_url = topo.leaf().client_url();
    let mut edges = BTreeMap::new();
    for host in HOSTS {
        let p = RunningProcess::start(edge_config(&leaf_url, host, &data, &keys.public)).await.unwrap();
        edges.insert(host, p);
    }
    for host in HOSTS {
        let r = eventually(WAIT, POLL, || async {
            let r = record(&hosts, host).await?;
            if r.online {
                Ok(r)
            } else {
                Err(format!("{host} not online"))
            }
        })
        .await
        .unwrap();
        assert!(!r.workers.contains_key("playbook"), "{host} starts without the worker: {r:?}");
        assert_eq!(r.applied_revision, None);
    }

    // Revision 1 enables the service: worker installed, playbook run, revision recorded.
    let log = tmp.path().join("applied.log");
    let book1 = tmp.path().join("baseline-1.yml");
    write_playbook(&book1, &log, "rev1");
    let applied = config
        .apply(&ApplyRequest { document: document(&book1, "one"), author: "test".into(), ..Default::default() })
        .await
        .unwrap();
    let rev1 = applied.revision.revision;
    for host in HOSTS {
        let r = wait_applied(&hosts, host, rev1).await;
        assert!(r.workers.contains_key("playbook"), "{host} has the worker: {r:?}");
        assert!(ran(&log, "rev1", &data, host), "{host} ran the playbook:\n{}", std::fs::read_to_string(&log).unwrap());
    }
    // One run per host for the revision, each a success, labelled with the revision and service.
    assert_eq!(
        runs_of(&runs, rev1).await,
        vec![("edge-a".to_owned(), RunStatus::Success), ("edge-b".to_owned(), RunStatus::Success)]
    );
    // Dispatched by reference only: the content digest of the service playbook, no content.
    let ref1 = PlaybookRef::of(&std::fs::read(&book1).unwrap()).to_string();
    assert_eq!(jobs_of(&runs, rev1).await, vec![(String::new(), ref1.clone())]);
    assert_eq!(config.playbook(&ref1).await.unwrap().content, std::fs::read_to_string(&book1).unwrap());

    // edge-b goes away; revision 2 reaches edge-a only.
    edges.remove("edge-b").unwrap().shutdown(Duration::from_secs(5)).await.unwrap();
    eventually(WAIT, POLL, || async {
        let r = record(&hosts, "edge-b").await?;
        if r.online {
            Err("edge-b still online".to_owned())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    let book2 = tmp.path().join("baseline-2.yml");
    write_playbook(&book2, &log, "rev2");
    let applied = config
        .apply(&ApplyRequest { document: document(&book2, "two"), author: "test".into(), ..Default::default() })
        .await
        .unwrap();
    let rev2 = applied.revision.revision;
    assert_eq!(rev2, rev1 + 1);
    wait_applied(&hosts, "edge-a", rev2).await;
    assert!(ran(&log, "rev2", &data, "edge-a"));
    let b = record(&hosts, "edge-b").await.unwrap();
    assert_eq!(b.applied_revision, Some(rev1), "offline edge-b is untouched");
    assert!(!ran(&log, "rev2", &data, "edge-b"));

    // edge-b returns with a stale applied revision and is brought up to date.
    let p = RunningProcess::start(edge_config(&leaf_url, "edge-b", &data, &keys.public)).await.unwrap();
    edges.insert("edge-b", p);
    wait_applied(&hosts, "edge-b", rev2).await;
    assert!(ran(&log, "rev2", &data, "edge-b"));
    assert_eq!(
        runs_of(&runs, rev2).await,
        vec![("edge-a".to_owned(), RunStatus::Success), ("edge-b".to_owned(), RunStatus::Success)]
    );
    let ref2 = PlaybookRef::of(&std::fs::read(&book2).unwrap()).to_string();
    assert_eq!(jobs_of(&runs, rev2).await, vec![(String::new(), ref2)]);
    // Revision 1 was not dispatched again by any of the re-checks.
    assert_eq!(runs_of(&runs, rev1).await.len(), 2);

    for (_, p) in edges {
        p.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    hub.shutdown(Duration::from_secs(5)).await.unwrap();
}
