//! Runs end to end on real servers through a hub + leaf topology: the dispatcher on the hub,
//! the edge agent and run worker of host `edge-1` on the leaf (JetStream through the hub's
//! domain); work orders travel as durable host commands through the agent's command consumer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use ractor::{Actor, ActorRef};
use steward_actors::dispatcher::client::DispatcherClient;
use steward_actors::dispatcher::{Dispatcher, DispatcherArgs, DispatcherMsg};
use steward_actors::edge::{EdgeAgent, EdgeArgs, EdgeMsg};
use steward_actors::signing::{JobSigner, OrderBinding};
use steward_actors::worker::events::publish_batch;
use steward_actors::worker::{RunWorker, RunWorkerArgs, RunWorkerMsg};
use steward_actors::{now_ms, ConnectOptions};
use steward_deploy::wait::eventually;
use steward_deploy::HubLeaf;
use steward_subjects::api::host::COMMAND_ID_HEADER;
use steward_subjects::api::run::{
    EventKind, HostRun, Job, RunEvent, RunRecord, RunRequest, RunStatus, RunStatusRequest, RunView, StatusCounts,
    WorkAck, WorkOrder,
};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::rpc::{self, RequestErrorKind};
use steward_subjects::streams::{self, Replicas, HOST_COMMANDS_STREAM, RUN_EVENTS_STREAM};
use steward_subjects::subject::{run_events_consumer, run_host_key, run_record_key, run_work_msg_id};
use steward_subjects::{AccountId, ErrorCode, HostId, Subjects};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

struct Site {
    topo: HubLeaf,
    hub: async_nats::Client,
    subjects: Subjects,
    runs: DispatcherClient,
    dispatcher: ActorRef<DispatcherMsg>,
    worker: Option<ActorRef<RunWorkerMsg>>,
    /// The host's edge agent: work orders reach the worker through its command consumer.
    edge: ActorRef<EdgeMsg>,
    _data: tempfile::TempDir,
    data: PathBuf,
    signer: JobSigner,
}

impl Site {
    async fn start() -> Site {
        Self::start_trusting(true).await
    }

    /// A site whose host trusts the hub's key (`true`) or some other key (`false`).
    async fn start_trusting(own_key: bool) -> Site {
        let topo = HubLeaf::start().await.unwrap();
        let hub = async_nats::connect(topo.hub().client_url()).await.unwrap();
        streams::ensure(&jetstream::new(hub.clone()), Replicas::One).await.unwrap();
        let subjects = Subjects::new(AccountId::parse("acme").unwrap());
        let signer = JobSigner::generate().unwrap();
        let mut args = DispatcherArgs::new(hub.clone(), subjects.clone(), Some(signer.clone()));
        args.tick = Duration::from_millis(100);
        args.redeliver_after = Duration::from_millis(500);
        let (dispatcher, _) = Actor::spawn(None, Dispatcher, args).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let path = data.path().to_owned();
        let edge = spawn_edge(topo.leaf().client_url(), &subjects, "edge-1", Some("hub"), &path).await;
        let mut site = Site {
            topo,
            runs: DispatcherClient::new(hub.clone(), subjects.clone()),
            hub,
            subjects,
            dispatcher,
            worker: None,
            edge,
            _data: data,
            data: path,
            signer,
        };
        let verifier = if own_key { site.signer.verifier() } else { JobSigner::generate().unwrap().verifier() };
        site.start_worker(Some(verifier)).await;
        site
    }

    async fn start_worker(&mut self, verifier: Option<steward_actors::signing::JobVerifier>) {
        self.worker = Some(self.spawn_worker("edge-1", verifier).await);
    }

    /// A run worker for `host` on the leaf, once work orders reach it.
    async fn spawn_worker(
        &self,
        host: &str,
        verifier: Option<steward_actors::signing::JobVerifier>,
    ) -> ActorRef<RunWorkerMsg> {
        let args = RunWorkerArgs {
            connect: ConnectOptions::new(self.topo.leaf().client_url()),
            subjects: self.subjects.clone(),
            host_id: HostId::parse(host).unwrap(),
            verifier: verifier.map(Into::into),
            hub_domain: Some("hub".into()),
            work_dir: self.data.join(format!("work-{host}")),
            ansible_playbook: PathBuf::from("ansible-playbook"),
        };
        let (worker, _) = Actor::spawn(None, RunWorker, args).await.unwrap();
        // The worker's interest must have crossed the leaf connection before work is sent.
        let subject = self.subjects.run_work(&HostId::parse(host).unwrap());
        eventually(WAIT, POLL, || {
            let hub = self.hub.clone();
            let subject = subject.clone();
            async move {
                let probe = WorkOrder { host_id: "nobody".into(), ..WorkOrder::default() };
                match rpc::request::<_, WorkAck>(&hub, subject, &probe, Duration::from_millis(500)).await {
                    Err(e) if e.kind() == RequestErrorKind::Remote(ErrorCode::Invalid) => Ok(()),
                    other => Err(format!("worker not reachable yet: {other:?}")),
                }
            }
        })
        .await
        .unwrap();
        worker
    }

    /// A work order of `job` for `host`, signed by the hub's key for this account, `host`,
    /// `run_id`, `attempt` and `deadline_ms`.
    fn signed_order(&self, host: &str, run_id: &str, attempt: u32, deadline_ms: u64, job: &Job) -> WorkOrder {
        let binding = OrderBinding {
            account: self.subjects.account().as_str(),
            host_id: host,
            run_id,
            attempt,
            deadline_ms,
            job,
        };
        WorkOrder {
            run_id: run_id.into(),
            host_id: host.into(),
            attempt,
            job: job.clone(),
            signature: self.signer.sign_order(&binding),
            key_id: self.signer.key_id().into(),
            timeout_ms: 10_000,
            deadline_ms,
            ..WorkOrder::default()
        }
    }

    /// Sends `order` straight to `host`'s run worker; the worker's answer.
    async fn send_order(&self, host: &str, order: &WorkOrder) -> Result<WorkAck, rpc::RequestError> {
        rpc::request(&self.hub, self.subjects.run_work(&HostId::parse(host).unwrap()), order, Duration::from_secs(5))
            .await
    }

    /// Waits for the `last` job event of `run_id`; the run's events.
    async fn wait_last_event(&self, run_id: &str) -> Vec<RunEvent> {
        eventually(WAIT, POLL, || async {
            let evs = events_of(&self.hub, run_id).await;
            if evs.iter().any(|e| e.kind == EventKind::Last) {
                Ok(evs)
            } else {
                Err("no last event yet")
            }
        })
        .await
        .unwrap()
    }

    /// Returns once the dispatcher swept at least once from now: a probe run to a host that
    /// does not exist, with a 1 ms timeout, ends `timeout` only in a sweep (which writes the
    /// noted count changes before it checks deadlines).
    async fn wait_for_a_tick(&self) {
        let probe = RunRequest { hosts: vec!["edge-nowhere".into()], ..self.request(Job::command(["true"]), 1) };
        let probe = self.runs.dispatch(&probe).await.unwrap();
        self.wait_status(&probe.run_id, RunStatus::Timeout).await;
    }

    fn request(&self, job: Job, timeout_ms: u64) -> RunRequest {
        RunRequest { hosts: vec!["edge-1".into()], job, timeout_ms, ..RunRequest::default() }
    }

    async fn view(&self, run_id: &str) -> RunView {
        let req = RunStatusRequest { run_id: run_id.into(), events: true, ..RunStatusRequest::default() };
        self.runs.status(&req).await.unwrap()
    }

    async fn wait_status(&self, run_id: &str, want: RunStatus) -> RunView {
        eventually(WAIT, POLL, || async {
            let v = self.view(run_id).await;
            if v.run.status == want {
                Ok(v)
            } else {
                Err(format!("run is {} ({:?}), want {want}", v.run.status, v.hosts.first().map(|h| &h.run)))
            }
        })
        .await
        .unwrap()
    }
}

/// The edge agent of `host` (its command consumer hands work orders to the host's run worker).
async fn spawn_edge(
    url: String,
    subjects: &Subjects,
    host: &str,
    hub_domain: Option<&str>,
    data: &std::path::Path,
) -> ActorRef<EdgeMsg> {
    let mut args = EdgeArgs::new(
        ConnectOptions::new(url),
        subjects.clone(),
        HostId::parse(host).unwrap(),
        data.join(format!("edge-{host}")),
    );
    args.hub_domain = hub_domain.map(str::to_owned);
    Actor::spawn(None, EdgeAgent, args).await.unwrap().0
}

/// Writes a pending first-attempt host record of `run_id` as the dispatcher would; its key.
async fn create_pending_host_record(
    kv: &jetstream::kv::Store,
    subjects: &Subjects,
    run_id: &str,
    host: &HostId,
) -> String {
    let key = run_host_key(subjects.account(), run_id, host);
    let record = HostRun {
        run_id: run_id.to_owned(),
        host_id: host.to_string(),
        status: RunStatus::Pending,
        attempt: 1,
        max_attempts: 1,
        timeout_ms: 10_000,
        deadline_ms: u64::MAX / 2,
        ..HostRun::default()
    };
    kv.create(&key, codec::encode(Encoding::MsgPack, &record).unwrap()).await.unwrap();
    key
}

/// The host record under `key`.
async fn read_host_record(kv: &jetstream::kv::Store, key: &str) -> Result<HostRun, String> {
    let entry = kv.get(key).await.map_err(|e| e.to_string())?.ok_or("record gone")?;
    codec::decode(Encoding::MsgPack, &entry).map_err(|e| e.to_string())
}

/// Every job event of `run_id` stored in the run events stream.
async fn events_of(hub: &async_nats::Client, run_id: &str) -> Vec<RunEvent> {
    let js = jetstream::new(hub.clone());
    let stream = js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut out = Vec::new();
    for s in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = stream.get_raw_message(s).await {
            let ev: RunEvent = codec::decode(Encoding::MsgPack, &m.payload).unwrap();
            if ev.run_id == run_id {
                out.push(ev);
            }
        }
    }
    out
}

/// Asserts the run's only job event is a `last` failure whose reason says `want`.
fn assert_refused(run_id: &str, events: &[RunEvent], want: &str) {
    assert_eq!(events.len(), 1, "{run_id}: nothing but the refusal: {events:?}");
    assert_eq!(events[0].status, Some(RunStatus::Failure), "{run_id}");
    assert!(events[0].reason.contains("refused") && events[0].reason.contains(want), "{run_id}: {}", events[0].reason);
}

fn assert_ordered(events: &[RunEvent]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "events not complete and in order");
    assert_eq!(events.last().unwrap().kind, EventKind::Last);
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_run_succeeds_with_ordered_events_and_same_key_gives_same_run() {
    let site = Site::start().await;
    let mut req = site.request(Job::command(["sh", "-c", "echo hello; echo oops >&2; echo world"]), 10_000);
    req.idempotency_key = "deploy-42".into();
    let accepted = site.runs.dispatch(&req).await.unwrap();
    assert!(!accepted.existing);
    let again = site.runs.dispatch(&req).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.run_id, accepted.run_id);

    let view = site.wait_status(&accepted.run_id, RunStatus::Success).await;
    let host = &view.hosts[0];
    assert_eq!(host.run.status, RunStatus::Success);
    assert_eq!(host.run.exit_code, Some(0));
    assert_eq!(host.run.attempts.len(), 1);
    assert_ordered(&host.events);
    assert_eq!(host.events[0].kind, EventKind::Start);
    let out: String = host.events.iter().filter(|e| e.kind == EventKind::Stdout).map(|e| e.stdout.as_str()).collect();
    assert_eq!(out, "hello\nworld\n");
    assert!(host.events.iter().any(|e| e.kind == EventKind::Stderr && e.stdout.contains("oops")));
    assert_eq!(view.run.counts.success, 1);

    // A failing command fails with its exit code; cancelling a finished run says so.
    let failed = site.runs.dispatch(&site.request(Job::command(["sh", "-c", "exit 3"]), 10_000)).await.unwrap();
    let view = site.wait_status(&failed.run_id, RunStatus::Failure).await;
    assert_eq!(view.hosts[0].run.exit_code, Some(3));
    let err = site.runs.cancel(&failed.run_id).await.unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Remote(ErrorCode::Conflict));
    assert!(err.to_string().contains("already finished"), "{err}");

    // Listing by status finds both.
    let list = site
        .runs
        .list(&steward_subjects::api::run::RunListRequest { status: Some(RunStatus::Failure), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(list.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), [failed.run_id.as_str()]);

    // Bad input gets clear errors.
    let bad = RunRequest { hosts: vec!["a.b".into()], ..site.request(Job::command(["true"]), 0) };
    let err = site.runs.dispatch(&bad).await.unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Remote(ErrorCode::Invalid));
    let raw = site.hub.request(site.subjects.run_dispatch(), "\u{1}garbage".into()).await.unwrap();
    assert!(String::from_utf8_lossy(&raw.payload).contains("invalid"));
    drop(site.dispatcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_away_at_dispatch_gets_its_work_when_it_comes_back() {
    let mut site = Site::start().await;
    // The host's agent is away: nothing reads its commands.
    site.edge.stop_and_wait(None, Some(WAIT)).await.unwrap();
    let run = site.runs.dispatch(&site.request(Job::command(["sh", "-c", "echo back"]), 20_000)).await.unwrap();
    // The work order is stored as the host's durable command, and the host stays pending.
    let js = jetstream::new(site.hub.clone());
    let host = HostId::parse("edge-1").unwrap();
    let stored = eventually(WAIT, POLL, || async {
        let stream = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap();
        let mut per_subject = stream.info_with_subjects(site.subjects.host_command(&host)).await.unwrap();
        let mut n = 0;
        while let Some(Ok((_, count))) = futures::StreamExt::next(&mut per_subject).await {
            n += count;
        }
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} stored commands, want 1"))
        }
    })
    .await;
    stored.unwrap();
    assert_eq!(site.view(&run.run_id).await.hosts[0].run.status, RunStatus::Pending);
    // Back again (same store): it takes the order from its consumer and the run succeeds.
    site.edge = spawn_edge(site.topo.leaf().client_url(), &site.subjects, "edge-1", Some("hub"), &site.data).await;
    let view = site.wait_status(&run.run_id, RunStatus::Success).await;
    assert!(view.hosts[0].events.iter().any(|e| e.stdout.contains("back")), "{:?}", view.hosts[0].events);
    assert_ordered(&view.hosts[0].events);
    // Published again under its id (a restarted hub does that), the order is not stored twice.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, run_work_msg_id(&run.run_id, &host, 1).as_str());
    let ack = js
        .publish_with_headers(site.subjects.host_command(&host), headers, "again".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate);
}

/// An agent that took a work order and died before acknowledging it (here: a pull that holds
/// the order and never answers) does not keep the order from the host for long: it is offered
/// again after the commands' acknowledgement wait, and the restarted agent runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_order_taken_by_an_agent_that_died_is_offered_again() {
    let mut site = Site::start().await;
    site.edge.stop_and_wait(None, Some(WAIT)).await.unwrap();
    let js = jetstream::new(site.hub.clone());
    let host = HostId::parse("edge-1").unwrap();
    let consumer: jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream(site.subjects.host_command_consumer(&host), HOST_COMMANDS_STREAM).await.unwrap();
    // A waiting pull (`fetch` would answer "no messages" at once when nothing is pending, e.g.
    // while the stopped agent's last pull, not yet gone from the hub, holds the order).
    let mut holder = consumer.batch().max_messages(1).expires(Duration::from_secs(60)).messages().await.unwrap();
    let run = site.runs.dispatch(&site.request(Job::command(["sh", "-c", "echo late"]), 30_000)).await.unwrap();
    let held = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut holder)).await.unwrap().unwrap().unwrap();
    assert!(held.subject.as_str().ends_with(".edge-1"), "{}", held.subject);
    // The agent comes back; the order it "took" before dying reaches it again.
    let back = Instant::now();
    site.edge = spawn_edge(site.topo.leaf().client_url(), &site.subjects, "edge-1", Some("hub"), &site.data).await;
    let view = site.wait_status(&run.run_id, RunStatus::Success).await;
    assert!(view.hosts[0].events.iter().any(|e| e.stdout.contains("late")));
    assert!(back.elapsed() < Duration::from_secs(15), "took {:?}", back.elapsed());
    drop(holder);
}

/// A work order offered again after the host restarted (here: stored a second time, with the
/// run worker restarted so its memory of the order is gone) is not run twice: the agent
/// journalled the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_order_offered_again_after_a_restart_runs_once() {
    let mut site = Site::start().await;
    let marks = site.data.join("marks");
    let append = |tag: &str| Job::command(["sh", "-c", &format!("echo {tag} >> {}", marks.display())]);
    let first = site.runs.dispatch(&site.request(append("first"), 20_000)).await.unwrap();
    site.wait_status(&first.run_id, RunStatus::Success).await;
    // The worker restarts and forgets which orders it took.
    site.worker.take().unwrap().stop_and_wait(None, Some(WAIT)).await.unwrap();
    site.start_worker(Some(site.signer.verifier())).await;
    // The same order is offered again (as after a restart before the acknowledgement).
    let js = jetstream::new(site.hub.clone());
    let stream = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap();
    let host = HostId::parse("edge-1").unwrap();
    let stored = stream.direct_get_last_for_subject(site.subjects.host_command(&host)).await.unwrap();
    assert_eq!(
        stored.headers.get(COMMAND_ID_HEADER).map(|v| v.as_str().to_owned()),
        Some(format!("run-{}-1", first.run_id))
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(COMMAND_ID_HEADER, format!("run-{}-1", first.run_id).as_str());
    js.publish_with_headers(site.subjects.host_command(&host), headers, stored.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    // A later run to the same host succeeds after the agent handled the repeat (in order).
    let second = site.runs.dispatch(&site.request(append("second"), 20_000)).await.unwrap();
    site.wait_status(&second.run_id, RunStatus::Success).await;
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "first\nsecond\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_withdraws_the_work_order_of_a_host_that_is_away() {
    let mut site = Site::start().await;
    site.edge.stop_and_wait(None, Some(WAIT)).await.unwrap();
    let marker = site.data.join("ran-after-cancel");
    let job = Job::command(["touch", marker.to_str().unwrap()]);
    let run = site.runs.dispatch(&site.request(job, 20_000)).await.unwrap();
    let js = jetstream::new(site.hub.clone());
    let host = HostId::parse("edge-1").unwrap();
    let stored = || async {
        let stream = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap();
        let mut per_subject = stream.info_with_subjects(site.subjects.host_command(&host)).await.unwrap();
        let mut n = 0;
        while let Some(Ok((_, count))) = futures::StreamExt::next(&mut per_subject).await {
            n += count;
        }
        n
    };
    eventually(WAIT, POLL, || async {
        if stored().await == 1 {
            Ok(())
        } else {
            Err("work order not stored")
        }
    })
    .await
    .unwrap();

    let result = site.runs.cancel(&run.run_id).await.unwrap();
    assert_eq!(result.canceled_pending, ["edge-1"]);
    assert_eq!(result.status, RunStatus::Canceled);
    assert_eq!(stored().await, 0, "the canceled run's work order is still stored");
    // Back again: nothing to run.
    site.edge = spawn_edge(site.topo.leaf().client_url(), &site.subjects, "edge-1", Some("hub"), &site.data).await;
    // The agent reads its commands in order: once a later run succeeded, whatever was stored
    // before it has been handled.
    let later = site.runs.dispatch(&site.request(Job::command(["true"]), 20_000)).await.unwrap();
    site.wait_status(&later.run_id, RunStatus::Success).await;
    assert!(!marker.exists(), "a canceled run ran on a host that came back");
    let view = site.view(&run.run_id).await;
    assert_eq!(view.hosts[0].run.status, RunStatus::Canceled);
    assert!(view.hosts[0].events.is_empty(), "{:?}", view.hosts[0].events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_back_after_the_deadline_does_not_run_the_expired_order() {
    let mut site = Site::start().await;
    site.edge.stop_and_wait(None, Some(WAIT)).await.unwrap();
    let marker = site.data.join("ran-after-deadline");
    let run =
        site.runs.dispatch(&site.request(Job::command(["touch", marker.to_str().unwrap()]), 1_500)).await.unwrap();
    let view = site.wait_status(&run.run_id, RunStatus::Timeout).await;
    assert_eq!(view.hosts[0].run.status, RunStatus::Timeout);
    // Back after the deadline: the order is still stored but expired; the agent drops it.
    site.edge = spawn_edge(site.topo.leaf().client_url(), &site.subjects, "edge-1", Some("hub"), &site.data).await;
    let js = jetstream::new(site.hub.clone());
    let host = HostId::parse("edge-1").unwrap();
    let consumer = site.subjects.host_command_consumer(&host);
    eventually(WAIT, POLL, || async {
        let mut c: jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream(&consumer, HOST_COMMANDS_STREAM).await.map_err(|e| e.to_string())?;
        let info = c.info().await.map_err(|e| e.to_string())?;
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0 {
            Ok(())
        } else {
            Err(format!("order not handled yet: {info:?}"))
        }
    })
    .await
    .unwrap();
    assert!(!marker.exists(), "an expired work order ran");
    assert!(site.view(&run.run_id).await.hosts[0].events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recorded_per_attempt() {
    let site = Site::start().await;
    let mut req = site.request(Job::command(["sh", "-c", "exit 1"]), 10_000);
    req.retry = steward_subjects::api::run::RetryPolicy { max_attempts: 3, backoff_ms: 100 };
    let run = site.runs.dispatch(&req).await.unwrap();
    let view = site.wait_status(&run.run_id, RunStatus::Failure).await;
    let h = &view.hosts[0].run;
    assert_eq!(h.attempt, 3);
    assert_eq!(
        h.attempts.iter().map(|a| (a.attempt, a.status)).collect::<Vec<_>>(),
        [(1, RunStatus::Failure), (2, RunStatus::Failure), (3, RunStatus::Failure)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_process_group_within_two_seconds() {
    let site = Site::start().await;
    let marker = format!("600.{}", std::process::id());
    // A shell whose child sleeps: the whole group must go.
    let script = format!("sleep {marker} & wait");
    let run = site.runs.dispatch(&site.request(Job::command(["sh", "-c", &script]), 60_000)).await.unwrap();
    site.wait_status(&run.run_id, RunStatus::Running).await;
    eventually(WAIT, POLL, || async {
        if processes_with(&format!("sleep {marker}")).is_empty() {
            Err("sleep not started")
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();

    let started = Instant::now();
    let result = site.runs.cancel(&run.run_id).await.unwrap();
    let took = started.elapsed();
    assert_eq!(result.confirmed, ["edge-1"]);
    assert_eq!(result.status, RunStatus::Canceled);
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert!(processes_with(&format!("sleep {marker}")).is_empty(), "{:?}", processes_with(&marker));
    let view = site.wait_status(&run.run_id, RunStatus::Canceled).await;
    assert_eq!(view.hosts[0].run.status, RunStatus::Canceled);
    // The host's own last event says canceled too, and arrives in order.
    let view = eventually(WAIT, POLL, || async {
        let v = site.view(&run.run_id).await;
        if v.hosts[0].events.last().is_some_and(|e| e.kind == EventKind::Last) {
            Ok(v)
        } else {
            Err("no last event yet")
        }
    })
    .await
    .unwrap();
    assert_ordered(&view.hosts[0].events);
    assert_eq!(view.hosts[0].events.last().unwrap().status, Some(RunStatus::Canceled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_mid_run_ends_timeout_at_the_deadline() {
    let mut site = Site::start().await;
    let run = site.runs.dispatch(&site.request(Job::command(["sleep", "30"]), 3_000)).await.unwrap();
    site.wait_status(&run.run_id, RunStatus::Running).await;
    let record = site.view(&run.run_id).await;
    let deadline_ms = record.hosts[0].run.deadline_ms;
    // Cut the site off: the leaf node goes away with the host's connection.
    site.topo.leaf_mut().stop().await;
    let view = site.wait_status(&run.run_id, RunStatus::Timeout).await;
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap();
    assert!(now_ms >= deadline_ms, "ended before the deadline");
    assert!(now_ms - deadline_ms < 2_000, "ended {} ms after the deadline", now_ms - deadline_ms);
    assert_eq!(view.hosts[0].run.status, RunStatus::Timeout);
    assert!(view.hosts[0].run.reason.contains("deadline"), "{}", view.hosts[0].run.reason);
    assert!(view.run.finished_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_is_stored_once() {
    let site = Site::start().await;
    let leaf = async_nats::connect(site.topo.leaf().client_url()).await.unwrap();
    let js = jetstream::with_domain(leaf, "hub");
    let host = HostId::parse("edge-9").unwrap();
    let batch: Vec<RunEvent> = (1..=5)
        .map(|seq| RunEvent {
            run_id: "r-dup".into(),
            host_id: "edge-9".into(),
            attempt: 1,
            seq,
            kind: if seq == 5 { EventKind::Last } else { EventKind::Stdout },
            stdout: format!("line {seq}\n"),
            ..RunEvent::default()
        })
        .collect();
    let hub_js = jetstream::new(site.hub.clone());
    let count = || async {
        let mut stream = hub_js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
        let info = stream.info().await.unwrap();
        info.state.messages
    };
    let before = count().await;
    publish_batch(&js, &site.subjects, &host, &batch, Duration::from_secs(5)).await.unwrap();
    // A reconnecting host resends the whole batch, plus the first half again.
    publish_batch(&js, &site.subjects, &host, &batch, Duration::from_secs(5)).await.unwrap();
    publish_batch(&js, &site.subjects, &host, &batch[..2], Duration::from_secs(5)).await.unwrap();
    assert_eq!(count().await - before, 5);

    // Stored in order.
    let stream = hub_js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
    let mut seqs = Vec::new();
    for s in before + 1..=before + 5 {
        let m = stream.get_raw_message(s).await.unwrap();
        let ev: RunEvent = codec::decode(Encoding::MsgPack, &m.payload).unwrap();
        seqs.push(ev.seq);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

/// A small run's work order is published beside its record writes, so a quick host can report
/// before its host record exists: those events must be applied once it does, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ahead_of_their_host_record_are_applied_once_it_exists() {
    let site = Site::start().await;
    let host = HostId::parse("edge-7").unwrap();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let last = RunEvent {
        run_id: run_id.clone(),
        host_id: host.to_string(),
        attempt: 1,
        seq: 1,
        kind: EventKind::Last,
        status: Some(RunStatus::Success),
        exit_code: Some(0),
        ..RunEvent::default()
    };
    let js = jetstream::new(site.hub.clone());
    publish_batch(&js, &site.subjects, &host, &[last], Duration::from_secs(5)).await.unwrap();
    // The record is written only once the events were offered again (past the dispatcher's
    // quick looks of a few ms).
    let stream = js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
    let durable = run_events_consumer(site.subjects.account());
    eventually(WAIT, POLL, || async {
        let mut c: jetstream::consumer::PullConsumer =
            stream.get_consumer(&durable).await.map_err(|e| e.to_string())?;
        let info = c.info().await.map_err(|e| e.to_string())?;
        if info.num_redelivered > 0 {
            Ok(())
        } else {
            Err("the events were not offered again yet".to_owned())
        }
    })
    .await
    .unwrap();
    let kv = js.get_key_value(streams::RUNS_BUCKET).await.unwrap();
    let key = create_pending_host_record(&kv, &site.subjects, &run_id, &host).await;
    let done: HostRun = eventually(WAIT, POLL, || {
        let (kv, key) = (kv.clone(), key.clone());
        async move {
            let h = read_host_record(&kv, &key).await?;
            if h.status == RunStatus::Success {
                Ok(h)
            } else {
                Err(format!("host record is {}", h.status))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.attempts.len(), 1);

    // The run record may come last of all: the count change noted for it is kept through the
    // dispatcher's ticks until it is there, and the run then ends.
    site.wait_for_a_tick().await;
    let run = RunRecord {
        run_id: run_id.clone(),
        status: RunStatus::Pending,
        hosts_total: 1,
        counts: StatusCounts { pending: 1, ..StatusCounts::default() },
        timeout_ms: 10_000,
        deadline_ms: u64::MAX / 2,
        ..RunRecord::default()
    };
    let run_key = run_record_key(site.subjects.account(), &run_id);
    kv.create(&run_key, codec::encode(Encoding::MsgPack, &run).unwrap()).await.unwrap();
    let view = site.wait_status(&run_id, RunStatus::Success).await;
    assert_eq!(view.run.counts.success, 1);
    assert_eq!(view.run.counts.pending, 0);
}

/// A host publishes on its own event subject only; an event on one host's subject that names
/// another host must not change the other host's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_another_host_than_its_subject_is_ignored() {
    let site = Site::start().await;
    let victim = HostId::parse("edge-5").unwrap();
    let liar = HostId::parse("edge-6").unwrap();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let js = jetstream::new(site.hub.clone());
    let kv = js.get_key_value(streams::RUNS_BUCKET).await.unwrap();
    let key = create_pending_host_record(&kv, &site.subjects, &run_id, &victim).await;
    let event = |seq, kind, status| RunEvent {
        run_id: run_id.clone(),
        host_id: victim.to_string(),
        attempt: 1,
        seq,
        kind,
        status,
        exit_code: status.map(|_| 0),
        ..RunEvent::default()
    };
    // The forged success goes first, on the liar's own subject; then the victim's real start.
    publish_batch(&js, &site.subjects, &liar, &[event(2, EventKind::Last, Some(RunStatus::Success))], WAIT)
        .await
        .unwrap();
    publish_batch(&js, &site.subjects, &victim, &[event(1, EventKind::Start, None)], WAIT).await.unwrap();
    let seen: HostRun = eventually(WAIT, POLL, || {
        let (kv, key) = (kv.clone(), key.clone());
        async move {
            let h = read_host_record(&kv, &key).await?;
            if h.status == RunStatus::Pending {
                Err("no event applied yet".to_owned())
            } else {
                Ok(h)
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.status, RunStatus::Running, "a forged event was applied: {seen:?}");
    assert_eq!(seen.last_event_seq, 1);
}

/// A run whose records cannot be written is refused, and the work orders already published
/// beside the record writes are taken back: no host finds an order of a run it was told failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_refused_for_lack_of_records_leaves_no_work_order() {
    let site = Site::start().await;
    let js = jetstream::new(site.hub.clone());
    js.delete_stream(format!("KV_{}", streams::RUNS_BUCKET)).await.unwrap();
    let req = RunRequest { hosts: vec!["edge-away".into()], ..site.request(Job::command(["true"]), 10_000) };
    let err = site.runs.dispatch(&req).await.unwrap_err();
    assert!(matches!(err.kind(), RequestErrorKind::Remote(_)), "{err}");
    let stream = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap();
    let subject = site.subjects.host_command(&HostId::parse("edge-away").unwrap());
    // The take-back ends before the answer. A stray order the dispatcher sent before answering
    // is ahead of this probe in the stream's queue: once the probe is stored, so is any stray.
    let probe = site.subjects.host_command(&HostId::parse("edge-probe").unwrap());
    js.publish(probe, "probe".into()).await.unwrap().await.unwrap();
    let left = stream.direct_get_last_for_subject(&subject).await;
    assert!(left.is_err(), "a work order of the refused run is still stored: {:?}", left.map(|m| m.headers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_unsigned_jobs_are_refused_before_anything_runs() {
    let site = Site::start().await;
    let marker = site.data.join("tampered-ran");
    let tampered = Job::command(["touch", marker.to_str().unwrap()]);
    let deadline = now_ms() + 60_000;
    for (run_id, unsigned, want) in [("r-tampered", false, "tampered"), ("r-unsigned", true, "not signed")] {
        let mut order = site.signed_order("edge-1", run_id, 1, deadline, &Job::command(["true"]));
        order.job = tampered.clone();
        if unsigned {
            order.signature.clear();
        }
        assert!(site.send_order("edge-1", &order).await.unwrap().accepted);
        assert_refused(run_id, &site.wait_last_event(run_id).await, want);
        assert!(!marker.exists(), "tampered job ran");
    }

    // Through the dispatcher, a host trusting another key refuses with a failed run.
    let other = Site::start_trusting(false).await;
    let run =
        other.runs.dispatch(&other.request(Job::command(["touch", marker.to_str().unwrap()]), 10_000)).await.unwrap();
    let view = other.wait_status(&run.run_id, RunStatus::Failure).await;
    assert!(view.hosts[0].run.reason.contains("signature verification failed"), "{}", view.hosts[0].run.reason);
    assert!(!marker.exists());
}

/// An order signed for host `edge-1` reaches the worker of `edge-2`: as it is, it names another
/// host and is refused outright; with its host rewritten to `edge-2`, its signature (made for
/// `edge-1`) does not verify there. Nothing runs either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_signed_for_another_host_is_refused_and_nothing_runs() {
    let site = Site::start().await;
    let _other = site.spawn_worker("edge-2", Some(site.signer.verifier())).await;
    let marker = site.data.join("retargeted-ran");
    let job = Job::command(["touch", marker.to_str().unwrap()]);
    let order = site.signed_order("edge-1", "r-for-edge-1", 1, now_ms() + 60_000, &job);

    let err = site.send_order("edge-2", &order).await.unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Remote(ErrorCode::Invalid), "{err}");
    assert!(err.to_string().contains("edge-1"), "{err}");

    let retargeted = WorkOrder { host_id: "edge-2".into(), ..order };
    assert!(site.send_order("edge-2", &retargeted).await.unwrap().accepted);
    let events = site.wait_last_event("r-for-edge-1").await;
    assert_refused("r-for-edge-1", &events, "signature verification failed");
    assert!(events.iter().all(|e| e.host_id == "edge-2"), "{events:?}");
    assert!(!marker.exists(), "an order signed for another host ran");
}

/// A signed order replayed under another run id, attempt or a later deadline does not verify;
/// one past its (signed) deadline, or without one, is refused too. Nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_its_run_attempt_or_deadline_changed_is_refused() {
    let site = Site::start().await;
    let marker = site.data.join("replayed-ran");
    let job = Job::command(["touch", marker.to_str().unwrap()]);
    let deadline = now_ms() + 60_000;

    let mut run_changed = site.signed_order("edge-1", "r-signed", 1, deadline, &job);
    run_changed.run_id = "r-run-changed".into();
    let mut attempt_changed = site.signed_order("edge-1", "r-attempt-changed", 1, deadline, &job);
    attempt_changed.attempt = 2;
    let mut deadline_changed = site.signed_order("edge-1", "r-deadline-changed", 1, now_ms() + 1, &job);
    deadline_changed.deadline_ms = deadline + 3_600_000;
    let expired = site.signed_order("edge-1", "r-expired", 1, now_ms() - 1_000, &job);
    let no_deadline = site.signed_order("edge-1", "r-no-deadline", 1, 0, &job);
    let cases = [
        (run_changed, "signature verification failed"),
        (attempt_changed, "signature verification failed"),
        (deadline_changed, "signature verification failed"),
        (expired, "deadline"),
        (no_deadline, "no deadline"),
    ];
    for (order, want) in cases {
        let run_id = order.run_id.clone();
        assert!(site.send_order("edge-1", &order).await.unwrap().accepted, "{run_id}");
        assert_refused(&run_id, &site.wait_last_event(&run_id).await, want);
        assert!(!marker.exists(), "{run_id} ran");
    }
}

/// An order signed for its own host, run, attempt and deadline runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_signed_for_its_host_runs() {
    let site = Site::start().await;
    let marker = site.data.join("signed-ran");
    let job = Job::command(["touch", marker.to_str().unwrap()]);
    let order = site.signed_order("edge-1", "r-signed-here", 3, now_ms() + 60_000, &job);
    assert!(site.send_order("edge-1", &order).await.unwrap().accepted);
    let events = site.wait_last_event("r-signed-here").await;
    assert_eq!(events.last().unwrap().status, Some(RunStatus::Success), "{events:?}");
    assert!(events.iter().all(|e| e.attempt == 3), "{events:?}");
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_playbook_run_succeeds_with_its_events_in_order() {
    let site = Site::start().await;
    let target = site.data.join("playbook-wrote-this");
    let playbook = format!(
        r#"- name: steward test play
  hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: hello from steward
    - name: write a file
      ansible.builtin.copy:
        dest: "{}"
        content: "applied\n"
    - name: run a command
      ansible.builtin.command: echo done
"#,
        target.display()
    );
    let run = site.runs.dispatch(&site.request(Job::playbook(playbook), 120_000)).await.unwrap();
    let view = eventually(Duration::from_secs(120), Duration::from_millis(200), || async {
        let v = site.view(&run.run_id).await;
        match v.run.status {
            RunStatus::Success => Ok(v),
            s if s.is_terminal() => panic!("playbook ended {s}: {:#?}", v.hosts[0]),
            s => Err(format!("run is {s}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "applied\n");
    let events = &view.hosts[0].events;
    assert_ordered(events);
    let tasks: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Task && e.event.starts_with("runner_on_"))
        .map(|e| (e.task.as_str(), e.event.as_str()))
        .collect();
    assert_eq!(
        tasks,
        [("say hello", "runner_on_ok"), ("write a file", "runner_on_ok"), ("run a command", "runner_on_ok")]
    );
    let copy = events.iter().find(|e| e.task == "write a file" && e.event == "runner_on_ok").unwrap();
    assert!(copy.changed);
    assert_eq!(copy.task_host, "localhost");
    assert!(events.iter().any(|e| e.event == "playbook_on_stats"));

    // A failing task fails the run, with the task's failure in the events.
    let bad = "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: boom\n      ansible.builtin.fail:\n        msg: broken on purpose\n";
    let run = site.runs.dispatch(&site.request(Job::playbook(bad), 120_000)).await.unwrap();
    let view = eventually(Duration::from_secs(120), Duration::from_millis(200), || async {
        let v = site.view(&run.run_id).await;
        if v.run.status.is_terminal() {
            Ok(v)
        } else {
            Err(format!("run is {}", v.run.status))
        }
    })
    .await
    .unwrap();
    assert_eq!(view.run.status, RunStatus::Failure);
    let failed = view.hosts[0].events.iter().find(|e| e.event == "runner_on_failed").unwrap();
    assert_eq!(failed.task, "boom");
    assert!(failed.detail.contains("broken on purpose"));
}

/// Two hub instances answering the same account on one server: dispatch requests land on
/// either (micro queue group), the job events consumer is shared, so each instance applies
/// events of runs the other dispatched (compare-and-set against records the other wrote).
/// Every run must end with each host's record and the run's counts exact: one attempt per host
/// (or as many as the retry policy allows), counts summing to the hosts, nothing stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_runs_without_corrupting_them() {
    use futures::StreamExt;
    use steward_deploy::server::{NatsServer, ServerOptions};
    use steward_subjects::api::run::RetryPolicy;

    let server = NatsServer::start(ServerOptions::named("hub")).await.unwrap();
    let hub = async_nats::connect(server.client_url()).await.unwrap();
    streams::ensure(&jetstream::new(hub.clone()), Replicas::One).await.unwrap();
    let subjects = Subjects::new(AccountId::parse("acme").unwrap());
    let signer = JobSigner::generate().unwrap();
    let mut dispatchers = Vec::new();
    for _ in 0..2 {
        let client = async_nats::connect(server.client_url()).await.unwrap();
        let mut args = DispatcherArgs::new(client, subjects.clone(), Some(signer.clone()));
        args.tick = Duration::from_millis(50);
        args.redeliver_after = Duration::from_millis(500);
        let (d, _) = Actor::spawn(None, Dispatcher, args).await.unwrap();
        dispatchers.push(d);
    }
    let data = tempfile::tempdir().unwrap();
    let hosts = ["edge-1", "edge-2", "edge-3"];
    let mut workers = Vec::new();
    let mut edges = Vec::new();
    for h in hosts {
        let args = RunWorkerArgs {
            connect: ConnectOptions::new(server.client_url()),
            subjects: subjects.clone(),
            host_id: HostId::parse(h).unwrap(),
            verifier: Some(signer.verifier().into()),
            hub_domain: None,
            work_dir: data.path().join(h),
            ansible_playbook: PathBuf::from("ansible-playbook"),
        };
        let (w, _) = Actor::spawn(None, RunWorker, args).await.unwrap();
        workers.push(w);
        edges.push(spawn_edge(server.client_url(), &subjects, h, None, data.path()).await);
    }
    let runs = DispatcherClient::new(hub.clone(), subjects.clone());
    let all: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();

    // Successful runs, a run retried on failure, a run with a host that never answers.
    let mut expected = Vec::new();
    for i in 0..24 {
        let req = RunRequest {
            hosts: all.clone(),
            job: Job::command(["sh", "-c", &format!("echo run {i}")]),
            timeout_ms: 20_000,
            ..RunRequest::default()
        };
        expected.push((runs.dispatch(&req).await.unwrap().run_id, RunStatus::Success, 1));
    }
    let retried = RunRequest {
        hosts: all.clone(),
        job: Job::command(["sh", "-c", "exit 2"]),
        timeout_ms: 20_000,
        retry: RetryPolicy { max_attempts: 2, backoff_ms: 50 },
        ..RunRequest::default()
    };
    expected.push((runs.dispatch(&retried).await.unwrap().run_id, RunStatus::Failure, 2));
    let mut keyed = RunRequest {
        hosts: vec!["edge-1".into(), "ghost-1".into()],
        job: Job::command(["true"]),
        timeout_ms: 2_000,
        ..RunRequest::default()
    };
    keyed.idempotency_key = "two-hubs".into();
    let ghost = runs.dispatch(&keyed).await.unwrap();
    // The same key through whichever instance answers gives the same run.
    for _ in 0..4 {
        let again = runs.dispatch(&keyed).await.unwrap();
        assert!(again.existing);
        assert_eq!(again.run_id, ghost.run_id);
    }

    for (run_id, want, attempts) in &expected {
        let view = eventually(WAIT, POLL, || async {
            let req = RunStatusRequest { run_id: run_id.clone(), ..RunStatusRequest::default() };
            let v = runs.status(&req).await.map_err(|e| e.to_string())?;
            if v.run.status.is_terminal() {
                Ok(v)
            } else {
                Err(format!("run {run_id} is {} ({:?})", v.run.status, v.run.counts))
            }
        })
        .await
        .unwrap();
        assert_eq!(view.run.status, *want, "{view:#?}");
        assert_eq!(view.run.counts.total(), 3, "{view:#?}");
        let ended = match want {
            RunStatus::Success => view.run.counts.success,
            _ => view.run.counts.failure,
        };
        assert_eq!(ended, 3, "{view:#?}");
        assert!(view.run.finished_at.is_some());
        for h in &view.hosts {
            assert_eq!(h.run.status, *want, "{:?}", h.run);
            assert_eq!(h.run.attempt, *attempts, "{:?}", h.run);
            assert_eq!(h.run.attempts.len(), *attempts as usize, "{:?}", h.run);
        }
    }

    // The host that never answers ends `timeout` at its deadline; the other host succeeded.
    let view = eventually(WAIT, POLL, || async {
        let req = RunStatusRequest { run_id: ghost.run_id.clone(), ..RunStatusRequest::default() };
        let v = runs.status(&req).await.map_err(|e| e.to_string())?;
        if v.run.status.is_terminal() {
            Ok(v)
        } else {
            Err(format!("run is {}", v.run.status))
        }
    })
    .await
    .unwrap();
    assert_eq!(view.run.status, RunStatus::Timeout);
    assert_eq!((view.run.counts.success, view.run.counts.timeout, view.run.counts.total()), (1, 1, 2));
    let status_of = |h: &str| view.hosts.iter().find(|x| x.run.host_id == h).unwrap().run.status;
    assert_eq!(status_of("edge-1"), RunStatus::Success);
    assert_eq!(status_of("ghost-1"), RunStatus::Timeout);

    // Both instances answered dispatch requests.
    let mut answered = Vec::new();
    let inbox = hub.new_inbox();
    let mut sub = hub.subscribe(inbox.clone()).await.unwrap();
    hub.publish_with_reply("$SRV.STATS.steward-dispatcher", inbox, "".into()).await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let dispatched = v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "dispatch")
            .map_or(0, |e| e["num_requests"].as_u64().unwrap_or(0));
        answered.push(dispatched);
    }
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(answered.iter().all(|n| *n > 0), "one instance answered every dispatch: {answered:?}");

    // Canceled runs of a host that is away leave no work order behind, whichever instance
    // dispatched and whichever answered the cancel (it looks the order up by command id when
    // it did not store it itself).
    let away = HostId::parse("away-1").unwrap();
    for _ in 0..8 {
        let req = RunRequest {
            hosts: vec![away.to_string()],
            job: Job::command(["true"]),
            timeout_ms: 60_000,
            ..RunRequest::default()
        };
        let run = runs.dispatch(&req).await.unwrap();
        let js = jetstream::new(hub.clone());
        eventually(WAIT, POLL, || async {
            let stream = js.get_stream(HOST_COMMANDS_STREAM).await.unwrap();
            match stream.direct_get_last_for_subject(subjects.host_command(&away)).await {
                Ok(m) if m.headers.get(COMMAND_ID_HEADER).is_some_and(|v| v.as_str().contains(&run.run_id)) => Ok(()),
                other => Err(format!("work order of {} not stored yet: {:?}", run.run_id, other.map(|m| m.sequence))),
            }
        })
        .await
        .unwrap();
        let canceled = runs.cancel(&run.run_id).await.unwrap();
        assert_eq!(canceled.canceled_pending, [away.to_string()]);
    }
    let stream = jetstream::new(hub.clone()).get_stream(HOST_COMMANDS_STREAM).await.unwrap();
    assert!(
        stream.direct_get_last_for_subject(subjects.host_command(&away)).await.is_err(),
        "a canceled run's work order is still stored"
    );
    for w in workers {
        w.stop(None);
    }
    for d in dispatchers {
        d.stop(None);
    }
}

/// A UUIDv7 run id dated `at`.
fn run_id_at(at: SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    uuid::Uuid::new_v7(ts).simple().to_string()
}

/// How many events the shared events consumer still has to deliver or see acknowledged.
async fn events_in_flight(js: &jetstream::Context, subjects: &Subjects) -> Result<u64, String> {
    let stream = js.get_stream(RUN_EVENTS_STREAM).await.map_err(|e| e.to_string())?;
    let mut c: jetstream::consumer::PullConsumer =
        stream.get_consumer(&run_events_consumer(subjects.account())).await.map_err(|e| e.to_string())?;
    let info = c.info().await.map_err(|e| e.to_string())?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

/// A host flooding its own event subject with events of runs the hub never created (dated in
/// the future, not UUIDv7s, or long ago) must not stall the events consumer every host shares:
/// they are dropped at once (terminated, counted), and another host's run goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_flooding_bogus_run_events_does_not_stall_the_others() {
    const FLOOD: u64 = 10_000;
    let site = Site::start().await;
    let flooder = HostId::parse("edge-flood").unwrap();
    let now = SystemTime::now();
    let events: Vec<RunEvent> = (0..FLOOD)
        .map(|i| {
            let run_id = match i % 3 {
                // Forever "young" if the dispatcher waited for records of runs dated ahead.
                0 => run_id_at(now + Duration::from_secs(3600 + i)),
                1 => uuid::Uuid::new_v4().simple().to_string(),
                _ => run_id_at(now - Duration::from_secs(3600 + i)),
            };
            RunEvent {
                run_id,
                host_id: flooder.to_string(),
                attempt: 1,
                seq: 1,
                kind: EventKind::Last,
                status: Some(RunStatus::Success),
                exit_code: Some(0),
                ..RunEvent::default()
            }
        })
        .collect();
    let js = jetstream::new(site.hub.clone());
    let mut terminated = site.hub.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>").await.unwrap();
    site.hub.flush().await.unwrap();
    // In chunks: a JetStream context holds at most 5,000 publish acknowledgements in flight.
    for chunk in events.chunks(1000) {
        publish_batch(&js, &site.subjects, &flooder, chunk, Duration::from_secs(10)).await.unwrap();
    }

    // The other host's events queue behind the flood on the shared consumer (it takes a few
    // hundred ms here; over 6 s when the dispatcher waited for records of runs dated ahead).
    let started = Instant::now();
    let accepted = site.runs.dispatch(&site.request(Job::command(["true"]), 10_000)).await.unwrap();
    eventually(Duration::from_secs(5), POLL, || async {
        let v = site.view(&accepted.run_id).await;
        if v.run.status == RunStatus::Success {
            Ok(())
        } else {
            Err(format!("run is {} ({:?})", v.run.status, v.hosts.first().map(|h| &h.run)))
        }
    })
    .await
    .unwrap();
    eprintln!("run succeeded {:?} after the flood", started.elapsed());

    // Nothing of the flood is left to deliver or redeliver, and every event was counted.
    eventually(Duration::from_secs(5), POLL, || async {
        match events_in_flight(&js, &site.subjects).await? {
            0 => Ok(()),
            n => Err(format!("{n} events still pending on the shared consumer")),
        }
    })
    .await
    .unwrap();
    let dropped = ractor::call!(site.dispatcher, DispatcherMsg::DroppedEvents).unwrap();
    assert_eq!(dropped, FLOOD);
    // The server's dead-letter advisory of a dropped event carries the dispatcher's reason.
    let advisory = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut terminated)).await.unwrap().unwrap();
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
    let reason = advisory["reason"].as_str().unwrap_or_default();
    assert!(["run id dated in the future", "run id is not a uuidv7", "no such run"].contains(&reason), "{advisory}");
    // And every drop is kept as a dead letter naming the event's stream sequence and reason.
    let dead = js.get_stream(steward_subjects::streams::DEAD_LETTERS_STREAM).await.unwrap();
    eventually(Duration::from_secs(5), POLL, || {
        let mut dead = dead.clone();
        async move {
            match dead.info().await.map_err(|e| e.to_string())?.state.messages {
                n if n >= FLOOD => Ok(()),
                n => Err(format!("{n} dead letters of {FLOOD}")),
            }
        }
    })
    .await
    .unwrap();
    let first = dead.direct_get(1).await.unwrap();
    let letter = steward_subjects::api::dead_letter::DeadLetter::decode(&first.payload).unwrap();
    assert_eq!(letter.stream, RUN_EVENTS_STREAM);
    let events = js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
    let original = events.direct_get(letter.stream_seq).await.unwrap();
    assert_eq!(original.subject.as_str(), site.subjects.run_event(&flooder));
    assert!(!letter.why().is_empty());
}

/// A durable events consumer made by an older hub (no bound on redeliveries) gets the bound
/// when a dispatcher starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_consumer_of_an_older_hub_gets_the_redelivery_bound() {
    let topo = HubLeaf::start().await.unwrap();
    let hub = async_nats::connect(topo.hub().client_url()).await.unwrap();
    let js = jetstream::new(hub.clone());
    streams::ensure(&js, Replicas::One).await.unwrap();
    let subjects = Subjects::new(AccountId::parse("acme").unwrap());
    let durable = run_events_consumer(subjects.account());
    let stream = js.get_stream(RUN_EVENTS_STREAM).await.unwrap();
    let old = jetstream::consumer::pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: subjects.run_event_all(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        max_ack_pending: 100_000,
        ..Default::default()
    };
    let mut c = stream.create_consumer(old).await.unwrap();
    assert_eq!(c.info().await.unwrap().config.max_deliver, -1);

    let args = DispatcherArgs::new(hub.clone(), subjects.clone(), Some(JobSigner::generate().unwrap()));
    let (dispatcher, handle) = Actor::spawn(None, Dispatcher, args).await.unwrap();
    let mut c: jetstream::consumer::PullConsumer = stream.get_consumer(&durable).await.unwrap();
    let bound = c.info().await.unwrap().config.max_deliver;
    assert!((10..=32).contains(&bound), "max_deliver {bound}");
    dispatcher.stop(None);
    handle.await.unwrap();
}
