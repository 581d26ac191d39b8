//! Telemetry subjects: the history of check values (raw points and 1-minute and 1-hour rollups,
//! one subject per series) and the query endpoints.
//!
//! | subject | who publishes | who subscribes |
//! |---|---|---|
//! | `steward.v1.<a>.telemetry.raw.<host>.<check>` | the account's telemetry writer (one hub) | `STEWARD_TELEMETRY_RAW` |
//! | `steward.v1.<a>.telemetry.m1.<host>.<check>` | the telemetry writer | `STEWARD_TELEMETRY_1M` |
//! | `steward.v1.<a>.telemetry.h1.<host>.<check>` | the telemetry writer | `STEWARD_TELEMETRY_1H` |
//! | `steward.v1.<a>.telemetry.query` | operators (request) | any hub (queue group) |
//! | `steward.v1.<a>.telemetry.series` | operators (request) | any hub (queue group) |
//!
//! The writer's checkpoint is the key `<account>.writer` of the `steward_telemetry` bucket.

use super::{noun, AnyAccount, Subjects, ROOT, VERSION};
use crate::token::{AccountId, HostId, Token};

/// Verbs of the telemetry noun.
pub mod telemetry_verb {
    /// Raw points.
    pub const RAW: &str = "raw";
    /// 1-minute rollups.
    pub const M1: &str = "m1";
    /// 1-hour rollups.
    pub const H1: &str = "h1";
    /// Query a series.
    pub const QUERY: &str = "query";
    /// List the series of a host.
    pub const SERIES: &str = "series";
}

/// The three levels of telemetry history, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TelemetryLevel {
    /// One point per result.
    Raw,
    /// 1-minute rollups.
    Minute,
    /// 1-hour rollups.
    Hour,
}

impl TelemetryLevel {
    /// The verb (and the name answered by queries: `raw`, `1m`, `1h` are [`Self::name`]).
    #[must_use]
    pub fn verb(self) -> &'static str {
        match self {
            TelemetryLevel::Raw => telemetry_verb::RAW,
            TelemetryLevel::Minute => telemetry_verb::M1,
            TelemetryLevel::Hour => telemetry_verb::H1,
        }
    }

    /// The level's name for people: `raw`, `1m`, `1h`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TelemetryLevel::Raw => "raw",
            TelemetryLevel::Minute => "1m",
            TelemetryLevel::Hour => "1h",
        }
    }

    /// Width of one bucket in ms (0 for raw points).
    #[must_use]
    pub fn width_ms(self) -> u64 {
        match self {
            TelemetryLevel::Raw => 0,
            TelemetryLevel::Minute => 60_000,
            TelemetryLevel::Hour => 3_600_000,
        }
    }
}

impl Subjects {
    /// The subject of one series at `level`: `telemetry.<level>.<host>.<check>`.
    #[must_use]
    pub fn telemetry_series_subject(&self, level: TelemetryLevel, host: &HostId, check: &Token) -> String {
        self.targeted(noun::TELEMETRY, level.verb(), &format!("{host}.{check}"))
    }

    /// Filter of every series of one host at `level`: `telemetry.<level>.<host>.*`.
    #[must_use]
    pub fn telemetry_host_filter(&self, level: TelemetryLevel, host: &HostId) -> String {
        self.targeted(noun::TELEMETRY, level.verb(), &format!("{host}.*"))
    }

    /// Filter of every series of this account at `level`: `telemetry.<level>.>`.
    #[must_use]
    pub fn telemetry_level_filter(&self, level: TelemetryLevel) -> String {
        self.targeted(noun::TELEMETRY, level.verb(), ">")
    }

    /// The host and check of a series subject of this account at `level`.
    #[must_use]
    pub fn parse_telemetry_series(&self, level: TelemetryLevel, subject: &str) -> Option<(HostId, Token)> {
        let prefix = self.targeted(noun::TELEMETRY, level.verb(), "");
        let rest = subject.strip_prefix(&prefix)?;
        let (host, check) = rest.split_once('.')?;
        let check = Token::parse(crate::token::TokenKind::Name, check).ok()?;
        Some((HostId::parse(host).ok()?, check))
    }

    /// `telemetry.query`: points of one series (queue group: any hub answers).
    #[must_use]
    pub fn telemetry_query(&self) -> String {
        self.base(noun::TELEMETRY, telemetry_verb::QUERY)
    }

    /// `telemetry.series`: the series of one host (queue group: any hub answers).
    #[must_use]
    pub fn telemetry_series(&self) -> String {
        self.base(noun::TELEMETRY, telemetry_verb::SERIES)
    }
}

impl AnyAccount {
    /// Every series of every account at `level` (the level's stream filter).
    #[must_use]
    pub fn telemetry(level: TelemetryLevel) -> String {
        format!("{ROOT}.{VERSION}.*.{}.{}.*.*", noun::TELEMETRY, level.verb())
    }
}

/// Key of the telemetry writer's checkpoint of `account` in the `steward_telemetry` bucket:
/// `<account>.writer`.
#[must_use]
pub fn telemetry_checkpoint_key(account: &AccountId) -> String {
    format!("{account}.writer")
}

/// `Nats-Msg-Id` of a raw point: the position of its result in `STEWARD_RESULTS`
/// (`<account>.r<stream seq>.<index in the message>`).
#[must_use]
pub fn telemetry_point_msg_id(account: &AccountId, result_seq: u64, index: u32) -> String {
    format!("{account}.r{result_seq}.{index}")
}

/// `Nats-Msg-Id` of a rollup part: its series, bucket and the flush that wrote it
/// (`<account>.<level>.<host>.<check>.<bucket start ms>.<flush>`).
#[must_use]
pub fn telemetry_part_msg_id(
    account: &AccountId,
    level: TelemetryLevel,
    host: &str,
    check: &str,
    bucket_ms: u64,
    flush: u64,
) -> String {
    format!("{account}.{}.{host}.{check}.{bucket_ms}.{flush}", level.verb())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::TokenKind;

    #[test]
    fn telemetry_subjects() {
        let a = AccountId::parse("acme").unwrap();
        let s = Subjects::new(a.clone());
        let h = HostId::parse("web-01").unwrap();
        let c = Token::parse(TokenKind::Name, "disk").unwrap();
        let raw = s.telemetry_series_subject(TelemetryLevel::Raw, &h, &c);
        assert_eq!(raw, "steward.v1.acme.telemetry.raw.web-01.disk");
        assert_eq!(s.parse_telemetry_series(TelemetryLevel::Raw, &raw), Some((h.clone(), c.clone())));
        assert_eq!(s.parse_telemetry_series(TelemetryLevel::Minute, &raw), None);
        assert_eq!(s.parse_telemetry_series(TelemetryLevel::Raw, "steward.v1.acme.telemetry.raw.web-01"), None);
        assert_eq!(s.parse_telemetry_series(TelemetryLevel::Raw, "steward.v1.acme.telemetry.raw.a.b.c"), None);
        assert_eq!(s.telemetry_host_filter(TelemetryLevel::Hour, &h), "steward.v1.acme.telemetry.h1.web-01.*");
        assert_eq!(s.telemetry_level_filter(TelemetryLevel::Minute), "steward.v1.acme.telemetry.m1.>");
        assert_eq!(s.telemetry_query(), "steward.v1.acme.telemetry.query");
        assert_eq!(s.telemetry_series(), "steward.v1.acme.telemetry.series");
        assert_eq!(AnyAccount::telemetry(TelemetryLevel::Raw), "steward.v1.*.telemetry.raw.*.*");
        assert_eq!(telemetry_checkpoint_key(&a), "acme.writer");
        assert_eq!(telemetry_point_msg_id(&a, 7, 2), "acme.r7.2");
        assert_eq!(
            telemetry_part_msg_id(&a, TelemetryLevel::Minute, "web-01", "disk", 60_000, 9),
            "acme.m1.web-01.disk.60000.9"
        );
    }
}
