//! Configuration commands: `apply`, `plan`, `get`, `history`, `diff`, `rollback`, `schema` and
//! `jobspecs`, all through the typed [`ConfigClient`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use steward_actors::config_manager::client::ConfigClient;
use steward_actors::renderer::client::JobSpecClient;
use steward_subjects::api::config::{
    ApplyReply, ApplyRequest, DiffRequest, GetRequest, HistoryRequest, PlanRequest, RevisionMeta, RollbackRequest,
    SpecDiff,
};
use steward_subjects::api::jobspec::JobSpecListRequest;
use steward_subjects::config::diff::DocumentChange;
use steward_subjects::config::TargetKind;
use steward_subjects::rpc::RequestError;
use steward_subjects::Subjects;

use crate::cli::{Global, OutputFormat};
use crate::output;

/// Options of `steward apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The configuration document (JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Label of the new revision.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Author recorded with the revision (default: $USER).
    #[arg(long)]
    pub author: Option<String>,
    /// Only apply if the current revision is N (0 = none yet); `conflict` otherwise.
    #[arg(long)]
    pub if_revision: Option<u64>,
    /// Do not wait for the renderer to write the job specs.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest wait for the renderer, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

/// Options of `steward plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The candidate document (JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

/// Options of `steward get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Revision to show (default: the current one).
    #[arg(long)]
    pub revision: Option<u64>,
}

/// Options of `steward history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only revisions created at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only revisions created before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only revisions with this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only revisions by this author.
    #[arg(long)]
    pub author: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Page cursor: revisions older than this one.
    #[arg(long)]
    pub before: Option<u64>,
}

/// Options of `steward diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The older revision (0 = the empty document).
    pub from: u64,
    /// The newer revision.
    pub to: u64,
}

/// Options of `steward rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The revision to re-apply as a new revision.
    pub revision: u64,
    /// Label of the new revision (default `rollback`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Author recorded with the revision (default: $USER).
    #[arg(long)]
    pub author: Option<String>,
    /// Only roll back if the current revision is N.
    #[arg(long)]
    pub if_revision: Option<u64>,
}

/// Options of `steward jobspecs`.
#[derive(Debug, Clone, Args)]
pub struct JobSpecsArgs {
    /// Only the specs of this host.
    #[arg(long, conflicts_with = "pool")]
    pub host: Option<String>,
    /// Only the specs of this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Page cursor: keys after this one.
    #[arg(long)]
    pub after: Option<String>,
    /// Explain the spec with this id: why it exists, its target, which runtimes may run it and
    /// why, its holder and epoch, and when it last ran.
    #[arg(long)]
    pub explain: Option<String>,
    /// Only the specs leased by this runtime (with holder, epoch and lease state).
    #[arg(long, conflicts_with_all = ["host", "pool", "explain"])]
    pub runtime: Option<String>,
    /// Only specs without a live holder (with their lease state).
    #[arg(long, conflicts_with_all = ["host", "pool", "explain"])]
    pub unassigned: bool,
}

async fn client(global: &Global) -> anyhow::Result<ConfigClient> {
    let nats = global.connect().await?;
    Ok(ConfigClient::new(nats, Subjects::new(global.account.clone())))
}

/// Host ids per applied revision, from the connector; `None` when no connector answers.
async fn hosts_by_revision(global: &Global) -> Option<std::collections::BTreeMap<u64, Vec<String>>> {
    let nats = global.connect().await.ok()?;
    let api = steward_actors::connector::client::ConnectorClient::new(nats, Subjects::new(global.account.clone()));
    let list = api.list("", None).await.ok()?;
    let mut by = std::collections::BTreeMap::<u64, Vec<String>>::new();
    for h in list.hosts {
        if let Some(r) = h.applied_revision {
            by.entry(r).or_default().push(h.host_id);
        }
    }
    Some(by)
}

/// At most five host ids, then a count of the rest.
fn abbreviate(hosts: &[String]) -> String {
    let shown = hosts.iter().take(5).cloned().collect::<Vec<_>>().join(",");
    match hosts.len() {
        n if n > 5 => format!("{shown} (+{})", n - 5),
        _ => shown,
    }
}

fn read_doc(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("cannot read standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn author(a: Option<String>) -> String {
    a.or_else(|| std::env::var("USER").ok()).filter(|s| !s.is_empty()).unwrap_or_else(|| "cli".into())
}

/// Turns a request error into an error listing every problem (pointer: reason).
fn explain_error(e: RequestError) -> anyhow::Error {
    match e.remote() {
        Some(w) if !w.details.is_empty() => {
            let mut msg = format!("{w}");
            for d in &w.details {
                let ptr = if d.pointer.is_empty() { "(document)" } else { d.pointer.as_str() };
                msg.push_str(&format!("\n  {ptr}: {}", d.reason));
            }
            anyhow::anyhow!(msg)
        }
        _ => anyhow::Error::new(e),
    }
}

fn meta_row(m: &RevisionMeta) -> Vec<String> {
    vec![
        m.revision.to_string(),
        m.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        m.created_at.clone(),
        m.author.clone(),
        m.label.clone(),
        match m.rollback_of {
            Some(r) => format!("{} (of {r})", m.origin),
            None => m.origin.clone(),
        },
        m.hash.chars().take(12).collect(),
    ]
}

const META_HEADERS: [&str; 7] = ["REVISION", "PARENT", "CREATED", "AUTHOR", "LABEL", "ORIGIN", "HASH"];

fn print_spec_diff(d: &SpecDiff) {
    println!(
        "job specs: +{} added, ~{} changed, -{} removed, {} unchanged",
        d.added, d.changed, d.removed, d.unchanged
    );
    if !d.targets.is_empty() {
        let rows: Vec<Vec<String>> = d
            .targets
            .iter()
            .map(|t| vec![t.target.to_string(), t.added.to_string(), t.changed.to_string(), t.removed.to_string()])
            .collect();
        print!("{}", output::table(&["TARGET", "ADDED", "CHANGED", "REMOVED"], &rows));
        if d.targets_omitted > 0 {
            println!("... and {} more targets", d.targets_omitted);
        }
    }
}

fn print_doc_changes(changes: &[DocumentChange]) {
    if changes.is_empty() {
        println!("document: no changes");
        return;
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| vec![format!("{:?}", c.kind).to_lowercase(), c.section.clone(), c.id.clone(), c.fields.join(",")])
        .collect();
    print!("{}", output::table(&["CHANGE", "SECTION", "ID", "FIELDS"], &rows));
}

async fn wait_for_render(api: &JobSpecClient, revision: u64, wait: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let st = match api.status().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: cannot follow the renderer: {e}");
                return Ok(());
            }
        };
        if st.rendered_revision >= revision && st.rendering_revision.is_none() {
            if tty {
                eprintln!(
                    "\rrendered revision {revision}: {} specs (+{} ~{} -{})          ",
                    st.specs, st.added, st.changed, st.removed
                );
            }
            return Ok(());
        }
        let line = if st.total > 0 {
            let width = 30usize;
            let filled =
                usize::try_from(st.written.saturating_mul(width as u64) / st.total.max(1)).unwrap_or(width).min(width);
            format!(
                "rendering revision {revision} [{}{}] {}/{} writes",
                "#".repeat(filled),
                "-".repeat(width - filled),
                st.written,
                st.total
            )
        } else {
            format!("rendering revision {revision}...")
        };
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if line != last_line && st.total > 0 && st.written == st.total {
            eprintln!("{line}");
        }
        last_line = line;
        if start.elapsed() > wait {
            if tty {
                eprintln!();
            }
            bail!("the renderer has not finished revision {revision} after {wait:?} (it goes on in the background)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_apply(global: &Global, r: &ApplyReply) {
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], r),
        OutputFormat::Table => {
            if r.noop {
                println!("no change: the document equals revision {}", r.revision.revision);
            } else {
                println!(
                    "revision {} stored (parent {})",
                    r.revision.revision,
                    r.revision.parent.map_or("-".into(), |p| p.to_string())
                );
                print_spec_diff(&r.jobspecs);
            }
        }
    }
}

/// `steward apply -f FILE`.
///
/// # Errors
/// Invalid documents (every problem listed), conflicts, or NATS failures.
pub async fn apply(global: &Global, args: ApplyArgs) -> anyhow::Result<()> {
    let document = read_doc(&args.file)?;
    let api = client(global).await?;
    let req = ApplyRequest { document, label: args.label, author: author(args.author), if_revision: args.if_revision };
    let r = api.apply(&req).await.map_err(explain_error)?;
    if !r.noop && !args.no_wait {
        let specs = JobSpecClient::new(api.nats().clone(), Subjects::new(global.account.clone()));
        wait_for_render(&specs, r.revision.revision, Duration::from_secs(args.wait_secs)).await?;
    }
    print_apply(global, &r);
    Ok(())
}

/// `steward plan -f FILE`.
///
/// # Errors
/// Invalid documents (every problem listed) or NATS failures.
pub async fn plan(global: &Global, args: PlanArgs) -> anyhow::Result<()> {
    let document = read_doc(&args.file)?;
    let r = client(global).await?.plan(&PlanRequest { document }).await.map_err(explain_error)?;
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &r),
        OutputFormat::Table => {
            println!("valid; current revision {}{}", r.current_revision, if r.noop { " (no change)" } else { "" });
            print_doc_changes(&r.document);
            print_spec_diff(&r.jobspecs);
        }
    }
    Ok(())
}

/// `steward get [--revision N]`.
///
/// # Errors
/// `not_found` or NATS failures.
pub async fn get(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    let a = client(global).await?.get(&GetRequest { revision: args.revision }).await.map_err(explain_error)?;
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &a),
        OutputFormat::Table => {
            print!("{}", output::table(&META_HEADERS, &[meta_row(&a.meta)]));
            println!("{}", serde_json::to_string_pretty(&a.document)?);
        }
    }
    Ok(())
}

/// A revision with the hosts whose applied revision it is.
#[derive(Debug, serde::Serialize)]
struct RevisionReached {
    #[serde(flatten)]
    meta: RevisionMeta,
    /// Hosts at this revision; `None` when no connector answered.
    hosts_at: Option<Vec<String>>,
}

/// `steward history -o json`: the history page, each revision with the hosts that reached it.
#[derive(Debug, serde::Serialize)]
struct HistoryPage {
    revisions: Vec<RevisionReached>,
    next_before: Option<u64>,
    total: u64,
}

/// `steward history`.
///
/// # Errors
/// Invalid filters or NATS failures.
pub async fn history(global: &Global, args: HistoryArgs) -> anyhow::Result<()> {
    let req = HistoryRequest {
        since: args.since,
        until: args.until,
        label: args.label,
        author: args.author,
        limit: args.limit,
        before: args.before,
    };
    let r = client(global).await?.history(&req).await.map_err(explain_error)?;
    // Which revision each host reached (its applied revision in the host registry): a last
    // column in the table, `hosts_at` per revision in JSON (`null` when no connector answered).
    let reached = hosts_by_revision(global).await;
    let hosts_at = |m: &RevisionMeta| reached.as_ref().map(|by| by.get(&m.revision).cloned().unwrap_or_default());
    if global.output == OutputFormat::Table {
        let mut headers = META_HEADERS.to_vec();
        headers.push("HOSTS AT");
        let rows: Vec<Vec<String>> = r
            .revisions
            .iter()
            .map(|m| {
                let mut row = meta_row(m);
                row.push(hosts_at(m).map_or_else(
                    || "?".to_owned(),
                    |hosts| if hosts.is_empty() { "-".to_owned() } else { abbreviate(&hosts) },
                ));
                row
            })
            .collect();
        print!("{}", output::table(&headers, &rows));
    } else {
        let page = HistoryPage {
            revisions: r.revisions.iter().map(|m| RevisionReached { meta: m.clone(), hosts_at: hosts_at(m) }).collect(),
            next_before: r.next_before,
            total: r.total,
        };
        output::print(global.output, &[], &[], &page);
    }
    if global.output == OutputFormat::Table {
        if let Some(next) = r.next_before {
            println!("({} matching; next page: --before {next})", r.total);
        }
    }
    Ok(())
}

/// `steward diff A B`.
///
/// # Errors
/// `not_found` or NATS failures.
pub async fn diff(global: &Global, args: DiffArgs) -> anyhow::Result<()> {
    let r = client(global).await?.diff(&DiffRequest { from: args.from, to: args.to }).await.map_err(explain_error)?;
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &r),
        OutputFormat::Table => {
            println!("revision {} → {}", r.from, r.to);
            print_doc_changes(&r.document);
            print_spec_diff(&r.jobspecs);
        }
    }
    Ok(())
}

/// `steward rollback N`.
///
/// # Errors
/// `not_found`, `conflict` or NATS failures.
pub async fn rollback(global: &Global, args: RollbackArgs) -> anyhow::Result<()> {
    let api = client(global).await?;
    let req = RollbackRequest {
        revision: args.revision,
        author: author(args.author),
        label: args.label,
        if_revision: args.if_revision,
    };
    let r = api.rollback(&req).await.map_err(explain_error)?;
    print_apply(global, &r);
    Ok(())
}

/// `steward schema`: the configuration document's JSON Schema (no connection needed).
///
/// # Errors
/// Never; the signature matches the other commands.
pub fn schema() -> anyhow::Result<()> {
    print!("{}", steward_subjects::config::schema::schema_text());
    Ok(())
}

/// `steward jobspecs [--host H | --pool P] [--explain ID]`.
///
/// # Errors
/// `not_found` or NATS failures.
pub async fn jobspecs(global: &Global, args: JobSpecsArgs) -> anyhow::Result<()> {
    if args.runtime.is_some() || args.unassigned {
        // The lease view answers these: it knows holders and epochs.
        let leases =
            super::runtime::LeasesArgs { runtime: args.runtime, unassigned: args.unassigned, limit: args.limit };
        return super::runtime::leases(global, leases).await;
    }
    if let Some(id) = &args.explain {
        // Config (why it exists), lease state (who may run it, who does) and results.
        return super::runtime::explain(global, id).await;
    }
    let api = JobSpecClient::new(global.connect().await?, Subjects::new(global.account.clone()));
    let (kind, target) = match (args.host, args.pool) {
        (Some(h), _) => (Some(TargetKind::Host), Some(h)),
        (_, Some(p)) => (Some(TargetKind::Pool), Some(p)),
        _ => (None, None),
    };
    let r = api
        .list(&JobSpecListRequest { kind, target, limit: args.limit, after: args.after })
        .await
        .map_err(explain_error)?;
    let rows: Vec<Vec<String>> = r
        .specs
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.target.to_string(),
                s.provenance.attestation.clone(),
                s.executor.kind().to_owned(),
                output::duration(s.interval_ms / 1000),
                s.provenance.revision.to_string(),
                s.content_hash.chars().take(12).collect(),
            ]
        })
        .collect();
    output::print(global.output, &["ID", "TARGET", "ATTESTATION", "EXECUTOR", "EVERY", "REVISION", "HASH"], &rows, &r);
    if global.output == OutputFormat::Table {
        if let Some(next) = &r.next_after {
            println!("({} specs; next page: --after {next})", r.total);
        }
    }
    Ok(())
}
