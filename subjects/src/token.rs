//! Validated subject tokens.
//!
//! Every token that comes from a user (account, host id, runtime id, label key or value) is
//! parsed into a [`Token`] before it can reach a subject, a KV key or a stored record. The rules
//! are deliberately narrow — ASCII letters, digits, `-` and `_`, at most [`MAX_TOKEN_LEN`]
//! bytes — so a token is valid everywhere NATS takes a name: subjects, KV keys, consumer names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;

/// What a token names; used to say which input was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A tenant account.
    Account,
    /// A host (edge agent) id.
    HostId,
    /// An assessment-runtime id.
    RuntimeId,
    /// A service instance id.
    InstanceId,
    /// A label key.
    LabelKey,
    /// A label value.
    LabelValue,
    /// Any other user-supplied name (worker, service, spec id part).
    Name,
}

impl TokenKind {
    /// Human name used in error messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Account => "account",
            TokenKind::HostId => "host id",
            TokenKind::RuntimeId => "runtime id",
            TokenKind::InstanceId => "instance id",
            TokenKind::LabelKey => "label key",
            TokenKind::LabelValue => "label value",
            TokenKind::Name => "name",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token was empty.
    #[error("invalid {kind}: must not be empty")]
    Empty {
        /// What the token names.
        kind: TokenKind,
    },
    /// The token was longer than [`MAX_TOKEN_LEN`].
    #[error("invalid {kind} {shown:?}: {len} bytes, at most {max} allowed", max = MAX_TOKEN_LEN)]
    TooLong {
        /// What the token names.
        kind: TokenKind,
        /// The first characters of the token.
        shown: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The token contained a character that is not allowed.
    #[error("invalid {kind} {shown:?}: {what} at position {position} (allowed: letters, digits, '-' and '_')")]
    BadChar {
        /// What the token names.
        kind: TokenKind,
        /// The token (cut to a readable length, control characters escaped by `{:?}`).
        shown: String,
        /// Description of the offending character.
        what: String,
        /// Character index of the offending character.
        position: usize,
    },
}

impl TokenError {
    /// The kind of token that was refused.
    #[must_use]
    pub fn kind(&self) -> TokenKind {
        match self {
            TokenError::Empty { kind } | TokenError::TooLong { kind, .. } | TokenError::BadChar { kind, .. } => *kind,
        }
    }
}

fn describe(c: char) -> String {
    match c {
        '.' => "'.' (subject separator)".to_owned(),
        '*' => "'*' (subject wildcard)".to_owned(),
        '>' => "'>' (subject wildcard)".to_owned(),
        c if c.is_whitespace() => format!("whitespace {c:?}"),
        c if c.is_control() => format!("control character {:?}", c),
        c => format!("character {c:?}"),
    }
}

fn shown(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Checks `s` against the token rules without allocating a [`Token`].
///
/// # Errors
/// Returns the first rule `s` breaks.
pub fn validate(kind: TokenKind, s: &str) -> Result<(), TokenError> {
    if s.is_empty() {
        return Err(TokenError::Empty { kind });
    }
    if let Some((position, c)) =
        s.chars().enumerate().find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(TokenError::BadChar { kind, shown: shown(s), what: describe(c), position });
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong { kind, shown: shown(s), len: s.len() });
    }
    Ok(())
}

/// A validated subject token: non-empty, at most [`MAX_TOKEN_LEN`] bytes of ASCII letters,
/// digits, `-` and `_`.
///
/// ```
/// use steward_subjects::token::{Token, TokenKind};
/// let host = Token::parse(TokenKind::HostId, "web-01").unwrap();
/// assert_eq!(host.as_str(), "web-01");
/// assert!(Token::parse(TokenKind::HostId, "web.01").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// Parses and validates a token.
    ///
    /// # Errors
    /// [`TokenError`] naming `kind` and the offending character.
    pub fn parse(kind: TokenKind, s: &str) -> Result<Self, TokenError> {
        validate(kind, s)?;
        Ok(Token(s.to_owned()))
    }

    /// The token text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Token {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

macro_rules! token_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Token);

        impl $name {
            /// Parses and validates the token.
            ///
            /// # Errors
            /// [`TokenError`] naming the offending character.
            pub fn parse(s: &str) -> Result<Self, TokenError> {
                Token::parse($kind, s).map($name)
            }

            /// The token text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The underlying token.
            #[must_use]
            pub fn token(&self) -> &Token {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = TokenError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_newtype!(
    /// A tenant account; the third token of every Steward subject.
    AccountId,
    TokenKind::Account
);
token_newtype!(
    /// The id of a host (edge agent).
    HostId,
    TokenKind::HostId
);
token_newtype!(
    /// The id of an assessment runtime.
    RuntimeId,
    TokenKind::RuntimeId
);
token_newtype!(
    /// The id of one running service instance (one process's copy of a service).
    InstanceId,
    TokenKind::InstanceId
);
token_newtype!(
    /// A label key (`env` in `env=prod`).
    LabelKey,
    TokenKind::LabelKey
);
token_newtype!(
    /// A label value (`prod` in `env=prod`).
    LabelValue,
    TokenKind::LabelValue
);
token_newtype!(
    /// Any other user-supplied name that may appear in a subject or key.
    Name,
    TokenKind::Name
);

impl AccountId {
    /// The account used when none is given.
    pub const DEFAULT: &'static str = "default";

    /// The default account, `default`.
    #[must_use]
    pub fn default_account() -> Self {
        AccountId(Token(Self::DEFAULT.to_owned()))
    }
}

impl Default for AccountId {
    fn default() -> Self {
        Self::default_account()
    }
}

impl InstanceId {
    /// A fresh random instance id (simple UUID text, always a valid token).
    #[must_use]
    pub fn random() -> Self {
        InstanceId(Token(uuid::Uuid::new_v4().simple().to_string()))
    }
}
