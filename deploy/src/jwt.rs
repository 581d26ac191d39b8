//! NATS JWT v2 claims (operator, account, user): encoding, signing with the issuer's nkey,
//! decoding with signature verification, and the user credentials file format.
//!
//! A token is `base64url(header) . base64url(claims) . base64url(ed25519 signature)` (no
//! padding), the header being `{"typ":"JWT","alg":"ed25519-nkey"}`. The claims carry `jti` (the
//! base32 SHA-512/256 of the claims without `jti`, as the Go `nats-io/jwt` library computes it),
//! `iat`, `iss` (the issuer's public key), `sub` (the subject's public key), `name` and `nats`
//! (type-specific fields with `type` and `version: 2`).

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde_json::{json, Value};
use sha2::{Digest, Sha512_256};

/// The header of every token Steward writes.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of valid JSON, or a required claim is missing.
    #[error("malformed NATS JWT: {0}")]
    Malformed(String),
    /// The signature does not verify with the issuer's public key (tampered or forged).
    #[error("NATS JWT signature does not verify with issuer {issuer}")]
    BadSignature {
        /// The claimed issuer.
        issuer: String,
    },
    /// The issuer's key kind cannot issue this claim type (e.g. a user key signing an account).
    #[error("a {issuer_kind} key cannot issue {claim_type} claims")]
    WrongIssuer {
        /// The issuer key's kind.
        issuer_kind: &'static str,
        /// The claim type.
        claim_type: String,
    },
    /// An nkey operation failed.
    #[error("nkey: {0}")]
    Key(String),
}

/// Decoded claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The token id.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// The issuer's public key.
    pub iss: String,
    /// The subject's public key.
    pub sub: String,
    /// A display name.
    pub name: String,
    /// The `nats` object (type-specific).
    pub nats: Value,
}

impl Claims {
    /// The claim type (`operator`, `account`, `user`).
    #[must_use]
    pub fn claim_type(&self) -> &str {
        self.nats["type"].as_str().unwrap_or_default()
    }

    /// The revocations of account claims: user public key → unix second at or before which
    /// that user's tokens are revoked.
    #[must_use]
    pub fn revocations(&self) -> BTreeMap<String, i64> {
        self.nats["revocations"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_i64()?))).collect())
            .unwrap_or_default()
    }
}

/// Signs claims for `sub` with the issuer key: `nats` must hold `type`; `version: 2` is added.
///
/// # Errors
/// [`JwtError::Key`] when the issuer key cannot sign (a public-only key),
/// [`JwtError::WrongIssuer`] when its kind cannot issue this claim type.
pub fn encode(issuer: &nkeys::KeyPair, sub: &str, name: &str, mut nats: Value, iat: i64) -> Result<String, JwtError> {
    let claim_type = nats["type"].as_str().unwrap_or_default().to_owned();
    check_issuer(&issuer.public_key(), &claim_type)?;
    nats["version"] = json!(2);
    let mut claims = json!({ "iat": iat, "iss": issuer.public_key(), "name": name, "sub": sub, "nats": nats });
    let without_id = serde_json::to_vec(&claims).map_err(|e| JwtError::Malformed(e.to_string()))?;
    claims["jti"] = json!(BASE32_NOPAD.encode(&Sha512_256::digest(&without_id)));
    let body = serde_json::to_vec(&claims).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let signing_input = format!("{}.{}", BASE64URL_NOPAD.encode(HEADER.as_bytes()), BASE64URL_NOPAD.encode(&body));
    let sig = issuer.sign(signing_input.as_bytes()).map_err(|e| JwtError::Key(e.to_string()))?;
    Ok(format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig)))
}

/// Decodes a token and verifies its signature with the issuer named in it, and that the
/// issuer's key kind may issue the claim type.
///
/// # Errors
/// [`JwtError::Malformed`], [`JwtError::BadSignature`], [`JwtError::WrongIssuer`].
pub fn decode(token: &str) -> Result<Claims, JwtError> {
    let bad = |why: &str| JwtError::Malformed(why.to_owned());
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected three dot-separated parts"));
    };
    let b64 = |p: &str| BASE64URL_NOPAD.decode(p.as_bytes()).map_err(|e| bad(&format!("base64url: {e}")));
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|e| bad(&format!("header: {e}")))?;
    if header["alg"] != "ed25519-nkey" {
        return Err(bad("header alg is not ed25519-nkey"));
    }
    let v: Value = serde_json::from_slice(&b64(c)?).map_err(|e| bad(&format!("claims: {e}")))?;
    let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| bad(&format!("no {k}")));
    let claims = Claims {
        jti: field("jti")?,
        iat: v["iat"].as_i64().ok_or_else(|| bad("no iat"))?,
        iss: field("iss")?,
        sub: field("sub")?,
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        nats: v["nats"].clone(),
    };
    if !claims.nats.is_object() {
        return Err(bad("no nats object"));
    }
    let issuer = nkeys::KeyPair::from_public_key(&claims.iss).map_err(|e| bad(&format!("iss: {e}")))?;
    issuer
        .verify(format!("{h}.{c}").as_bytes(), &b64(s)?)
        .map_err(|_| JwtError::BadSignature { issuer: claims.iss.clone() })?;
    check_issuer(&claims.iss, claims.claim_type())?;
    Ok(claims)
}

fn check_issuer(issuer: &str, claim_type: &str) -> Result<(), JwtError> {
    let needed = match claim_type {
        "operator" | "account" => 'O',
        "user" => 'A',
        other => return Err(JwtError::Malformed(format!("unknown claim type {other:?}"))),
    };
    if issuer.starts_with(needed) {
        return Ok(());
    }
    let issuer_kind = match issuer.chars().next() {
        Some('O') => "operator",
        Some('A') => "account",
        Some('U') => "user",
        _ => "unknown",
    };
    Err(JwtError::WrongIssuer { issuer_kind, claim_type: claim_type.to_owned() })
}

/// The `nats` object of operator claims naming the system account.
#[must_use]
pub fn operator_nats(system_account: &str) -> Value {
    json!({ "type": "operator", "system_account": system_account })
}

/// The `nats` object of account claims: the Go library's default limits (everything
/// unlimited), JetStream enabled without limits when `jetstream`, and `revocations`.
#[must_use]
pub fn account_nats(jetstream: bool, revocations: &BTreeMap<String, i64>) -> Value {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for k in ["mem_storage", "disk_storage", "streams", "consumer", "max_ack_pending"] {
            limits[k] = json!(-1);
        }
    }
    let mut nats = json!({
        "type": "account",
        "limits": limits,
        "default_permissions": { "pub": {}, "sub": {} },
    });
    if !revocations.is_empty() {
        nats["revocations"] = json!(revocations);
    }
    nats
}

/// The `nats` object of user claims: publish and subscribe allow lists, and one reply per
/// received request when `allow_responses`.
#[must_use]
pub fn user_nats(publish: &[String], subscribe: &[String], allow_responses: bool) -> Value {
    let mut nats = json!({
        "type": "user",
        "pub": { "allow": publish },
        "sub": { "allow": subscribe },
        "subs": -1, "data": -1, "payload": -1,
    });
    if allow_responses {
        nats["resp"] = json!({ "max": 1, "ttl": 0 });
    }
    nats
}

/// A user credentials file: the user JWT and the user's nkey seed, in the format the NATS
/// clients read (`ConnectOptions::with_credentials_file`).
#[must_use]
pub fn creds_file(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The user JWT of a credentials file's text.
///
/// # Errors
/// [`JwtError::Malformed`] when the text has no JWT block.
pub fn creds_jwt(text: &str) -> Result<&str, JwtError> {
    let start =
        text.find("-----BEGIN NATS USER JWT-----").ok_or_else(|| JwtError::Malformed("no user JWT block".into()))?;
    let rest = &text[start + "-----BEGIN NATS USER JWT-----".len()..];
    let end = rest.find("------END").ok_or_else(|| JwtError::Malformed("unterminated user JWT block".into()))?;
    Ok(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user_token() -> (nkeys::KeyPair, nkeys::KeyPair, String) {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let nats = user_nats(&["a.b".into()], &["_INBOX.>".into()], true);
        let token = encode(&account, &user.public_key(), "web-01", nats, 1_700_000_000).unwrap();
        (account, user, token)
    }

    #[test]
    fn roundtrip_verifies_and_keeps_every_claim() {
        let (account, user, token) = user_token();
        let c = decode(&token).unwrap();
        assert_eq!(
            (c.iss.as_str(), c.sub.as_str(), c.name.as_str()),
            (&*account.public_key(), &*user.public_key(), "web-01")
        );
        assert_eq!(c.iat, 1_700_000_000);
        assert_eq!(c.claim_type(), "user");
        assert_eq!(c.nats["version"], 2);
        assert_eq!(c.nats["pub"]["allow"][0], "a.b");
        assert_eq!(c.nats["resp"]["max"], 1);
        // jti is the base32 SHA-512/256 of the claims without it.
        let body = BASE64URL_NOPAD.decode(token.split('.').nth(1).unwrap().as_bytes()).unwrap();
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v.as_object_mut().unwrap().remove("jti");
        let expect = BASE32_NOPAD.encode(&Sha512_256::digest(serde_json::to_vec(&v).unwrap()));
        assert_eq!(c.jti, expect);
        let header = BASE64URL_NOPAD.decode(token.split('.').next().unwrap().as_bytes()).unwrap();
        assert_eq!(header, HEADER.as_bytes());
    }

    #[test]
    fn tampered_claims_or_signature_are_refused() {
        let (_, _, token) = user_token();
        let parts: Vec<&str> = token.split('.').collect();
        let body = BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap();
        let forged = String::from_utf8(body).unwrap().replace("a.b", ">");
        let t1 = format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(forged.as_bytes()), parts[2]);
        assert!(matches!(decode(&t1), Err(JwtError::BadSignature { .. })), "{:?}", decode(&t1));
        let mut sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        sig[0] ^= 1;
        let t2 = format!("{}.{}.{}", parts[0], parts[1], BASE64URL_NOPAD.encode(&sig));
        assert!(matches!(decode(&t2), Err(JwtError::BadSignature { .. })));
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(matches!(decode(bad), Err(JwtError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn issuer_kind_must_fit_the_claim_type() {
        let user = nkeys::KeyPair::new_user();
        let e = encode(&user, "AXX", "x", account_nats(true, &BTreeMap::new()), 1).unwrap_err();
        assert!(matches!(e, JwtError::WrongIssuer { issuer_kind: "user", .. }), "{e}");
        let account = nkeys::KeyPair::new_account();
        assert!(encode(&account, "AXX", "x", account_nats(true, &BTreeMap::new()), 1).is_err());
    }

    #[test]
    fn account_claims_carry_limits_and_revocations() {
        let op = nkeys::KeyPair::new_operator();
        let acc = nkeys::KeyPair::new_account();
        let revs = BTreeMap::from([("UABC".to_owned(), 1_700_000_001_i64)]);
        let c = decode(&encode(&op, &acc.public_key(), "acme", account_nats(true, &revs), 5).unwrap()).unwrap();
        assert_eq!(c.nats["limits"]["mem_storage"], -1);
        assert_eq!(c.nats["limits"]["wildcards"], true);
        assert_eq!(c.revocations(), revs);
        let sys = decode(&encode(&op, &acc.public_key(), "SYS", account_nats(false, &BTreeMap::new()), 5).unwrap());
        assert!(sys.unwrap().nats["limits"].get("disk_storage").is_none());
    }

    #[test]
    fn creds_file_holds_jwt_and_seed() {
        let (_, user, token) = user_token();
        let text = creds_file(&token, &user.seed().unwrap());
        assert_eq!(creds_jwt(&text).unwrap(), token);
        assert!(text.contains("-----BEGIN USER NKEY SEED-----\nSU"));
        assert!(creds_jwt("nothing").is_err());
    }
}
