//! The alarms' JetStream state: transitions appended to each alarm's subject of
//! `STEWARD_ALARM_EVENTS` with `Nats-Expected-Last-Subject-Sequence` (so a transition is stored
//! once even when two writers race, or a killed hub's successor re-evaluates the same result),
//! the alarm's current record in `steward_alarms` (compare-and-set, never moved back to an
//! older transition), silences, and reading a timeline back.

use std::time::Duration;

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, kv, stream::LastRawMessageErrorKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use steward_subjects::api::alarm::{AlarmEvent, AlarmRecord, Silence};
use steward_subjects::codec::{self, Encoding};
use steward_subjects::streams::{ALARMS_BUCKET, ALARM_EVENTS_STREAM};
use steward_subjects::subject::{alarm_key, alarm_key_filter, parse_alarm_key, silence_key, silence_key_filter};
use steward_subjects::Subjects;

/// A failed alarm store operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AlarmStoreError {
    /// Another transition was stored on the alarm since its last one was read: read it again.
    #[error("alarm {0} changed concurrently")]
    Conflict(String),
    /// JetStream did not answer or refused.
    #[error("alarm store unavailable: {0}")]
    Unavailable(String),
    /// A stored item cannot be decoded.
    #[error("stored alarm data is corrupt: {0}")]
    Corrupt(String),
}

fn unavailable(e: impl std::fmt::Display) -> AlarmStoreError {
    AlarmStoreError::Unavailable(e.to_string())
}

/// The alarm store of one account.
#[derive(Debug, Clone)]
pub struct AlarmStore {
    js: jetstream::Context,
    subjects: Subjects,
    kv: kv::Store,
}

/// The last transition of an alarm and its stream sequence (0 and `None`: never fired).
pub type Last = (u64, Option<AlarmEvent>);

impl AlarmStore {
    /// Opens the store.
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the bucket cannot be opened.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, AlarmStoreError> {
        let kv = js.get_key_value(ALARMS_BUCKET).await.map_err(unavailable)?;
        Ok(AlarmStore { js: js.clone(), subjects: subjects.clone(), kv })
    }

    /// The subjects of the account.
    #[must_use]
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The bucket.
    #[must_use]
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// Appends `event` to its alarm's subject, expecting `expected` to be the subject's last
    /// sequence (0: no transition yet); returns the new sequence. The bucket is not written:
    /// call [`Self::record`] (the stream is the truth, the bucket its mirror).
    ///
    /// # Errors
    /// [`AlarmStoreError::Conflict`] when the subject moved on (read [`Self::last`] and decide
    /// again), [`AlarmStoreError::Unavailable`] when JetStream failed (the transition may or may
    /// not be stored: [`Self::last`] tells).
    pub async fn append(&self, event: &AlarmEvent, expected: u64) -> Result<u64, AlarmStoreError> {
        let subject = self.subjects.alarm_event(&event.alarm.id);
        let payload = codec::encode(Encoding::MsgPack, event).map_err(|e| AlarmStoreError::Corrupt(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("{}:{}", event.alarm.id, event.n).as_str());
        steward_subjects::trace::inject(&mut headers);
        let ack = match self.js.publish_with_headers(subject, headers, payload).await {
            Ok(f) => f.await,
            Err(e) => return Err(unavailable(e)),
        };
        match ack {
            Ok(a) if a.duplicate => Err(AlarmStoreError::Conflict(event.alarm.id.clone())),
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(AlarmStoreError::Conflict(event.alarm.id.clone()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes `alarm` to the bucket unless the bucket already holds a later transition of it.
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the bucket cannot be written.
    pub async fn record(&self, alarm: &AlarmRecord) -> Result<(), AlarmStoreError> {
        let key = alarm_key(self.subjects.account(), &alarm.id);
        let bytes = codec::encode(Encoding::MsgPack, alarm).map_err(|e| AlarmStoreError::Corrupt(e.to_string()))?;
        for _ in 0..16 {
            let entry = self.kv.entry(&key).await.map_err(unavailable)?;
            let written = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let stored: AlarmRecord = codec::decode(Encoding::MsgPack, &e.value).unwrap_or_default();
                    if stored.n >= alarm.n {
                        return Ok(());
                    }
                    self.kv.update(&key, bytes.clone(), e.revision).await.is_ok()
                }
                Some(e) => self.kv.update(&key, bytes.clone(), e.revision).await.is_ok(),
                None => self.kv.create(&key, bytes.clone()).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(AlarmStoreError::Unavailable(format!(
            "alarm {} could not be recorded: too many concurrent writes",
            alarm.id
        )))
    }

    /// The last transition of `alarm_id` with its sequence.
    ///
    /// # Errors
    /// [`AlarmStoreError`] when the stream cannot be read or the message decoded.
    pub async fn last(&self, alarm_id: &str) -> Result<Last, AlarmStoreError> {
        let stream = self.js.get_stream_no_info(ALARM_EVENTS_STREAM).await.map_err(unavailable)?;
        match stream.get_last_raw_message_by_subject(&self.subjects.alarm_event(alarm_id)).await {
            Ok(msg) => {
                let mut ev: AlarmEvent = codec::decode(Encoding::MsgPack, &msg.payload)
                    .map_err(|e| AlarmStoreError::Corrupt(e.to_string()))?;
                ev.seq = msg.sequence;
                Ok((msg.sequence, Some(ev)))
            }
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok((0, None)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Every alarm of the account as its last transition left it, with that transition's
    /// sequence (read from the stream, which is the truth; the bucket may lag a crash behind).
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the stream cannot be read.
    pub async fn all(&self, client: &async_nats::Client) -> Result<Vec<(u64, AlarmEvent)>, AlarmStoreError> {
        let events = self
            .read(client, self.subjects.alarm_events_all(), consumer::DeliverPolicy::LastPerSubject, usize::MAX)
            .await?;
        Ok(events.into_iter().map(|e| (e.seq, e)).collect())
    }

    /// The last `limit` transitions of one alarm, oldest first.
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the stream cannot be read.
    pub async fn timeline(
        &self,
        client: &async_nats::Client,
        alarm_id: &str,
        limit: usize,
    ) -> Result<Vec<AlarmEvent>, AlarmStoreError> {
        self.read(client, self.subjects.alarm_event(alarm_id), consumer::DeliverPolicy::All, limit).await
    }

    async fn read(
        &self,
        client: &async_nats::Client,
        filter: String,
        deliver_policy: consumer::DeliverPolicy,
        limit: usize,
    ) -> Result<Vec<AlarmEvent>, AlarmStoreError> {
        let stream = self.js.get_stream_no_info(ALARM_EVENTS_STREAM).await.map_err(unavailable)?;
        let c = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: filter,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut pending = c.cached_info().num_pending;
        let mut out = std::collections::VecDeque::new();
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = c.messages().await.map_err(unavailable)?;
        while pending > 0 {
            let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(unavailable(e)),
                Ok(None) | Err(_) => break,
            };
            let Ok(info) = msg.info() else { continue };
            pending = info.pending;
            let seq = info.stream_sequence;
            let Ok(mut ev) = codec::decode::<AlarmEvent>(Encoding::MsgPack, &msg.payload) else { continue };
            ev.seq = seq;
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(ev);
        }
        Ok(out.into())
    }

    /// Stores a silence (new or changed).
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the bucket cannot be written.
    pub async fn put_silence(&self, s: &Silence) -> Result<(), AlarmStoreError> {
        let bytes = codec::encode(Encoding::MsgPack, s).map_err(|e| AlarmStoreError::Corrupt(e.to_string()))?;
        self.kv.put(silence_key(self.subjects.account(), &s.id), bytes).await.map_err(unavailable)?;
        Ok(())
    }

    /// One silence.
    ///
    /// # Errors
    /// [`AlarmStoreError`] when the bucket cannot be read or the silence decoded.
    pub async fn silence(&self, id: &str) -> Result<Option<Silence>, AlarmStoreError> {
        match self.kv.get(silence_key(self.subjects.account(), id)).await.map_err(unavailable)? {
            Some(b) => {
                codec::decode(Encoding::MsgPack, &b).map(Some).map_err(|e| AlarmStoreError::Corrupt(e.to_string()))
            }
            None => Ok(None),
        }
    }

    /// Every silence of the account.
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the bucket cannot be read.
    pub async fn silences(&self, client: &async_nats::Client) -> Result<Vec<Silence>, AlarmStoreError> {
        let stream = self.js.get_stream(format!("KV_{ALARMS_BUCKET}")).await.map_err(unavailable)?;
        let keys = crate::kv::scan(
            client,
            &stream,
            ALARMS_BUCKET,
            &silence_key_filter(self.subjects.account()),
            false,
            Duration::from_secs(10),
        )
        .await
        .map_err(unavailable)?;
        Ok(keys
            .iter()
            .filter(|k| !k.deleted)
            .filter_map(|k| codec::decode::<Silence>(Encoding::MsgPack, &k.value).ok())
            .collect())
    }

    /// The alarms recorded in the bucket (the bucket's view; [`Self::all`] reads the stream).
    ///
    /// # Errors
    /// [`AlarmStoreError::Unavailable`] when the bucket cannot be read.
    pub async fn recorded(&self, client: &async_nats::Client) -> Result<Vec<AlarmRecord>, AlarmStoreError> {
        let stream = self.js.get_stream(format!("KV_{ALARMS_BUCKET}")).await.map_err(unavailable)?;
        let account = self.subjects.account();
        let keys =
            crate::kv::scan(client, &stream, ALARMS_BUCKET, &alarm_key_filter(account), false, Duration::from_secs(10))
                .await
                .map_err(unavailable)?;
        Ok(keys
            .iter()
            .filter(|k| !k.deleted && parse_alarm_key(account, &k.key).is_some())
            .filter_map(|k| codec::decode::<AlarmRecord>(Encoding::MsgPack, &k.value).ok())
            .collect())
    }
}
