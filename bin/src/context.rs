//! The CLI context: where `steward up` tells the CLI how to reach it (URL, credentials,
//! account), so operator commands work against it with no flags, as the `nats` CLI's contexts do.
//!
//! `steward up --data D` writes `D/context.json`. Operator commands read `$STEWARD_CONTEXT` when
//! set (a missing file is an error naming it), else `<state>/context.json` when it exists, and
//! take from it only what the command line and environment left unset: `--nats`, `--creds`
//! (only together with its `--nats`: the credentials belong to that server), `--account`. Processes that are identities of their own (`up`, `server`, `edge`, `runtime`)
//! and local commands never read it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::{Deserialize, Serialize};
use steward_subjects::AccountId;

use crate::cli::{Cli, Command};

/// The environment variable naming a context file.
pub const CONTEXT_ENV: &str = "STEWARD_CONTEXT";

/// How the CLI reaches one Steward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// NATS URL(s).
    pub nats: String,
    /// The operator's credentials file, when the server wants one.
    pub creds: Option<PathBuf>,
    /// The account served.
    pub account: String,
}

impl Context {
    /// Writes the context to `path` (not secret: it names the credentials file, it does not
    /// hold them).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write context {}", path.display()))
    }

    /// Reads a context file.
    ///
    /// # Errors
    /// When it cannot be read or is not a context, naming the file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read context {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("context {} is not a Steward context", path.display()))
    }
}

/// The default context file: `<state>/context.json`.
#[must_use]
pub fn default_path() -> PathBuf {
    crate::commands::default_state_dir().join("context.json")
}

/// Whether `command` is an operator command that may take its connection from a context.
fn uses_context(command: &Command) -> bool {
    !matches!(
        command,
        Command::Up(_)
            | Command::Server(_)
            | Command::Edge(_)
            | Command::Runtime(_)
            | Command::Creds(_)
            | Command::Keys(_)
            | Command::Schema
            | Command::Version
    )
}

fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    !matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// Fills `--nats`, `--creds` and `--account` from the context when the command line and the
/// environment left them unset (see the module docs for which file).
///
/// # Errors
/// When `$STEWARD_CONTEXT` names a file that cannot be read, or a context file is malformed.
pub fn apply(cli: &mut Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    if !uses_context(&cli.command) {
        return Ok(());
    }
    let path = match std::env::var_os(CONTEXT_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let p = default_path();
            if !p.exists() {
                return Ok(());
            }
            p
        }
    };
    let context = Context::read(&path)?;
    let g = &mut cli.global;
    // The context's credentials belong to its server: they are taken only with its URL.
    if defaulted(matches, "nats") {
        g.nats = context.nats;
        if defaulted(matches, "creds") {
            g.creds = context.creds;
        }
    }
    if defaulted(matches, "account") {
        g.account = AccountId::parse(&context.account)
            .with_context(|| format!("context {} names a bad account", path.display()))?;
    }
    Ok(())
}
