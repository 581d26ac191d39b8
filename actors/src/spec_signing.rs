//! Signed job specs: the renderer signs each batch of specs it writes with one ed25519 signature
//! over the root of a SHA-256 Merkle tree; every spec carries its inclusion proof, so a runtime
//! verifies one spec alone, before it runs it, against the keys it trusts.
//!
//! A leaf ([`leaf_hash`]) covers, domain-separated (`steward-job-spec-v1`, leaf prefix 0) and
//! length-prefixed: account, target kind and id, spec id, configuration revision, content hash
//! and the template digest ([`JobSpec::template_digest`]: executor, interval, timeout,
//! thresholds, runtime selector, provenance). A node is SHA-256 over prefix 1 and its two
//! children; on a level of odd length the last node moves up unchanged. The signature covers
//! `steward-job-spec-root-v1`, the number of leaves and the root. A spec whose content, target,
//! account, revision or place in the batch changed after signing does not verify.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use steward_subjects::config::spec::ContentHash;
#[cfg(test)]
use steward_subjects::config::Provenance;
use steward_subjects::config::{JobSpec, ProofBytes, SpecId, SpecSignature, TargetKind};

use crate::signing::{JobSigner, JobVerifier, OrderBinding, SigningError};

const LEAF_DOMAIN: &[u8] = b"steward-job-spec-v1";
const ROOT_DOMAIN: &[u8] = b"steward-job-spec-root-v1";
/// Below this many hashes a level is hashed on the calling thread.
const PARALLEL_MIN: usize = 32_768;

/// What a spec's leaf binds.
#[derive(Debug, Clone, Copy)]
pub struct SpecLeaf<'a> {
    /// Account.
    pub account: &'a str,
    /// Host or pool.
    pub kind: TargetKind,
    /// Host or pool id.
    pub target: &'a str,
    /// Spec id.
    pub id: SpecId,
    /// Configuration revision written into the spec.
    pub revision: u64,
    /// Content hash.
    pub content_hash: ContentHash,
    /// [`JobSpec::template_digest`].
    pub template_digest: [u8; 32],
}

/// The leaf hash of one spec.
#[must_use]
pub fn leaf_hash(l: &SpecLeaf<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    for field in [LEAF_DOMAIN, l.account.as_bytes(), l.kind.as_str().as_bytes(), l.target.as_bytes()] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(l.id.0);
    h.update(l.revision.to_be_bytes());
    h.update(l.content_hash.0);
    h.update(l.template_digest);
    h.finalize().into()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn root_message(leaves: u64, root: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((ROOT_DOMAIN.len() as u64).to_be_bytes());
    h.update(ROOT_DOMAIN);
    h.update(leaves.to_be_bytes());
    h.update(root);
    h.finalize().into()
}

/// Maps `f` over `items` on up to `threads` scoped threads (in order).
fn par_map<T: Sync, U: Send>(items: &[T], threads: usize, f: impl Fn(&[T]) -> Vec<U> + Sync) -> Vec<U> {
    if threads < 2 || items.len() < PARALLEL_MIN {
        return f(items);
    }
    // Even chunk sizes keep node pairs inside one chunk.
    let per = items.len().div_ceil(threads).next_multiple_of(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(per).map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from).min(8)
}

/// A Merkle tree over one batch of leaves.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<[u8; 32]>>,
}

impl MerkleTree {
    /// The tree over `leaves` (at least one).
    #[must_use]
    pub fn new(leaves: Vec<[u8; 32]>) -> Self {
        let threads = threads();
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map_or(&[][..], Vec::as_slice);
            let up = par_map(below, threads, |c| {
                c.chunks(2).map(|p| if let [a, b] = p { node_hash(a, b) } else { p[0] }).collect()
            });
            levels.push(up);
        }
        MerkleTree { levels }
    }

    /// Number of leaves.
    #[must_use]
    pub fn leaves(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// The root (all zeroes for an empty tree).
    #[must_use]
    pub fn root(&self) -> [u8; 32] {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or([0; 32])
    }

    /// The sibling hashes of leaf `index`, leaf level first (a promoted node has none).
    #[must_use]
    pub fn proof(&self, mut index: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 * self.levels.len());
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(index ^ 1) {
                out.extend_from_slice(sibling);
            }
            index /= 2;
        }
        out
    }
}

/// The root an inclusion proof leads to, or `None` when the proof has the wrong length for
/// `index` in a batch of `leaves`.
#[must_use]
pub fn proof_root(leaf: [u8; 32], mut index: u64, mut leaves: u64, proof: &[u8]) -> Option<[u8; 32]> {
    if index >= leaves {
        return None;
    }
    let mut node = leaf;
    let mut siblings = proof.chunks_exact(32);
    if proof.len() % 32 != 0 {
        return None;
    }
    while leaves > 1 {
        let sibling_exists = (index ^ 1) < leaves;
        if sibling_exists {
            let s: [u8; 32] = siblings.next()?.try_into().ok()?;
            node = if index % 2 == 0 { node_hash(&node, &s) } else { node_hash(&s, &node) };
        }
        index /= 2;
        leaves = leaves.div_ceil(2);
    }
    siblings.next().is_none().then_some(node)
}

/// One signed batch: the tree and the root signature, from which each spec's
/// [`SpecSignature`] is cut.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    tree: MerkleTree,
    key_id: String,
    root_signature: Vec<u8>,
}

impl SignedBatch {
    /// Hashes the leaves (in parallel), builds the tree and signs its root with `signer`.
    #[must_use]
    pub fn sign<T: Sync>(signer: &JobSigner, items: &[T], leaf: impl Fn(&T) -> [u8; 32] + Sync) -> Self {
        let leaves = par_map(items, threads(), |c| c.iter().map(&leaf).collect());
        let tree = MerkleTree::new(leaves);
        let root_signature = signer.sign_digest(&root_message(tree.leaves() as u64, &tree.root())).to_vec();
        SignedBatch { tree, key_id: signer.key_id().to_owned(), root_signature }
    }

    /// Id of the key that signed the batch.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signature of leaf `index`.
    #[must_use]
    pub fn signature(&self, index: usize) -> SpecSignature {
        SpecSignature {
            key_id: self.key_id.clone(),
            leaves: self.tree.leaves() as u64,
            index: index as u64,
            proof: ProofBytes(self.tree.proof(index)),
            root_signature: ProofBytes(self.root_signature.clone()),
        }
    }
}

/// Why a runtime refuses to run a spec; the text (after `refused: `) is what its reported
/// result says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecRefusal {
    /// The runtime trusts no key at all.
    #[error("refused: this runtime has no trusted signing key configured")]
    NoTrustedKey,
    /// The spec carries no signature.
    #[error("refused: the job spec is not signed")]
    Unsigned,
    /// The spec names a key this runtime does not trust (unknown or retired).
    #[error("refused: the job spec is signed by key {key_id}, which this runtime does not trust (trusted: {trusted})")]
    UnknownKey {
        /// Key id on the spec.
        key_id: String,
        /// Key ids trusted, comma-separated.
        trusted: String,
    },
    /// The spec does not match its signature.
    #[error("refused: the job spec does not match its signature (tampered after signing)")]
    Mismatch,
    /// The spec belongs to another account.
    #[error("refused: the job spec is for account {named:?}, this runtime serves {account:?}")]
    OtherAccount {
        /// Account on the spec.
        named: String,
        /// This runtime's account.
        account: String,
    },
    /// A host spec for another host (or reaching a runtime that is not on any host).
    #[error("refused: the job spec is for host {named:?}, this runtime runs on {host:?}")]
    OtherHost {
        /// Host on the spec.
        named: String,
        /// This runtime's host (empty when standalone).
        host: String,
    },
}

impl From<JobVerifier> for TrustedKeys {
    fn from(key: JobVerifier) -> Self {
        TrustedKeys::new([key])
    }
}

/// Batch roots (with their key id) whose signature was verified already.
#[derive(Debug, Clone, Default)]
pub struct VerifiedRoots(std::collections::HashSet<(String, [u8; 32])>);

impl VerifiedRoots {
    /// Most roots remembered (the set is emptied when full).
    const MAX: usize = 4096;
}

/// The public keys a runtime accepts specs from, by key id (several during a key rotation).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, JobVerifier>,
}

impl TrustedKeys {
    /// These keys.
    #[must_use]
    pub fn new(keys: impl IntoIterator<Item = JobVerifier>) -> Self {
        TrustedKeys { keys: keys.into_iter().map(|k| (k.key_id().to_owned(), k)).collect() }
    }

    /// Loads every key of `paths`: each file holds one or more public keys, 64 hex digits per
    /// line (blank lines and `#` comments are skipped), as `steward keys init` writes them.
    ///
    /// # Errors
    /// [`SigningError::Io`] or [`SigningError::BadKey`] naming the file, also for a file with
    /// no key.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SigningError> {
        let mut keys = Vec::new();
        for path in paths {
            keys.extend(load_file(path)?);
        }
        Ok(Self::new(keys))
    }

    /// Checks a work order's `signature` with the trusted key named by `key_id` (with an empty
    /// `key_id`, with any trusted key); see [`JobVerifier::verify_order`].
    ///
    /// # Errors
    /// [`SigningError::Unsigned`], [`SigningError::UnknownKey`] or [`SigningError::Mismatch`].
    pub fn verify_order(&self, order: &OrderBinding<'_>, signature: &str, key_id: &str) -> Result<(), SigningError> {
        if signature.is_empty() {
            return Err(SigningError::Unsigned);
        }
        if key_id.is_empty() {
            let any = self.keys.values().any(|k| k.verify_order(order, signature, "").is_ok());
            return if any { Ok(()) } else { Err(SigningError::Mismatch) };
        }
        match self.keys.get(key_id) {
            Some(k) => k.verify_order(order, signature, key_id),
            None => Err(SigningError::UnknownKey { got: key_id.to_owned(), want: self.key_ids().join(", ") }),
        }
    }

    /// Ids of the keys, sorted.
    #[must_use]
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// Whether no key is trusted (every spec is refused).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `spec` is signed by a trusted key, unchanged since, and meant for this
    /// runtime (`account`; for host specs, `host`).
    ///
    /// # Errors
    /// The [`SpecRefusal`].
    pub fn verify(&self, spec: &JobSpec, account: &str, host: Option<&str>) -> Result<(), SpecRefusal> {
        self.verify_cached(spec, account, host, &mut VerifiedRoots::default())
    }

    /// [`Self::verify`], skipping the ed25519 check for a batch root already verified into
    /// `roots` (specs of one batch share their root).
    ///
    /// # Errors
    /// The [`SpecRefusal`].
    pub fn verify_cached(
        &self,
        spec: &JobSpec,
        account: &str,
        host: Option<&str>,
        roots: &mut VerifiedRoots,
    ) -> Result<(), SpecRefusal> {
        if self.keys.is_empty() {
            return Err(SpecRefusal::NoTrustedKey);
        }
        let sig = spec.signature.as_ref().ok_or(SpecRefusal::Unsigned)?;
        let key = self.keys.get(&sig.key_id).ok_or_else(|| SpecRefusal::UnknownKey {
            key_id: sig.key_id.clone(),
            trusted: self.key_ids().join(", "),
        })?;
        let leaf = spec_leaf_hash(spec).ok_or(SpecRefusal::Mismatch)?;
        let root = proof_root(leaf, sig.index, sig.leaves, &sig.proof.0).ok_or(SpecRefusal::Mismatch)?;
        let message = root_message(sig.leaves, &root);
        let seen = (sig.key_id.clone(), message);
        if !roots.0.contains(&seen) {
            if !key.verify_digest(&message, &sig.root_signature.0) {
                return Err(SpecRefusal::Mismatch);
            }
            if roots.0.len() >= VerifiedRoots::MAX {
                roots.0.clear();
            }
            roots.0.insert(seen);
        }
        if spec.account != account {
            return Err(SpecRefusal::OtherAccount { named: spec.account.clone(), account: account.to_owned() });
        }
        if spec.target.kind == TargetKind::Host && host != Some(spec.target.id.as_str()) {
            return Err(SpecRefusal::OtherHost { named: spec.target.id.clone(), host: host.unwrap_or("").to_owned() });
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> Result<Vec<JobVerifier>, SigningError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SigningError::Io { path: path.to_owned(), reason: e.to_string() })?;
    let keys: Vec<JobVerifier> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| JobVerifier::from_hex(path, l))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(SigningError::BadKey { path: path.to_owned(), reason: "no public key in the file".into() });
    }
    Ok(keys)
}

/// The leaf of a spec as written (what [`TrustedKeys::verify`] recomputes).
#[must_use]
pub fn spec_leaf_hash(spec: &JobSpec) -> Option<[u8; 32]> {
    Some(leaf_hash(&SpecLeaf {
        account: &spec.account,
        kind: spec.target.kind,
        target: &spec.target.id,
        id: spec.id.parse().ok()?,
        revision: spec.provenance.revision,
        content_hash: spec.content_hash.parse().ok()?,
        template_digest: spec.template_digest(),
    }))
}

/// Signs `specs` as one batch (tests and tools that write specs themselves).
pub fn sign_specs(signer: &JobSigner, specs: &mut [JobSpec]) {
    let leaves: Vec<[u8; 32]> = specs.iter().map(|s| spec_leaf_hash(s).unwrap_or([0; 32])).collect();
    let batch = SignedBatch::sign(signer, &leaves, |l| *l);
    for (i, s) in specs.iter_mut().enumerate() {
        s.signature = Some(batch.signature(i));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use steward_subjects::config::{CommandExecutor, Executor, SpecTarget};

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| Sha256::digest(i.to_be_bytes()).into()).collect()
    }

    #[test]
    fn every_leaf_of_odd_and_even_batches_verifies_and_any_flipped_byte_fails() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 100] {
            let ls = leaves(n);
            let tree = MerkleTree::new(ls.clone());
            for (i, leaf) in ls.iter().enumerate() {
                let proof = tree.proof(i);
                let (idx, total) = (i as u64, n as u64);
                assert_eq!(proof_root(*leaf, idx, total, &proof), Some(tree.root()), "n={n} i={i}");
                for byte in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[byte] ^= 1;
                    assert_ne!(proof_root(*leaf, idx, total, &bad), Some(tree.root()), "n={n} i={i} byte={byte}");
                }
                for byte in 0..32 {
                    let mut bad = *leaf;
                    bad[byte] ^= 0x80;
                    assert_ne!(proof_root(bad, idx, total, &proof), Some(tree.root()));
                }
                // Another index, a wrong batch size or a cut or padded proof leads elsewhere.
                if n > 1 {
                    assert_ne!(proof_root(*leaf, (idx + 1) % total, total, &proof), Some(tree.root()));
                }
                // Another batch size may walk the same path, but the signed message covers it.
                let signed = Some(root_message(total, &tree.root()));
                assert_ne!(proof_root(*leaf, idx, total + 1, &proof).map(|r| root_message(total + 1, &r)), signed);
                assert_eq!(proof_root(*leaf, total, total, &proof), None);
                let mut padded = proof.clone();
                padded.extend_from_slice(&[0; 32]);
                assert_eq!(proof_root(*leaf, idx, total, &padded), None);
            }
        }
    }

    #[test]
    fn a_leaf_is_not_a_node() {
        // A node's bytes presented as a leaf do not give the same hash (prefixes 0 and 1).
        let ls = leaves(2);
        let tree = MerkleTree::new(ls.clone());
        assert_ne!(node_hash(&ls[0], &ls[1]), leaf_hash(&leaf_of(&spec("web-1", "true"))));
        assert_eq!(tree.root(), node_hash(&ls[0], &ls[1]));
    }

    fn spec(host: &str, cmd: &str) -> JobSpec {
        let id = SpecId::derive("acme", "att", TargetKind::Host, host);
        JobSpec {
            id: id.to_string(),
            account: "acme".into(),
            target: SpecTarget { kind: TargetKind::Host, id: host.into() },
            executor: Executor::Command(CommandExecutor { argv: vec![cmd.into()], ..Default::default() }),
            interval_ms: 1000,
            content_hash: "00112233445566778899aabbccddeeff".into(),
            ..JobSpec::default()
        }
    }

    fn leaf_of(s: &JobSpec) -> SpecLeaf<'_> {
        SpecLeaf {
            account: &s.account,
            kind: s.target.kind,
            target: &s.target.id,
            id: s.id.parse().unwrap(),
            revision: s.provenance.revision,
            content_hash: s.content_hash.parse().unwrap(),
            template_digest: s.template_digest(),
        }
    }

    #[test]
    fn signed_specs_verify_and_every_covered_field_is_bound() {
        let signer = JobSigner::from_seed([3; 32]);
        let trusted = TrustedKeys::new([signer.verifier()]);
        let mut specs: Vec<JobSpec> = ["web-1", "web-2", "web-3"].iter().map(|h| spec(h, "true")).collect();
        sign_specs(&signer, &mut specs);
        for s in &specs {
            trusted.verify(s, "acme", Some(&s.target.id)).unwrap();
        }
        let s = &specs[0];
        let tampered: Vec<(&str, JobSpec)> = vec![
            (
                "command",
                JobSpec {
                    executor: Executor::Command(CommandExecutor { argv: vec!["rm".into()], ..Default::default() }),
                    ..s.clone()
                },
            ),
            ("interval", JobSpec { interval_ms: 1, ..s.clone() }),
            ("timeout", JobSpec { timeout_ms: 99, ..s.clone() }),
            ("revision", JobSpec { provenance: Provenance { revision: 9, ..s.provenance.clone() }, ..s.clone() }),
            ("content hash", JobSpec { content_hash: "ffffffffffffffffffffffffffffffff".into(), ..s.clone() }),
            ("id", JobSpec { id: specs[1].id.clone(), ..s.clone() }),
            ("runtime selector", JobSpec { runtime_selector: "a=b".into(), ..s.clone() }),
        ];
        for (what, t) in tampered {
            assert_eq!(trusted.verify(&t, "acme", Some("web-1")), Err(SpecRefusal::Mismatch), "{what}");
        }
        // Re-targeted: another host's (valid) spec, a rewritten target, another account.
        assert!(matches!(trusted.verify(&specs[1], "acme", Some("web-1")), Err(SpecRefusal::OtherHost { .. })));
        let moved = JobSpec { target: SpecTarget { kind: TargetKind::Host, id: "web-1".into() }, ..specs[1].clone() };
        assert_eq!(trusted.verify(&moved, "acme", Some("web-1")), Err(SpecRefusal::Mismatch));
        let acct = JobSpec { account: "other".into(), ..s.clone() };
        assert_eq!(trusted.verify(&acct, "other", Some("web-1")), Err(SpecRefusal::Mismatch));
        assert!(matches!(trusted.verify(s, "other", Some("web-1")), Err(SpecRefusal::OtherAccount { .. })));
        // Unsigned, unknown key, no key at all.
        assert_eq!(
            trusted.verify(&JobSpec { signature: None, ..s.clone() }, "acme", Some("web-1")),
            Err(SpecRefusal::Unsigned)
        );
        let other = JobSigner::from_seed([4; 32]);
        let mut foreign = vec![s.clone()];
        sign_specs(&other, &mut foreign);
        assert!(matches!(trusted.verify(&foreign[0], "acme", Some("web-1")), Err(SpecRefusal::UnknownKey { .. })));
        // A signature of another key under the trusted key's id does not verify.
        let mut forged = foreign[0].clone();
        if let Some(sig) = forged.signature.as_mut() {
            sig.key_id = signer.key_id().to_owned();
        }
        assert_eq!(trusted.verify(&forged, "acme", Some("web-1")), Err(SpecRefusal::Mismatch));
        assert_eq!(TrustedKeys::default().verify(s, "acme", Some("web-1")), Err(SpecRefusal::NoTrustedKey));
        // Rotation: both keys trusted, either verifies.
        let both = TrustedKeys::new([signer.verifier(), other.verifier()]);
        both.verify(s, "acme", Some("web-1")).unwrap();
        both.verify(&foreign[0], "acme", Some("web-1")).unwrap();
    }

    #[test]
    fn signature_survives_the_wire() {
        let signer = JobSigner::from_seed([3; 32]);
        let mut specs = vec![spec("web-1", "true"), spec("web-2", "true")];
        sign_specs(&signer, &mut specs);
        let bytes = rmp_serde::to_vec_named(&specs[0]).unwrap();
        let back: JobSpec = rmp_serde::from_slice(&bytes).unwrap();
        TrustedKeys::new([signer.verifier()]).verify(&back, "acme", Some("web-1")).unwrap();
    }

    #[test]
    fn key_files_with_several_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = JobSigner::init_dir(&dir.path().join("a")).unwrap();
        let b = JobSigner::init_dir(&dir.path().join("b")).unwrap();
        let both = dir.path().join("trusted.pub");
        let text = format!(
            "# old\n{}\n{}",
            std::fs::read_to_string(&a.public).unwrap(),
            std::fs::read_to_string(&b.public).unwrap()
        );
        std::fs::write(&both, text).unwrap();
        let keys = TrustedKeys::load(std::slice::from_ref(&both)).unwrap();
        assert_eq!(keys.key_ids().len(), 2);
        let keys = TrustedKeys::load(&[a.public.clone(), b.public.clone()]).unwrap();
        assert_eq!(keys.key_ids().len(), 2);
        std::fs::write(&both, "# nothing\n").unwrap();
        assert!(matches!(TrustedKeys::load(std::slice::from_ref(&both)), Err(SigningError::BadKey { .. })));
        std::fs::write(&both, "zz\n").unwrap();
        assert!(matches!(TrustedKeys::load(&[both]), Err(SigningError::BadKey { .. })));
    }
}
