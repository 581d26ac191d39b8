//! Label selectors: `k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`.
//!
//! A selector is a comma-separated list of requirements that must all hold (an empty selector
//! matches everything). Keys and values are validated tokens, so a selector can never smuggle
//! subject syntax. Used to list hosts, and by the renderer and leasing to target job specs.
//!
//! | form | matches when |
//! |---|---|
//! | `k=v` or `k==v` | label `k` is `v` |
//! | `k!=v` | label `k` is missing or not `v` |
//! | `k in (a,b)` | label `k` is `a` or `b` |
//! | `k notin (a,b)` | label `k` is missing or neither `a` nor `b` |
//! | `k` | label `k` exists |
//! | `!k` | label `k` does not exist |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::token::{validate, TokenError, TokenKind};

/// Longest selector text accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// `k=v`
    Equals(String, String),
    /// `k!=v`
    NotEquals(String, String),
    /// `k in (a,b)`
    In(String, Vec<String>),
    /// `k notin (a,b)`
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }

    /// The label key the requirement is about.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// A parsed label selector; all requirements must hold.
///
/// ```
/// use std::collections::BTreeMap;
/// use steward_subjects::selector::Selector;
/// let sel: Selector = "env=prod,zone in (a,b),tier!=db".parse().unwrap();
/// let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned()), ("zone".to_owned(), "a".to_owned())]);
/// assert!(sel.matches(&labels));
/// assert!("env=pr.od".parse::<Selector>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector text is malformed at a position.
    #[error("invalid selector at byte {position}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        position: usize,
        /// What is wrong.
        reason: String,
    },
    /// A key or value is not a valid token.
    #[error("invalid selector: {0}")]
    Token(#[from] TokenError),
    /// The selector, as given or as printed (its canonical form, which is what travels on to
    /// the services), is longer than [`MAX_SELECTOR_LEN`].
    #[error("invalid selector: {len} bytes, at most {MAX_SELECTOR_LEN} allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
}

impl Selector {
    /// The selector matching everything.
    #[must_use]
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector from requirements.
    #[must_use]
    pub fn from_requirements(requirements: Vec<Requirement>) -> Self {
        Selector { requirements }
    }

    /// Parses selector text (see the module docs for the grammar).
    ///
    /// Whatever it accepts prints (`Display`, `Serialize`) as text it accepts again: the length
    /// limit holds for the printed form too, which can be longer than the text given
    /// (`k in(a)` prints as `k in (a)`).
    ///
    /// # Errors
    /// [`SelectorError`] naming the position and the problem.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len: text.len() });
        }
        let mut p = Parser { s: text.as_bytes(), text, pos: 0 };
        let mut requirements = Vec::new();
        p.ws();
        if p.eof() {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(p.requirement()?);
            p.ws();
            if p.eof() {
                break;
            }
            p.expect(b',')?;
            p.ws();
        }
        let selector = Selector { requirements };
        let printed = selector.to_string().len();
        if printed > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len: printed });
        }
        Ok(selector)
    }

    /// Whether `labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The requirements.
    #[must_use]
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector matches everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.pos += 1;
        }
    }

    fn err(&self, reason: impl Into<String>) -> SelectorError {
        SelectorError::Syntax { position: self.pos, reason: reason.into() }
    }

    fn expect(&mut self, c: u8) -> Result<(), SelectorError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected '{}', found {}", c as char, self.found())))
        }
    }

    fn found(&self) -> String {
        match self.text.get(self.pos..).and_then(|r| r.chars().next()) {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_owned(),
        }
    }

    /// A run of characters up to a delimiter, validated as a token of `kind`.
    fn token(&mut self, kind: TokenKind) -> Result<String, SelectorError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, b',' | b'=' | b'!' | b'(' | b')' | b' ' | b'\t') {
                break;
            }
            self.pos += 1;
        }
        let raw = self.text.get(start..self.pos).unwrap_or_default();
        if raw.is_empty() {
            return Err(SelectorError::Syntax {
                position: start,
                reason: format!("expected a {kind}, found {}", self.found()),
            });
        }
        validate(kind, raw)?;
        Ok(raw.to_owned())
    }

    fn keyword(&mut self, word: &str) -> bool {
        let end = self.pos + word.len();
        let is_word = self.s.get(self.pos..end) == Some(word.as_bytes())
            && self.s.get(end).is_none_or(|c| matches!(c, b' ' | b'\t' | b'('));
        if is_word {
            self.pos = end;
        }
        is_word
    }

    fn values(&mut self) -> Result<Vec<String>, SelectorError> {
        self.ws();
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            out.push(self.token(TokenKind::LabelValue)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.err(format!("expected ',' or ')', found {}", self.found()))),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(b'!') {
            self.pos += 1;
            self.ws();
            return Ok(Requirement::NotExists(self.token(TokenKind::LabelKey)?));
        }
        let key = self.token(TokenKind::LabelKey)?;
        self.ws();
        match self.peek() {
            None | Some(b',') => Ok(Requirement::Exists(key)),
            Some(b'=') => {
                self.pos += 1;
                if self.peek() == Some(b'=') {
                    self.pos += 1;
                }
                self.ws();
                Ok(Requirement::Equals(key, self.token(TokenKind::LabelValue)?))
            }
            Some(b'!') => {
                self.pos += 1;
                self.expect(b'=')?;
                self.ws();
                Ok(Requirement::NotEquals(key, self.token(TokenKind::LabelValue)?))
            }
            _ if self.keyword("in") => Ok(Requirement::In(key, self.values()?)),
            _ if self.keyword("notin") => Ok(Requirement::NotIn(key, self.values()?)),
            _ => Err(self.err(format!("expected '=', '!=', 'in', 'notin' or ',', found {}", self.found()))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_every_form() {
        let sel = Selector::parse(" env=prod , tier!=db,zone in ( a , b ),os notin (win),gpu,!spot, x==y").unwrap();
        assert_eq!(
            sel.requirements(),
            &[
                Requirement::Equals("env".into(), "prod".into()),
                Requirement::NotEquals("tier".into(), "db".into()),
                Requirement::In("zone".into(), vec!["a".into(), "b".into()]),
                Requirement::NotIn("os".into(), vec!["win".into()]),
                Requirement::Exists("gpu".into()),
                Requirement::NotExists("spot".into()),
                Requirement::Equals("x".into(), "y".into()),
            ]
        );
        assert_eq!(sel.to_string(), "env=prod,tier!=db,zone in (a,b),os notin (win),gpu,!spot,x=y");
    }

    #[test]
    fn matching_semantics() {
        let l = labels(&[("env", "prod"), ("zone", "b")]);
        assert!(Selector::parse("").unwrap().matches(&l));
        assert!(Selector::parse("env=prod").unwrap().matches(&l));
        assert!(!Selector::parse("env=dev").unwrap().matches(&l));
        assert!(Selector::parse("tier!=db").unwrap().matches(&l), "missing key satisfies !=");
        assert!(!Selector::parse("env!=prod").unwrap().matches(&l));
        assert!(Selector::parse("zone in (a,b)").unwrap().matches(&l));
        assert!(!Selector::parse("zone in (a,c)").unwrap().matches(&l));
        assert!(!Selector::parse("tier in (db)").unwrap().matches(&l), "missing key fails in");
        assert!(Selector::parse("tier notin (db)").unwrap().matches(&l));
        assert!(!Selector::parse("zone notin (b)").unwrap().matches(&l));
        assert!(Selector::parse("env,!tier").unwrap().matches(&l));
        assert!(!Selector::parse("env,zone=a").unwrap().matches(&l));
    }

    #[test]
    fn hostile_input_is_refused_clearly() {
        for bad in [
            "env=pr.od",
            "en*v=prod",
            "env=>",
            "env=",
            "=prod",
            "env=prod,",
            ",env=prod",
            "env in (a,)",
            "env in a,b",
            "env in (a b)",
            "env !x",
            "env=a b",
            "env=\u{0}",
            "env = pr od",
            "env in ()",
        ] {
            let err = Selector::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid"), "{bad}: {err}");
        }
        let err = Selector::parse("env=pr.od").unwrap_err();
        assert!(err.to_string().contains("'.'"), "{err}");
        assert!(matches!(Selector::parse(&"a".repeat(MAX_SELECTOR_LEN + 1)), Err(SelectorError::TooLong { .. })));
    }

    /// Found by the `selector` fuzz target: `k in(...)` of exactly the maximum length was
    /// accepted, but prints one byte longer (`k in (...)`), so its own printed form (what the
    /// CLI sends to the dispatcher) was refused as too long.
    #[test]
    fn accepted_selector_at_the_limit_prints_as_an_accepted_selector() {
        let mut text = String::from("a in(");
        while text.len() + 4 <= MAX_SELECTOR_LEN {
            text.push_str("b,");
        }
        text.push_str("bb)");
        while text.len() < MAX_SELECTOR_LEN {
            text.push(' ');
        }
        assert_eq!(text.len(), MAX_SELECTOR_LEN);
        let err = Selector::parse(&text).expect_err("its printed form is over the limit");
        assert!(matches!(err, SelectorError::TooLong { len } if len == MAX_SELECTOR_LEN + 1), "{err}");
        // Below the limit the compact form is still accepted and round-trips.
        let short = "a in(b,c)";
        let sel = Selector::parse(short).unwrap();
        assert_eq!(sel.to_string(), "a in (b,c)");
        assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
    }

    #[test]
    fn serde_round_trip() {
        let sel = Selector::parse("env=prod,zone in (a,b)").unwrap();
        let json = serde_json::to_string(&sel).unwrap();
        assert_eq!(json, "\"env=prod,zone in (a,b)\"");
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), sel);
        assert!(serde_json::from_str::<Selector>("\"env=*\"").is_err());
    }

    fn tok() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,6}"
    }

    fn req() -> impl Strategy<Value = Requirement> {
        prop_oneof![
            (tok(), tok()).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (tok(), tok()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
            (tok(), prop::collection::vec(tok(), 1..4)).prop_map(|(k, v)| Requirement::In(k, v)),
            (tok(), prop::collection::vec(tok(), 1..4)).prop_map(|(k, v)| Requirement::NotIn(k, v)),
            tok().prop_map(Requirement::Exists),
            tok().prop_map(Requirement::NotExists),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back(reqs in prop::collection::vec(req(), 0..6)) {
            let sel = Selector::from_requirements(reqs);
            // Keys named like the keywords would read back differently after "k in"; the
            // grammar only treats them as keywords after a key, so they round-trip as well.
            prop_assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        }

        #[test]
        fn never_panics(text in ".{0,64}") {
            let _ = Selector::parse(&text);
        }

        #[test]
        fn matching_agrees_with_a_model(
            reqs in prop::collection::vec(req(), 0..5),
            lab in prop::collection::btree_map(tok(), tok(), 0..5),
        ) {
            let sel = Selector::from_requirements(reqs.clone());
            let model = reqs.iter().all(|r| match r {
                Requirement::Equals(k, v) => lab.get(k).map(String::as_str) == Some(v.as_str()),
                Requirement::NotEquals(k, v) => lab.get(k).map(String::as_str) != Some(v.as_str()),
                Requirement::In(k, vs) => lab.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Requirement::NotIn(k, vs) => !lab.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Requirement::Exists(k) => lab.contains_key(k),
                Requirement::NotExists(k) => !lab.contains_key(k),
            });
            prop_assert_eq!(sel.matches(&lab), model);
        }
    }
}
