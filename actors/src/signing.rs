//! Job signing: the hub signs every job it dispatches with an ed25519 key; the edge verifies the
//! signature with the hub's public key before running anything and refuses tampered or unsigned
//! jobs.
//!
//! Key files (written by `steward keys init`): `<dir>/steward-signing.key` holds the 32-byte
//! secret seed as hex (mode 0600), `<dir>/steward-signing.pub` the 32-byte public key as hex.
//! A work order's signature covers a domain-separated SHA-256 digest of the order
//! ([`order_digest`]): account, host, run id, attempt and deadline, then the job's own digest
//! ([`job_digest`]: kind, argv, playbook content and playbook reference), every field
//! length-prefixed, so an order re-sent to another host, account, run or attempt, or with a
//! later deadline, does not verify. A playbook given by reference (`sha256:<hex>` of its bytes,
//! see `worker::job`) is pinned too: the host runs fetched bytes only if they hash to it.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};
use steward_deploy::secret::{read_secret, write_secret, SecretFileError};
use steward_subjects::api::run::Job;

/// File name of the secret key inside a key folder.
pub const SECRET_FILE: &str = "steward-signing.key";
/// File name of the public key inside a key folder.
pub const PUBLIC_FILE: &str = "steward-signing.pub";

const DOMAIN: &[u8] = b"steward-job-v1";
const ORDER_DOMAIN: &[u8] = b"steward-work-order-v1";

/// Errors of signing and verification.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read or written.
    #[error("key file {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file does not hold a key.
    #[error("key file {path} is malformed: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Refusing to overwrite existing keys.
    #[error("key file {0} exists already; remove it first or choose another folder")]
    Exists(PathBuf),
    /// No randomness available.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The job carries no signature.
    #[error("job is not signed")]
    Unsigned,
    /// The job was signed by another key.
    #[error("job is signed by key {got}, this host trusts key(s) {want}")]
    UnknownKey {
        /// Key id on the job.
        got: String,
        /// Key id trusted.
        want: String,
    },
    /// The signature does not match the order (tampered content or signature, or an order
    /// re-targeted to another host, account, run, attempt or deadline).
    #[error(
        "signature does not match the work order (tampered, or replayed for another host, run, attempt or deadline)"
    )]
    Mismatch,
}

/// The digest a job's signature covers.
#[must_use]
pub fn job_digest(job: &Job) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(DOMAIN);
    field(job.kind.as_str().as_bytes());
    field(&(job.command.len() as u64).to_be_bytes());
    for arg in &job.command {
        field(arg.as_bytes());
    }
    field(job.playbook.as_bytes());
    field(job.playbook_ref.as_bytes());
    h.finalize().into()
}

/// What a work order's signature binds: the job, and where, under which run and attempt and
/// until when it may run.
#[derive(Debug, Clone, Copy)]
pub struct OrderBinding<'a> {
    /// Account (tenant) of the run.
    pub account: &'a str,
    /// The host the order is for.
    pub host_id: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// Deadline of the attempt, Unix milliseconds.
    pub deadline_ms: u64,
    /// The job.
    pub job: &'a Job,
}

/// The digest a work order's signature covers: a fixed domain, then account, host, run id,
/// attempt, deadline and the job's digest, each length-prefixed.
///
/// ```
/// use steward_actors::signing::{order_digest, OrderBinding};
/// use steward_subjects::api::run::Job;
/// let job = Job::command(["true"]);
/// let a = OrderBinding { account: "acme", host_id: "web-1", run_id: "r1", attempt: 1, deadline_ms: 5, job: &job };
/// let b = OrderBinding { host_id: "web-2", ..a };
/// assert_ne!(order_digest(&a), order_digest(&b));
/// ```
#[must_use]
pub fn order_digest(order: &OrderBinding<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(ORDER_DOMAIN);
    field(order.account.as_bytes());
    field(order.host_id.as_bytes());
    field(order.run_id.as_bytes());
    field(&order.attempt.to_be_bytes());
    field(&order.deadline_ms.to_be_bytes());
    field(&job_digest(order.job));
    h.finalize().into()
}

/// Lowercase hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

fn key_id(public: &VerifyingKey) -> String {
    hex(&Sha256::digest(public.as_bytes())[..8])
}

/// Parses the 32 hex-encoded bytes read from `path`.
fn parse_32(path: &Path, text: &str) -> Result<[u8; 32], SigningError> {
    let bytes = unhex(text).ok_or_else(|| SigningError::BadKey { path: path.to_owned(), reason: "not hex".into() })?;
    bytes.try_into().map_err(|b: Vec<u8>| SigningError::BadKey {
        path: path.to_owned(),
        reason: format!("{} bytes, expected 32", b.len()),
    })
}

/// Reads a key file: a secret one only when no one but its owner may access it (as ssh does),
/// a public one as it is.
fn read_32(path: &Path, secret: bool) -> Result<[u8; 32], SigningError> {
    let text = if secret {
        read_secret(path).map_err(|e| secret_err(path, &e))?
    } else {
        std::fs::read_to_string(path).map_err(|e| SigningError::Io { path: path.to_owned(), reason: e.to_string() })?
    };
    parse_32(path, &text)
}

fn secret_err(path: &Path, e: &SecretFileError) -> SigningError {
    SigningError::Io { path: path.to_owned(), reason: e.to_string() }
}

/// The hub's signing key.
#[derive(Clone)]
pub struct JobSigner {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for JobSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSigner").field("key_id", &self.id).finish_non_exhaustive()
    }
}

/// Paths of a freshly written key pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyFiles {
    /// Secret key file.
    pub secret: PathBuf,
    /// Public key file.
    pub public: PathBuf,
    /// Key id (first 8 bytes of the public key's SHA-256, hex).
    pub key_id: String,
}

impl JobSigner {
    /// A new random key.
    ///
    /// # Errors
    /// [`SigningError::Random`] when the OS has no randomness to give.
    pub fn generate() -> Result<Self, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key with this secret seed.
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        JobSigner { key, id }
    }

    /// Generates a key pair and writes it into `dir` (secret file mode 0600); refuses to
    /// overwrite existing files.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = steward_actors::signing::JobSigner::init_dir(dir.path()).unwrap();
    /// let signer = steward_actors::signing::JobSigner::load(&files.secret).unwrap();
    /// let verifier = steward_actors::signing::JobVerifier::load(&files.public).unwrap();
    /// assert_eq!(signer.key_id(), verifier.key_id());
    /// ```
    ///
    /// # Errors
    /// [`SigningError::Exists`] or [`SigningError::Io`].
    pub fn init_dir(dir: &Path) -> Result<KeyFiles, SigningError> {
        let secret = dir.join(SECRET_FILE);
        let public = dir.join(PUBLIC_FILE);
        for p in [&secret, &public] {
            if p.exists() {
                return Err(SigningError::Exists(p.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| SigningError::Io { path: dir.to_owned(), reason: e.to_string() })?;
        let signer = Self::generate()?;
        write_secret(&secret, &(hex(&signer.key.to_bytes()) + "\n")).map_err(|e| secret_err(&secret, &e))?;
        std::fs::write(&public, hex(signer.key.verifying_key().as_bytes()) + "\n")
            .map_err(|e| SigningError::Io { path: public.clone(), reason: e.to_string() })?;
        Ok(KeyFiles { secret, public, key_id: signer.id })
    }

    /// Loads a secret key file; refuses one that group or others may access.
    ///
    /// # Errors
    /// [`SigningError::Io`] naming the file when it is missing or too open (`chmod 600`), or
    /// [`SigningError::BadKey`].
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        Ok(Self::from_seed(read_32(path, true)?))
    }

    /// Id of the key.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The matching verifier.
    #[must_use]
    pub fn verifier(&self) -> JobVerifier {
        JobVerifier { key: self.key.verifying_key(), id: self.id.clone() }
    }

    /// Signs a 32-byte digest (a spec batch root, see [`crate::spec_signing`]).
    pub(crate) fn sign_digest(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.key.sign(digest).to_bytes()
    }

    /// Signs a work order (see [`order_digest`]): returns the hex signature.
    #[must_use]
    pub fn sign_order(&self, order: &OrderBinding<'_>) -> String {
        hex(&self.key.sign(&order_digest(order)).to_bytes())
    }
}

/// The public key an edge trusts.
#[derive(Debug, Clone)]
pub struct JobVerifier {
    key: VerifyingKey,
    id: String,
}

impl JobVerifier {
    /// Loads a public key file.
    ///
    /// # Errors
    /// [`SigningError::Io`] or [`SigningError::BadKey`].
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let bytes = read_32(path, false)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| SigningError::BadKey { path: path.to_owned(), reason: e.to_string() })?;
        let id = key_id(&key);
        Ok(JobVerifier { key, id })
    }

    /// Id of the key.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Whether `signature` by this key is valid over `digest`.
    pub(crate) fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else { return false };
        self.key.verify(digest, &Signature::from_bytes(&bytes)).is_ok()
    }

    /// The verifier of a public key given as 64 hex digits (`source` names where it came from,
    /// for errors).
    ///
    /// # Errors
    /// [`SigningError::BadKey`].
    pub fn from_hex(source: &Path, text: &str) -> Result<Self, SigningError> {
        let bytes = parse_32(source, text)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| SigningError::BadKey { path: source.to_owned(), reason: e.to_string() })?;
        let id = key_id(&key);
        Ok(JobVerifier { key, id })
    }

    /// Checks `signature` (hex, by key `key_id`) over a work order (see [`order_digest`]); the
    /// caller builds `order` from what it knows itself (its own account and host), not only
    /// from what the order says.
    ///
    /// # Errors
    /// [`SigningError::Unsigned`], [`SigningError::UnknownKey`] or [`SigningError::Mismatch`].
    pub fn verify_order(&self, order: &OrderBinding<'_>, signature: &str, key_id: &str) -> Result<(), SigningError> {
        if signature.is_empty() {
            return Err(SigningError::Unsigned);
        }
        if !key_id.is_empty() && key_id != self.id {
            return Err(SigningError::UnknownKey { got: key_id.to_owned(), want: self.id.clone() });
        }
        let bytes: [u8; 64] = unhex(signature).and_then(|b| b.try_into().ok()).ok_or(SigningError::Mismatch)?;
        let sig = Signature::from_bytes(&bytes);
        self.key.verify(&order_digest(order), &sig).map_err(|_| SigningError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn binding(job: &Job) -> OrderBinding<'_> {
        OrderBinding { account: "acme", host_id: "web-1", run_id: "r1", attempt: 1, deadline_ms: 1_000, job }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let signer = JobSigner::from_seed([7; 32]);
        let verifier = signer.verifier();
        let job = Job::playbook("- hosts: all\n  tasks: []\n");
        let sig = signer.sign_order(&binding(&job));
        verifier.verify_order(&binding(&job), &sig, signer.key_id()).unwrap();
        let mut tampered = job.clone();
        tampered.playbook.push_str("# extra\n");
        assert!(matches!(
            verifier.verify_order(&binding(&tampered), &sig, signer.key_id()),
            Err(SigningError::Mismatch)
        ));
        assert!(matches!(verifier.verify_order(&binding(&job), "", ""), Err(SigningError::Unsigned)));
        let other = JobSigner::from_seed([8; 32]);
        let foreign = other.sign_order(&binding(&job));
        assert!(matches!(
            verifier.verify_order(&binding(&job), &foreign, other.key_id()),
            Err(SigningError::UnknownKey { .. })
        ));
        assert!(matches!(verifier.verify_order(&binding(&job), &foreign, ""), Err(SigningError::Mismatch)));
        assert!(matches!(verifier.verify_order(&binding(&job), "zz", ""), Err(SigningError::Mismatch)));
        // argv boundaries are part of the digest
        assert_ne!(job_digest(&Job::command(["a b"])), job_digest(&Job::command(["a", "b"])));
    }

    #[test]
    fn an_order_replayed_elsewhere_does_not_verify() {
        let signer = JobSigner::from_seed([7; 32]);
        let verifier = signer.verifier();
        let job = Job::command(["true"]);
        let signed = binding(&job);
        let sig = signer.sign_order(&signed);
        verifier.verify_order(&signed, &sig, signer.key_id()).unwrap();
        let replays = [
            OrderBinding { account: "other", ..signed },
            OrderBinding { host_id: "web-2", ..signed },
            OrderBinding { run_id: "r2", ..signed },
            OrderBinding { attempt: 2, ..signed },
            OrderBinding { deadline_ms: 1_001, ..signed },
        ];
        for replay in replays {
            assert!(
                matches!(verifier.verify_order(&replay, &sig, signer.key_id()), Err(SigningError::Mismatch)),
                "{replay:?} verified"
            );
        }
        // Field boundaries are part of the digest: moving bytes from one field to the next
        // gives another digest.
        let moved = OrderBinding { account: "acmew", host_id: "eb-1", ..signed };
        assert_ne!(order_digest(&signed), order_digest(&moved));
        // The order digest is not the job digest: nothing signed over a job alone verifies as
        // an order.
        assert_ne!(order_digest(&signed), job_digest(&job));
    }

    #[test]
    fn a_playbook_reference_is_signed() {
        use steward_subjects::api::config::PlaybookRef;
        let signer = JobSigner::from_seed([7; 32]);
        let verifier = signer.verifier();
        let job = Job::playbook_by_ref(PlaybookRef::of(b"- hosts: all\n").to_string());
        let sig = signer.sign_order(&binding(&job));
        verifier.verify_order(&binding(&job), &sig, signer.key_id()).unwrap();
        // Another reference (other bytes) under the same signature is refused.
        let swapped = Job::playbook_by_ref(PlaybookRef::of(b"- hosts: all\n# evil\n").to_string());
        assert!(matches!(
            verifier.verify_order(&binding(&swapped), &sig, signer.key_id()),
            Err(SigningError::Mismatch)
        ));
        // Content and reference are distinct fields of the digest.
        assert_ne!(job_digest(&Job::playbook("x")), job_digest(&Job::playbook_by_ref("x")));
    }

    #[test]
    fn key_files_round_trip_and_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let files = JobSigner::init_dir(dir.path()).unwrap();
        assert!(matches!(JobSigner::init_dir(dir.path()), Err(SigningError::Exists(_))));
        let s = JobSigner::load(&files.secret).unwrap();
        let v = JobVerifier::load(&files.public).unwrap();
        let job = Job::command(["true"]);
        v.verify_order(&binding(&job), &s.sign_order(&binding(&job)), s.key_id()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&files.secret).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
