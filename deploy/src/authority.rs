//! Decentralized NATS identities: an operator, one NATS account per tenant, one user per host,
//! service or operator, all as signed JWTs, so a server learns about new users without a reload
//! (a user JWT is checked against its account's key) and about new accounts and revocations by
//! an account JWT pushed to its resolver (`$SYS.REQ.CLAIMS.UPDATE`).
//!
//! ```text
//! <dir>/operator.nk, operator.jwt               operator key (0600) and self-signed JWT
//! <dir>/system/account.nk, account.jwt, sys.creds   the system account and its user (pushes)
//! <dir>/accounts/<acc>/account.nk, account.jwt  one account per tenant
//! <dir>/accounts/<acc>/<kind>s/<name>.json      issued identity: key, role, issued, revoked
//! <dir>/accounts/<acc>/<kind>s/<name>.creds     user JWT + seed for the client (0600)
//! <dir>/server.conf                             operator, system account, resolver, preloads
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::quote;
use crate::jwt::{self, JwtError};
use crate::secret::{read_secret, write_secret, SecretFileError};

/// How long a push waits for the server's answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong while issuing, revoking or pushing identities.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key or credentials file is missing, malformed or readable by others.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// A stored JWT does not decode or verify.
    #[error("{}: {source}", path.display())]
    Jwt {
        /// The file holding it.
        path: PathBuf,
        /// Why.
        source: JwtError,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] JwtError),
    /// A name is not a token (letters, digits, `-`, `_`).
    #[error("invalid {what} {value:?}: use letters, digits, '-' and '_'")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The identity was never issued.
    #[error("no {kind} identity {name:?} in account {account:?}")]
    Unknown {
        /// Account.
        account: String,
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
    },
    /// A stored record is corrupt.
    #[error("corrupt identity record {}: {reason}", path.display())]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Pushing an account JWT to the servers failed or was refused.
    #[error("cannot push account {account} to {url}: {reason}")]
    Push {
        /// The account's public key.
        account: String,
        /// The server URL(s).
        url: String,
        /// Why.
        reason: String,
    },
}

/// What an identity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An edge host (its agent, worker and runtime).
    Host,
    /// A control-plane service.
    Service,
    /// A person using the CLI.
    Operator,
}

impl Kind {
    /// Every kind, in listing order.
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::Host, Kind::Operator];

    /// The folder of this kind's identities.
    #[must_use]
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Host => "hosts",
            Kind::Service => "services",
            Kind::Operator => "operators",
        }
    }

    /// Whether users of this kind may answer requests on any reply subject they received
    /// (the JWT's `resp` permission). Hosts need it (their health and command services answer
    /// other identities' inboxes); services and operators publish to `_INBOX.>` and `$JS.ACK.>`
    /// by their own permissions, and without `resp` the server does not track a reply
    /// permission for every JetStream message delivered to them.
    #[must_use]
    pub fn answers_requests(self) -> bool {
        matches!(self, Kind::Host)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Host => "host",
            Kind::Service => "service",
            Kind::Operator => "operator",
        })
    }
}

/// An issued identity as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// Tenant account name.
    pub account: String,
    /// Kind.
    pub kind: Kind,
    /// Host id, service name or operator name.
    pub name: String,
    /// The operator role (`admin`, `viewer`); `None` for hosts and services.
    pub role: Option<String>,
    /// The user's public nkey (`U...`).
    pub public_key: String,
    /// Unix seconds of issue.
    pub issued_at: i64,
    /// Unix seconds of revocation, if revoked.
    pub revoked: Option<i64>,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Tenant account name (created on first use).
    pub account: String,
    /// Kind.
    pub kind: Kind,
    /// Name (a token).
    pub name: String,
    /// Operator role, recorded as given.
    pub role: Option<String>,
    /// Subjects the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
}

/// The result of an issue.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The new record.
    pub record: IdentityRecord,
    /// The credentials file for the client (mode 0600).
    pub creds_file: PathBuf,
    /// The account JWT after the issue.
    pub account_jwt: String,
    /// Whether the account JWT changed (new account, or a replaced key revoked) and should be
    /// pushed to running servers.
    pub account_changed: bool,
}

/// A folder of operator, accounts and issued identities (see the module docs).
#[derive(Debug, Clone)]
pub struct Authority {
    root: PathBuf,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_name(what: &'static str, value: &str) -> Result<(), AuthorityError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(AuthorityError::InvalidName { what, value: value.to_owned() })
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> AuthorityError {
    move |source| AuthorityError::Io { context, source }
}

fn mkdir(dir: &Path) -> Result<(), AuthorityError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))
}

fn write_file(path: &Path, text: &str) -> Result<(), AuthorityError> {
    std::fs::write(path, text).map_err(io(format!("write {}", path.display())))
}

/// Loads the key in `seed_file`, or creates it with `make` (written 0600) when absent.
fn load_or_create_key(
    seed_file: &Path,
    make: fn() -> nkeys::KeyPair,
) -> Result<(nkeys::KeyPair, bool), AuthorityError> {
    if seed_file.exists() {
        let seed = read_secret(seed_file)?;
        let kp = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|_| SecretFileError::Malformed { path: seed_file.to_owned(), expected: "an nkey seed" })?;
        return Ok((kp, false));
    }
    let kp = make();
    let seed = kp.seed().map_err(|e| JwtError::Key(e.to_string()))?;
    write_secret(seed_file, &format!("{seed}\n"))?;
    Ok((kp, true))
}

fn read_jwt(path: &Path) -> Result<(String, jwt::Claims), AuthorityError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let claims = jwt::decode(&text).map_err(|source| AuthorityError::Jwt { path: path.to_owned(), source })?;
    Ok((text.trim().to_owned(), claims))
}

impl Authority {
    /// Opens (creating on first use) the authority at `root`: the operator key and JWT, the
    /// system account and its user.
    ///
    /// # Errors
    /// [`AuthorityError::Io`] or [`AuthorityError::Secret`] when files cannot be written or a
    /// key file is unreadable or too open.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, AuthorityError> {
        let a = Authority { root: root.into() };
        mkdir(&a.root.join("system"))?;
        let (op, _) = load_or_create_key(&a.root.join("operator.nk"), nkeys::KeyPair::new_operator)?;
        let (sys, created) = load_or_create_key(&a.system_dir().join("account.nk"), nkeys::KeyPair::new_account)?;
        if created || !a.root.join("operator.jwt").exists() {
            let op_jwt = jwt::encode(&op, &op.public_key(), "steward", jwt::operator_nats(&sys.public_key()), now())?;
            write_file(&a.root.join("operator.jwt"), &op_jwt)?;
            let sys_jwt =
                jwt::encode(&op, &sys.public_key(), "SYS", jwt::account_nats(false, &BTreeMap::new()), now())?;
            write_file(&a.system_dir().join("account.jwt"), &sys_jwt)?;
            let user = nkeys::KeyPair::new_user();
            let user_jwt = jwt::encode(&sys, &user.public_key(), "sys", jwt::user_nats(&[], &[], false), now())?;
            let seed = user.seed().map_err(|e| JwtError::Key(e.to_string()))?;
            write_secret(&a.system_creds(), &jwt::creds_file(&user_jwt, &seed))?;
        }
        a.render_server_config()?;
        Ok(a)
    }

    /// The folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn system_dir(&self) -> PathBuf {
        self.root.join("system")
    }

    fn account_dir(&self, account: &str) -> PathBuf {
        self.root.join("accounts").join(account)
    }

    /// The system user's credentials (used to push account JWTs).
    #[must_use]
    pub fn system_creds(&self) -> PathBuf {
        self.system_dir().join("sys.creds")
    }

    /// The server configuration snippet (see [`Authority::server_config`]), rewritten on
    /// every change.
    #[must_use]
    pub fn server_config_file(&self) -> PathBuf {
        self.root.join("server.conf")
    }

    fn operator_key(&self) -> Result<nkeys::KeyPair, AuthorityError> {
        Ok(load_or_create_key(&self.root.join("operator.nk"), nkeys::KeyPair::new_operator)?.0)
    }

    /// The public key of `account`'s NATS account, if it exists.
    ///
    /// # Errors
    /// When its JWT cannot be read.
    pub fn account_public_key(&self, account: &str) -> Result<Option<String>, AuthorityError> {
        let path = self.account_dir(account).join("account.jwt");
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(read_jwt(&path)?.1.sub))
    }

    /// The account JWT of `account`.
    ///
    /// # Errors
    /// When it does not exist or cannot be read.
    pub fn account_jwt(&self, account: &str) -> Result<String, AuthorityError> {
        Ok(read_jwt(&self.account_dir(account).join("account.jwt"))?.0)
    }

    /// Signs and stores `account`'s JWT with `revocations`, creating its key when new; returns
    /// the JWT and whether the account was created.
    fn sign_account(
        &self,
        account: &str,
        revocations: &BTreeMap<String, i64>,
    ) -> Result<(String, bool), AuthorityError> {
        let dir = self.account_dir(account);
        mkdir(&dir)?;
        let (key, created) = load_or_create_key(&dir.join("account.nk"), nkeys::KeyPair::new_account)?;
        let path = dir.join("account.jwt");
        // A resolver keeps the newer of two JWTs by `iat`; never go backwards.
        let iat = if path.exists() { now().max(read_jwt(&path)?.1.iat) } else { now() };
        let token =
            jwt::encode(&self.operator_key()?, &key.public_key(), account, jwt::account_nats(true, revocations), iat)?;
        write_file(&path, &token)?;
        self.render_server_config()?;
        Ok((token, created))
    }

    fn revocations(&self, account: &str) -> Result<BTreeMap<String, i64>, AuthorityError> {
        let path = self.account_dir(account).join("account.jwt");
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        Ok(read_jwt(&path)?.1.revocations())
    }

    fn record_path(&self, account: &str, kind: Kind, name: &str) -> PathBuf {
        self.account_dir(account).join(kind.folder()).join(format!("{name}.json"))
    }

    fn read_record(path: &Path) -> Result<IdentityRecord, AuthorityError> {
        let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| AuthorityError::Corrupt { path: path.to_owned(), reason: e.to_string() })
    }

    fn write_record(path: &Path, record: &IdentityRecord) -> Result<(), AuthorityError> {
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| AuthorityError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
        write_file(path, &text)
    }

    /// Issues (or re-issues with a new key, revoking the replaced one) an identity; creates the
    /// tenant account on first use.
    ///
    /// # Errors
    /// [`AuthorityError::InvalidName`], or when files cannot be read or written.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, AuthorityError> {
        check_name("account", &req.account)?;
        check_name("name", &req.name)?;
        let record_path = self.record_path(&req.account, req.kind, &req.name);
        let mut revocations = self.revocations(&req.account)?;
        let mut replaced = false;
        if record_path.exists() {
            let old = Self::read_record(&record_path)?;
            if old.revoked.is_none() {
                revocations.insert(old.public_key, now().max(old.issued_at));
                replaced = true;
            }
        }
        let (account_jwt, created) = if replaced || self.account_public_key(&req.account)?.is_none() {
            self.sign_account(&req.account, &revocations)?
        } else {
            (self.account_jwt(&req.account)?, false)
        };
        let dir = self.account_dir(&req.account);
        let (account_key, _) = load_or_create_key(&dir.join("account.nk"), nkeys::KeyPair::new_account)?;
        let user = nkeys::KeyPair::new_user();
        let issued_at = now();
        let nats = jwt::user_nats(&req.publish, &req.subscribe, req.kind.answers_requests());
        let user_jwt = jwt::encode(&account_key, &user.public_key(), &req.name, nats, issued_at)?;
        let seed = user.seed().map_err(|e| JwtError::Key(e.to_string()))?;
        mkdir(&dir.join(req.kind.folder()))?;
        let creds_file = dir.join(req.kind.folder()).join(format!("{}.creds", req.name));
        write_secret(&creds_file, &jwt::creds_file(&user_jwt, &seed))?;
        let record = IdentityRecord {
            account: req.account.clone(),
            kind: req.kind,
            name: req.name.clone(),
            role: req.role.clone(),
            public_key: user.public_key(),
            issued_at,
            revoked: None,
        };
        Self::write_record(&record_path, &record)?;
        Ok(Issued { record, creds_file, account_jwt, account_changed: created || replaced })
    }

    /// The identity `req` names as it is already issued, when it is live (not revoked), its
    /// credentials file is readable and its user JWT grants exactly `req`'s permissions;
    /// otherwise a fresh issue (which revokes a replaced key). What `steward up` uses on every
    /// start, so restarts keep their identities and an upgrade that changed a permission list
    /// gets new ones.
    ///
    /// # Errors
    /// As [`Authority::issue`].
    pub fn ensure(&self, req: &IssueRequest) -> Result<Issued, AuthorityError> {
        check_name("account", &req.account)?;
        check_name("name", &req.name)?;
        let record_path = self.record_path(&req.account, req.kind, &req.name);
        let creds_file = self.account_dir(&req.account).join(req.kind.folder()).join(format!("{}.creds", req.name));
        if record_path.exists() && creds_file.exists() && self.account_public_key(&req.account)?.is_some() {
            let record = Self::read_record(&record_path)?;
            let text = read_secret(&creds_file)?;
            let mut want = jwt::user_nats(&req.publish, &req.subscribe, req.kind.answers_requests());
            want["version"] = serde_json::json!(2);
            let same = jwt::creds_jwt(&text)
                .and_then(jwt::decode)
                .map(|c| c.sub == record.public_key && c.nats == want)
                .unwrap_or(false);
            if record.revoked.is_none() && same && record.role == req.role {
                let account_jwt = self.account_jwt(&req.account)?;
                return Ok(Issued { record, creds_file, account_jwt, account_changed: false });
            }
        }
        self.issue(req)
    }

    /// Revokes an identity: its key goes into the account JWT's revocations, which is re-signed
    /// and stored; returns the record and the new account JWT to push. Revoking again re-signs
    /// the same revocation (so a failed push can be retried).
    ///
    /// # Errors
    /// [`AuthorityError::Unknown`] when it was never issued, or file errors.
    pub fn revoke(&self, account: &str, kind: Kind, name: &str) -> Result<(IdentityRecord, String), AuthorityError> {
        check_name("account", account)?;
        check_name("name", name)?;
        let path = self.record_path(account, kind, name);
        if !path.exists() {
            return Err(AuthorityError::Unknown { account: account.to_owned(), kind, name: name.to_owned() });
        }
        let mut record = Self::read_record(&path)?;
        let at = record.revoked.unwrap_or_else(|| now().max(record.issued_at));
        record.revoked = Some(at);
        let mut revocations = self.revocations(account)?;
        revocations.insert(record.public_key.clone(), at);
        let (account_jwt, _) = self.sign_account(account, &revocations)?;
        Self::write_record(&path, &record)?;
        Ok((record, account_jwt))
    }

    /// Every issued identity, by account, kind and name.
    ///
    /// # Errors
    /// When a folder cannot be read or a record is corrupt.
    pub fn list(&self) -> Result<Vec<IdentityRecord>, AuthorityError> {
        let mut out = Vec::new();
        for account in sorted_dir(&self.root.join("accounts"))? {
            for kind in Kind::ALL {
                for file in sorted_dir(&account.join(kind.folder()))? {
                    if file.extension().and_then(|e| e.to_str()) == Some("json") {
                        out.push(Self::read_record(&file)?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every account JWT (system account first), as (public key, JWT).
    fn all_account_jwts(&self) -> Result<Vec<(String, String)>, AuthorityError> {
        let mut out = Vec::new();
        let mut files = vec![self.system_dir().join("account.jwt")];
        files.extend(sorted_dir(&self.root.join("accounts"))?.into_iter().map(|d| d.join("account.jwt")));
        for f in files.into_iter().filter(|f| f.exists()) {
            let (token, claims) = read_jwt(&f)?;
            out.push((claims.sub, token));
        }
        Ok(out)
    }

    /// The configuration a server includes to trust this operator: `operator` (its JWT),
    /// `system_account`, a `full` account resolver storing pushed account JWTs in
    /// `resolver_dir`, and `resolver_preload` with every account JWT so a fresh server knows
    /// every account.
    ///
    /// # Errors
    /// When a stored JWT cannot be read.
    pub fn server_config(&self, resolver_dir: &Path) -> Result<String, AuthorityError> {
        let (op_jwt, _) = read_jwt(&self.root.join("operator.jwt"))?;
        let (_, sys) = read_jwt(&self.system_dir().join("account.jwt"))?;
        let mut c = String::new();
        let _ = writeln!(c, "# rendered by steward creds; rewritten on every issue and revoke");
        let _ = writeln!(c, "operator: {}", quote(&op_jwt));
        let _ = writeln!(c, "system_account: {}", quote(&sys.sub));
        let _ = writeln!(c, "resolver: {{");
        let _ = writeln!(c, "  type: full");
        let _ = writeln!(c, "  dir: {}", quote(&resolver_dir.display().to_string()));
        let _ = writeln!(c, "  allow_delete: false");
        let _ = writeln!(c, "}}");
        let _ = writeln!(c, "resolver_preload: {{");
        for (key, token) in self.all_account_jwts()? {
            let _ = writeln!(c, "  {key}: {}", quote(&token));
        }
        let _ = writeln!(c, "}}");
        Ok(c)
    }

    /// Rewrites [`Authority::server_config_file`] with the resolver folder `<dir>/jwt`.
    ///
    /// # Errors
    /// As [`Authority::server_config`], or when the file cannot be written.
    pub fn render_server_config(&self) -> Result<PathBuf, AuthorityError> {
        let path = self.server_config_file();
        write_file(&path, &self.server_config(&self.root.join("jwt"))?)?;
        Ok(path)
    }

    /// Pushes an account JWT to the servers at `url` as the system user
    /// (`$SYS.REQ.CLAIMS.UPDATE`) and checks the answer. A server then applies it at once:
    /// a new account becomes usable, revoked users are disconnected.
    ///
    /// # Errors
    /// [`AuthorityError::Push`] when the server cannot be reached or refuses the JWT.
    pub async fn push(&self, url: &str, account_jwt: &str) -> Result<(), AuthorityError> {
        let account = jwt::decode(account_jwt).map(|c| c.sub).unwrap_or_default();
        let fail = |reason: String| AuthorityError::Push { account: account.clone(), url: url.to_owned(), reason };
        read_secret(&self.system_creds())?;
        let client = async_nats::ConnectOptions::with_credentials_file(self.system_creds())
            .await
            .map_err(|e| fail(format!("cannot read {}: {e}", self.system_creds().display())))?
            .name("steward-creds")
            .connection_timeout(PUSH_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let reply =
            tokio::time::timeout(PUSH_TIMEOUT, client.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.to_owned().into()))
                .await
                .map_err(|_| fail("no answer".into()))?
                .map_err(|e| fail(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| fail(format!("unreadable answer: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(fail(err["description"].as_str().unwrap_or("refused").to_owned()));
        }
        if v["data"]["code"].as_i64() != Some(200) {
            return Err(fail(format!("unexpected answer {v}")));
        }
        Ok(())
    }
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, AuthorityError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(dir).map_err(io(format!("read {}", dir.display())))?;
    let mut out: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(account: &str, kind: Kind, name: &str) -> IssueRequest {
        IssueRequest {
            account: account.into(),
            kind,
            name: name.into(),
            role: None,
            publish: vec!["a.>".into()],
            subscribe: vec![],
        }
    }

    #[test]
    fn ensure_keeps_a_live_identity_and_reissues_a_changed_or_revoked_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::open(dir.path()).unwrap();
        let first = a.ensure(&req("acme", Kind::Host, "web-01")).unwrap();
        let again = a.ensure(&req("acme", Kind::Host, "web-01")).unwrap();
        assert_eq!(again.record.public_key, first.record.public_key, "unchanged: kept");
        assert!(!again.account_changed);
        let mut wider = req("acme", Kind::Host, "web-01");
        wider.publish.push("b.>".into());
        let changed = a.ensure(&wider).unwrap();
        assert_ne!(changed.record.public_key, first.record.public_key, "permissions changed: new key");
        assert!(changed.account_changed, "the replaced key is revoked");
        a.revoke("acme", Kind::Host, "web-01").unwrap();
        let revived = a.ensure(&wider).unwrap();
        assert_ne!(revived.record.public_key, changed.record.public_key, "revoked: new key");
        assert!(revived.record.revoked.is_none());
    }

    #[test]
    fn issue_revoke_list_and_reissue() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::open(dir.path()).unwrap();
        let first = a.issue(&req("acme", Kind::Host, "web-01")).unwrap();
        assert!(first.account_changed, "a new account must be pushed");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&first.creds_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        for seed in ["operator.nk", "system/account.nk", "accounts/acme/account.nk", "system/sys.creds"] {
            let m = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(dir.path().join(seed)).unwrap().permissions(),
            );
            assert_eq!(m & 0o777, 0o600, "{seed}");
        }
        let user = jwt::decode(jwt::creds_jwt(&std::fs::read_to_string(&first.creds_file).unwrap()).unwrap()).unwrap();
        assert_eq!(Some(user.iss), a.account_public_key("acme").unwrap());
        let second = a.issue(&req("acme", Kind::Service, "hub")).unwrap();
        assert!(!second.account_changed);

        let (rec, acc_jwt) = a.revoke("acme", Kind::Host, "web-01").unwrap();
        assert!(rec.revoked.is_some());
        assert!(jwt::decode(&acc_jwt).unwrap().revocations().contains_key(&first.record.public_key));
        let list = a.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().any(|r| r.name == "web-01" && r.revoked.is_some()));

        // Re-issuing revokes the replaced key.
        let again = a.issue(&req("acme", Kind::Service, "hub")).unwrap();
        assert!(again.account_changed);
        let revs = jwt::decode(&again.account_jwt).unwrap().revocations();
        assert!(revs.contains_key(&second.record.public_key) && revs.contains_key(&first.record.public_key));

        let conf = std::fs::read_to_string(a.server_config_file()).unwrap();
        assert!(conf.contains(&a.account_public_key("acme").unwrap().unwrap()), "{conf}");
        assert!(conf.contains("type: full") && conf.contains("system_account:"), "{conf}");
    }

    #[test]
    fn bad_names_and_unknown_identities_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::open(dir.path()).unwrap();
        for (acc, name) in [("../x", "h"), ("acme", "a/b"), ("acme", ""), ("", "h")] {
            assert!(matches!(a.issue(&req(acc, Kind::Host, name)), Err(AuthorityError::InvalidName { .. })));
        }
        assert!(matches!(a.revoke("acme", Kind::Host, "nope"), Err(AuthorityError::Unknown { .. })));
    }
}
