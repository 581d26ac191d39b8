//! Dead letters: what the server's JetStream advisories say about a message a consumer
//! terminated or stopped redelivering (captured by
//! [`DEAD_LETTERS_STREAM`](crate::streams::DEAD_LETTERS_STREAM)). These are the server's JSON
//! advisories, not Steward's MessagePack: only the fields Steward reads are named.

use serde::{Deserialize, Serialize};

/// One advisory (`io.nats.jetstream.advisory.v1.terminated` or `...max_deliver`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadLetter {
    /// The advisory type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the server published it (RFC 3339).
    pub timestamp: String,
    /// The stream holding the message.
    pub stream: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The message's sequence in its stream.
    pub stream_seq: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The consumer's reason (terminated messages only).
    pub reason: String,
}

impl DeadLetter {
    /// Decodes an advisory.
    ///
    /// # Errors
    /// When the payload is not an advisory's JSON.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// Why it is a dead letter: the consumer's reason, or that its delivery bound was reached.
    #[must_use]
    pub fn why(&self) -> String {
        if !self.reason.is_empty() {
            self.reason.clone()
        } else if self.kind.ends_with("max_deliver") {
            format!("not acknowledged after {} deliveries", self.deliveries)
        } else {
            "terminated".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_servers_advisories() {
        let t = br#"{"type":"io.nats.jetstream.advisory.v1.terminated","id":"x","timestamp":"2026-12-07T05:00:00Z","stream":"S","consumer":"C","consumer_seq":4,"stream_seq":9,"deliveries":1,"reason":"run id is not a uuidv7","domain":"hub"}"#;
        let d = DeadLetter::decode(t).unwrap();
        assert_eq!((d.stream_seq, d.why().as_str()), (9, "run id is not a uuidv7"));
        let m = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"S","consumer":"C","stream_seq":3,"deliveries":18}"#;
        assert_eq!(DeadLetter::decode(m).unwrap().why(), "not acknowledged after 18 deliveries");
        assert!(DeadLetter::decode(b"\x81\xa1a\x01").is_err());
    }
}
