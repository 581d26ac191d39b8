//! `steward run`, `steward runs`, `steward run-status ID [--follow]` and `steward cancel ID`:
//! the dispatcher API from the command line.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use steward_actors::dispatcher::client::DispatcherClient;
use steward_subjects::api::run::{
    EventKind, Job, RetryPolicy, RunEvent, RunListRequest, RunRequest, RunStatus, RunStatusRequest, RunView,
};
use steward_subjects::rpc::RequestErrorKind;
use steward_subjects::selector::Selector;
use steward_subjects::{ErrorCode, Subjects};

use crate::args::{parse_duration, parse_label, parse_selector};
use crate::cli::{Global, OutputFormat};
use crate::output;

/// Options of `steward run`.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["hosts", "selector"]))]
#[command(group = clap::ArgGroup::new("job").required(true).args(["playbook", "command", "argv"]))]
pub struct RunArgs {
    /// Target hosts, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Target the connected hosts matching this label selector (`k=v,k2!=v2,k3 in (a,b)`).
    #[arg(long, short = 's', value_parser = parse_selector)]
    pub selector: Option<Selector>,
    /// Run this Ansible playbook file on each host (against the host itself). The content is
    /// sent inline in the signed work order (at most 256 KiB); service playbooks of the
    /// enablement loop travel by `sha256:` reference instead.
    #[arg(long)]
    pub playbook: Option<PathBuf>,
    /// Run this command: program and arguments. It takes every word after it, options
    /// included, so put it last; `-- PROG ARGS...` is the form that cannot swallow options.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROG ARGS")]
    pub command: Vec<String>,
    /// The command to run, after `--`: `steward run --hosts h --wait -- ls -l /tmp`.
    #[arg(last = true, value_name = "PROG ARGS")]
    pub argv: Vec<String>,
    /// Time each attempt may take (`30s`, `10m`; a unit is required); default 10 minutes.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Run labels, `k=v` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The same key twice returns the same run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attempts in all for failed or timed-out hosts.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// Wait between attempts (`500ms`, `5s`; a unit is required).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub backoff: Duration,
    /// Wait until the run ends and show its status; exits non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
}

impl RunArgs {
    /// The job to run: the playbook's content, or the command from `--command` or after `--`.
    ///
    /// # Errors
    /// When the playbook cannot be read, or the program name contains a space (its arguments
    /// were passed as one word: `-- "ls -l"`); the message shows how to split them.
    pub fn job(&self) -> anyhow::Result<Job> {
        if let Some(path) = &self.playbook {
            let content =
                std::fs::read_to_string(path).with_context(|| format!("cannot read playbook {}", path.display()))?;
            return Ok(Job::playbook(content));
        }
        let argv = if self.argv.is_empty() { &self.command } else { &self.argv };
        if let Some(program) = argv.first().filter(|p| p.contains(' ')) {
            let split: Vec<&str> = program.split_whitespace().chain(argv[1..].iter().map(String::as_str)).collect();
            bail!("program {program:?} contains a space; pass its arguments separately: -- {}", split.join(" "));
        }
        Ok(Job::command(argv.clone()))
    }
}

/// Options of `steward runs`.
#[derive(Debug, Clone, Args)]
pub struct RunsArgs {
    /// Only runs with this status.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// Only runs with this label, `k=v` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Most runs shown, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Options of `steward run-status`.
#[derive(Debug, Clone, Args)]
pub struct RunStatusArgs {
    /// Run id.
    pub id: String,
    /// Keep printing new events until the run ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Events shown per host (latest).
    #[arg(long, default_value_t = 20)]
    pub events: usize,
}

/// Options of `steward cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// Run id.
    pub id: String,
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    RunStatus::parse(s).map_err(|e| e.to_string())
}

async fn client(global: &Global) -> anyhow::Result<DispatcherClient> {
    let nats = global.connect().await?;
    Ok(DispatcherClient::new(nats, Subjects::new(global.account.clone())))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `steward run`.
///
/// # Errors
/// When the request is refused, the dispatcher is unreachable, or (with `--wait`) the run does
/// not succeed.
pub async fn run(global: &Global, args: RunArgs) -> anyhow::Result<()> {
    let job = args.job()?;
    let req = RunRequest {
        hosts: args.hosts.clone(),
        selector: args.selector.as_ref().map(ToString::to_string).unwrap_or_default(),
        job,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        timeout_ms: args.timeout.map_or(0, millis),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        retry: RetryPolicy { max_attempts: args.attempts, backoff_ms: millis(args.backoff) },
    };
    let runs = client(global).await?;
    let accepted = runs.dispatch(&req).await.context("run refused")?;
    if !args.wait {
        let rows = vec![vec![accepted.run_id.clone(), accepted.hosts.len().to_string(), accepted.existing.to_string()]];
        output::print(global.output, &["RUN", "HOSTS", "EXISTING"], &rows, &accepted);
        return Ok(());
    }
    if global.output == OutputFormat::Table {
        println!("run {} on {} host(s)", accepted.run_id, accepted.hosts.len());
    }
    let view = follow(&runs, &accepted.run_id, global.output == OutputFormat::Table).await?;
    // The events were printed while following.
    print_view(global.output, &view, 0);
    if view.run.status != RunStatus::Success {
        bail!("run {} ended {}", view.run.run_id, view.run.status);
    }
    Ok(())
}

/// `steward runs`.
///
/// # Errors
/// When the dispatcher is unreachable.
pub async fn runs(global: &Global, args: RunsArgs) -> anyhow::Result<()> {
    let req = RunListRequest { status: args.status, labels: args.labels.into_iter().collect(), limit: args.limit };
    let list = client(global).await?.list(&req).await.context("cannot list runs")?;
    let rows: Vec<Vec<String>> = list
        .runs
        .iter()
        .map(|r| {
            let what = match r.job.kind {
                steward_subjects::api::run::JobKind::Command => r.job.command.join(" "),
                _ if !r.job.playbook_ref.is_empty() => format!("playbook {}", r.job.playbook_ref),
                _ => format!("playbook {}", r.job_digest.get(..12).unwrap_or_default()),
            };
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                r.run_id.clone(),
                r.status.to_string(),
                format!("{}/{}", r.counts.ended(), r.hosts_total),
                r.created_at.clone(),
                labels.join(","),
                what.chars().take(40).collect(),
            ]
        })
        .collect();
    output::print(global.output, &["RUN", "STATUS", "ENDED", "CREATED", "LABELS", "JOB"], &rows, &list);
    Ok(())
}

/// `steward run-status`.
///
/// # Errors
/// When the run does not exist or the dispatcher is unreachable.
pub async fn run_status(global: &Global, args: RunStatusArgs) -> anyhow::Result<()> {
    let runs = client(global).await?;
    let view = if args.follow {
        follow(&runs, &args.id, global.output == OutputFormat::Table).await?
    } else {
        status(&runs, &args.id).await?
    };
    print_view(global.output, &view, args.events);
    Ok(())
}

/// `steward cancel`.
///
/// # Errors
/// When the run does not exist, has already ended, or the dispatcher is unreachable.
pub async fn cancel(global: &Global, args: CancelArgs) -> anyhow::Result<()> {
    let result = match client(global).await?.cancel(&args.id).await {
        Ok(r) => r,
        Err(e) if e.kind() == RequestErrorKind::Remote(ErrorCode::Conflict) => {
            let why = e.remote().map_or_else(|| e.to_string(), |r| r.message.clone());
            bail!("run {} has already ended; nothing to cancel ({why})", args.id)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot cancel run {}", args.id))),
    };
    let rows = vec![vec![
        result.run_id.clone(),
        result.status.to_string(),
        result.confirmed.join(","),
        result.canceled_pending.join(","),
        result.unconfirmed.join(","),
    ]];
    output::print(global.output, &["RUN", "STATUS", "CONFIRMED", "NOT-STARTED", "UNCONFIRMED"], &rows, &result);
    Ok(())
}

async fn status(runs: &DispatcherClient, id: &str) -> anyhow::Result<RunView> {
    let req = RunStatusRequest { run_id: id.to_owned(), events: true, max_events: 1000, ..RunStatusRequest::default() };
    runs.status(&req).await.with_context(|| format!("cannot get run {id}"))
}

/// Polls the run until it ends, printing new events as they arrive when `print` is set.
async fn follow(runs: &DispatcherClient, id: &str, print: bool) -> anyhow::Result<RunView> {
    let mut printed: HashMap<(String, u32), u64> = HashMap::new();
    loop {
        let view = status(runs, id).await?;
        if print {
            for h in &view.hosts {
                let seen = printed.entry((h.run.host_id.clone(), h.run.attempt)).or_insert(0);
                let from = *seen;
                for ev in h.events.iter().filter(|e| e.seq > from) {
                    println!("{}", event_line(&h.run.host_id, ev));
                    *seen = ev.seq;
                }
            }
        }
        if view.run.status.is_terminal() {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn event_line(host: &str, ev: &RunEvent) -> String {
    let body = match ev.kind {
        EventKind::Stdout | EventKind::Stderr => ev.stdout.trim_end().to_owned(),
        EventKind::Task => {
            let mut s = format!("{} [{}]", ev.event, ev.task);
            if ev.changed {
                s.push_str(" changed");
            }
            if !ev.detail.is_empty() {
                s.push_str(": ");
                s.push_str(&ev.detail.chars().take(120).collect::<String>());
            }
            s
        }
        EventKind::Artifact => {
            ev.artifact.as_ref().map(|a| format!("{} ({} bytes)", a.name, a.size)).unwrap_or_default()
        }
        EventKind::Last => format!("{} {}", ev.status.unwrap_or_default(), ev.reason),
        _ => ev.event.clone(),
    };
    format!("{host} #{:<4} {:<8} {body}", ev.seq, ev.kind.as_str())
}

fn print_view(format: OutputFormat, view: &RunView, events: usize) {
    if format == OutputFormat::Json {
        output::print(format, &[], &[], view);
        return;
    }
    let r = &view.run;
    println!("run {}  status {}  hosts {}  ended {}", r.run_id, r.status, r.hosts_total, r.counts.ended());
    let rows: Vec<Vec<String>> = view
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.run.host_id.clone(),
                h.run.status.to_string(),
                h.run.attempt.to_string(),
                h.run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                h.run.reason.clone(),
            ]
        })
        .collect();
    print!("{}", output::table(&["HOST", "STATUS", "ATTEMPT", "EXIT", "REASON"], &rows));
    if view.hosts_truncated {
        println!("(more hosts not shown)");
    }
    for h in &view.hosts {
        let skip = h.events.len().saturating_sub(events);
        for ev in &h.events[skip..] {
            println!("{}", event_line(&h.run.host_id, ev));
        }
    }
}

/// The signing key pair of a local `steward up` in `dir`, created on first use.
///
/// # Errors
/// When the keys cannot be created.
pub fn dev_keys(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use steward_actors::signing::{JobSigner, PUBLIC_FILE, SECRET_FILE};
    let (secret, public) = (dir.join(SECRET_FILE), dir.join(PUBLIC_FILE));
    if !secret.exists() {
        JobSigner::init_dir(dir).with_context(|| format!("cannot create signing keys in {}", dir.display()))?;
    }
    Ok((secret, public))
}
