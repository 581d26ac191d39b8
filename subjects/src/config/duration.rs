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
/// [`DurationError`] saying what is wrong with the text.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let text = || s.to_owned();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    if n.is_empty() {
        return Err(DurationError::NoNumber { text: text() });
    }
    let n: u64 = n.parse().map_err(|_| DurationError::TooLarge { text: text() })?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => return Err(DurationError::NoUnit { text: text() }),
        other => return Err(DurationError::UnknownUnit { text: text(), unit: other.to_owned() }),
    };
    ms.map(Duration::from_millis).ok_or_else(|| DurationError::TooLarge { text: text() })
}

/// Why a duration text does not parse. `text` is the input, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not start with a digit.
    #[error("duration {text:?} must start with a number (e.g. 30s)")]
    NoNumber {
        /// The text.
        text: String,
    },
    /// The number has no unit after it.
    #[error("duration {text:?} needs a unit: ms, s, m or h")]
    NoUnit {
        /// The text.
        text: String,
    },
    /// The unit is not `ms`, `s`, `m` or `h`.
    #[error("duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit {
        /// The text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// The duration does not fit in 64-bit milliseconds.
    #[error("duration {text:?} is too large")]
    TooLarge {
        /// The text.
        text: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_which_part_is_wrong() {
        assert_eq!(parse("30"), Err(DurationError::NoUnit { text: "30".into() }));
        assert_eq!(parse(" s "), Err(DurationError::NoNumber { text: "s".into() }));
        assert_eq!(parse("3d"), Err(DurationError::UnknownUnit { text: "3d".into(), unit: "d".into() }));
        assert!(matches!(parse("99999999999999999999s"), Err(DurationError::TooLarge { .. })));
        assert_eq!(parse("30").unwrap_err().to_string(), "duration \"30\" needs a unit: ms, s, m or h");
    }
}
