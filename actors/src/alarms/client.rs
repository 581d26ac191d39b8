//! Typed client of the alarm endpoints.

use std::time::Duration;

use steward_subjects::api::alarm::{
    AckRequest, AddSilenceRequest, AlarmRecord, ExpireSilenceRequest, GetAlarmReply, GetAlarmRequest, ListAlarmsReply,
    ListAlarmsRequest, ListSilencesReply, ListSilencesRequest, Silence,
};
use steward_subjects::rpc::{self, RequestError};
use steward_subjects::subject::alarm_verb;
use steward_subjects::Subjects;

/// Calls the alarm endpoints of one account.
#[derive(Debug, Clone)]
pub struct AlarmClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
}

impl AlarmClient {
    /// A client for the account of `subjects`.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        AlarmClient { client, subjects, timeout: rpc::DEFAULT_TIMEOUT }
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        verb: &str,
        req: &Req,
    ) -> Result<Resp, RequestError> {
        rpc::request(&self.client, self.subjects.alarm_request(verb), req, self.timeout).await
    }

    /// Alarms, filtered.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn list(&self, req: &ListAlarmsRequest) -> Result<ListAlarmsReply, RequestError> {
        self.call(alarm_verb::LIST, req).await
    }

    /// One alarm and its timeline.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn get(&self, req: &GetAlarmRequest) -> Result<GetAlarmReply, RequestError> {
        self.call(alarm_verb::GET, req).await
    }

    /// Acknowledges a firing alarm.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn ack(&self, req: &AckRequest) -> Result<AlarmRecord, RequestError> {
        self.call(alarm_verb::ACK, req).await
    }

    /// Adds a silence.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn add_silence(&self, req: &AddSilenceRequest) -> Result<Silence, RequestError> {
        self.call(alarm_verb::SILENCE_ADD, req).await
    }

    /// Lists silences.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn silences(&self, req: &ListSilencesRequest) -> Result<ListSilencesReply, RequestError> {
        self.call(alarm_verb::SILENCE_LIST, req).await
    }

    /// Ends a silence now.
    ///
    /// # Errors
    /// [`RequestError`] when the request fails or is refused.
    pub async fn expire_silence(&self, req: &ExpireSilenceRequest) -> Result<Silence, RequestError> {
        self.call(alarm_verb::SILENCE_EXPIRE, req).await
    }
}
