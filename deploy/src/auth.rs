//! Identities and server-side authorization: nkey users per host or service, rendered into a
//! nats-server `accounts { ... }` block (one NATS account per tenant, so tenants never see each
//! other's subjects, streams or buckets), and the leaf-node remote block an edge site uses to
//! carry a host's credentials to the hub.
//!
//! An [`AuthDir`] keeps issued identities on disk:
//!
//! ```text
//! <dir>/accounts/<account>/<kind>/<name>.json   public key + permissions (server side)
//! <dir>/accounts/<account>/<kind>/<name>.nk     nkey seed (client side, mode 0600)
//! <dir>/authorization.conf                      every account and user, for `include`
//! ```
//!
//! The subject lists come from `steward-subjects` (the only place that formats subjects); this
//! module only renders and stores them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::quote;
use crate::secret::{read_secret, write_secret, SecretFileError};
use crate::tls::TlsRemote;
use crate::DeployError;

/// One nkey user of an account with its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// What the user is (`host web-01`, `service hub`), written as a comment.
    pub comment: String,
    /// The user's public nkey (`U...`).
    pub nkey: String,
    /// Subjects the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether the user may answer requests it received (reply subjects), for their lifetime.
    pub allow_responses: bool,
}

/// One tenant account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    /// Account name (a Steward account token).
    pub name: String,
    /// Its users.
    pub users: Vec<UserEntry>,
}

/// Renders an `accounts { ... }` block: every account with JetStream enabled and its users.
///
/// ```
/// use steward_deploy::auth::{render_accounts, AccountEntry, UserEntry};
/// let text = render_accounts(&[AccountEntry {
///     name: "acme".into(),
///     users: vec![UserEntry {
///         comment: "host web-01".into(),
///         nkey: "UABC".into(),
///         publish: vec!["steward.v1.acme.host.heartbeat.web-01".into()],
///         subscribe: vec![],
///         allow_responses: true,
///     }],
/// }]);
/// assert!(text.contains("nkey: \"UABC\""));
/// ```
#[must_use]
pub fn render_accounts(accounts: &[AccountEntry]) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# rendered by steward creds; do not edit, it is rewritten on every issue");
    let _ = writeln!(c, "accounts {{");
    for a in accounts {
        let _ = writeln!(c, "  {} {{", quote(&a.name));
        let _ = writeln!(c, "    jetstream: enabled");
        let _ = writeln!(c, "    users: [");
        for u in &a.users {
            let _ = writeln!(c, "      # {}", u.comment.replace('\n', " "));
            let _ = writeln!(c, "      {{");
            let _ = writeln!(c, "        nkey: {}", quote(&u.nkey));
            let _ = writeln!(c, "        permissions: {{");
            let _ = writeln!(c, "          publish: {{ allow: [{}] }}", list(&u.publish));
            let _ = writeln!(c, "          subscribe: {{ allow: [{}] }}", list(&u.subscribe));
            if u.allow_responses {
                let _ = writeln!(c, "          allow_responses: true");
            }
            let _ = writeln!(c, "        }}");
            let _ = writeln!(c, "      }}");
        }
        let _ = writeln!(c, "    ]");
        let _ = writeln!(c, "  }}");
    }
    let _ = writeln!(c, "}}");
    c
}

fn list(items: &[String]) -> String {
    items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

/// How a leaf node authenticates to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafAuth {
    /// No credentials (a hub without authorization).
    None,
    /// An nkey seed (`SU...`).
    Nkey(String),
    /// A credentials file (user JWT + seed).
    Credentials(PathBuf),
}

impl LeafAuth {
    /// Reads a credentials path: a file holding only an nkey user seed gives [`LeafAuth::Nkey`],
    /// a NATS credentials file is passed on as such.
    ///
    /// # Errors
    /// As [`read_seed`].
    pub fn from_file(path: &Path) -> Result<Self, DeployError> {
        match read_seed(path)? {
            Some(seed) => Ok(LeafAuth::Nkey(seed)),
            None => Ok(LeafAuth::Credentials(path.to_path_buf())),
        }
    }
}

/// The seed in `path` when the file holds only an nkey user seed, `None` for a NATS credentials
/// file (user JWT and seed). The file must be readable only by its owner.
///
/// # Errors
/// [`DeployError::Secret`] naming the file when it is missing, readable or writable by others
/// ([`SecretFileError::TooOpen`]), or neither a valid seed nor a credentials file
/// ([`SecretFileError::Malformed`]).
pub fn read_seed(path: &Path) -> Result<Option<String>, DeployError> {
    let text = read_secret(path)?;
    let t = text.trim();
    if t.starts_with("SU") && !t.contains(char::is_whitespace) && nkeys::KeyPair::from_seed(t).is_ok() {
        return Ok(Some(t.to_owned()));
    }
    if t.contains("BEGIN NATS USER JWT") && t.contains("NKEY SEED") {
        return Ok(None);
    }
    Err(SecretFileError::Malformed {
        path: path.to_owned(),
        expected: "a valid nkey user seed (SU...) or NATS credentials file (user JWT and seed)",
    }
    .into())
}

/// Renders a `leafnodes { remotes: [...] }` block with one remote to `url`.
#[must_use]
pub fn leaf_remote_block(url: &str, auth: &LeafAuth) -> String {
    leaf_remote_block_tls(url, auth, None)
}

/// Renders a `leafnodes { remotes: [...] }` block with one remote to `url`, over TLS when `tls`
/// is given (the hub's certificate checked against its CA, a client certificate if set).
#[must_use]
pub fn leaf_remote_block_tls(url: &str, auth: &LeafAuth, tls: Option<&TlsRemote>) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "leafnodes {{");
    let _ = write!(c, "  remotes: [ {{ urls: [{}]", quote(url));
    match auth {
        LeafAuth::None => {}
        LeafAuth::Nkey(seed) => {
            let _ = write!(c, ", nkey: {}", quote(seed));
        }
        LeafAuth::Credentials(path) => {
            let _ = write!(c, ", credentials: {}", quote(&path.display().to_string()));
        }
    }
    if let Some(tls) = tls {
        let _ = write!(c, ", {}", tls.block());
    }
    let _ = writeln!(c, " }} ]");
    let _ = writeln!(c, "}}");
    c
}

/// Renders an `authorization { users: [...] }` block admitting only the given nkey users (full
/// permissions, the server's default account): the lock of an edge's own leaf node, which only
/// its host's processes may use.
///
/// ```
/// let b = steward_deploy::auth::local_users_block(&["UABC".to_owned()]);
/// assert!(b.contains("{ nkey: \"UABC\" }"));
/// ```
#[must_use]
pub fn local_users_block(public_keys: &[String]) -> String {
    let users: Vec<String> = public_keys.iter().map(|k| format!("{{ nkey: {} }}", quote(k))).collect();
    format!("authorization {{\n  users: [ {} ]\n}}\n", users.join(", "))
}

/// Reads the nkey seed in `path`, or generates a user nkey and writes its seed there (mode 0600)
/// when the file does not exist yet; returns the identity.
///
/// # Errors
/// [`DeployError::Secret`] naming the file when it is readable by others, is not an nkey user
/// seed, or cannot be written.
pub fn load_or_create_seed(path: &Path) -> Result<Identity, DeployError> {
    if !path.exists() {
        let id = Identity::generate()?;
        write_secret(path, &format!("{}\n", id.seed))?;
        return Ok(id);
    }
    let malformed = || SecretFileError::Malformed { path: path.to_owned(), expected: "an nkey user seed (SU...)" };
    let seed = read_seed(path)?.ok_or_else(malformed)?;
    let kp = nkeys::KeyPair::from_seed(&seed).map_err(|_| malformed())?;
    Ok(Identity { public_key: kp.public_key(), seed })
}

/// A freshly generated nkey user.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Public key (`U...`), goes into the server authorization.
    pub public_key: String,
    /// Seed (`SU...`), stays with the client.
    pub seed: String,
}

impl Identity {
    /// Generates a new user nkey pair.
    ///
    /// # Errors
    /// [`DeployError::Topology`] if the seed cannot be encoded (never in practice).
    pub fn generate() -> Result<Self, DeployError> {
        let kp = nkeys::KeyPair::new_user();
        let seed = kp.seed().map_err(|e| DeployError::Topology(format!("cannot encode nkey seed: {e}")))?;
        Ok(Identity { public_key: kp.public_key(), seed })
    }
}

/// What an issued identity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// An edge agent / host.
    Host,
    /// A control-plane service or operator user.
    Service,
}

impl IdentityKind {
    fn folder(self) -> &'static str {
        match self {
            IdentityKind::Host => "hosts",
            IdentityKind::Service => "services",
        }
    }
}

/// Where an identity was written.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The public key.
    pub public_key: String,
    /// The seed file for the client.
    pub seed_file: PathBuf,
    /// The regenerated authorization file for the server.
    pub authorization: PathBuf,
}

/// A folder of issued identities (see the module docs for the layout).
#[derive(Debug, Clone)]
pub struct AuthDir {
    root: PathBuf,
}

impl AuthDir {
    /// The folder at `root` (created on first issue).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AuthDir { root: root.into() }
    }

    /// The authorization file servers include.
    #[must_use]
    pub fn authorization_file(&self) -> PathBuf {
        self.root.join("authorization.conf")
    }

    /// Issues (or re-issues, replacing the key) an identity named `name` of `kind` in
    /// `account`, with `publish`/`subscribe` permissions, and rewrites the authorization file.
    /// `account` and `name` must be validated tokens (they become folder and file names).
    ///
    /// # Errors
    /// [`DeployError::Io`] when a file cannot be written.
    pub fn issue(
        &self,
        account: &str,
        kind: IdentityKind,
        name: &str,
        publish: Vec<String>,
        subscribe: Vec<String>,
    ) -> Result<Issued, DeployError> {
        let id = Identity::generate()?;
        let dir = self.root.join("accounts").join(account).join(kind.folder());
        std::fs::create_dir_all(&dir)
            .map_err(|e| DeployError::Io { context: format!("create {}", dir.display()), source: e })?;
        let seed_file = dir.join(format!("{name}.nk"));
        write_secret(&seed_file, &format!("{}\n", id.seed))?;
        let entry = serde_json::json!({
            "comment": format!("{} {name}", match kind { IdentityKind::Host => "host", IdentityKind::Service => "service" }),
            "nkey": id.public_key,
            "publish": publish,
            "subscribe": subscribe,
            "allow_responses": true,
        });
        let json_file = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&entry)
            .map_err(|e| DeployError::Topology(format!("cannot encode {}: {e}", json_file.display())))?;
        std::fs::write(&json_file, text)
            .map_err(|e| DeployError::Io { context: format!("write {}", json_file.display()), source: e })?;
        let authorization = self.render()?;
        Ok(Issued { public_key: id.public_key, seed_file, authorization })
    }

    /// Every account and user issued so far, sorted by name.
    ///
    /// # Errors
    /// [`DeployError::Io`] when the folder cannot be read, [`DeployError::Topology`] for a
    /// corrupt entry.
    pub fn accounts(&self) -> Result<Vec<AccountEntry>, DeployError> {
        let base = self.root.join("accounts");
        let mut out = Vec::new();
        for account in sorted_dir(&base)? {
            let Some(name) = account.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            let mut users = Vec::new();
            for kind in [IdentityKind::Service, IdentityKind::Host] {
                for file in sorted_dir(&account.join(kind.folder()))? {
                    if file.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    users.push(read_entry(&file)?);
                }
            }
            out.push(AccountEntry { name, users });
        }
        Ok(out)
    }

    /// Rewrites the authorization file from the issued identities.
    ///
    /// # Errors
    /// As [`AuthDir::accounts`], or [`DeployError::Io`] when the file cannot be written.
    pub fn render(&self) -> Result<PathBuf, DeployError> {
        let text = render_accounts(&self.accounts()?);
        let path = self.authorization_file();
        std::fs::write(&path, text)
            .map_err(|e| DeployError::Io { context: format!("write {}", path.display()), source: e })?;
        Ok(path)
    }
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, DeployError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| DeployError::Io { context: format!("read {}", dir.display()), source: e })?;
    let mut out: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    out.sort();
    Ok(out)
}

fn read_entry(file: &Path) -> Result<UserEntry, DeployError> {
    let corrupt = |why: &str| DeployError::Topology(format!("corrupt identity {}: {why}", file.display()));
    let text = std::fs::read_to_string(file)
        .map_err(|e| DeployError::Io { context: format!("read {}", file.display()), source: e })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(&e.to_string()))?;
    let strings = |key: &str| -> Result<Vec<String>, DeployError> {
        v[key]
            .as_array()
            .ok_or_else(|| corrupt(&format!("{key} is not a list")))?
            .iter()
            .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| corrupt(&format!("{key} holds a non-string"))))
            .collect()
    };
    Ok(UserEntry {
        comment: v["comment"].as_str().unwrap_or_default().to_owned(),
        nkey: v["nkey"].as_str().ok_or_else(|| corrupt("no nkey"))?.to_owned(),
        publish: strings("publish")?,
        subscribe: strings("subscribe")?,
        allow_responses: v["allow_responses"].as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn issue_writes_seed_and_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::new(dir.path());
        let a = auth.issue("acme", IdentityKind::Host, "web-01", vec!["p.a".into()], vec!["s.a".into()]).unwrap();
        auth.issue("globex", IdentityKind::Service, "hub", vec!["p.g".into()], vec![]).unwrap();
        let seed = read_seed(&a.seed_file).unwrap().unwrap();
        assert!(seed.starts_with("SU"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&a.seed_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(auth.authorization_file()).unwrap();
        assert!(text.contains(&a.public_key));
        assert!(text.contains("\"acme\" {") && text.contains("\"globex\" {"));
        assert_eq!(auth.accounts().unwrap().len(), 2);
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
    }

    #[test]
    fn re_issue_over_a_looser_seed_file_writes_it_0600() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::new(dir.path());
        let first = auth.issue("acme", IdentityKind::Host, "web-01", vec![], vec![]).unwrap();
        chmod(&first.seed_file, 0o644);
        let again = auth.issue("acme", IdentityKind::Host, "web-01", vec![], vec![]).unwrap();
        assert_eq!(again.seed_file, first.seed_file);
        assert_eq!(mode(&again.seed_file), 0o600);
        let seed = read_seed(&again.seed_file).unwrap().unwrap();
        assert_eq!(nkeys::KeyPair::from_seed(&seed).unwrap().public_key(), again.public_key);
    }

    #[test]
    fn bad_credentials_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::new(dir.path());
        let seed_file = auth.issue("acme", IdentityKind::Host, "web-01", vec![], vec![]).unwrap().seed_file;
        let shown = seed_file.display().to_string();

        chmod(&seed_file, 0o644);
        for e in [read_seed(&seed_file).unwrap_err(), LeafAuth::from_file(&seed_file).unwrap_err()] {
            assert!(matches!(e, DeployError::Secret(SecretFileError::TooOpen { mode: 0o644, .. })), "{e}");
            let text = e.to_string();
            assert!(text.contains(&format!("permissions 0644 for '{shown}' are too open")), "{text}");
            assert!(text.contains(&format!("chmod 600 {shown}")), "{text}");
        }

        let missing = dir.path().join("nope.nk");
        let e = read_seed(&missing).unwrap_err();
        assert!(matches!(e, DeployError::Secret(SecretFileError::NotFound { .. })), "{e}");
        assert!(e.to_string().contains(&missing.display().to_string()), "{e}");

        for junk in ["hello\n", "SUXYZ\n", "", "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n"] {
            let bad = dir.path().join("bad.nk");
            crate::secret::write_secret(&bad, junk).unwrap();
            let e = read_seed(&bad).unwrap_err();
            assert!(matches!(e, DeployError::Secret(SecretFileError::Malformed { .. })), "{junk:?}: {e}");
            let text = e.to_string();
            assert!(text.contains(&bad.display().to_string()) && text.contains("nkey user seed"), "{text}");
        }
    }

    #[test]
    fn a_jwt_credentials_file_is_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.creds");
        let text = "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n\n\
                    -----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n";
        crate::secret::write_secret(&path, text).unwrap();
        assert_eq!(read_seed(&path).unwrap(), None);
        assert_eq!(LeafAuth::from_file(&path).unwrap(), LeafAuth::Credentials(path.clone()));
    }

    #[test]
    fn leaf_block_carries_the_seed() {
        let b = leaf_remote_block("nats-leaf://h:7422", &LeafAuth::Nkey("SUXYZ".into()));
        assert!(b.contains("nkey: \"SUXYZ\""), "{b}");
        assert!(!b.contains("tls"), "{b}");
        let tls = TlsRemote { ca: Some("/ca.pem".into()), ..TlsRemote::default() };
        let b = leaf_remote_block_tls("tls://h:7422", &LeafAuth::None, Some(&tls));
        assert!(b.contains("urls: [\"tls://h:7422\"], tls { ca_file: \"/ca.pem\" } }"), "{b}");
    }

    #[test]
    fn a_local_seed_is_created_0600_then_reused_and_refused_when_too_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.nk");
        let first = load_or_create_seed(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let again = load_or_create_seed(&path).unwrap();
        assert_eq!((again.public_key.as_str(), again.seed.as_str()), (first.public_key.as_str(), first.seed.as_str()));
        chmod(&path, 0o640);
        let e = load_or_create_seed(&path).unwrap_err();
        assert!(matches!(e, DeployError::Secret(SecretFileError::TooOpen { .. })), "{e}");
        chmod(&path, 0o600);
        write_secret(&path, "not a seed\n").unwrap();
        let e = load_or_create_seed(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
