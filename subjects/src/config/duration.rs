//! Durations written as text in configuration documents: `250ms`, `30s`, `5m`, `1h`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
///
/// ```
/// use std::time::Duration;
/// use steward_subjects::config::duration::parse;
/// assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
/// assert!(parse("30").is_err());
/// ```
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    if n.is_empty() {
        return Err(format!("duration {s:?} must start with a number (e.g. 30s)"));
    }
    let n: u64 = n.parse().map_err(|_| format!("duration {s:?} is too large"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => return Err(format!("duration {s:?} needs a unit: ms, s, m or h")),
        other => return Err(format!("duration {s:?} has unknown unit {other:?} (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("duration {s:?} is too large"))
}
