//! `steward creds issue | revoke | list`: decentralized NATS identities (operator → one account
//! per tenant → one user per host, service or operator) kept in `--dir` (default
//! `<state>/auth`, see `steward_deploy::authority`).
//!
//! The `.creds` file goes to the client (`--creds FILE`, or an edge site's leaf node). Servers
//! include `<dir>/server.conf` (operator, system account, `full` account resolver, every account
//! JWT preloaded); a new tenant account, a replaced key and a revocation are pushed to the
//! running servers at `--nats` with the system user, so no server is reloaded or restarted.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use steward_deploy::authority::{Authority, IdentityRecord, IssueRequest, Kind};
use steward_subjects::subject::OperatorRole;
use steward_subjects::token::Name;
use steward_subjects::{HostId, Subjects};

use crate::args::{parse_host, parse_name};
use crate::cli::{Global, OutputFormat};
use crate::output;

/// Options of `steward creds`.
#[derive(Debug, Clone, Args)]
pub struct CredsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CredsCommand,
}

/// `steward creds` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CredsCommand {
    /// Issue (or re-issue with a new key, revoking the old one) an identity.
    Issue(IssueArgs),
    /// Revoke an identity and push the revocation to the servers at `--nats`: its connections
    /// are closed and it is refused from then on.
    Revoke(RevokeArgs),
    /// List every issued identity.
    List(DirArgs),
}

/// Which identity.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A host identity: its own presence, replies, events, command consumer, leases and
    /// results, nothing of other hosts.
    #[arg(long, value_parser = parse_host)]
    pub host: Option<HostId>,
    /// A control-plane service identity: everything of the account.
    #[arg(long, value_parser = parse_name)]
    pub service: Option<Name>,
    /// An operator (a person using the CLI), with `--role`.
    #[arg(long, value_parser = parse_name)]
    pub operator: Option<Name>,
}

impl Target {
    fn kind_and_name(&self) -> (Kind, String) {
        match (&self.host, &self.service, &self.operator) {
            (Some(h), _, _) => (Kind::Host, h.to_string()),
            (_, Some(s), _) => (Kind::Service, s.to_string()),
            (_, _, Some(o)) => (Kind::Operator, o.to_string()),
            // clap's required group guarantees one of them.
            (None, None, None) => (Kind::Operator, String::new()),
        }
    }
}

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything the CLI can do.
    Admin,
    /// Queries only: no apply, rollback, run, cancel, host commands or credential changes.
    Viewer,
}

/// `--dir`.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// Folder of the operator, accounts and issued identities (default: `<state>/auth`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `steward creds issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Which identity.
    #[command(flatten)]
    pub target: Target,
    /// The operator's role (default admin; only with --operator).
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Where identities are kept.
    #[command(flatten)]
    pub dir: DirArgs,
}

/// Options of `steward creds revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// Which identity.
    #[command(flatten)]
    pub target: Target,
    /// Where identities are kept.
    #[command(flatten)]
    pub dir: DirArgs,
}

#[derive(Debug, Serialize)]
struct IssuedOut {
    #[serde(flatten)]
    record: IdentityRecord,
    creds_file: String,
    server_config: String,
    pushed: bool,
}

fn open(dir: &DirArgs) -> anyhow::Result<Authority> {
    let root = dir.dir.clone().unwrap_or_else(|| super::default_state_dir().join("auth"));
    Authority::open(&root).with_context(|| format!("cannot open identities in {}", root.display()))
}

/// `steward creds ...`.
///
/// # Errors
/// When the folder cannot be read or written, the identity is unknown, or a revocation cannot
/// be pushed.
pub async fn creds(global: &Global, args: CredsArgs) -> anyhow::Result<()> {
    match args.command {
        CredsCommand::Issue(a) => issue(global, a).await,
        CredsCommand::Revoke(a) => revoke(global, a).await,
        CredsCommand::List(a) => list(global, &a),
    }
}

async fn issue(global: &Global, args: IssueArgs) -> anyhow::Result<()> {
    let auth = open(&args.dir)?;
    let subjects = Subjects::new(global.account.clone());
    let (kind, name) = args.target.kind_and_name();
    if args.role.is_some() && kind != Kind::Operator {
        anyhow::bail!("--role applies to --operator identities only");
    }
    let (role, perms) = match (&args.target.host, kind) {
        (Some(host), _) => (None, subjects.host_permissions(host)),
        (None, Kind::Operator) => {
            let role = match args.role.unwrap_or(RoleArg::Admin) {
                RoleArg::Admin => OperatorRole::Admin,
                RoleArg::Viewer => OperatorRole::Viewer,
            };
            (Some(role.as_str().to_owned()), subjects.operator_permissions(role))
        }
        _ => (None, subjects.service_permissions()),
    };
    let req = IssueRequest {
        account: global.account.to_string(),
        kind,
        name,
        role,
        publish: perms.publish,
        subscribe: perms.subscribe,
    };
    let issued = auth.issue(&req)?;
    let pushed = issued.account_changed && {
        match auth.push(&global.nats, &issued.account_jwt).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "warning: account {} changed but was not pushed ({e}); servers started from {} know it, \
                     running ones learn it from `steward creds revoke`/`issue` with --nats",
                    req.account,
                    auth.server_config_file().display()
                );
                false
            }
        }
    };
    let creds_file = issued.creds_file.display().to_string();
    let out = IssuedOut {
        record: issued.record,
        creds_file,
        server_config: auth.server_config_file().display().to_string(),
        pushed,
    };
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &out),
        OutputFormat::Table => {
            let r = &out.record;
            let role = r.role.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            println!("issued {} {}{role} in account {}", r.kind, r.name, r.account);
            println!("  public key:  {}", r.public_key);
            println!("  creds:       {}   (mode 0600; pass with --creds)", out.creds_file);
            println!("  server:      {}   (include in every server's configuration)", out.server_config);
        }
    }
    Ok(())
}

async fn revoke(global: &Global, args: RevokeArgs) -> anyhow::Result<()> {
    let auth = open(&args.dir)?;
    let (kind, name) = args.target.kind_and_name();
    let account = global.account.to_string();
    let (record, account_jwt) = auth.revoke(&account, kind, &name)?;
    auth.push(&global.nats, &account_jwt).await.with_context(|| {
        format!(
            "revocation of {kind} {name} saved in {} but not pushed; run the same command again when {} is reachable",
            auth.root().display(),
            global.nats
        )
    })?;
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &record),
        OutputFormat::Table => {
            println!("revoked {kind} {name} in account {account} ({}); pushed to {}", record.public_key, global.nats)
        }
    }
    Ok(())
}

fn when(ts: Option<i64>) -> String {
    ts.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn list(global: &Global, args: &DirArgs) -> anyhow::Result<()> {
    let records = open(args)?.list()?;
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.account.clone(),
                r.kind.to_string(),
                r.name.clone(),
                r.role.clone().unwrap_or_else(|| "-".to_owned()),
                r.public_key.clone(),
                when(Some(r.issued_at)),
                when(r.revoked),
            ]
        })
        .collect();
    let headers = ["ACCOUNT", "KIND", "NAME", "ROLE", "PUBLIC KEY", "ISSUED", "REVOKED"];
    output::print(global.output, &headers, &rows, &records);
    Ok(())
}
