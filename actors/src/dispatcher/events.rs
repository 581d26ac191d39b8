//! What becomes of the hosts' job events the dispatcher could not apply. Events of a run whose
//! host record may be a write away are offered again with a growing delay, at most
//! [`MAX_DELIVER`] times in all (the events consumer's bound). Events naming a run the hub never
//! created are terminated at once with a reason: the server publishes a `MSG_TERMINATED`
//! advisory carrying it, and the dispatcher logs host, run and reason and counts them. Which
//! is which is read from the run id alone ([`judge_run_id`]): the hub's run ids are UUIDv7s of
//! their dispatch time, so an id of another form or dated ahead of the clock is never waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use tracing::{debug, warn};

/// How long after its dispatch a run's events may arrive before its host records exist (its
/// work orders are published beside the record writes); such events are offered again.
pub(super) const RECORD_WAIT: Duration = Duration::from_secs(10);

/// How often, 1 ms apart, events that arrived before their host record look for it again
/// before they are offered again after [`RECORD_RETRY`].
pub(super) const RECORD_LOOKS: usize = 5;

/// The first redelivery delay of events that arrived before their host record (doubling per
/// delivery, up to 64 × this).
pub(super) const RECORD_RETRY: Duration = Duration::from_millis(20);

/// How far ahead of this instance's clock a run id may be dated (another hub instance's clock)
/// and still be waited for.
pub(super) const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// How many times the events consumer delivers one event at most: the back-off delays of
/// [`RECORD_RETRY`] over this many deliveries cover [`RECORD_WAIT`] plus [`CLOCK_SKEW`] with
/// room to spare (20 ms doubling to 1.28 s: 2.54 s over the first 7, 1.28 s each after).
pub(super) const MAX_DELIVER: i64 = 18;

/// The redelivery delay after the `delivered`th delivery of an event offered again.
pub(super) fn retry_delay(delivered: i64) -> Duration {
    let n = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(0);
    RECORD_RETRY * 2u32.pow(n)
}

/// What the run id of an event says about the run's records, before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunIdAge {
    /// Dispatched within [`RECORD_WAIT`] (or dated up to [`CLOCK_SKEW`] ahead): its records
    /// may be a write away.
    Young,
    /// Dispatched earlier: its records exist or never will.
    Settled,
    /// Not a run the hub created: not a UUIDv7, or dated beyond the clock skew in the future.
    NotOurs(&'static str),
}

/// Judges `run_id` (a UUIDv7 of its dispatch time when the hub made it) at `now`.
pub(super) fn judge_run_id(run_id: &str, now: SystemTime) -> RunIdAge {
    let Some(id) = uuid::Uuid::try_parse(run_id).ok().filter(|u| u.get_version_num() == 7) else {
        return RunIdAge::NotOurs("run id is not a uuidv7");
    };
    let Some((secs, nanos)) = id.get_timestamp().map(|t| t.to_unix()) else {
        return RunIdAge::NotOurs("run id is not a uuidv7");
    };
    let at = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    match now.duration_since(at) {
        Ok(age) if age <= RECORD_WAIT => RunIdAge::Young,
        Ok(_) => RunIdAge::Settled,
        Err(ahead) if ahead.duration() <= CLOCK_SKEW => RunIdAge::Young,
        Err(_) => RunIdAge::NotOurs("run id dated in the future"),
    }
}

/// What becomes of one (run, host)'s events of a chunk that were not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Offered again after a delay (the host record may be a write away).
    Again,
    /// Terminated with this reason: never offered again.
    Drop(&'static str),
}

/// A chunk's messages to acknowledge, each with the (run, host) its event was applied to.
pub(super) type Acks = Vec<(Option<(String, String)>, jetstream::Message)>;

/// Acknowledges a chunk's events (explicitly: the consumer is shared by every hub instance, so
/// one instance must not acknowledge what another is still applying). Events to offer again
/// are refused with a delay, unless this was their last delivery; events to drop are
/// terminated with their reason, logged and counted in `dropped`.
pub(super) async fn acknowledge(
    client: &async_nats::Client,
    acks: Acks,
    unapplied: &HashMap<(String, String), Verdict>,
    dropped: &AtomicU64,
) {
    for (key, m) in acks {
        let verdict = key.as_ref().and_then(|k| unapplied.get(k).map(|v| (k, *v)));
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        let result = match verdict {
            None => m.ack().await,
            Some((_, Verdict::Again)) if delivered < MAX_DELIVER => {
                // Backing off per delivery: a record that never comes (a refused run whose
                // order a host took anyway) costs a few redeliveries, not hundreds.
                m.ack_with(jetstream::AckKind::Nak(Some(retry_delay(delivered)))).await
            }
            Some(((run_id, host), v)) => {
                let reason = match v {
                    Verdict::Drop(reason) => reason,
                    Verdict::Again => "no host record within the redelivery bound",
                };
                let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // A flooding host must not turn into a flood of log lines: the first few drops
                // and then every thousandth are warnings (with the running total), the rest debug.
                if total <= 10 || total % 1000 == 0 {
                    warn!(host_id = %host, run_id = %run_id, reason, delivered, total, "run event dropped");
                } else {
                    debug!(host_id = %host, run_id = %run_id, reason, delivered, total, "run event dropped");
                }
                terminate(client, &m, reason).await
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "run event not acknowledged");
        }
    }
}

/// Terminates `m` with `reason` (the server never delivers it again and publishes the reason
/// in its `MSG_TERMINATED` advisory).
async fn terminate(client: &async_nats::Client, m: &jetstream::Message, reason: &str) -> Result<(), async_nats::Error> {
    let Some(reply) = m.reply.clone() else { return Ok(()) };
    client.publish(reply, format!("+TERM {reason}").into()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_at(at: SystemTime) -> String {
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        uuid::Uuid::new_v7(ts).simple().to_string()
    }

    #[test]
    fn only_run_ids_dispatched_just_now_are_waited_for() {
        let now = SystemTime::now();
        assert_eq!(judge_run_id(&uuid::Uuid::now_v7().simple().to_string(), now), RunIdAge::Young);
        assert_eq!(judge_run_id(&v7_at(now - Duration::from_secs(9)), now), RunIdAge::Young);
        // Another hub instance's clock may be a little ahead.
        assert_eq!(judge_run_id(&v7_at(now + Duration::from_secs(1)), now), RunIdAge::Young);
        assert_eq!(judge_run_id(&v7_at(now - Duration::from_secs(11)), now), RunIdAge::Settled);
        assert_eq!(judge_run_id(&v7_at(now - Duration::from_secs(3600)), now), RunIdAge::Settled);
        // Dated in the future beyond the skew: forever young if waited for, so never.
        for ahead in [3, 60, 86_400 * 365] {
            let id = v7_at(now + Duration::from_secs(ahead));
            assert_eq!(judge_run_id(&id, now), RunIdAge::NotOurs("run id dated in the future"), "{ahead}");
        }
        // Not a v7 id, or not an id at all: the hub never made it.
        for id in
            [uuid::Uuid::new_v4().simple().to_string(), "run-1".into(), String::new(), uuid::Uuid::nil().to_string()]
        {
            assert_eq!(judge_run_id(&id, now), RunIdAge::NotOurs("run id is not a uuidv7"), "{id}");
        }
        // A v1 or v6 id carries a timestamp too, but the hub does not make those.
        let mut v6 = uuid::Uuid::now_v7().simple().to_string();
        v6.replace_range(12..13, "6");
        assert_eq!(uuid::Uuid::try_parse(&v6).unwrap().get_version_num(), 6);
        assert_eq!(judge_run_id(&v6, now), RunIdAge::NotOurs("run id is not a uuidv7"));
    }

    #[test]
    fn the_redelivery_bound_outlasts_the_wait_for_records() {
        let waited: Duration = (1..MAX_DELIVER).map(retry_delay).sum();
        assert!(waited >= RECORD_WAIT + CLOCK_SKEW + Duration::from_secs(2), "{waited:?}");
        // And it is a bound: an unknown young run costs tens of deliveries, not hundreds.
        const { assert!(MAX_DELIVER <= 32) };
        assert_eq!(retry_delay(1), RECORD_RETRY);
        assert_eq!(retry_delay(100), RECORD_RETRY * 64);
    }
}
