//! Validation of configuration documents: every problem at once, each with its JSON pointer.
//!
//! [`parse_document`] takes the raw JSON bytes: each element of each section is decoded on its
//! own, so one malformed element does not hide the problems of the others; then
//! [`validate_document`] checks ids, references, selectors, executor parameters, durations,
//! thresholds, substitutions and limits.

use std::collections::{BTreeSet, HashMap};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::spec::{escape, resolve_attestation};
use super::{
    duration, subst, AlarmRule, Assessment, Comparison, Condition, ConfigDocument, Executor, RemediationAction,
    RemediationRule, DOCUMENT_VERSION,
};
use crate::envelope::ErrorDetail;
use crate::selector::Selector;
use crate::token::{validate as validate_token, TokenKind};

/// Largest document accepted, in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most elements in one section (services, controls, ...).
pub const MAX_ITEMS: usize = 10_000;
/// Most parameters of one control.
pub const MAX_PARAMETERS: usize = 256;
/// Longest text value accepted anywhere in a document, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most problems reported for one document (the rest are counted).
pub const MAX_REPORTED: usize = 500;
/// Shortest interval an assessment may have.
pub const MIN_INTERVAL_MS: u64 = 1000;

const SECTIONS: [&str; 8] =
    ["services", "controls", "components", "assessments", "attestations", "pools", "alarms", "remediations"];
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

struct Problems(Vec<ErrorDetail>);

impl Problems {
    fn add(&mut self, pointer: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ErrorDetail { pointer: pointer.into(), reason: reason.into() });
    }

    fn finish(mut self) -> Vec<ErrorDetail> {
        let mut seen = BTreeSet::new();
        self.0.retain(|d| seen.insert((d.pointer.clone(), d.reason.clone())));
        if self.0.len() > MAX_REPORTED {
            let more = self.0.len() - MAX_REPORTED;
            self.0.truncate(MAX_REPORTED);
            self.0.push(ErrorDetail { pointer: String::new(), reason: format!("and {more} more problems") });
        }
        self.0
    }
}

/// Ids present in the raw document, including those of elements that failed to decode (so a
/// reference to a malformed element is not reported a second time as dangling).
#[derive(Default)]
struct KnownIds {
    by_section: HashMap<&'static str, BTreeSet<String>>,
    /// Per section: original array index of each decoded element (elements that failed to
    /// decode are left out of the document, so later pointers must be mapped back).
    original: HashMap<&'static str, Vec<usize>>,
}

impl KnownIds {
    fn remap(&self, pointer: &str) -> String {
        let mut parts = pointer.splitn(4, '/');
        let (_, section, index) = (parts.next(), parts.next(), parts.next());
        let (Some(section), Some(index)) = (section, index) else { return pointer.to_owned() };
        let Some(map) = self.original.get(section) else { return pointer.to_owned() };
        let Some(orig) = index.parse::<usize>().ok().and_then(|i| map.get(i)) else { return pointer.to_owned() };
        match parts.next() {
            Some(rest) => format!("/{section}/{orig}/{rest}"),
            None => format!("/{section}/{orig}"),
        }
    }
}

impl KnownIds {
    fn has(&self, section: &str, id: &str) -> bool {
        self.by_section.get(section).is_some_and(|s| s.contains(id))
    }
}

fn section<T: DeserializeOwned>(
    value: &Value,
    name: &'static str,
    problems: &mut Problems,
    known: &mut KnownIds,
) -> Vec<T> {
    let Some(items) = value.as_array() else {
        problems.add(format!("/{name}"), "must be an array");
        return Vec::new();
    };
    if items.len() > MAX_ITEMS {
        problems.add(format!("/{name}"), format!("{} elements, at most {MAX_ITEMS} allowed", items.len()));
    }
    let ids = known.by_section.entry(name).or_default();
    let mut out = Vec::with_capacity(items.len());
    let mut original = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            ids.insert(id.to_owned());
        }
        match serde_json::from_value::<T>(item.clone()) {
            Ok(v) => {
                out.push(v);
                original.push(i);
            }
            Err(e) => problems.add(format!("/{name}/{i}"), e.to_string()),
        }
    }
    known.original.insert(name, original);
    out
}

/// Parses and validates a JSON document.
///
/// # Errors
/// Every problem found, each with the JSON pointer of the offending part.
pub fn parse_document(bytes: &[u8]) -> Result<ConfigDocument, Vec<ErrorDetail>> {
    let mut problems = Problems(Vec::new());
    let mut doc = ConfigDocument::default();
    if bytes.len() > MAX_DOCUMENT_BYTES {
        problems.add("", format!("document is {} bytes, at most {MAX_DOCUMENT_BYTES} allowed", bytes.len()));
        return Err(problems.finish());
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.add("", format!("not valid JSON: {e}"));
            return Err(problems.finish());
        }
    };
    let Some(obj) = value.as_object() else {
        problems.add("", "the document must be a JSON object");
        return Err(problems.finish());
    };
    let mut known = KnownIds::default();
    for (key, v) in obj {
        match key.as_str() {
            "version" => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => doc.version = n,
                None => problems.add("/version", "must be a positive integer"),
            },
            "description" => match v.as_str() {
                Some(s) => doc.description = s.to_owned(),
                None => problems.add("/description", "must be a string"),
            },
            "services" => doc.services = section(v, "services", &mut problems, &mut known),
            "controls" => doc.controls = section(v, "controls", &mut problems, &mut known),
            "components" => doc.components = section(v, "components", &mut problems, &mut known),
            "assessments" => doc.assessments = section(v, "assessments", &mut problems, &mut known),
            "attestations" => doc.attestations = section(v, "attestations", &mut problems, &mut known),
            "pools" => doc.pools = section(v, "pools", &mut problems, &mut known),
            "alarms" => doc.alarms = section(v, "alarms", &mut problems, &mut known),
            "remediations" => doc.remediations = section(v, "remediations", &mut problems, &mut known),
            other => problems.add(
                format!("/{}", escape(other)),
                format!("unknown field {other:?} (expected version, description, {})", SECTIONS.join(", ")),
            ),
        }
    }
    let decoded = problems.0.len();
    check(&doc, &known, &mut problems);
    for d in &mut problems.0[decoded..] {
        d.pointer = known.remap(&d.pointer);
    }
    if problems.0.is_empty() {
        Ok(doc)
    } else {
        Err(problems.finish())
    }
}

/// Validates an already decoded document.
///
/// # Errors
/// Every problem found, each with its JSON pointer.
pub fn validate_document(doc: &ConfigDocument) -> Result<(), Vec<ErrorDetail>> {
    let mut known = KnownIds::default();
    let sections: [(&'static str, Vec<&str>); 8] = [
        ("services", doc.services.iter().map(|x| x.id.as_str()).collect()),
        ("controls", doc.controls.iter().map(|x| x.id.as_str()).collect()),
        ("components", doc.components.iter().map(|x| x.id.as_str()).collect()),
        ("assessments", doc.assessments.iter().map(|x| x.id.as_str()).collect()),
        ("attestations", doc.attestations.iter().map(|x| x.id.as_str()).collect()),
        ("pools", doc.pools.iter().map(|x| x.id.as_str()).collect()),
        ("alarms", doc.alarms.iter().map(|x| x.id.as_str()).collect()),
        ("remediations", doc.remediations.iter().map(|x| x.id.as_str()).collect()),
    ];
    let mut problems = Problems(Vec::new());
    for (name, ids) in sections {
        if ids.len() > MAX_ITEMS {
            problems.add(format!("/{name}"), format!("{} elements, at most {MAX_ITEMS} allowed", ids.len()));
        }
        known.by_section.insert(name, ids.into_iter().map(str::to_owned).collect());
    }
    check(&doc.clone(), &known, &mut problems);
    if problems.0.is_empty() {
        Ok(())
    } else {
        Err(problems.finish())
    }
}

fn ids<'a>(section: &str, items: impl Iterator<Item = &'a str>, p: &mut Problems) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, id) in items.enumerate() {
        let ptr = format!("/{section}/{i}/id");
        if let Err(e) = validate_token(TokenKind::Name, id) {
            p.add(&ptr, e.to_string());
        }
        if let Some(j) = first.get(id) {
            p.add(&ptr, format!("duplicate id {id:?} (first at /{section}/{j})"));
        } else {
            first.insert(id, i);
        }
    }
}

fn text(ptr: &str, s: &str, p: &mut Problems) {
    if s.len() > MAX_TEXT {
        p.add(ptr, format!("{} bytes, at most {MAX_TEXT} allowed", s.len()));
    }
}

fn template(ptr: String, s: &str, p: &mut Problems) {
    text(&ptr, s, p);
    if let Err(e) = subst::resolve(s, |_| Ok(String::new())) {
        p.add(ptr, e.to_string());
    }
}

fn selector(ptr: String, s: &str, p: &mut Problems) {
    if let Err(e) = Selector::parse(s) {
        p.add(ptr, e.to_string());
    }
}

fn url(ptr: String, u: &str, p: &mut Problems) {
    let lower = u.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        Some(_) => p.add(ptr, format!("url {u:?} has no host")),
        None if u.starts_with("{{") => {}
        None => p.add(ptr, format!("url {u:?} must start with http:// or https://")),
    }
}

fn executor(base: &str, e: &Executor, p: &mut Problems) {
    match e {
        Executor::Command(c) => {
            if c.argv.is_empty() || c.argv[0].trim().is_empty() {
                p.add(format!("{base}/argv"), "must name a program");
            }
            if c.argv.len() > MAX_PARAMETERS {
                p.add(format!("{base}/argv"), format!("{} arguments, at most {MAX_PARAMETERS} allowed", c.argv.len()));
            }
            for (i, a) in c.argv.iter().enumerate() {
                template(format!("{base}/argv/{i}"), a, p);
            }
            for (k, v) in &c.env {
                let ptr = format!("{base}/env/{}", escape(k));
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    p.add(&ptr, format!("invalid environment variable name {k:?}"));
                }
                template(ptr, v, p);
            }
            template(format!("{base}/cwd"), &c.cwd, p);
        }
        Executor::Http(h) => {
            template(format!("{base}/url"), &h.url, p);
            url(format!("{base}/url"), &h.url, p);
            if !METHODS.contains(&h.method.as_str()) {
                p.add(format!("{base}/method"), format!("method {:?} is not one of {}", h.method, METHODS.join(", ")));
            }
            if !(100..=599).contains(&h.expect_status) {
                p.add(format!("{base}/expect_status"), format!("{} is not an HTTP status (100-599)", h.expect_status));
            }
            template(format!("{base}/body_contains"), &h.body_contains, p);
        }
        Executor::Tcp(t) => {
            if t.host.trim().is_empty() {
                p.add(format!("{base}/host"), "must not be empty");
            }
            template(format!("{base}/host"), &t.host, p);
            if t.port == 0 {
                p.add(format!("{base}/port"), "must be 1-65535");
            }
        }
        Executor::Ssh(s) => {
            for (field, v) in [("host", &s.host), ("user", &s.user), ("command", &s.command)] {
                if v.trim().is_empty() {
                    p.add(format!("{base}/{field}"), "must not be empty");
                }
                template(format!("{base}/{field}"), v, p);
            }
            template(format!("{base}/key_path"), &s.key_path, p);
            if s.port == 0 {
                p.add(format!("{base}/port"), "must be 1-65535");
            }
        }
    }
}

fn check(doc: &ConfigDocument, known: &KnownIds, p: &mut Problems) {
    if doc.version != DOCUMENT_VERSION {
        p.add(
            "/version",
            format!("version {} is not supported (this build reads version {DOCUMENT_VERSION})", doc.version),
        );
    }
    text("/description", &doc.description, p);
    ids("services", doc.services.iter().map(|x| x.id.as_str()), p);
    ids("controls", doc.controls.iter().map(|x| x.id.as_str()), p);
    ids("components", doc.components.iter().map(|x| x.id.as_str()), p);
    ids("assessments", doc.assessments.iter().map(|x| x.id.as_str()), p);
    ids("attestations", doc.attestations.iter().map(|x| x.id.as_str()), p);
    ids("pools", doc.pools.iter().map(|x| x.id.as_str()), p);
    services(doc, p);
    controls(doc, p);
    let component_controls: HashMap<&str, &Vec<String>> =
        doc.components.iter().map(|c| (c.id.as_str(), &c.controls)).collect();
    components(doc, known, p);
    for (i, a) in doc.assessments.iter().enumerate() {
        assessment(i, a, p);
    }
    attestations(doc, known, &component_controls, p);
    for (i, pool) in doc.pools.iter().enumerate() {
        selector(format!("/pools/{i}/selector"), &pool.selector, p);
    }
    ids("alarms", doc.alarms.iter().map(|x| x.id.as_str()), p);
    ids("remediations", doc.remediations.iter().map(|x| x.id.as_str()), p);
    for (i, rule) in doc.alarms.iter().enumerate() {
        alarm_rule(i, rule, known, p);
    }
    for (i, rule) in doc.remediations.iter().enumerate() {
        remediation_rule(i, rule, known, p);
    }
}

/// Result statuses a condition may name.
const STATUSES: [&str; 6] = ["pass", "warn", "fail", "error", "timeout", "unknown"];
/// Results flap detection looks at (Naemon's and Icinga's 21).
pub const FLAP_WINDOW: u32 = 21;

fn condition(ptr: &str, c: &Condition, p: &mut Problems) {
    match (&c.metric, c.status.is_empty()) {
        (Some(_), false) => p.add(ptr, "give either metric (with value) or status, not both"),
        (None, true) => p.add(ptr, "give a metric (with value) or a status list"),
        _ => {}
    }
    if let Some(m) = &c.metric {
        if let Err(e) = metric_name(m) {
            p.add(format!("{ptr}/metric"), format!("bad metric name {m:?}: {e}"));
        }
        match c.value {
            None => p.add(format!("{ptr}/value"), "a metric condition needs a value"),
            Some(v) if !v.is_finite() => p.add(format!("{ptr}/value"), "must be a finite number"),
            Some(_) => {}
        }
    } else if c.value.is_some() {
        p.add(format!("{ptr}/value"), "a value needs a metric");
    }
    for (j, st) in c.status.iter().enumerate() {
        if !STATUSES.contains(&st.as_str()) {
            p.add(
                format!("{ptr}/status/{j}"),
                format!("unknown status {st:?} (expected one of {})", STATUSES.join(", ")),
            );
        }
    }
}

/// Longest metric name a rule may name.
pub const MAX_METRIC_NAME: usize = 128;

/// A metric name as checks report them: JSON keys and monitoring-plugin performance-data
/// labels (`load1`, `/`, `/var/log`, `time`), so wider than an id: 1 to 128 bytes, no
/// whitespace or control characters.
fn metric_name(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("must not be empty".into());
    }
    if m.len() > MAX_METRIC_NAME {
        return Err(format!("{} bytes, at most {MAX_METRIC_NAME}", m.len()));
    }
    if m.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

fn alarm_rule(i: usize, r: &AlarmRule, known: &KnownIds, p: &mut Problems) {
    let base = format!("/alarms/{i}");
    text(&format!("{base}/title"), &r.title, p);
    if !r.check.is_empty() && !known.has("attestations", &r.check) {
        p.add(format!("{base}/check"), format!("unknown check {:?} (checks are attestation ids)", r.check));
    }
    selector(format!("{base}/selector"), &r.selector, p);
    match &r.when {
        Some(c) => condition(&format!("{base}/when"), c, p),
        None if r.stale_after.is_none() => {
            p.add(format!("{base}/when"), "give when (or stale_after for a staleness rule)")
        }
        None => {}
    }
    if let Some(c) = &r.clear {
        condition(&format!("{base}/clear"), c, p);
        if r.when.is_none() {
            p.add(format!("{base}/clear"), "a clear condition needs a when condition");
        }
    }
    if !r.for_.is_empty() {
        if let Err(e) = duration::parse(&r.for_) {
            p.add(format!("{base}/for"), e.to_string());
        }
        if r.breaches.is_some() {
            p.add(format!("{base}/for"), "give for or breaches, not both");
        }
    }
    if let Some(b) = r.breaches {
        if b.n == 0 || b.of == 0 || b.n > b.of || b.of > FLAP_WINDOW {
            p.add(format!("{base}/breaches"), format!("need 1 <= n <= of <= {FLAP_WINDOW}, got n={} of={}", b.n, b.of));
        }
    }
    if r.stale_after == Some(0) {
        p.add(format!("{base}/stale_after"), "must be at least 1 interval");
    }
    if let Some(f) = r.flapping {
        let ok = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
        if !ok(f.start) {
            p.add(format!("{base}/flapping/start"), "must be a percent (0-100)");
        }
        if !ok(f.stop) {
            p.add(format!("{base}/flapping/stop"), "must be a percent (0-100)");
        }
        if f.stop >= f.start {
            p.add(format!("{base}/flapping/stop"), "must be below start");
        }
    }
    if !["info", "warning", "critical"].contains(&r.severity.as_str()) {
        p.add(format!("{base}/severity"), format!("unknown severity {:?} (info, warning or critical)", r.severity));
    }
}

fn remediation_rule(i: usize, r: &RemediationRule, known: &KnownIds, p: &mut Problems) {
    let base = format!("/remediations/{i}");
    if !known.has("alarms", &r.alarm) {
        p.add(format!("{base}/alarm"), format!("unknown alarm rule {:?}", r.alarm));
    }
    if !r.check.is_empty() && !known.has("attestations", &r.check) {
        p.add(format!("{base}/check"), format!("unknown check {:?}", r.check));
    }
    selector(format!("{base}/selector"), &r.selector, p);
    selector(format!("{base}/runner"), &r.runner, p);
    match &r.action {
        None => p.add(format!("{base}/action"), "give an action (command or playbook)"),
        Some(RemediationAction::Command { argv }) => {
            if argv.is_empty() || argv[0].trim().is_empty() {
                p.add(format!("{base}/action/argv"), "must name a program");
            }
            for (j, a) in argv.iter().enumerate() {
                text(&format!("{base}/action/argv/{j}"), a, p);
            }
        }
        Some(RemediationAction::Playbook { url: u }) => {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with('/')) {
                p.add(format!("{base}/action/url"), "must be an http(s):// URL or an absolute path");
            }
            text(&format!("{base}/action/url"), u, p);
        }
    }
    for (field, v) in [("cooldown", &r.cooldown), ("timeout", &r.timeout)] {
        match duration::parse(v) {
            Err(e) => p.add(format!("{base}/{field}"), e.to_string()),
            Ok(d) if field == "timeout" && d.is_zero() => p.add(format!("{base}/timeout"), "must be greater than zero"),
            Ok(_) => {}
        }
    }
    if r.max_in_flight == 0 {
        p.add(format!("{base}/max_in_flight"), "must be at least 1");
    }
    if r.max_per_hour == 0 {
        p.add(format!("{base}/max_per_hour"), "must be at least 1");
    }
}

fn services(doc: &ConfigDocument, p: &mut Problems) {
    for (i, s) in doc.services.iter().enumerate() {
        if let Err(e) = validate_token(TokenKind::Name, &s.worker) {
            p.add(format!("/services/{i}/worker"), e.to_string());
        }
        let lower = s.playbook.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with('/')) {
            p.add(format!("/services/{i}/playbook"), "must be an http(s):// URL or an absolute path");
        }
        text(&format!("/services/{i}/playbook"), &s.playbook, p);
        selector(format!("/services/{i}/selector"), &s.selector, p);
    }
}

fn controls(doc: &ConfigDocument, p: &mut Problems) {
    for (i, c) in doc.controls.iter().enumerate() {
        if c.parameters.len() > MAX_PARAMETERS {
            p.add(
                format!("/controls/{i}/parameters"),
                format!("{} parameters, at most {MAX_PARAMETERS} allowed", c.parameters.len()),
            );
        }
        for (name, v) in &c.parameters {
            let ptr = format!("/controls/{i}/parameters/{}", escape(name));
            if let Err(e) = validate_token(TokenKind::Name, name) {
                p.add(&ptr, format!("parameter name: {e}"));
            }
            text(&ptr, &v.render(), p);
        }
    }
}

fn components(doc: &ConfigDocument, known: &KnownIds, p: &mut Problems) {
    for (i, c) in doc.components.iter().enumerate() {
        selector(format!("/components/{i}/selector"), &c.selector, p);
        let mut seen = BTreeSet::new();
        for (j, ctl) in c.controls.iter().enumerate() {
            let ptr = format!("/components/{i}/controls/{j}");
            if !known.has("controls", ctl) {
                p.add(&ptr, format!("unknown control {ctl:?}"));
            }
            if !seen.insert(ctl) {
                p.add(ptr, format!("control {ctl:?} listed twice"));
            }
        }
    }
}

fn assessment(i: usize, a: &Assessment, p: &mut Problems) {
    executor(&format!("/assessments/{i}/executor"), &a.executor, p);
    let interval = duration::parse(&a.interval);
    let timeout = duration::parse(&a.timeout);
    match &interval {
        Err(e) => p.add(format!("/assessments/{i}/interval"), e.to_string()),
        Ok(d) if (d.as_millis() as u64) < MIN_INTERVAL_MS => {
            p.add(format!("/assessments/{i}/interval"), format!("must be at least {MIN_INTERVAL_MS}ms"))
        }
        Ok(_) => {}
    }
    match (&timeout, &interval) {
        (Err(e), _) => p.add(format!("/assessments/{i}/timeout"), e.to_string()),
        (Ok(t), _) if t.is_zero() => p.add(format!("/assessments/{i}/timeout"), "must be greater than zero"),
        (Ok(t), Ok(iv)) if t > iv => p.add(
            format!("/assessments/{i}/timeout"),
            format!("{} is longer than the interval {}", a.timeout, a.interval),
        ),
        _ => {}
    }
    for (j, t) in a.thresholds.iter().enumerate() {
        let ptr = format!("/assessments/{i}/thresholds/{j}");
        if let Err(e) = validate_token(TokenKind::Name, &t.metric) {
            p.add(format!("{ptr}/metric"), e.to_string());
        }
        match (t.warn, t.fail) {
            (None, None) => p.add(&ptr, "needs a warn or a fail limit"),
            (Some(w), Some(f)) => {
                let bad = match t.op {
                    Comparison::Gt | Comparison::Ge => w > f,
                    Comparison::Lt | Comparison::Le => w < f,
                };
                if bad {
                    p.add(&ptr, format!("warn limit {w} is past the fail limit {f}"));
                }
            }
            _ => {}
        }
        for v in [t.warn, t.fail].into_iter().flatten() {
            if !v.is_finite() {
                p.add(&ptr, "limits must be finite numbers");
            }
        }
    }
}

fn attestations(
    doc: &ConfigDocument,
    known: &KnownIds,
    component_controls: &HashMap<&str, &Vec<String>>,
    p: &mut Problems,
) {
    let assessment_index: HashMap<&str, usize> =
        doc.assessments.iter().enumerate().map(|(i, a)| (a.id.as_str(), i)).collect();
    for (i, a) in doc.attestations.iter().enumerate() {
        let mut refs_ok = true;
        if !known.has("assessments", &a.assessment) {
            p.add(format!("/attestations/{i}/assessment"), format!("unknown assessment {:?}", a.assessment));
            refs_ok = false;
        }
        if !known.has("components", &a.component) {
            p.add(format!("/attestations/{i}/component"), format!("unknown component {:?}", a.component));
            refs_ok = false;
        }
        for (j, c) in a.controls.iter().enumerate() {
            let ptr = format!("/attestations/{i}/controls/{j}");
            if !known.has("controls", c) {
                p.add(ptr, format!("unknown control {c:?}"));
                refs_ok = false;
            } else if component_controls.get(a.component.as_str()).is_some_and(|cs| !cs.contains(c)) {
                p.add(ptr, format!("component {:?} does not implement control {c:?}", a.component));
            }
        }
        if let Some(pool) = &a.pool {
            if !known.has("pools", pool) {
                p.add(format!("/attestations/{i}/pool"), format!("unknown pool {pool:?}"));
            }
        }
        let decoded = assessment_index.contains_key(a.assessment.as_str())
            && component_controls.contains_key(a.component.as_str());
        if refs_ok && decoded {
            if let Err(errs) = resolve_attestation(doc, a) {
                let ai = assessment_index.get(a.assessment.as_str()).copied().unwrap_or_default();
                for (rel, reason) in errs {
                    if rel.is_empty() {
                        // Durations are reported on the assessment already.
                        continue;
                    }
                    p.add(format!("/assessments/{ai}/executor{rel}"), format!("for attestation {:?}: {reason}", a.id));
                }
            }
        }
    }
}
