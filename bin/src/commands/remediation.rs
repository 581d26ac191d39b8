//! `steward remediations` and `steward remediation approve ID`: the remediation endpoints from
//! the terminal.

use clap::{Args, Subcommand};
use steward_actors::remediation::client::RemediationClient;
use steward_subjects::api::remediation::{ListRemediationsRequest, Remediation};
use steward_subjects::Subjects;

use crate::cli::Global;
use crate::output;

/// Options of `steward remediations`.
#[derive(Debug, Clone, Args)]
pub struct RemediationsArgs {
    /// Only remediations in this state: `held`, `starting`, `running`, `finished` (default: all).
    #[arg(long, default_value = "")]
    pub state: String,
    /// Only those of this alarm (`<host>.<check>.<rule>`).
    #[arg(long, default_value = "")]
    pub alarm: String,
    /// Only those of this remediation rule.
    #[arg(long, default_value = "")]
    pub rule: String,
}

/// Options of `steward remediation`.
#[derive(Debug, Clone, Args)]
pub struct RemediationArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RemediationAction,
}

/// `steward remediation` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum RemediationAction {
    /// Start a held remediation (when no guard other than approval still holds it).
    Approve {
        /// The remediation id (`<rule>@<alarm>#<n>`, see `steward remediations`).
        id: String,
        /// Who approves (default: `$USER`).
        #[arg(long)]
        author: Option<String>,
    },
}

const HEADERS: [&str; 7] = ["REMEDIATION", "STATE", "REASON / OUTCOME", "TARGET", "RUN", "CLEARED", "SINCE"];

fn rows(list: &[Remediation]) -> Vec<Vec<String>> {
    let now = steward_actors::now_ms();
    list.iter()
        .map(|r| {
            let why = if r.outcome.is_empty() { r.reason.clone() } else { r.outcome.clone() };
            let cleared = match r.cleared {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let since = output::duration(now.saturating_sub(r.created_ms) / 1000) + " ago";
            vec![
                r.id.clone(),
                r.state.as_str().to_owned(),
                why,
                if r.target.is_empty() { r.host.clone() } else { r.target.clone() },
                if r.run_id.is_empty() { "-".to_owned() } else { r.run_id.clone() },
                cleared.to_owned(),
                since,
            ]
        })
        .collect()
}

async fn client(global: &Global) -> anyhow::Result<RemediationClient> {
    let nats = global.connect().await?;
    Ok(RemediationClient::new(nats, Subjects::new(global.account.clone())))
}

/// `steward remediations`.
///
/// # Errors
/// When the request fails.
pub async fn remediations(global: &Global, args: RemediationsArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    let req = ListRemediationsRequest { state: args.state, alarm: args.alarm, rule: args.rule };
    let reply = c.list(&req).await?;
    output::print(global.output, &HEADERS, &rows(&reply.remediations), &reply.remediations);
    Ok(())
}

/// `steward remediation approve ID`.
///
/// # Errors
/// When the request fails, the remediation is unknown, not held, or still held by a guard.
pub async fn remediation(global: &Global, args: RemediationArgs) -> anyhow::Result<()> {
    let c = client(global).await?;
    match args.action {
        RemediationAction::Approve { id, author } => {
            let author = author
                .or_else(|| std::env::var("USER").ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "operator".to_owned());
            let reply = c.approve(&id, &author).await?;
            let r = reply.remediation;
            output::print(global.output, &HEADERS, &rows(std::slice::from_ref(&r)), &r);
        }
    }
    Ok(())
}
