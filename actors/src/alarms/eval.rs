//! The alarm rules as the evaluator runs them, and the pure part of evaluation: what one result
//! (or the passing of time) does to one (host, check, rule) track, and which transitions follow
//! for its alarm. Nothing here does I/O, so replaying the same results gives the same
//! transitions.
//!
//! Per track the evaluator keeps the last 21 outcomes of the rule's `when` condition as bits
//! (newest in bit 0): "N of the last M" counts them, flap detection weighs their changes
//! (Naemon's and Icinga's percent state change: 20 possible changes over 21 results, the
//! oldest weighted 0.8 and the newest 1.2), and `for` uses the time of the first result of
//! the current unbroken run of breaches.

use std::collections::BTreeMap;

use steward_subjects::api::alarm::{AlarmRecord, Severity, TransitionKind};
use steward_subjects::api::result::{ResultRecord, ResultStatus};
use steward_subjects::config::{AlarmRule, Comparison, Condition, ConfigDocument};
use steward_subjects::selector::Selector;

/// Results the evaluator remembers per track (flap detection's window).
pub const WINDOW: u32 = 21;

/// A condition, compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// A metric compared with a value.
    Metric {
        /// Metric name.
        name: String,
        /// Comparison.
        op: Comparison,
        /// Value.
        value: f64,
    },
    /// The result's status is one of these.
    Status(Vec<ResultStatus>),
}

impl Cond {
    fn compile(c: &Condition) -> Option<Cond> {
        if let (Some(name), Some(value)) = (&c.metric, c.value) {
            return Some(Cond::Metric { name: name.clone(), op: c.op, value });
        }
        if c.status.is_empty() {
            return None;
        }
        let parse = |s: &str| -> ResultStatus {
            serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(ResultStatus::Unknown)
        };
        Some(Cond::Status(c.status.iter().map(|s| parse(s)).collect()))
    }

    /// Whether `r` meets the condition; `None` when the result does not carry the metric.
    #[must_use]
    pub fn holds(&self, r: &ResultRecord) -> Option<bool> {
        match self {
            Cond::Metric { name, op, value } => {
                let v = *r.metrics.get(name)?;
                Some(match op {
                    Comparison::Gt => v > *value,
                    Comparison::Ge => v >= *value,
                    Comparison::Lt => v < *value,
                    Comparison::Le => v <= *value,
                })
            }
            Cond::Status(list) => Some(list.contains(&r.status)),
        }
    }

    fn metric(&self) -> Option<&str> {
        match self {
            Cond::Metric { name, .. } => Some(name),
            Cond::Status(_) => None,
        }
    }
}

/// An alarm rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// Only this check (`None`: every check).
    pub check: Option<String>,
    /// Only hosts matching this.
    pub selector: Option<Selector>,
    /// Breach condition.
    pub when: Option<Cond>,
    /// Clear condition (`None`: the breach condition does not hold).
    pub clear: Option<Cond>,
    /// Breaching for at least this long, ms.
    pub for_ms: u64,
    /// N of the last M.
    pub breaches: Option<(u32, u32)>,
    /// Stale after this many intervals without a result.
    pub stale_after: Option<u32>,
    /// Flap start and stop percentages.
    pub flap: Option<(f64, f64)>,
    /// Severity.
    pub severity: Severity,
}

impl Rule {
    /// Compiles a validated rule.
    #[must_use]
    pub fn compile(r: &AlarmRule) -> Rule {
        let severity = match r.severity.as_str() {
            "info" => Severity::Info,
            "critical" => Severity::Critical,
            _ => Severity::Warning,
        };
        let for_ms = steward_subjects::config::duration::parse(&r.for_)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Rule {
            id: r.id.clone(),
            check: (!r.check.is_empty()).then(|| r.check.clone()),
            selector: (!r.selector.is_empty()).then(|| Selector::parse(&r.selector).ok()).flatten(),
            when: r.when.as_ref().and_then(Cond::compile),
            clear: r.clear.as_ref().and_then(Cond::compile),
            for_ms,
            breaches: r.breaches.map(|b| (b.n, b.of)),
            stale_after: r.stale_after,
            flap: r.flapping.map(|f| (f.start, f.stop)),
            severity,
        }
    }

    /// Whether the rule watches `check` on a host with `labels`.
    #[must_use]
    pub fn applies(&self, check: &str, labels: &BTreeMap<String, String>) -> bool {
        self.check.as_deref().is_none_or(|c| c == check) && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// The compiled rules of one configuration revision.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Revision they come from.
    pub revision: u64,
    /// The rules.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The rules of `doc` (a validated document).
    #[must_use]
    pub fn of(revision: u64, doc: &ConfigDocument) -> RuleSet {
        RuleSet { revision, rules: doc.alarms.iter().map(Rule::compile).collect() }
    }
}

/// What the evaluator remembers of one (host, check, rule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Track {
    /// Outcomes of `when`, newest in bit 0.
    pub bits: u32,
    /// How many outcomes `bits` holds (at most [`WINDOW`]).
    pub len: u32,
    /// End time of the first result of the current unbroken run of breaches.
    pub breach_since_ms: Option<u64>,
    /// Stream sequence of the last result taken into account.
    pub result_seq: u64,
}

impl Track {
    /// Records one outcome of `when` for a result that ended at `ended_ms`.
    pub fn push(&mut self, breach: bool, ended_ms: u64, result_seq: u64) {
        let mask = (1u32 << WINDOW) - 1;
        self.bits = ((self.bits << 1) | u32::from(breach)) & mask;
        self.len = (self.len + 1).min(WINDOW);
        if breach {
            self.breach_since_ms.get_or_insert(ended_ms);
        } else {
            self.breach_since_ms = None;
        }
        self.result_seq = result_seq;
    }

    /// Breaches among the last `of` outcomes.
    #[must_use]
    pub fn breaches_in(&self, of: u32) -> u32 {
        let of = of.min(self.len);
        if of == 0 {
            return 0;
        }
        (self.bits & ((1u32 << of) - 1)).count_ones()
    }

    /// Weighted percent state change over the window (0 until two outcomes are known).
    #[must_use]
    pub fn state_change_percent(&self) -> f64 {
        if self.len < 2 {
            return 0.0;
        }
        // Changes between consecutive outcomes, oldest first; weights run 0.8 → 1.2 over the
        // 20 possible changes of a full window.
        let mut total = 0.0;
        let changes = WINDOW - 1;
        for i in 0..self.len - 1 {
            // Bit i+1 is older than bit i: the change at position i (0 = newest).
            let changed = ((self.bits >> i) ^ (self.bits >> (i + 1))) & 1 == 1;
            if changed {
                let age = f64::from(changes - 1 - i.min(changes - 1));
                total += 0.8 + 0.4 * age / f64::from(changes - 1);
            }
        }
        total * 100.0 / f64::from(changes)
    }
}

/// One transition to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What happened.
    pub kind: TransitionKind,
    /// Detail text.
    pub detail: String,
}

/// Applies one result's outcome for `rule` to `alarm` (the alarm as it stands, `None` when it
/// never fired) and `track` (already updated with this result); returns the alarm after the
/// transitions and the transitions, in order (empty: nothing changed, and `alarm` is returned
/// unchanged).
#[must_use]
pub fn on_result(
    rule: &Rule,
    track: &Track,
    alarm: Option<&AlarmRecord>,
    r: &ResultRecord,
    now_ms: u64,
) -> (Option<AlarmRecord>, Vec<Step>) {
    let Some(when) = &rule.when else {
        // A staleness-only rule: any result ends a stale firing.
        return match alarm {
            Some(a) if a.firing => {
                let mut next = a.clone();
                resolve(&mut next, None, now_ms, "a result came again".to_owned());
                (Some(next), vec![Step { kind: TransitionKind::Resolved, detail: "result received".into() }])
            }
            _ => (alarm.cloned(), Vec::new()),
        };
    };
    let breach = when.holds(r);
    let value = when.metric().and_then(|m| r.metrics.get(m).copied());
    let mut steps = Vec::new();
    let mut next = alarm.cloned();
    let firing = alarm.is_some_and(|a| a.firing);
    if firing && alarm.is_some_and(|a| a.reason == "stale") {
        if let Some(a) = next.as_mut() {
            resolve(a, value, now_ms, "a result came again".to_owned());
        }
        steps.push(Step { kind: TransitionKind::Resolved, detail: "result received".into() });
    } else if firing {
        let clears = match &rule.clear {
            Some(c) => c.holds(r) == Some(true),
            None => breach == Some(false),
        };
        if clears {
            if let Some(a) = next.as_mut() {
                resolve(a, value, now_ms, describe(rule, r, value, false));
            }
            steps.push(Step { kind: TransitionKind::Resolved, detail: String::new() });
        }
    }
    let firing_now = next.as_ref().is_some_and(|a| a.firing);
    if !firing_now && breach == Some(true) && fires(rule, track, r) {
        let mut a = next.take().unwrap_or_default();
        a.firing = true;
        a.reason = "breach".into();
        a.since_ms = now_ms;
        a.value = value;
        a.ack = None;
        a.message = describe(rule, r, value, true);
        a.severity = rule.severity;
        next = Some(a);
        steps.push(Step { kind: TransitionKind::Firing, detail: String::new() });
    }
    if let (Some((start, stop)), Some(a)) = (rule.flap, next.as_mut()) {
        let pct = track.state_change_percent();
        if !a.flapping && pct >= start {
            a.flapping = true;
            steps.push(Step { kind: TransitionKind::FlappingStarted, detail: format!("{pct:.1}% state change") });
        } else if a.flapping && pct < stop {
            a.flapping = false;
            steps.push(Step { kind: TransitionKind::FlappingEnded, detail: format!("{pct:.1}% state change") });
        }
    }
    (next, steps)
}

/// Whether a breaching result makes the rule fire, given the track.
fn fires(rule: &Rule, track: &Track, r: &ResultRecord) -> bool {
    if let Some((n, of)) = rule.breaches {
        return track.breaches_in(of) >= n;
    }
    if rule.for_ms > 0 {
        return track.breach_since_ms.is_some_and(|since| r.ended_at_ms.saturating_sub(since) >= rule.for_ms);
    }
    true
}

fn resolve(a: &mut AlarmRecord, value: Option<f64>, now_ms: u64, message: String) {
    a.firing = false;
    a.since_ms = now_ms;
    a.ack = None;
    if value.is_some() {
        a.value = value;
    }
    a.message = message;
}

fn describe(rule: &Rule, r: &ResultRecord, value: Option<f64>, breach: bool) -> String {
    match (&rule.when, value) {
        (Some(Cond::Metric { name, op, value: limit }), Some(v)) => {
            let op = match op {
                Comparison::Gt => ">",
                Comparison::Ge => ">=",
                Comparison::Lt => "<",
                Comparison::Le => "<=",
            };
            let unit = r.units.get(name).map(String::as_str).unwrap_or("");
            if breach {
                format!("{name} = {v}{unit} ({op} {limit})")
            } else {
                format!("{name} = {v}{unit}, clear")
            }
        }
        _ => format!("status {}: {}", r.status.as_str(), r.message),
    }
}

/// Whether `alarm` (firing or not) goes stale at `now_ms` given the last result's store time
/// and the check's interval: returns the transition when it does.
#[must_use]
pub fn on_tick(
    rule: &Rule,
    alarm: Option<&AlarmRecord>,
    last_seen_ms: u64,
    interval_ms: u64,
    now_ms: u64,
) -> Option<AlarmRecord> {
    let k = rule.stale_after?;
    if alarm.is_some_and(|a| a.firing) || interval_ms == 0 {
        return None;
    }
    let limit = u64::from(k).saturating_mul(interval_ms);
    if now_ms.saturating_sub(last_seen_ms) <= limit {
        return None;
    }
    let mut a = alarm.cloned().unwrap_or_default();
    a.firing = true;
    a.reason = "stale".into();
    a.since_ms = now_ms;
    a.ack = None;
    a.severity = rule.severity;
    a.message =
        format!("no result for {} s ({k} intervals of {} s)", (now_ms - last_seen_ms) / 1000, interval_ms / 1000);
    Some(a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use steward_subjects::config::{Breaches, Flapping};

    fn rule(json: serde_json::Value) -> Rule {
        Rule::compile(&serde_json::from_value::<AlarmRule>(json).unwrap())
    }

    fn result(v: f64, at: u64) -> ResultRecord {
        let mut r = ResultRecord { ended_at_ms: at, status: ResultStatus::Pass, ..Default::default() };
        r.metrics.insert("used".into(), v);
        r
    }

    /// Feeds values, returning the transitions' kinds.
    fn feed(rule: &Rule, values: &[f64]) -> (Option<AlarmRecord>, Vec<TransitionKind>) {
        let mut track = Track::default();
        let mut alarm = None;
        let mut kinds = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let r = result(*v, 1000 * i as u64);
            let breach = rule.when.as_ref().unwrap().holds(&r).unwrap();
            track.push(breach, r.ended_at_ms, i as u64 + 1);
            let (next, steps) = on_result(rule, &track, alarm.as_ref(), &r, r.ended_at_ms);
            alarm = next;
            kinds.extend(steps.into_iter().map(|s| s.kind));
        }
        (alarm, kinds)
    }

    #[test]
    fn fires_after_n_of_m_and_clears_only_past_the_clear_threshold() {
        let r = rule(serde_json::json!({
            "id": "full", "when": {"metric": "used", "op": "gt", "value": 90.0},
            "clear": {"metric": "used", "op": "lt", "value": 80.0},
            "breaches": Breaches { n: 3, of: 4 }
        }));
        let (a, kinds) = feed(&r, &[95.0, 95.0]);
        assert!(kinds.is_empty() && a.is_none());
        let (a, kinds) = feed(&r, &[95.0, 50.0, 95.0, 95.0]);
        assert_eq!(kinds, vec![TransitionKind::Firing]);
        assert!(a.unwrap().firing);
        // 85 is inside the hysteresis band: still firing; 79 clears.
        let (_, kinds) = feed(&r, &[95.0, 95.0, 95.0, 85.0, 85.0]);
        assert_eq!(kinds, vec![TransitionKind::Firing]);
        let (a, kinds) = feed(&r, &[95.0, 95.0, 95.0, 85.0, 79.0]);
        assert_eq!(kinds, vec![TransitionKind::Firing, TransitionKind::Resolved]);
        assert!(!a.unwrap().firing);
    }

    #[test]
    fn for_duration_counts_the_unbroken_run() {
        let r = rule(serde_json::json!({"id": "x", "when": {"metric": "used", "value": 90.0}, "for": "2s"}));
        // Breaches at 0 s, 1 s: 1 s long, no fire; at 2 s: fires.
        assert!(feed(&r, &[95.0, 95.0]).1.is_empty());
        assert_eq!(feed(&r, &[95.0, 95.0, 95.0]).1, vec![TransitionKind::Firing]);
        // A break restarts the run.
        assert!(feed(&r, &[95.0, 95.0, 10.0, 95.0]).1.is_empty());
    }

    #[test]
    fn flapping_starts_and_ends_with_a_resolve() {
        let r = rule(serde_json::json!({
            "id": "x", "when": {"metric": "used", "value": 90.0},
            "flapping": Flapping { start: 40.0, stop: 20.0 }
        }));
        let mut values = vec![];
        for _ in 0..6 {
            values.extend([95.0, 10.0]);
        }
        let (a, kinds) = feed(&r, &values);
        assert!(kinds.contains(&TransitionKind::FlappingStarted), "{kinds:?}");
        assert!(a.as_ref().unwrap().flapping);
        // Settle low for a while: flapping ends, the alarm is resolved.
        values.extend([10.0; 21]);
        let (a, kinds) = feed(&r, &values);
        assert_eq!(kinds.iter().filter(|k| **k == TransitionKind::FlappingStarted).count(), 1);
        assert_eq!(kinds.last(), Some(&TransitionKind::FlappingEnded));
        let a = a.unwrap();
        assert!(!a.flapping && !a.firing);
    }

    #[test]
    fn percent_state_change_is_weighted_like_naemon() {
        let mut t = Track::default();
        for i in 0..21 {
            t.push(i % 2 == 0, 0, 0);
        }
        assert!((t.state_change_percent() - 100.0).abs() < 1e-9);
        let mut t = Track::default();
        for _ in 0..21 {
            t.push(true, 0, 0);
        }
        assert_eq!(t.state_change_percent(), 0.0);
        // One change, newest: weighted 1.2 → 6%; oldest: 0.8 → 4%.
        let mut newest = Track::default();
        for i in 0..21 {
            newest.push(i == 20, 0, 0);
        }
        assert!((newest.state_change_percent() - 6.0).abs() < 1e-9);
        let mut oldest = Track::default();
        for i in 0..21 {
            oldest.push(i != 0, 0, 0);
        }
        assert!((oldest.state_change_percent() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn staleness_fires_after_k_intervals_and_a_result_resolves_it() {
        let r = rule(serde_json::json!({"id": "s", "stale_after": 3}));
        assert!(on_tick(&r, None, 0, 1000, 3000).is_none());
        let a = on_tick(&r, None, 0, 1000, 3001).unwrap();
        assert!(a.firing && a.reason == "stale");
        assert!(on_tick(&r, Some(&a), 0, 1000, 9000).is_none());
        let (next, steps) = on_result(&r, &Track::default(), Some(&a), &result(1.0, 9000), 9000);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].kind, TransitionKind::Resolved);
        assert!(!next.unwrap().firing);
    }

    #[test]
    fn a_result_without_the_metric_changes_nothing() {
        let r = rule(serde_json::json!({"id": "x", "when": {"metric": "other", "value": 1.0}}));
        assert_eq!(r.when.as_ref().unwrap().holds(&result(5.0, 0)), None);
        let s = rule(serde_json::json!({"id": "y", "when": {"status": ["fail", "error"]}}));
        let mut failed = result(1.0, 0);
        failed.status = ResultStatus::Fail;
        assert_eq!(s.when.as_ref().unwrap().holds(&failed), Some(true));
        assert_eq!(s.when.as_ref().unwrap().holds(&result(1.0, 0)), Some(false));
    }
}
