//! The `steward` command: thin — parse the command line, set up tracing, call into the library.

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
    let matches = steward::cli::Cli::command().get_matches();
    let mut cli = match steward::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let steward::cli::Command::Lifeline(args) = &cli.command {
        // Replaces this process with the program; returns only when that fails.
        let err = steward::commands::lifeline(args);
        eprintln!("error: steward lifeline: {err}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = steward::context::apply(&mut cli, &matches) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let log_file = steward::telemetry::log_file(&cli.global, steward::commands::default_log_file(&cli.command));
    let telemetry =
        steward::telemetry::init(&cli.global, steward::telemetry::service_name(&cli.command), log_file.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let span = steward::telemetry::command_span(&cli.command, matches.subcommand_name());
    let result = runtime.block_on(tracing::Instrument::instrument(steward::run(cli), span));
    // Spans still queued are exported before the process exits.
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(refused) = steward::cli::refused_by_server() {
                eprintln!("  the server refused this identity: {refused} (see docs/security.md)");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
