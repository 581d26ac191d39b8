//! `render` benchmark: 1,000 attestations × 1,000 hosts = 1,000,000 job specs.
//!
//! Measures (median of several runs, wall clock) the full render plus diff against an empty
//! store, and the incremental render plus diff after one control parameter changes that 10
//! attestations (1% of the specs) depend on, checks that the diff holds exactly those 10,000
//! changed specs and nothing else, times materialising and encoding just those specs (what the
//! renderer would write), and reports the process's peak resident memory. It also times the
//! full render plus diff plus signing every spec (one Merkle tree and one ed25519 signature per
//! batch, and each spec's inclusion proof cut from the tree) in the same run as the unsigned
//! render, so the two medians compare, and verifies a sample of the signatures.
//!
//! Run: `cargo bench -p steward-actors --bench render` (release profile). Plain `cargo test`
//! runs it once at a small scale (`--test` mode).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly on purpose

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use steward_actors::renderer::render::{diff, render, sign_changes, Change, HostLabels};
use steward_actors::signing::JobSigner;
use steward_actors::spec_signing::TrustedKeys;
use steward_subjects::codec::{self, Encoding};
use steward_subjects::config::parse_document;

fn document(attestations: usize, limit_of_control_7: u32) -> String {
    let controls: Vec<String> = (0..100)
        .map(|i| {
            let v = if i == 7 { limit_of_control_7 } else { i };
            format!(r#"{{"id": "c{i}", "parameters": {{"limit": {v}, "path": "/etc/app{i}.conf"}}}}"#)
        })
        .collect();
    let ids: Vec<String> = (0..100).map(|i| format!(r#""c{i}""#)).collect();
    let assessments: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"id": "a{i}", "executor": {{"kind": "command", "argv": ["check-app", "--config", "{{{{control.path}}}}", "--max", "{{{{control.limit}}}}"], "env": {{"MODE": "strict"}}}}, "interval": "60s", "timeout": "10s", "thresholds": [{{"metric": "errors", "warn": 1, "fail": 5}}]}}"#
            )
        })
        .collect();
    let atts: Vec<String> = (0..attestations)
        .map(|i| {
            format!(
                r#"{{"id": "t{i}", "assessment": "a{}", "component": "fleet", "controls": ["c{}"]}}"#,
                i % 100,
                i % 100
            )
        })
        .collect();
    format!(
        r#"{{"controls": [{}], "components": [{{"id": "fleet", "selector": "fleet=yes,zone in (z0,z1,z2,z3)", "controls": [{}]}}], "assessments": [{}], "attestations": [{}]}}"#,
        controls.join(","),
        ids.join(","),
        assessments.join(","),
        atts.join(",")
    )
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let (n_att, n_hosts, runs) = if quick { (100, 100, 1) } else { (1000, 1000, 5) };
    let hosts: Vec<HostLabels> = (0..n_hosts)
        .map(|i| HostLabels {
            id: format!("host-{i:05}"),
            labels: BTreeMap::from([
                ("fleet".to_owned(), "yes".to_owned()),
                ("zone".to_owned(), format!("z{}", i % 4)),
            ]),
        })
        .collect();
    let before = parse_document(document(n_att, 7).as_bytes()).unwrap();
    let after = parse_document(document(n_att, 70).as_bytes()).unwrap();
    let expected = n_att * n_hosts;

    let empty = Default::default();
    let mut full = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        drop(last.take()); // drop the previous result first so peak memory reflects one render
        let t = Instant::now();
        let r = render("acme", &before, &hosts);
        let d = diff(&r, &empty);
        full.push(t.elapsed());
        assert_eq!(r.specs.len(), expected);
        assert_eq!(d.changes.len(), expected);
        last = Some(r);
    }
    let index = last.take().unwrap().to_index();

    // Render + diff + sign (tree, root signature, every spec's proof), against an empty store.
    let signer = JobSigner::from_seed([9; 32]);
    let trusted = TrustedKeys::new([signer.verifier()]);
    let mut signed = Vec::new();
    let mut proof_bytes = 0usize;
    let mut spec_bytes = (0usize, 0usize);
    for _ in 0..runs {
        let t = Instant::now();
        let r = render("acme", &before, &hosts);
        let d = diff(&r, &empty);
        let batch = sign_changes(&signer, "acme", 1, &r, &d.changes).unwrap();
        let mut cut = 0usize;
        for k in 0..d.changes.len() {
            cut += std::hint::black_box(batch.signature(k)).proof.0.len();
        }
        signed.push(t.elapsed());
        proof_bytes = cut / d.changes.len();
        // Spot-check: a sample of specs verify as a runtime would check them.
        for k in (0..d.changes.len()).step_by(d.changes.len() / 7 + 1) {
            let Change::Added(i) = d.changes[k] else { panic!("only additions against an empty store") };
            let s = &r.specs[i];
            let target = &r.targets[s.target as usize];
            let mut spec = r.templates[s.template as usize].spec("acme", target.kind, &target.id, 1);
            let unsigned_len = codec::encode(Encoding::MsgPack, &spec).unwrap().len();
            spec.signature = Some(batch.signature(k));
            trusted.verify(&spec, "acme", Some(&target.id)).unwrap();
            spec_bytes = (unsigned_len, codec::encode(Encoding::MsgPack, &spec).unwrap().len());
        }
    }

    let mut incr = Vec::new();
    let mut encode = Vec::new();
    let mut changed = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let r = render("acme", &after, &hosts);
        let d = diff(&r, &index);
        incr.push(t.elapsed());
        changed = d.changes.len();
        assert!(d.changes.iter().all(|c| matches!(c, Change::Changed(_))), "only changes, no adds or removes");
        assert_eq!(changed, expected / 100, "exactly 1% of the specs change");
        // Materialise and encode only what would be written.
        let t = Instant::now();
        let mut bytes = 0usize;
        for c in &d.changes {
            if let Change::Changed(i) = *c {
                let s = &r.specs[i];
                let target = &r.targets[s.target as usize];
                let spec = r.templates[s.template as usize].spec("acme", target.kind, &target.id, 2);
                bytes += codec::encode(Encoding::MsgPack, &spec).unwrap().len();
            }
        }
        encode.push(t.elapsed());
        assert!(bytes > 0);
    }
    let report = serde_json::json!({
        "bench": "render",
        "attestations": n_att,
        "hosts": n_hosts,
        "specs": expected,
        "runs": runs,
        "threads": std::thread::available_parallelism().map_or(1, usize::from),
        "full_render_and_diff_ms_median": median(full.clone()).as_secs_f64() * 1000.0,
        "full_render_diff_and_sign_ms_median": median(signed.clone()).as_secs_f64() * 1000.0,
        "sign_over_render_ratio": median(signed).as_secs_f64() / median(full).as_secs_f64(),
        "proof_bytes_per_spec": proof_bytes,
        "encoded_spec_bytes_unsigned": spec_bytes.0,
        "encoded_spec_bytes_signed": spec_bytes.1,
        "one_control_change_render_and_diff_ms_median": median(incr).as_secs_f64() * 1000.0,
        "one_control_change_specs_to_write": changed,
        "encode_changed_specs_ms_median": median(encode).as_secs_f64() * 1000.0,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
