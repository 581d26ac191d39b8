//! Property tests of the wire contract: tokens, subjects, envelopes and codecs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use proptest::prelude::*;
use steward_subjects::api::health::{ComponentState, ComponentStatus, HealthStatus};
use steward_subjects::codec::{self, CodecError, Encoding};
use steward_subjects::envelope::{Envelope, ErrorCode, ErrorDetail, WireError};
use steward_subjects::subject::{ParsedSubject, Subjects};
use steward_subjects::token::{validate, AccountId, HostId, Token, TokenError, TokenKind, MAX_TOKEN_LEN};

fn token_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn component_strategy() -> impl Strategy<Value = ComponentStatus> {
    (
        ".{0,20}",
        prop_oneof![
            Just(ComponentState::Running),
            Just(ComponentState::Restarting),
            Just(ComponentState::Failed),
            Just(ComponentState::Stopped)
        ],
        any::<u32>(),
        proptest::option::of(".{0,30}"),
    )
        .prop_map(|(name, state, restarts, last_error)| ComponentStatus { name, state, restarts, last_error })
}

fn health_strategy() -> impl Strategy<Value = HealthStatus> {
    (
        ".{0,20}",
        token_strategy(),
        proptest::collection::vec("[a-z]{1,8}", 0..4),
        ".{0,10}",
        any::<u64>(),
        proptest::collection::vec(component_strategy(), 0..5),
    )
        .prop_map(|(service, instance, roles, version, uptime_secs, components)| HealthStatus {
            service,
            instance,
            roles,
            version,
            started_at: "2026-11-23T00:00:00Z".into(),
            uptime_secs,
            components,
        })
}

fn error_strategy() -> impl Strategy<Value = WireError> {
    (
        prop_oneof![
            Just(ErrorCode::Invalid),
            Just(ErrorCode::NotFound),
            Just(ErrorCode::Conflict),
            Just(ErrorCode::Unavailable),
            Just(ErrorCode::Timeout),
            Just(ErrorCode::Forbidden),
            Just(ErrorCode::Internal)
        ],
        ".{0,40}",
        proptest::collection::vec((".{0,10}", ".{0,10}"), 0..3),
    )
        .prop_map(|(code, message, d)| {
            WireError::new(code, message)
                .with_details(d.into_iter().map(|(pointer, reason)| ErrorDetail { pointer, reason }).collect())
        })
}

fn roundtrip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for enc in [Encoding::MsgPack, Encoding::Json] {
        let bytes = codec::encode(enc, value).unwrap();
        let back: T = codec::decode(enc, &bytes).unwrap();
        assert_eq!(&back, value, "{enc:?} round trip");
    }
}

proptest! {
    #[test]
    fn valid_tokens_are_accepted(s in token_strategy()) {
        let t = Token::parse(TokenKind::HostId, &s).unwrap();
        prop_assert_eq!(t.as_str(), s.as_str());
    }

    #[test]
    fn hostile_tokens_are_refused(
        prefix in "[a-z]{0,5}",
        bad in prop_oneof![Just('.'), Just('*'), Just('>'), Just(' '), Just('\t'), Just('\n'), Just('\u{0}'), Just('\u{7f}'), Just('é')],
        suffix in "[a-z]{0,5}",
    ) {
        let s = format!("{prefix}{bad}{suffix}");
        let err = HostId::parse(&s).unwrap_err();
        let is_bad_char = matches!(err, TokenError::BadChar { position, .. } if position == prefix.chars().count());
        prop_assert!(is_bad_char, "{err:?}");
        prop_assert!(err.to_string().contains("host id"));
    }

    #[test]
    fn health_round_trips(h in health_strategy()) {
        roundtrip(&h);
        roundtrip(&Envelope::success(h));
    }

    #[test]
    fn error_envelopes_round_trip(e in error_strategy()) {
        let env: Envelope<HealthStatus> = Envelope::failure(e.clone());
        roundtrip(&env);
        prop_assert_eq!(env.into_result().unwrap_err(), e);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            // Either a value or a clean error, never a panic; errors map to `invalid`.
            if let Err(e) = codec::decode::<HealthStatus>(enc, &bytes) {
                prop_assert_eq!(WireError::from(e).code, ErrorCode::Invalid);
            }
            if let Err(e) = codec::decode::<Envelope<HealthStatus>>(enc, &bytes) {
                prop_assert_eq!(WireError::from(e).code, ErrorCode::Invalid);
            }
        }
    }

    #[test]
    fn subjects_parse_back(account in token_strategy(), host in token_strategy()) {
        let s = Subjects::new(AccountId::parse(&account).unwrap());
        let h = HostId::parse(&host).unwrap();
        let subject = s.host_heartbeat(&h);
        let parsed = ParsedSubject::parse(&subject).unwrap();
        prop_assert_eq!(parsed.account.as_str(), account.as_str());
        prop_assert_eq!(parsed.noun, "host");
        prop_assert_eq!(parsed.verb, "heartbeat");
        prop_assert_eq!(parsed.target.as_ref().map(|t| t.as_str()), Some(host.as_str()));
        prop_assert_eq!(parsed.to_string(), subject);
    }
}

#[test]
fn token_errors_name_the_problem() {
    let e = AccountId::parse("a.b").unwrap_err();
    assert_eq!(e.kind(), TokenKind::Account);
    let msg = e.to_string();
    assert!(msg.contains("invalid account \"a.b\""), "{msg}");
    assert!(msg.contains("'.'"), "{msg}");
    assert!(matches!(HostId::parse(""), Err(TokenError::Empty { kind: TokenKind::HostId })));
    let long = "x".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(validate(TokenKind::LabelKey, &long), Err(TokenError::TooLong { .. })));
    assert!(validate(TokenKind::LabelKey, &"x".repeat(MAX_TOKEN_LEN)).is_ok());
    assert!(HostId::parse("web 01").unwrap_err().to_string().contains("whitespace"));
    assert!(HostId::parse("web*").unwrap_err().to_string().contains("wildcard"));
    assert!(HostId::parse("a\u{1}").unwrap_err().to_string().contains("control"));
}

#[test]
fn deserializing_a_hostile_token_fails() {
    let bytes = codec::encode(Encoding::Json, &"web.01").unwrap();
    let err = codec::decode::<HostId>(Encoding::Json, &bytes).unwrap_err();
    assert!(err.to_string().contains("host id"), "{err}");
}

#[test]
fn foreign_and_malformed_subjects_are_refused() {
    assert!(ParsedSubject::parse("other.v1.a.b.c").is_err());
    assert!(ParsedSubject::parse("steward.v1.a.b").is_err());
    assert!(ParsedSubject::parse("steward.v1.a.b.c.d.e").is_err());
    assert!(ParsedSubject::parse("steward.v1.a*b.health.status").is_err());
}

#[test]
fn oversized_payloads_are_refused_before_decoding() {
    let big = vec![0u8; codec::MAX_PAYLOAD + 1];
    let err = codec::decode::<HealthStatus>(Encoding::MsgPack, &big).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge { .. }));
    assert_eq!(WireError::from(err).code, ErrorCode::Invalid);
}

#[test]
fn empty_payload_is_an_empty_request() {
    use steward_subjects::api::health::HealthRequest;
    for enc in [Encoding::MsgPack, Encoding::Json] {
        let r: HealthRequest = codec::decode(enc, b"").unwrap();
        assert_eq!(r, HealthRequest::default());
    }
}

#[test]
fn json_envelope_shape_is_stable() {
    let env: Envelope<u32> = Envelope::failure(WireError::not_found("no such host"));
    let json = serde_json::to_value(&env).unwrap();
    assert_eq!(json, serde_json::json!({"ok": false, "error": {"code": "not_found", "message": "no such host"}}));
    let ok = serde_json::to_value(Envelope::success(7u32)).unwrap();
    assert_eq!(ok, serde_json::json!({"ok": true, "data": 7}));
    // Unknown codes from newer peers decode as `unknown`, unknown fields are ignored.
    let newer: Envelope<u32> =
        serde_json::from_str(r#"{"ok":false,"error":{"code":"rate_limited","message":"x","extra":1},"more":2}"#)
            .unwrap();
    assert_eq!(newer.into_result().unwrap_err().code, ErrorCode::Unknown);
}
