//! Telling a connector that was not reading from hosts that went quiet.
//!
//! A host is offline when its last heartbeat is older than its bound. That judgment is only
//! sound if the connector was reading: when its process was frozen (a VM paused, SIGSTOP,
//! swapping) or starved of CPU, the heartbeats of that time wait in the socket and in
//! nats-server, and a sweep made on resume, before they are read, would report every host
//! offline and then online again. Two signals tell these apart:
//! - the sweep timer itself was late (the gap between two sweeps' send times is over twice the
//!   period): the connector stalled for that long. Nobody is marked offline until it has had as
//!   long again to read what waited ([`StallGuard::observe`] answers no judgment time); a stall
//!   of a second or more is logged as a warning. Hosts that really left meanwhile are reported
//!   once the hold ends.
//! - sweeps wait in the mailbox behind heartbeats (sent long before they are handled): the
//!   connector cannot keep up with the heartbeat rate. Presence is then judged as of the
//!   sweep's send time (every heartbeat that came before it was handled before it), and the lag
//!   is logged as a warning at most every [`WARN_EVERY`].

use std::time::{Duration, Instant};

/// Mailbox lag (a sweep's wait between being sent and being handled) worth a warning.
const BEHIND_WARN: Duration = Duration::from_secs(1);
/// Warn about lag at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Longest hold after a stall.
const MAX_HOLD: Duration = Duration::from_secs(600);

/// How late beyond its period a sweep must be sent to count as a stall (a short one only holds
/// the judgment that long, so even a fraction of a second counts).
fn stall_threshold(every: Duration) -> Duration {
    every.max(Duration::from_millis(100))
}

/// A stall worth a warning.
const STALL_WARN: Duration = Duration::from_secs(1);

/// What one sweep should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Judge presence as of this instant; `None`: mark nobody offline now.
    pub judge_at: Option<Instant>,
    /// The connector just stalled this long (one second or more: warn).
    pub stalled: Option<Duration>,
    /// The connector's mailbox is this far behind (warn).
    pub behind: Option<Duration>,
}

/// Watches the sweeps' timing (see the module documentation).
#[derive(Debug)]
pub(super) struct StallGuard {
    every: Duration,
    last_sent: Instant,
    hold_until: Option<Instant>,
    last_warning: Option<Instant>,
}

impl StallGuard {
    /// A guard for sweeps sent every `every`, starting `now`.
    pub(super) fn new(every: Duration, now: Instant) -> Self {
        StallGuard { every, last_sent: now, hold_until: None, last_warning: None }
    }

    /// The verdict for a sweep the timer sent at `sent`, handled `now`.
    pub(super) fn observe(&mut self, sent: Instant, now: Instant) -> Verdict {
        let mut v = Verdict { judge_at: Some(sent), stalled: None, behind: None };
        let gap = sent.saturating_duration_since(self.last_sent);
        self.last_sent = self.last_sent.max(sent);
        if gap > self.every + stall_threshold(self.every) {
            let stalled = gap - self.every;
            let until = now + stalled.min(MAX_HOLD);
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
            v.stalled = (stalled >= STALL_WARN).then_some(stalled);
        }
        let lag = now.saturating_duration_since(sent);
        if lag >= BEHIND_WARN && self.last_warning.is_none_or(|w| now.saturating_duration_since(w) >= WARN_EVERY) {
            self.last_warning = Some(now);
            v.behind = Some(lag);
        }
        match self.hold_until {
            Some(h) if now < h => v.judge_at = None,
            Some(_) => self.hold_until = None,
            None => {}
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(250);

    #[test]
    fn punctual_sweeps_judge_at_their_send_time_without_warnings() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(EVERY, t0);
        for i in 1..=40u32 {
            let sent = t0 + EVERY * i;
            let v = g.observe(sent, sent + Duration::from_millis(3));
            assert_eq!(v, Verdict { judge_at: Some(sent), stalled: None, behind: None }, "sweep {i}");
        }
    }

    #[test]
    fn after_a_stall_nobody_is_judged_until_as_long_again_has_passed() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(EVERY, t0);
        assert!(g.observe(t0 + EVERY, t0 + EVERY).judge_at.is_some());
        // Frozen for 5 s: the timer's next sweeps all come at once on resume.
        let resumed = t0 + EVERY + Duration::from_secs(5);
        let v = g.observe(resumed, resumed);
        assert_eq!(v.stalled, Some(Duration::from_secs(5) - EVERY));
        assert_eq!(v.judge_at, None);
        // The sweeps that follow, punctual again, still judge nobody for as long as the stall.
        for k in 1..19u32 {
            let at = resumed + EVERY * k;
            let v = g.observe(at, at);
            assert_eq!((v.judge_at, v.stalled), (None, None), "sweep {k} after resume");
        }
        let later = resumed + EVERY * 19;
        assert_eq!(g.observe(later, later).judge_at, Some(later));
        // And the hold is over for good.
        let next = later + EVERY;
        assert_eq!(g.observe(next, next).judge_at, Some(next));
    }

    #[test]
    fn a_short_stall_holds_the_judgment_as_long_without_a_warning() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(EVERY, t0);
        // Starved for 600 ms: the next sweep comes 850 ms after the previous one.
        let late = t0 + Duration::from_millis(850);
        assert_eq!(g.observe(late, late), Verdict { judge_at: None, stalled: None, behind: None });
        let soon = late + EVERY;
        assert_eq!(g.observe(soon, soon).judge_at, None);
        let after = late + EVERY * 3;
        assert_eq!(g.observe(after, after).judge_at, Some(after));
    }

    #[test]
    fn a_lagging_mailbox_judges_at_send_time_and_warns_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(EVERY, t0);
        let lag = Duration::from_secs(3);
        let mut warnings = 0;
        for i in 1..=200u32 {
            let sent = t0 + EVERY * i;
            let v = g.observe(sent, sent + lag);
            assert_eq!(v.judge_at, Some(sent), "sweep {i}");
            assert_eq!(v.stalled, None);
            warnings += u32::from(v.behind.is_some());
        }
        // 200 sweeps span 50 s: a warning on the first, then one every 10 s.
        assert_eq!(warnings, 5);
    }
}
