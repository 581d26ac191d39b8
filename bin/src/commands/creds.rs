//! `steward creds issue --host ID | --service NAME`: an nkey identity and the server-side
//! authorization that goes with it.
//!
//! The seed file goes to the client (`steward edge --creds FILE`, or the leaf node of an edge
//! site); `authorization.conf` is included by the hub's configuration (see
//! `deploy/nats/hub-nkeys.conf`) and applied with `nats-server --signal reload`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use steward_deploy::auth::{AuthDir, IdentityKind};
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
    /// Issue (or re-issue, replacing the key) an identity and rewrite the authorization file.
    Issue(IssueArgs),
}

/// Options of `steward creds issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// A host identity: may publish only its own presence, replies, results and events, and
    /// read only its own commands.
    #[arg(long, required_unless_present = "service", conflicts_with = "service", value_parser = parse_host)]
    pub host: Option<HostId>,
    /// A control-plane service identity: everything of the account.
    #[arg(long, value_parser = parse_name)]
    pub service: Option<Name>,
    /// Folder of issued identities (default: `<state>/auth`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct IssuedOut {
    account: String,
    kind: &'static str,
    name: String,
    public_key: String,
    seed_file: String,
    authorization: String,
}

/// `steward creds ...`.
///
/// # Errors
/// When the folder cannot be written.
pub async fn creds(global: &Global, args: CredsArgs) -> anyhow::Result<()> {
    let CredsCommand::Issue(issue) = args.command;
    let dir = issue.dir.unwrap_or_else(|| super::default_state_dir().join("auth"));
    let subjects = Subjects::new(global.account.clone());
    let (kind, name, perms) = match (&issue.host, &issue.service) {
        (Some(host), _) => (IdentityKind::Host, host.to_string(), subjects.host_permissions(host)),
        (None, Some(service)) => (IdentityKind::Service, service.to_string(), subjects.service_permissions()),
        (None, None) => anyhow::bail!("give --host ID or --service NAME"),
    };
    let auth = AuthDir::new(&dir);
    let issued = tokio::task::spawn_blocking({
        let (account, name) = (global.account.to_string(), name.clone());
        move || auth.issue(&account, kind, &name, perms.publish, perms.subscribe)
    })
    .await??;
    let out = IssuedOut {
        account: global.account.to_string(),
        kind: if kind == IdentityKind::Host { "host" } else { "service" },
        name,
        public_key: issued.public_key,
        seed_file: issued.seed_file.display().to_string(),
        authorization: issued.authorization.display().to_string(),
    };
    match global.output {
        OutputFormat::Json => output::print(global.output, &[], &[], &out),
        OutputFormat::Table => {
            println!("issued {} {} in account {}", out.kind, out.name, out.account);
            println!("  public key:     {}", out.public_key);
            println!(
                "  seed (client):  {}   (mode 0600, refused if others can read it; pass with --creds)",
                out.seed_file
            );
            println!(
                "  authorization:  {}   (include in the hub config, then `nats-server --signal reload`)",
                out.authorization
            );
        }
    }
    Ok(())
}
