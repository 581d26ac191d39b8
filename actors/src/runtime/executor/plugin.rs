//! The monitoring-plugins convention shared by Nagios, Naemon, Icinga and Sensu checks
//! (Debian's `monitoring-plugins`): the exit code is the state (0 OK, 1 WARNING, 2 CRITICAL,
//! 3 UNKNOWN), the first output line is the status text, and performance data follows a `|`:
//! `'label'=value[UOM];[warn];[crit];[min];[max]`, several separated by spaces, on the first
//! line and on any later line after a `|` (the long-output form).
//!
//! [`judge`] applies it to an [`Observation`] of the `command` and `ssh` executors: its state
//! becomes the result's status and each datum a metric (named by its label) with its unit.

use steward_subjects::api::result::ResultStatus;

use super::Observation;

/// One performance datum.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfDatum {
    /// The label, unquoted (`/`, `load1`, `time`, `'disk usage'` → `disk usage`).
    pub label: String,
    /// The value.
    pub value: f64,
    /// Unit of measure as written (`s`, `ms`, `us`, `%`, `B`, `KB`, `MB`, `GB`, `TB`, `c`, or
    /// any other the plugin chose); empty when none.
    pub uom: String,
    /// The warning range, as written.
    pub warn: String,
    /// The critical range, as written.
    pub crit: String,
    /// The minimum, when given.
    pub min: Option<f64>,
    /// The maximum, when given.
    pub max: Option<f64>,
}

/// The state an exit code stands for: 0 pass, 1 warn, 2 fail, anything else unknown.
#[must_use]
pub fn state_of_exit(code: i32) -> ResultStatus {
    match code {
        0 => ResultStatus::Pass,
        1 => ResultStatus::Warn,
        2 => ResultStatus::Fail,
        _ => ResultStatus::Unknown,
    }
}

/// Splits a perfdata text into its data; malformed items (no `=`, no number) are skipped, so
/// one bad datum does not lose the others.
#[must_use]
pub fn parse_perfdata(text: &str) -> Vec<PerfDatum> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        // The label may be quoted with single quotes and then hold spaces and '='; a quote
        // inside a quoted label is written twice.
        let (label, after) = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut label = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                        label.push('\'');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    label.push(c);
                }
            }
            match end {
                Some(e) => (label, &quoted[e..]),
                None => break,
            }
        } else {
            let eq = rest.find(['=', ' ']).unwrap_or(rest.len());
            (rest[..eq].to_owned(), &rest[eq..])
        };
        let item_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (item, next) = after.split_at(item_end);
        rest = next.trim_start();
        if let Some(datum) = item.strip_prefix('=').and_then(|fields| datum(&label, fields)) {
            out.push(datum);
        }
    }
    out
}

fn datum(label: &str, fields: &str) -> Option<PerfDatum> {
    if label.is_empty() {
        return None;
    }
    let mut parts = fields.split(';');
    let value_uom = parts.next()?;
    let split = value_uom
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .map_or(value_uom.len(), |(i, _)| i);
    // A unit that starts with 'e' would be read as an exponent: retry without it.
    let (number, uom) = match value_uom[..split].parse::<f64>() {
        Ok(v) => (v, &value_uom[split..]),
        Err(_) => {
            let digits = value_uom.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+')))?;
            (value_uom[..digits].parse::<f64>().ok()?, &value_uom[digits..])
        }
    };
    if !number.is_finite() {
        return None;
    }
    let mut next = || parts.next().unwrap_or("").trim().to_owned();
    let (warn, crit) = (next(), next());
    let (min, max) = (next().parse().ok(), next().parse().ok());
    Some(PerfDatum { label: label.to_owned(), value: number, uom: uom.to_owned(), warn, crit, min, max })
}

/// The status line and the perfdata texts of a plugin's output.
fn split_output(stdout: &str) -> (String, Vec<&str>) {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or("");
    let (status, mut perf) = match first.split_once('|') {
        Some((text, perf)) => (text.trim().to_owned(), vec![perf]),
        None => (first.trim().to_owned(), Vec::new()),
    };
    // Long output: more text lines, then a `|` and more perfdata to the end.
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf.push(line);
        } else if let Some((_, more)) = line.split_once('|') {
            in_perf = true;
            perf.push(more);
        }
    }
    (status, perf)
}

/// Judges a plugin's run that exited with `code`: status from the code, message from the
/// status line, metrics and units from the performance data (the plugin's metrics replace
/// any parsed from a JSON last line; `duration_ms` stays).
pub fn judge(obs: &mut Observation, code: i32) {
    let status = state_of_exit(code);
    obs.exit_code = Some(code);
    obs.state = Some(status);
    obs.passed = status == ResultStatus::Pass;
    let stdout = obs.stdout.text();
    let (line, perf) = split_output(&stdout);
    obs.message = if line.is_empty() { format!("exit {code} ({})", status.as_str()) } else { line };
    let duration = obs.metrics.get("duration_ms").copied();
    obs.metrics.clear();
    obs.units.clear();
    for datum in perf.iter().flat_map(|p| parse_perfdata(p)) {
        if !datum.uom.is_empty() {
            obs.units.insert(datum.label.clone(), datum.uom.clone());
        }
        obs.metrics.insert(datum.label, datum.value);
    }
    if let Some(d) = duration {
        obs.metrics.entry("duration_ms".to_owned()).or_insert(d);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;

    #[test]
    fn the_data_of_real_plugins_parse_with_their_units() {
        let load = parse_perfdata(
            "load1=12.910;50.000;100.000;0; load5=11.960;40.000;80.000;0; load15=9.620;30.000;60.000;0; ",
        );
        assert_eq!(load.len(), 3);
        assert_eq!((load[0].label.as_str(), load[0].value, load[0].warn.as_str()), ("load1", 12.91, "50.000"));
        assert_eq!((load[0].crit.as_str(), load[0].min, load[0].max), ("100.000", Some(0.0), None));
        let disk = parse_perfdata(" /=71199358976B;216442024755;243497277849;0;270552530944");
        assert_eq!((disk[0].label.as_str(), disk[0].value, disk[0].uom.as_str()), ("/", 71_199_358_976.0, "B"));
        assert_eq!(disk[0].max, Some(270_552_530_944.0));
        let http = parse_perfdata("time=0.001234s;;;0.000000;10.000000 size=231B;;;0");
        assert_eq!((http[0].uom.as_str(), http[1].uom.as_str(), http[1].value), ("s", "B", 231.0));
        let quoted = parse_perfdata("'disk usage'=45%;80;90 'it''s'=1c");
        assert_eq!((quoted[0].label.as_str(), quoted[0].uom.as_str()), ("disk usage", "%"));
        assert_eq!((quoted[1].label.as_str(), quoted[1].uom.as_str()), ("it's", "c"));
        let exp = parse_perfdata("big=1.5e3 small=2ms");
        assert_eq!((exp[0].value, exp[1].value, exp[1].uom.as_str()), (1500.0, 2.0, "ms"));
    }

    #[test]
    fn malformed_data_are_skipped_not_fatal() {
        let data = parse_perfdata("novalue= x=abc =5 ok=1 'unterminated=3");
        assert_eq!(data.len(), 1, "{data:?}");
        assert_eq!(data[0].label, "ok");
        assert!(parse_perfdata("").is_empty());
        assert!(parse_perfdata("inf=inf nan=NaN").is_empty());
    }

    #[test]
    fn exit_codes_map_to_states() {
        assert_eq!(
            [0, 1, 2, 3, 4, -1].map(state_of_exit),
            [
                ResultStatus::Pass,
                ResultStatus::Warn,
                ResultStatus::Fail,
                ResultStatus::Unknown,
                ResultStatus::Unknown,
                ResultStatus::Unknown
            ]
        );
    }

    #[test]
    fn long_output_perfdata_is_read_after_the_bar() {
        let out =
            "DISK OK - free space | /=10MB;;;0;100\nline two\nline three | /var=20MB;;;0;100\n/home=30MB;;;0;100\n";
        let (line, perf) = split_output(out);
        assert_eq!(line, "DISK OK - free space");
        let labels: Vec<String> = perf.iter().flat_map(|p| parse_perfdata(p)).map(|d| d.label).collect();
        assert_eq!(labels, ["/", "/var", "/home"]);
    }
}
