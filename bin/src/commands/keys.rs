//! `steward keys init [--dir D]`: the hub's ed25519 job signing key pair.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cli::{Global, OutputFormat};
use crate::output;

/// Options of `steward keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// Key actions.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Generate a signing key pair into a folder (refuses to overwrite existing keys).
    Init {
        /// Folder for `steward-signing.key` (secret, mode 0600) and `steward-signing.pub`;
        /// default: `<state folder>/keys`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Default folder of the key pair.
#[must_use]
pub fn default_dir() -> PathBuf {
    super::default_state_dir().join("keys")
}

/// `steward keys ...`.
///
/// # Errors
/// When the keys cannot be written (for example because they exist already).
pub fn keys(global: &Global, args: KeysArgs) -> anyhow::Result<()> {
    match args.action {
        KeysAction::Init { dir } => {
            let dir = dir.unwrap_or_else(default_dir);
            let files = steward_actors::signing::JobSigner::init_dir(&dir)
                .with_context(|| format!("cannot create signing keys in {}", dir.display()))?;
            match global.output {
                OutputFormat::Json => output::print(global.output, &[], &[], &files),
                OutputFormat::Table => {
                    println!("signing key  {}", files.secret.display());
                    println!("public key   {}", files.public.display());
                    println!("key id       {}", files.key_id);
                    println!(
                        "give the hub --signing-key {} and every edge --trusted-key {}",
                        files.secret.display(),
                        files.public.display()
                    );
                }
            }
            Ok(())
        }
    }
}
