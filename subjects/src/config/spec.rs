//! Rendered job specs: one per (attestation, host) or per (attestation, pool).
//!
//! A spec's id is derived from account, attestation and target only, so re-rendering never
//! invents new ids; its content hash covers everything a holder runs, so an unchanged spec is
//! never rewritten. [`SpecTemplate`] is the per-attestation part (executor with substitutions
//! resolved, timing, thresholds, provenance) that every target of the attestation shares.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::subst::{self, SubstError};
use super::{duration, Attestation, ConfigDocument, Executor, Threshold};

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str, out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    let b = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        match (d(b[2 * i]), d(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = u8::try_from(h * 16 + l).unwrap_or(0),
            _ => return false,
        }
    }
    true
}

/// What a spec is bound to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// One host: only the runtime of that host runs it.
    #[default]
    Host,
    /// A pool: any runtime whose labels match the pool's selector may run it.
    Pool,
}

impl TargetKind {
    /// `host` or `pool` (also the key token in the spec store).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Host => "host",
            TargetKind::Pool => "pool",
        }
    }
}

/// The target of a spec: a host or a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecTarget {
    /// Host or pool.
    pub kind: TargetKind,
    /// Host id or pool id.
    pub id: String,
}

impl fmt::Display for SpecTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.id)
    }
}

/// A spec id: the first 128 bits of SHA-256 over account, attestation and target, shown as 32
/// hex digits (always a valid subject token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpecId(pub [u8; 16]);

impl SpecId {
    /// The id of the spec rendering `attestation` for `target` in `account`.
    #[must_use]
    pub fn derive(account: &str, attestation: &str, kind: TargetKind, target: &str) -> Self {
        let mut h = Sha256::new();
        for part in [account, attestation, kind.as_str(), target] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        SpecId(id)
    }
}

impl fmt::Display for SpecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl FromStr for SpecId {
    type Err = HexIdError;
    fn from_str(s: &str) -> Result<Self, HexIdError> {
        let mut id = [0u8; 16];
        if unhex(s, &mut id) {
            Ok(SpecId(id))
        } else {
            Err(HexIdError::SpecId { text: s.to_owned() })
        }
    }
}

/// Why a [`SpecId`] or [`ContentHash`] text does not parse (both are 32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexIdError {
    /// Not a spec id.
    #[error("invalid spec id {text:?}: expected 32 hex digits")]
    SpecId {
        /// The text.
        text: String,
    },
    /// Not a content hash.
    #[error("invalid content hash {text:?}")]
    ContentHash {
        /// The text.
        text: String,
    },
}

/// A 128-bit content hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 16]);

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl FromStr for ContentHash {
    type Err = HexIdError;
    fn from_str(s: &str) -> Result<Self, HexIdError> {
        let mut h = [0u8; 16];
        if unhex(s, &mut h) {
            Ok(ContentHash(h))
        } else {
            Err(HexIdError::ContentHash { text: s.to_owned() })
        }
    }
}

/// Why a spec exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provenance {
    /// Configuration revision that last changed (or created) this spec.
    pub revision: u64,
    /// The attestation rendered.
    pub attestation: String,
    /// Its assessment.
    pub assessment: String,
    /// Its component.
    pub component: String,
    /// The component's host selector (why a host was chosen).
    pub component_selector: String,
    /// The controls attested.
    pub controls: Vec<String>,
    /// For pool specs: the pool.
    pub pool: Option<String>,
}

/// A rendered job spec, as stored in the spec store and leased to runtimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    /// Spec id (32 hex digits).
    pub id: String,
    /// Account.
    pub account: String,
    /// Host or pool.
    pub target: SpecTarget,
    /// Label selector of the runtimes that may run a pool spec (empty for host specs).
    pub runtime_selector: String,
    /// Executor with every substitution resolved.
    pub executor: Executor,
    /// Run interval in milliseconds.
    pub interval_ms: u64,
    /// Run timeout in milliseconds.
    pub timeout_ms: u64,
    /// Thresholds on result metrics.
    pub thresholds: Vec<Threshold>,
    /// Content hash (32 hex digits): changes exactly when what the holder runs changes.
    pub content_hash: String,
    /// Why the spec exists.
    pub provenance: Provenance,
    /// The hub's signature over this spec (absent on an unsigned spec, which runtimes refuse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SpecSignature>,
}

/// A spec's signature: its place in the Merkle tree of the render batch it was written in, the
/// sibling hashes from its leaf up to the root, and the hub's ed25519 signature over the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecSignature {
    /// Id of the signing key (first 8 bytes of the public key's SHA-256, hex).
    pub key_id: String,
    /// Number of leaves (specs) in the batch.
    pub leaves: u64,
    /// This spec's leaf index in the batch.
    pub index: u64,
    /// Sibling hashes, 32 bytes each, from the leaf level up.
    pub proof: ProofBytes,
    /// The ed25519 signature over the batch root (64 bytes).
    pub root_signature: ProofBytes,
}

/// Raw bytes, encoded as a MessagePack `bin` (not an array of numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProofBytes(pub Vec<u8>);

impl Serialize for ProofBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProofBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ProofBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ProofBytes, E> {
                Ok(ProofBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ProofBytes, E> {
                Ok(ProofBytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ProofBytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ProofBytes(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl JobSpec {
    /// The digest of what every target of this spec's attestation shares (executor, timing,
    /// thresholds, runtime selector, provenance without the revision): the same value as
    /// [`SpecTemplate::digest`] of the template it was rendered from.
    #[must_use]
    pub fn template_digest(&self) -> [u8; 32] {
        let template = SpecTemplate {
            executor: self.executor.clone(),
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            thresholds: self.thresholds.clone(),
            runtime_selector: self.runtime_selector.clone(),
            provenance: Provenance { revision: 0, ..self.provenance.clone() },
            digest: [0; 32],
        };
        template_digest(&template)
    }
}

/// SHA-256 over the MessagePack encoding (named fields) of a template's shared fields.
fn template_digest(template: &SpecTemplate) -> [u8; 32] {
    let encoded = rmp_serde::to_vec_named(template).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            id: String::new(),
            account: String::new(),
            target: SpecTarget::default(),
            runtime_selector: String::new(),
            executor: Executor::Command(super::CommandExecutor::default()),
            interval_ms: 0,
            timeout_ms: 0,
            thresholds: Vec::new(),
            content_hash: String::new(),
            provenance: Provenance::default(),
            signature: None,
        }
    }
}

/// The part of a spec shared by every target of one attestation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecTemplate {
    /// Executor with substitutions resolved.
    pub executor: Executor,
    /// Interval in milliseconds.
    pub interval_ms: u64,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Thresholds.
    pub thresholds: Vec<Threshold>,
    /// Runtime selector (pool specs).
    pub runtime_selector: String,
    /// Provenance without the revision (the revision is not content).
    pub provenance: Provenance,
    /// SHA-256 over the MessagePack encoding of the fields above.
    #[serde(skip)]
    pub digest: [u8; 32],
}

impl SpecTemplate {
    /// The content hash of this template rendered for `target`.
    #[must_use]
    pub fn content_hash(&self, kind: TargetKind, target: &str) -> ContentHash {
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(kind.as_str().as_bytes());
        h.update([0u8]);
        h.update(target.as_bytes());
        let d = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        ContentHash(out)
    }

    /// The full spec for one target.
    #[must_use]
    pub fn spec(&self, account: &str, kind: TargetKind, target: &str, revision: u64) -> JobSpec {
        let attestation = &self.provenance.attestation;
        JobSpec {
            id: SpecId::derive(account, attestation, kind, target).to_string(),
            account: account.to_owned(),
            target: SpecTarget { kind, id: target.to_owned() },
            runtime_selector: self.runtime_selector.clone(),
            executor: self.executor.clone(),
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            thresholds: self.thresholds.clone(),
            content_hash: self.content_hash(kind, target).to_string(),
            provenance: Provenance { revision, ..self.provenance.clone() },
            signature: None,
        }
    }
}

/// One substitution problem: the JSON pointer (relative to the assessment's executor) and why.
pub type SubstProblem = (String, String);

fn control_params<'a>(
    doc: &'a ConfigDocument,
    controls: &[String],
) -> Vec<(&'a str, &'a BTreeMap<String, super::ParamValue>)> {
    controls
        .iter()
        .filter_map(|id| doc.controls.iter().find(|c| &c.id == id))
        .map(|c| (c.id.as_str(), &c.parameters))
        .collect()
}

fn lookup(
    params: &[(&str, &BTreeMap<String, super::ParamValue>)],
    r: &subst::Reference<'_>,
) -> Result<String, SubstError> {
    match r.control {
        Some(id) => {
            let (_, p) = params
                .iter()
                .find(|(c, _)| *c == id)
                .ok_or_else(|| SubstError::NotAttested { control: id.to_owned() })?;
            p.get(r.name)
                .map(super::ParamValue::render)
                .ok_or_else(|| SubstError::NoParameter { control: id.to_owned(), name: r.name.to_owned() })
        }
        None => {
            let mut found: Vec<(&str, String)> =
                params.iter().filter_map(|(c, p)| p.get(r.name).map(|v| (*c, v.render()))).collect();
            found.dedup_by(|a, b| a.1 == b.1);
            match found.as_slice() {
                [] => Err(SubstError::Undefined { name: r.name.to_owned() }),
                [(_, v)] => Ok(v.clone()),
                many => Err(SubstError::Ambiguous {
                    name: r.name.to_owned(),
                    controls: many.iter().map(|(c, _)| (*c).to_owned()).collect(),
                }),
            }
        }
    }
}

fn resolve_executor(
    exec: &Executor,
    params: &[(&str, &BTreeMap<String, super::ParamValue>)],
    problems: &mut Vec<SubstProblem>,
) -> Executor {
    let mut r = |ptr: String, s: &str| match subst::resolve(s, |reference| lookup(params, reference)) {
        Ok(v) => v,
        Err(e) => {
            problems.push((ptr, e.to_string()));
            s.to_owned()
        }
    };
    match exec {
        Executor::Command(c) => Executor::Command(super::CommandExecutor {
            argv: c.argv.iter().enumerate().map(|(i, a)| r(format!("/argv/{i}"), a)).collect(),
            env: c.env.iter().map(|(k, v)| (k.clone(), r(format!("/env/{}", escape(k)), v))).collect(),
            cwd: r("/cwd".into(), &c.cwd),
            convention: c.convention,
        }),
        Executor::Http(h) => Executor::Http(super::HttpExecutor {
            url: r("/url".into(), &h.url),
            method: h.method.clone(),
            expect_status: h.expect_status,
            body_contains: r("/body_contains".into(), &h.body_contains),
            tls_verify: h.tls_verify,
        }),
        Executor::Tcp(t) => Executor::Tcp(super::TcpExecutor { host: r("/host".into(), &t.host), port: t.port }),
        Executor::Ssh(s) => Executor::Ssh(super::SshExecutor {
            host: r("/host".into(), &s.host),
            port: s.port,
            user: r("/user".into(), &s.user),
            key_path: r("/key_path".into(), &s.key_path),
            command: r("/command".into(), &s.command),
            convention: s.convention,
        }),
    }
}

/// Escapes a map key for use in a JSON pointer (RFC 6901).
#[must_use]
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The controls an attestation attests: its own list, or all of its component's controls.
#[must_use]
pub fn attested_controls(doc: &ConfigDocument, att: &Attestation) -> Vec<String> {
    if att.controls.is_empty() {
        doc.components.iter().find(|c| c.id == att.component).map(|c| c.controls.clone()).unwrap_or_default()
    } else {
        att.controls.clone()
    }
}

/// Resolves one attestation of a (structurally valid) document into its spec template.
///
/// # Errors
/// Every unresolved or malformed substitution (pointers relative to the executor), or a
/// one-element list naming a dangling reference or bad duration with an empty pointer.
pub fn resolve_attestation(doc: &ConfigDocument, att: &Attestation) -> Result<SpecTemplate, Vec<SubstProblem>> {
    let Some(assessment) = doc.assessments.iter().find(|a| a.id == att.assessment) else {
        return Err(vec![(String::new(), format!("unknown assessment {:?}", att.assessment))]);
    };
    let Some(component) = doc.components.iter().find(|c| c.id == att.component) else {
        return Err(vec![(String::new(), format!("unknown component {:?}", att.component))]);
    };
    let controls = attested_controls(doc, att);
    let params = control_params(doc, &controls);
    let mut problems = Vec::new();
    let executor = resolve_executor(&assessment.executor, &params, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let ms = |s: &str| duration::parse(s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (interval_ms, timeout_ms) = match (ms(&assessment.interval), ms(&assessment.timeout)) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => return Err(vec![(String::new(), e.to_string())]),
    };
    let runtime_selector = match &att.pool {
        Some(p) => doc.pools.iter().find(|x| &x.id == p).map(|x| x.selector.clone()).unwrap_or_default(),
        None => String::new(),
    };
    let mut template = SpecTemplate {
        executor,
        interval_ms,
        timeout_ms,
        thresholds: assessment.thresholds.clone(),
        runtime_selector,
        provenance: Provenance {
            revision: 0,
            attestation: att.id.clone(),
            assessment: assessment.id.clone(),
            component: component.id.clone(),
            component_selector: component.selector.clone(),
            controls,
            pool: att.pool.clone(),
        },
        digest: [0; 32],
    };
    template.digest = template_digest(&template);
    Ok(template)
}
