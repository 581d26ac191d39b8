//! The alarm endpoints (micro service `steward-alarm`, queue group: any hub answers):
//! `alarm.list`, `alarm.get` (an alarm and its timeline), `alarm.ack`, `alarm.silence-add`,
//! `alarm.silence-list` and `alarm.silence-expire`. They read the stream and the bucket
//! directly; an acknowledgement is appended to the alarm's timeline with its expected last
//! sequence like every other transition, so it never overwrites one the evaluator stored at
//! the same moment.

use std::sync::Arc;

use futures::StreamExt;
use steward_subjects::api::alarm::{
    Ack, AckRequest, AddSilenceRequest, AlarmEvent, AlarmRecord, ExpireSilenceRequest, GetAlarmReply, GetAlarmRequest,
    ListAlarmsReply, ListAlarmsRequest, ListSilencesReply, ListSilencesRequest, Silence, TransitionKind,
};
use steward_subjects::selector::Selector;
use steward_subjects::subject::{alarm_verb, parse_alarm_id};
use steward_subjects::token::{validate as validate_token, TokenKind};
use steward_subjects::{rpc, WireError};

use super::store::{AlarmStore, AlarmStoreError};
use crate::now_ms;

/// Longest a silence may last (a year).
pub const MAX_SILENCE_MS: u64 = 366 * 24 * 3600 * 1000;

fn wire(e: AlarmStoreError) -> WireError {
    match e {
        AlarmStoreError::Conflict(id) => WireError::conflict(format!("alarm {id} changed concurrently; try again")),
        AlarmStoreError::Unavailable(m) => WireError::unavailable(m),
        AlarmStoreError::Corrupt(m) => WireError::internal(m),
    }
}

/// Registers the service and serves its endpoints on tasks (keep the service while they run).
pub(super) async fn serve(
    client: async_nats::Client,
    store: AlarmStore,
) -> Result<(async_nats::service::Service, Vec<tokio::task::JoinHandle<()>>), String> {
    let subjects = store.subjects().clone();
    let service =
        crate::start_account_service(&client, subjects.account(), "alarm", "steward alarms: list, get, ack, silences")
            .await
            .map_err(|e| e.to_string())?;
    let ctx = Arc::new(Ctx { client, store });
    let mut handles = Vec::new();
    for verb in [
        alarm_verb::LIST,
        alarm_verb::GET,
        alarm_verb::ACK,
        alarm_verb::SILENCE_ADD,
        alarm_verb::SILENCE_LIST,
        alarm_verb::SILENCE_EXPIRE,
    ] {
        let mut endpoint =
            service.endpoint_builder().name(verb).add(subjects.alarm_request(verb)).await.map_err(|e| e.to_string())?;
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move {
            while let Some(req) = endpoint.next().await {
                let ctx = ctx.clone();
                tokio::spawn(async move { ctx.handle(verb, req).await });
            }
        }));
    }
    Ok((service, handles))
}

struct Ctx {
    client: async_nats::Client,
    store: AlarmStore,
}

impl Ctx {
    async fn handle(&self, verb: &'static str, req: async_nats::service::Request) {
        let _ = match verb {
            alarm_verb::LIST => rpc::serve(&req, |r: ListAlarmsRequest| self.list(r)).await,
            alarm_verb::GET => rpc::serve(&req, |r: GetAlarmRequest| self.get(r)).await,
            alarm_verb::ACK => rpc::serve(&req, |r: AckRequest| self.ack(r)).await,
            alarm_verb::SILENCE_ADD => rpc::serve(&req, |r: AddSilenceRequest| self.add_silence(r)).await,
            alarm_verb::SILENCE_LIST => rpc::serve(&req, |r: ListSilencesRequest| self.silences(r)).await,
            _ => rpc::serve(&req, |r: ExpireSilenceRequest| self.expire_silence(r)).await,
        };
    }

    async fn list(&self, r: ListAlarmsRequest) -> Result<ListAlarmsReply, WireError> {
        let selector = match r.selector.as_str() {
            "" => None,
            s => Some(Selector::parse(s).map_err(|e| WireError::invalid(format!("selector: {e}")))?),
        };
        let want_firing = match r.state.as_str() {
            "" | "all" => None,
            "firing" => Some(true),
            "ok" | "resolved" => Some(false),
            other => return Err(WireError::invalid(format!("state {other:?}: expected firing, ok or all"))),
        };
        let mut alarms: Vec<AlarmRecord> = self
            .store
            .all(&self.client)
            .await
            .map_err(wire)?
            .into_iter()
            .map(|(_, ev)| ev.alarm)
            .filter(|a| want_firing.is_none_or(|f| a.firing == f))
            .filter(|a| r.host.is_empty() || a.host == r.host)
            .filter(|a| selector.as_ref().is_none_or(|s| s.matches(&a.labels)))
            .collect();
        alarms.sort_by(|a, b| b.firing.cmp(&a.firing).then(b.severity.cmp(&a.severity)).then(a.id.cmp(&b.id)));
        Ok(ListAlarmsReply { alarms })
    }

    fn check_id(id: &str) -> Result<(), WireError> {
        let (h, c, r) = parse_alarm_id(id)
            .ok_or_else(|| WireError::invalid(format!("alarm id {id:?}: expected <host>.<check>.<rule>")))?;
        for part in [h, c, r] {
            validate_token(TokenKind::Name, part).map_err(|e| WireError::invalid(format!("alarm id {id:?}: {e}")))?;
        }
        Ok(())
    }

    async fn get(&self, r: GetAlarmRequest) -> Result<GetAlarmReply, WireError> {
        Self::check_id(&r.id)?;
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) };
        let timeline = self.store.timeline(&self.client, &r.id, limit).await.map_err(wire)?;
        let Some(last) = timeline.last() else {
            return Err(WireError::not_found(format!("no alarm {}", r.id)));
        };
        Ok(GetAlarmReply { alarm: last.alarm.clone(), timeline })
    }

    async fn ack(&self, r: AckRequest) -> Result<AlarmRecord, WireError> {
        Self::check_id(&r.id)?;
        if r.author.trim().is_empty() {
            return Err(WireError::invalid("an acknowledgement needs an author"));
        }
        if r.comment.len() > 4096 {
            return Err(WireError::invalid("comment is longer than 4096 bytes"));
        }
        for _ in 0..8 {
            let (seq, last) = self.store.last(&r.id).await.map_err(wire)?;
            let Some(last) = last else { return Err(WireError::not_found(format!("no alarm {}", r.id))) };
            let mut alarm = last.alarm;
            if !alarm.firing {
                return Err(WireError::conflict(format!("alarm {} is not firing", r.id)));
            }
            alarm.ack = Some(Ack { author: r.author.clone(), comment: r.comment.clone(), at_ms: now_ms() });
            alarm.n += 1;
            let ev = AlarmEvent {
                kind: TransitionKind::Acknowledged,
                n: alarm.n,
                at_ms: now_ms(),
                alarm: alarm.clone(),
                notify: alarm.notifies(),
                detail: r.comment.clone(),
                by: r.author.clone(),
                ..Default::default()
            };
            match self.store.append(&ev, seq).await {
                Ok(_) => {
                    if let Err(e) = self.store.record(&alarm).await {
                        tracing::warn!(alarm = r.id, error = %e, "acknowledged; the alarms bucket lags until the next transition");
                    }
                    return Ok(alarm);
                }
                Err(AlarmStoreError::Conflict(_)) => continue,
                Err(e) => return Err(wire(e)),
            }
        }
        Err(WireError::conflict(format!("alarm {} keeps changing; try again", r.id)))
    }

    async fn add_silence(&self, r: AddSilenceRequest) -> Result<Silence, WireError> {
        let mut s = r.silence;
        let now = now_ms();
        if s.selector.is_empty() && s.check.is_empty() && s.rule.is_empty() && s.host.is_empty() {
            return Err(WireError::invalid(
                "a silence needs a selector, host, check or rule (it would silence everything)",
            ));
        }
        if !s.selector.is_empty() {
            Selector::parse(&s.selector).map_err(|e| WireError::invalid(format!("selector: {e}")))?;
        }
        for (field, v) in [("host", &s.host), ("check", &s.check), ("rule", &s.rule)] {
            if !v.is_empty() {
                validate_token(TokenKind::Name, v).map_err(|e| WireError::invalid(format!("{field}: {e}")))?;
            }
        }
        if s.author.trim().is_empty() {
            return Err(WireError::invalid("a silence needs an author"));
        }
        if s.starts_ms == 0 {
            s.starts_ms = now;
        }
        if s.expires_ms <= now || s.expires_ms <= s.starts_ms {
            return Err(WireError::invalid("the silence must expire in the future, after it starts"));
        }
        if s.expires_ms - s.starts_ms > MAX_SILENCE_MS {
            return Err(WireError::invalid("a silence may last at most a year"));
        }
        s.id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        s.ended = None;
        self.store.put_silence(&s).await.map_err(wire)?;
        Ok(s)
    }

    async fn silences(&self, r: ListSilencesRequest) -> Result<ListSilencesReply, WireError> {
        let now = now_ms();
        let mut silences: Vec<Silence> = self
            .store
            .silences(&self.client)
            .await
            .map_err(wire)?
            .into_iter()
            .filter(|s| r.all || s.active(now) || s.starts_ms > now)
            .collect();
        silences.sort_by(|a, b| a.expires_ms.cmp(&b.expires_ms).then(a.id.cmp(&b.id)));
        Ok(ListSilencesReply { silences })
    }

    async fn expire_silence(&self, r: ExpireSilenceRequest) -> Result<Silence, WireError> {
        validate_token(TokenKind::Name, &r.id).map_err(|e| WireError::invalid(format!("silence id: {e}")))?;
        let mut s = self
            .store
            .silence(&r.id)
            .await
            .map_err(wire)?
            .ok_or_else(|| WireError::not_found(format!("no silence {}", r.id)))?;
        if s.ended.is_none() && s.expires_ms > now_ms() {
            let by = if r.author.is_empty() { "an operator".to_owned() } else { r.author };
            s.ended = Some(format!("expired by {by}"));
            self.store.put_silence(&s).await.map_err(wire)?;
        }
        Ok(s)
    }
}
