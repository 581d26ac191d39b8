//! Health subjects: every process registers a health micro service per account it serves.
//!
//! | subject | who answers |
//! |---|---|
//! | `steward.v1.<a>.health.status` | any instance (queue group: load shared) |
//! | `steward.v1.<a>.health.status.<instance>` | that instance only (plain subscription) |

use super::{noun, verb, Subjects};
use crate::token::Token;

impl Subjects {
    /// Health of any process serving this account (queue group: any instance may answer).
    #[must_use]
    pub fn health_status(&self) -> String {
        self.base(noun::HEALTH, verb::STATUS)
    }

    /// Health of one named instance (plain subscription: only that instance answers).
    #[must_use]
    pub fn health_status_of(&self, instance: &Token) -> String {
        self.targeted(noun::HEALTH, verb::STATUS, instance.as_str())
    }

    /// Health of every named instance (`health.status.*`, for permissions).
    #[must_use]
    pub fn health_status_all(&self) -> String {
        self.targeted(noun::HEALTH, verb::STATUS, "*")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::{AccountId, TokenKind};

    #[test]
    fn health_subjects() {
        let s = Subjects::new(AccountId::parse("acme").unwrap());
        let i = Token::parse(TokenKind::Name, "hub-1").unwrap();
        assert_eq!(s.health_status(), "steward.v1.acme.health.status");
        assert_eq!(s.health_status_of(&i), "steward.v1.acme.health.status.hub-1");
        assert_eq!(s.health_status_all(), "steward.v1.acme.health.status.*");
    }
}
