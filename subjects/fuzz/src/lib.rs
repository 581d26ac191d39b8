//! Bodies of Steward's fuzz targets: every decoder of untrusted bytes, fed the way the service
//! that owns it feeds it, followed by the pure checks that service runs on what it decoded.
//!
//! Each `fuzz_targets/<name>.rs` calls one function of this module. Targets that cover several
//! message types read a first *selector byte*: its lowest bit picks the encoding (even:
//! MessagePack, odd: JSON — services decode both, by the request's `Content-Type`) and the rest
//! (`selector >> 1`, modulo the number of kinds) picks the type. The seed generator
//! (`src/bin/seeds.rs`) writes valid encodings of each kind with the matching selector byte.
//!
//! A decoder must never panic, hang or allocate without bound on any input; the assertions
//! below are properties the product relies on (a parsed selector re-parses to itself, a valid
//! document stays valid).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use steward_actors::signing::{JobSigner, JobVerifier, OrderBinding};
use steward_actors::spec_signing::{spec_leaf_hash, TrustedKeys};
use steward_subjects::api::{config, dead_letter, health, host, jobspec, lease, result, run};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::{diff::diff_documents, parse_document, spec::resolve_attestation, validate_document};
use steward_subjects::selector::Selector;
use steward_subjects::subject::ParsedSubject;
use steward_subjects::token::HostId;

/// The account the fuzzed worker, runtime and connector belong to.
pub const ACCOUNT: &str = "acme";
/// The host the fuzzed worker and runtime run on.
pub const HOST: &str = "web-1";
/// Seed of the signing key the fuzz targets trust (seeds are signed with it, so valid
/// signatures reach past verification).
pub const KEY_SEED: [u8; 32] = [7; 32];

/// The signer whose public key the targets trust.
#[must_use]
pub fn signer() -> JobSigner {
    JobSigner::from_seed(KEY_SEED)
}

fn verifier() -> JobVerifier {
    signer().verifier()
}

/// The encoding a selector byte asks for.
#[must_use]
pub fn encoding(selector: u8) -> Encoding {
    if selector & 1 == 0 {
        Encoding::MsgPack
    } else {
        Encoding::Json
    }
}

/// The selector byte for kind `index` in `encoding` (what the seed generator prefixes).
#[must_use]
pub fn selector_byte(index: usize, encoding: Encoding) -> u8 {
    let kind = u8::try_from(index).unwrap_or(0) << 1;
    kind | u8::from(encoding == Encoding::Json)
}

fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(s, rest)| (*s, rest))
}

fn kind(selector: u8, kinds: usize) -> usize {
    usize::from(selector >> 1) % kinds
}

fn dec<T: DeserializeOwned>(enc: Encoding, bytes: &[u8]) -> Option<T> {
    codec::decode(enc, bytes).ok()
}

fn labels() -> BTreeMap<String, String> {
    [("env", "prod"), ("role", "web"), ("zone", "eu-1")].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// Every endpoint request type, in selector order (`service.endpoint`).
pub const REQUESTS: &[&str] = &[
    "config.apply",
    "config.plan",
    "config.get",
    "config.playbook",
    "config.store_playbook",
    "config.history",
    "config.diff",
    "config.rollback",
    "health.status",
    "host.applied",
    "host.status",
    "host.list",
    "host.send",
    "host.outcome",
    "host.ensure_worker",
    "jobspec.list",
    "jobspec.explain",
    "jobspec.status",
    "lease.lease",
    "lease.renew",
    "lease.mine",
    "lease.release",
    "lease.leases",
    "result.submit",
    "run.dispatch",
    "run.status",
    "run.cancel",
    "run.list",
];

/// Target `requests`: one request of any endpoint, decoded as `rpc::decode_request` does
/// (size limit, empty payload as an empty map, MessagePack or JSON), then validated the way
/// its handler starts.
pub fn requests(data: &[u8]) {
    let Some((sel, b)) = split(data) else { return };
    let enc = encoding(sel);
    match kind(sel, REQUESTS.len()) {
        0 => {
            let _ = dec::<config::ApplyRequest>(enc, b);
        }
        1 => {
            let _ = dec::<config::PlanRequest>(enc, b);
        }
        2 => {
            let _ = dec::<config::GetRequest>(enc, b);
        }
        3 => {
            if let Some(r) = dec::<config::PlaybookGetRequest>(enc, b) {
                if let Ok(p) = config::PlaybookRef::parse(&r.reference) {
                    assert_eq!(p.to_string(), r.reference);
                }
            }
        }
        4 => {
            if let Some(r) = dec::<config::PlaybookStoreRequest>(enc, b) {
                let p = config::PlaybookRef::of(r.content.as_bytes());
                assert!(p.matches(r.content.as_bytes()));
            }
        }
        5 => {
            let _ = dec::<config::HistoryRequest>(enc, b);
        }
        6 => {
            let _ = dec::<config::DiffRequest>(enc, b);
        }
        7 => {
            let _ = dec::<config::RollbackRequest>(enc, b);
        }
        8 => {
            let _ = dec::<health::HealthRequest>(enc, b);
        }
        9 => {
            if let Some(r) = dec::<host::AppliedRevisionRequest>(enc, b) {
                let _ = HostId::parse(&r.host_id);
            }
        }
        10 => {
            if let Some(r) = dec::<host::HostStatusRequest>(enc, b) {
                let _ = HostId::parse(&r.host_id);
            }
        }
        11 => {
            if let Some(r) = dec::<host::HostListRequest>(enc, b) {
                if let Ok(s) = Selector::parse(&r.selector) {
                    let _ = s.matches(&labels());
                }
            }
        }
        12 => {
            if let Some(r) = dec::<host::SendCommandRequest>(enc, b) {
                let _ = r.validate();
                let _ = r.action.needs_worker();
            }
        }
        13 => {
            if let Some(r) = dec::<host::CommandOutcomeRequest>(enc, b) {
                let _ = HostId::parse(&r.host_id);
            }
        }
        14 => {
            if let Some(r) = dec::<host::EnsureWorkerRequest>(enc, b) {
                let _ = HostId::parse(&r.host_id);
            }
        }
        15 => {
            let _ = dec::<jobspec::JobSpecListRequest>(enc, b);
        }
        16 => {
            let _ = dec::<jobspec::ExplainRequest>(enc, b);
        }
        17 => {
            let _ = dec::<jobspec::RenderStatusRequest>(enc, b);
        }
        18 => {
            if let Some(r) = dec::<lease::LeaseRequest>(enc, b) {
                let _ = host::validate_labels(&r.labels);
            }
        }
        19 => {
            if let Some(r) = dec::<lease::RenewRequest>(enc, b) {
                let _ = host::validate_labels(&r.labels);
            }
        }
        20 => {
            let _ = dec::<lease::MineRequest>(enc, b);
        }
        21 => {
            let _ = dec::<lease::ReleaseRequest>(enc, b);
        }
        22 => {
            let _ = dec::<lease::LeasesRequest>(enc, b);
        }
        23 => {
            if let Some(r) = dec::<result::SubmitRequest>(enc, b) {
                for rec in &r.results {
                    let _ = result::stored_msg_id(&rec.host, &rec.idempotency_key());
                }
            }
        }
        24 => {
            if let Some(r) = dec::<run::RunRequest>(enc, b) {
                if r.validate().is_ok() && !r.selector.trim().is_empty() {
                    let _ = Selector::parse(&r.selector);
                }
                let _ = r.timeout();
                let _ = r.retry.attempts();
            }
        }
        25 => {
            let _ = dec::<run::RunStatusRequest>(enc, b);
        }
        26 => {
            let _ = dec::<run::RunCancelRequest>(enc, b);
        }
        _ => {
            let _ = dec::<run::RunListRequest>(enc, b);
        }
    }
}

/// Work-order kinds, in selector order.
pub const WORK_ORDERS: &[&str] = &["work_order", "stop_order", "host_command"];

fn admit(order: &run::WorkOrder, verifier: &JobVerifier) {
    let _ = order.job.validate();
    // As the worker does: the binding is built from the worker's own account and host.
    let binding = OrderBinding {
        account: ACCOUNT,
        host_id: HOST,
        run_id: &order.run_id,
        attempt: order.attempt,
        deadline_ms: order.deadline_ms,
        job: &order.job,
    };
    let _ = verifier.verify_order(&binding, &order.signature, &order.key_id);
}

/// Target `work_orders`: a signed run order as the worker receives it (`WorkOrder`, then its
/// job's validation and the signature check), a stop order, and a host command (which may carry
/// a work order to an edge).
pub fn work_orders(data: &[u8]) {
    let Some((sel, b)) = split(data) else { return };
    let enc = encoding(sel);
    let verifier = verifier();
    match kind(sel, WORK_ORDERS.len()) {
        0 => {
            if let Some(o) = dec::<run::WorkOrder>(enc, b) {
                admit(&o, &verifier);
            }
        }
        1 => {
            if let Some(o) = dec::<run::StopOrder>(enc, b) {
                let _ = o.status.is_terminal();
            }
        }
        _ => {
            if let Some(c) = dec::<host::HostCommand>(enc, b) {
                let _ = c.action.needs_worker();
                if let Some(o) = &c.work {
                    admit(o, &verifier);
                }
            }
        }
    }
}

/// Event kinds, in selector order.
pub const EVENTS: &[&str] =
    &["run_event", "host_event", "command_reply", "change_notice", "available_notice", "config_changed", "dead_letter"];

/// Target `events`: the published messages services consume — run events (dispatcher), host
/// events (enablement), command replies (connector, edge), lease change and availability
/// notices (runtime), configuration changes (renderer), and dead-letter advisories (JSON).
pub fn events(data: &[u8]) {
    let Some((sel, b)) = split(data) else { return };
    let enc = encoding(sel);
    match kind(sel, EVENTS.len()) {
        0 => {
            if let Some(e) = dec::<run::RunEvent>(enc, b) {
                let _ = e.kind.as_str();
                let _ = e.status.map(run::RunStatus::is_terminal);
            }
        }
        1 => {
            if let Some(e) = dec::<host::HostEvent>(enc, b) {
                let _ = e.kind.as_str();
            }
        }
        2 => {
            let _ = dec::<host::CommandReply>(enc, b);
        }
        3 => {
            let _ = dec::<lease::ChangeNotice>(enc, b);
        }
        4 => {
            let _ = dec::<lease::AvailableNotice>(enc, b);
        }
        5 => {
            let _ = dec::<config::ConfigChanged>(enc, b);
        }
        _ => {
            if let Ok(d) = dead_letter::DeadLetter::decode(b) {
                let _ = d.why();
            }
        }
    }
}

/// Target `heartbeats`: a heartbeat as the connector takes it: the subject (input up to the
/// first NUL byte) parsed, the payload (after it; encoding from the first byte) decoded with the
/// heartbeat size limit, then validated against the subject's host.
pub fn heartbeats(data: &[u8]) {
    let Some((sel, rest)) = split(data) else { return };
    let enc = encoding(sel);
    let (subject, payload) = match rest.iter().position(|&c| c == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b""[..], rest),
    };
    let subject = std::str::from_utf8(subject).unwrap_or("");
    let target = ParsedSubject::parse(subject).ok().and_then(|p| p.target.map(|t| t.as_str().to_owned()));
    if let Ok(hb) = codec::decode_limited::<host::Heartbeat>(enc, payload, 64 * 1024) {
        let _ = hb.validate(target.as_deref().unwrap_or(HOST));
    }
}

/// Target `result_segments`: a message of the results stream read back by
/// `result::decode_stored` — a segment when the first byte is odd (the segment header is
/// present), one result otherwise.
pub fn result_segments(data: &[u8]) {
    let Some((sel, payload)) = split(data) else { return };
    let mut headers = async_nats::HeaderMap::new();
    if sel & 1 == 1 {
        headers.insert(result::SEGMENT_HEADER, "1");
    }
    if let Ok(results) = result::decode_stored(Some(&headers), payload) {
        for r in &results {
            let _ = result::stored_msg_id(&r.host, &r.idempotency_key());
        }
    }
}

/// Target `job_specs`: a job spec as a runtime reads it from the spec store (MessagePack), its
/// leaf hash, and the signature check a runtime runs before it executes anything of it.
pub fn job_specs(data: &[u8]) {
    let Ok(spec) = codec::decode_limited::<steward_subjects::config::JobSpec>(Encoding::MsgPack, data, usize::MAX)
    else {
        return;
    };
    let _ = spec_leaf_hash(&spec);
    let trusted = TrustedKeys::from(verifier());
    let _ = trusted.verify(&spec, ACCOUNT, Some(HOST));
}

/// Target `config`: a configuration document parsed and validated (`parse_document`, what
/// `config.apply`/`config.plan` run on the text they are given); a document it accepts must
/// also pass `validate_document`, hash, diff to nothing against itself, and resolve its
/// attestations without panicking.
pub fn config(data: &[u8]) {
    let Ok(doc) = parse_document(data) else { return };
    if let Err(problems) = validate_document(&doc) {
        panic!("parse_document accepted a document validate_document refuses: {problems:?}");
    }
    let _ = doc.content_hash();
    assert!(diff_documents(&doc, &doc).is_empty(), "a document differs from itself");
    for att in &doc.attestations {
        let _ = resolve_attestation(&doc, att);
    }
}

/// Target `selector`: label-selector text parsed; a selector it accepts prints as text that
/// parses back to the same selector, and is evaluated against a label set.
pub fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(s) = Selector::parse(text) else { return };
    let printed = s.to_string();
    match Selector::parse(&printed) {
        Ok(back) => assert_eq!(back, s, "selector {text:?} printed as {printed:?} parses differently"),
        Err(e) => panic!("selector {text:?} printed as {printed:?} does not parse: {e}"),
    }
    let _ = s.matches(&labels());
    let _ = s.matches(&BTreeMap::new());
}
