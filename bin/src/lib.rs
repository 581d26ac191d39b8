//! The `steward` binary's library half.
//!
//! Layout: [`cli`] is the clap-derive command line; [`telemetry`] sets up tracing (env filter,
//! text or JSON); [`commands`] holds one function per subcommand (`up`, `server`, `edge`,
//! `health`, `version`); [`output`] prints tables or JSON; [`shutdown`] waits for Ctrl-C or
//! SIGTERM. `main.rs` only parses, sets up tracing and calls [`run`].

pub mod cli;
pub mod commands;
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
        Command::Health(args) => commands::health(&cli.global, args).await,
        Command::Version => commands::version(&cli.global),
    }
}
