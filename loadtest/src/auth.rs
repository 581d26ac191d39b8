//! `--auth`: the harness's nats-server runs in operator (JWT) mode. An [`Authority`] in a
//! temporary folder issues, per account, the `hub` service identity (exactly the service
//! permissions of `steward-subjects`) for hub processes and the `loadtest` service identity (the
//! same list plus the raw scenario's `loadtest.raw.>`) for the harness's own clients and its
//! simulated hosts and runtimes, which share connections between many hosts and so cannot each
//! carry one host's identity. Accounts first used after the server started are pushed to its
//! resolver, as `steward creds issue` does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use steward_deploy::authority::{Authority, IssueRequest, Kind};
use steward_subjects::{AccountId, Subjects};

/// The raw scenario's subjects (outside every account's steward subjects).
pub const RAW_SUBJECTS: &str = "loadtest.raw.>";

/// Which identity a connection authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Hub processes: the service identity `hub`.
    Hub,
    /// The harness's clients and simulated fleets: the service identity `loadtest`.
    Harness,
}

impl Identity {
    /// The identity's name in the authority.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Identity::Hub => "hub",
            Identity::Harness => "loadtest",
        }
    }
}

/// The identities of an authenticated deployment.
#[derive(Debug)]
pub struct JwtAuth {
    dir: tempfile::TempDir,
    authority: Authority,
    issued: tokio::sync::Mutex<HashMap<(String, Identity), PathBuf>>,
}

/// What the report says each kind of connection authenticated as.
#[must_use]
pub fn identities_json() -> serde_json::Value {
    serde_json::json!({
        "hub_process": "service identity 'hub' of the account (service permissions)",
        "harness_clients": "service identity 'loadtest' of the account (service permissions + loadtest.raw.>)",
        "simulated_hosts_and_runtimes": "service identity 'loadtest' (they share connections between hosts)",
        "tenant_hubs": "one 'hub' service identity per tenant account (--tenant ACCOUNT=CREDS)",
    })
}

impl JwtAuth {
    /// A fresh authority in a temporary folder with `account`'s identities issued (so the
    /// server preloads that account).
    ///
    /// # Errors
    /// When the folder or the identities cannot be written.
    pub fn new(account: &str) -> anyhow::Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("steward-loadtest-auth-").tempdir().context("cannot make a temp folder")?;
        let authority = Authority::open(dir.path().join("auth")).context("cannot open the authority")?;
        let auth = JwtAuth { dir, authority, issued: Default::default() };
        for who in [Identity::Hub, Identity::Harness] {
            auth.authority.ensure(&request(account, who)?).with_context(|| format!("cannot issue {}", who.name()))?;
        }
        Ok(auth)
    }

    /// The server configuration that trusts this authority (operator, resolver, preloads).
    ///
    /// # Errors
    /// When a stored JWT cannot be read.
    pub fn server_config(&self) -> anyhow::Result<String> {
        Ok(self.authority.server_config(&self.dir.path().join("resolver"))?)
    }

    /// The folder holding the authority.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The credentials file of `who` in `account`, issuing it (and pushing a new account to the
    /// server at `url`) on first use.
    ///
    /// # Errors
    /// When issuing or pushing fails.
    pub async fn creds(&self, url: &str, account: &str, who: Identity) -> anyhow::Result<PathBuf> {
        let mut issued = self.issued.lock().await;
        if let Some(p) = issued.get(&(account.to_owned(), who)) {
            return Ok(p.clone());
        }
        let new = self
            .authority
            .ensure(&request(account, who)?)
            .with_context(|| format!("cannot issue {} in account {account}", who.name()))?;
        if new.account_changed {
            self.authority
                .push(url, &new.account_jwt)
                .await
                .with_context(|| format!("cannot push account {account} to {url}"))?;
        }
        issued.insert((account.to_owned(), who), new.creds_file.clone());
        Ok(new.creds_file)
    }
}

fn request(account: &str, who: Identity) -> anyhow::Result<IssueRequest> {
    let id = AccountId::parse(account).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut perms = Subjects::new(id).service_permissions();
    if who == Identity::Harness {
        perms.publish.push(RAW_SUBJECTS.to_owned());
        perms.subscribe.push(RAW_SUBJECTS.to_owned());
    }
    Ok(IssueRequest {
        account: account.to_owned(),
        kind: Kind::Service,
        name: who.name().to_owned(),
        role: None,
        publish: perms.publish,
        subscribe: perms.subscribe,
    })
}
