//! The `steward` binary's library half.
//!
//! Layout: [`cli`] is the clap-derive command line and [`args`] its value parsers (durations,
//! ids, selectors, labels); [`telemetry`] sets up tracing (env filter, text or JSON);
//! [`context`] fills the connection of operator commands from what `steward up` wrote;
//! [`commands`] runs the subcommands (`up`, `server`, `edge`, `health` and `version` itself,
//! the rest in one module per area: `config`, `creds`, `hosts`, `keys`, `run`, `runtime`);
//! [`output`] prints tables or JSON; [`shutdown`] waits for Ctrl-C or SIGTERM. `main.rs` only
//! parses, sets up tracing and calls [`run`].

pub mod args;
pub mod cli;
pub mod commands;
pub mod context;
pub mod output;
pub mod shutdown;
pub mod telemetry;

use cli::{Cli, Command};

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command failed with, for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => commands::up(&cli.global, args).await,
        Command::Server(args) => commands::server(&cli.global, args).await,
        Command::Edge(args) => commands::edge(&cli.global, args).await,
        Command::Node(args) => commands::node::node(&cli.global, args).await,
        Command::Health(args) => commands::health(&cli.global, args).await,
        Command::Hosts(args) => commands::hosts::hosts(&cli.global, args).await,
        Command::Host(args) => commands::hosts::host(&cli.global, args).await,
        Command::EnsureWorker(args) => commands::hosts::ensure_worker(&cli.global, args).await,
        Command::Creds(args) => commands::creds::creds(&cli.global, args).await,
        Command::Apply(args) => commands::config::apply(&cli.global, args).await,
        Command::Plan(args) => commands::config::plan(&cli.global, args).await,
        Command::Get(args) => commands::config::get(&cli.global, args).await,
        Command::History(args) => commands::config::history(&cli.global, args).await,
        Command::Diff(args) => commands::config::diff(&cli.global, args).await,
        Command::Rollback(args) => commands::config::rollback(&cli.global, args).await,
        Command::Schema => commands::config::schema(),
        Command::Jobspecs(args) => commands::config::jobspecs(&cli.global, args).await,
        Command::Run(args) => commands::run::run(&cli.global, args).await,
        Command::Runs(args) => commands::run::runs(&cli.global, args).await,
        Command::RunStatus(args) => commands::run::run_status(&cli.global, args).await,
        Command::Cancel(args) => commands::run::cancel(&cli.global, args).await,
        Command::Keys(args) => commands::keys::keys(&cli.global, args),
        Command::Runtime(args) => commands::runtime::runtime(&cli.global, args).await,
        Command::Leases(args) => commands::runtime::leases(&cli.global, args).await,
        Command::Results(args) => commands::runtime::results(&cli.global, args).await,
        Command::Alarms(args) => commands::alarms::alarms(&cli.global, args).await,
        Command::Alarm(args) => commands::alarms::alarm(&cli.global, args).await,
        Command::Ack(args) => commands::alarms::ack(&cli.global, args).await,
        Command::Silence(args) => commands::alarms::silence(&cli.global, args).await,
        Command::Remediations(args) => commands::remediation::remediations(&cli.global, args).await,
        Command::Remediation(args) => commands::remediation::remediation(&cli.global, args).await,
        Command::Metrics(args) => commands::telemetry::metrics(&cli.global, args).await,
        Command::DeadLetters(args) => commands::dead_letters::dead_letters(&cli.global, args).await,
        Command::Version => commands::version(&cli.global),
        Command::Lifeline(args) => Err(anyhow::Error::new(commands::lifeline(&args))),
    }
}
