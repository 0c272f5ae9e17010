//! The lifecycle's rules, as pure functions of (state, now): when an idle provider is
//! released, how long a failing one waits before the next load, when crashes quarantine
//! it, how long direct-channel news keeps it in use, and how an in-call dialog moves a
//! call's deadline (`docs/lifecycle.md`, `docs/dialogs.md`). Timers and locks live in
//! `slot.rs` and `dialogs.rs`; they only call these, so every rule is tested
//! here with made-up instants, without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The wait after the first failed load; it doubles with each further failure.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two load attempts of a failing provider.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the idle timer of a loaded provider does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Release it now.
    Release,
    /// Look again after this long.
    Wait(Duration),
}

/// The idle rule: a provider is released at the first moment it has had no call running
/// and no subscriber (`busy`) for `clear_after`; `idle` is how long it has been since its
/// last activity. A busy provider is looked at again a whole `clear_after` later (its
/// idle time starts when it stops being busy).
pub(crate) fn idle_step(busy: bool, idle: Duration, clear_after: Duration) -> Idle {
    if busy {
        Idle::Wait(clear_after)
    } else if idle >= clear_after {
        Idle::Release
    } else {
        Idle::Wait(clear_after - idle)
    }
}

/// How long after its `attempts`-th failed load in a row a provider may be loaded again:
/// 1 s, 2 s, 4 s… up to [`MAX_BACKOFF`].
pub(crate) fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The wait shown in "next attempt in …": whole seconds, rounded up.
pub(crate) fn shown_wait(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// A provider's recent crashes, for quarantine: `limit` crashes within `window` (a limit
/// of 0 never quarantines).
#[derive(Debug)]
pub(crate) struct Crashes {
    limit: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl Crashes {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Crashes {
            limit,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a crash at `now`; `Some(count)` when it quarantines the provider (the
    /// count of crashes within the window, which are then forgotten).
    pub(crate) fn record(&mut self, now: Instant) -> Option<usize> {
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.limit > 0 && self.recent.len() as u32 >= self.limit {
            let count = self.recent.len();
            self.recent.clear();
            Some(count)
        } else {
            None
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

/// How long a worker's news that a provider was used through a direct channel keeps it in
/// use: a quarter of its `clear_after`, so it is released between `clear_after` and
/// 1.25 × `clear_after` after its last direct call.
pub(crate) fn direct_keep(clear_after: Duration) -> Duration {
    (clear_after / 4).max(Duration::from_millis(1))
}

/// A dialog-capable call's deadline after it passed: while one of its dialogs is open
/// (`open`), one more `timeout` from `now`; after its last dialog closed (`last_end`),
/// `timeout` from that end if that is still ahead; else it stands (`None`).
pub(crate) fn extended_deadline(
    open: bool,
    last_end: Option<Instant>,
    timeout: Duration,
    now: Instant,
) -> Option<Instant> {
    if open {
        return Some(now + timeout);
    }
    last_end.map(|end| end + timeout).filter(|d| *d > now)
}

/// Why a silent connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Silence {
    /// A frame began and did not finish within `conn.frame_time`.
    Frame,
    /// Nothing was asked or held for `conn.idle`.
    Idle,
}

/// What a connection's timer does when it fires at `now`: close the connection, or look
/// again at the returned instant. A frame begun at `partial` must arrive within
/// `frame_time`; a connection that is `idle` (no request running, nothing held) may stay
/// silent for `idle_time` after `last_heard`; one that holds something is looked at again
/// an idle time from now. The next look is at least 10 ms away.
pub(crate) fn connection_check(
    now: Instant,
    partial: Option<Instant>,
    idle: bool,
    last_heard: Instant,
    frame_time: Duration,
    idle_time: Duration,
) -> Result<Instant, Silence> {
    let next = match partial {
        Some(since) if now >= since + frame_time => return Err(Silence::Frame),
        None if idle && now >= last_heard + idle_time => return Err(Silence::Idle),
        Some(since) => since + frame_time,
        None if idle => last_heard + idle_time,
        None => now + idle_time,
    };
    Ok(next.max(now + Duration::from_millis(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_idle_provider_is_released_exactly_at_clear_after_and_a_busy_one_never() {
        let clear = 30 * S;
        assert_eq!(idle_step(false, Duration::ZERO, clear), Idle::Wait(clear));
        assert_eq!(idle_step(false, 12 * S, clear), Idle::Wait(18 * S));
        assert_eq!(idle_step(false, clear, clear), Idle::Release);
        assert_eq!(idle_step(false, 31 * S, clear), Idle::Release);
        // A call running or a subscriber: never released, looked at again later.
        assert_eq!(idle_step(true, 10 * clear, clear), Idle::Wait(clear));
    }

    #[test]
    fn back_off_doubles_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(shown_wait(Duration::from_millis(1001)), 2 * S);
        assert_eq!(shown_wait(2 * S), 2 * S);
    }

    #[test]
    fn crashes_quarantine_only_within_the_window() {
        let t0 = Instant::now();
        let mut crashes = Crashes::new(3, 60 * S);
        assert_eq!(crashes.record(t0), None);
        assert_eq!(crashes.record(t0 + 10 * S), None);
        // The first crash has left the window: two recent, not three.
        assert_eq!(crashes.record(t0 + 61 * S), None);
        assert_eq!(crashes.record(t0 + 62 * S), Some(3));
        // Forgotten once quarantined: counting starts again.
        assert_eq!(crashes.record(t0 + 63 * S), None);
        let mut never = Crashes::new(0, 60 * S);
        assert!((0..100).all(|i| never.record(t0 + i * Duration::from_millis(1)).is_none()));
    }

    #[test]
    fn direct_use_keeps_a_quarter_of_clear_after() {
        assert_eq!(direct_keep(40 * S), 10 * S);
        assert_eq!(direct_keep(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn an_open_dialog_suspends_a_calls_deadline_and_its_end_restarts_it() {
        let now = Instant::now();
        let t = 5 * S;
        assert_eq!(extended_deadline(true, None, t, now), Some(now + t));
        assert_eq!(extended_deadline(false, None, t, now), None);
        // Closed 2 s ago: 3 s left.
        assert_eq!(
            extended_deadline(false, Some(now - 2 * S), t, now),
            Some(now + 3 * S)
        );
        // Closed longer ago than the timeout: the deadline stands.
        assert_eq!(extended_deadline(false, Some(now - 6 * S), t, now), None);
    }

    #[test]
    fn a_connection_closes_for_a_slow_frame_or_for_silence_while_holding_nothing() {
        let t0 = Instant::now();
        let (frame, idle) = (30 * S, 600 * S);
        let check = |now, partial, holds_nothing| {
            connection_check(now, partial, holds_nothing, t0, frame, idle)
        };
        // A frame begun at t0 must be done by t0 + 30 s, whatever else holds.
        assert_eq!(check(t0 + 10 * S, Some(t0), false), Ok(t0 + frame));
        assert_eq!(check(t0 + frame, Some(t0), false), Err(Silence::Frame));
        // Silent and holding nothing: closed after the idle time, looked at exactly then.
        assert_eq!(check(t0 + 10 * S, None, true), Ok(t0 + idle));
        assert_eq!(check(t0 + idle, None, true), Err(Silence::Idle));
        // Holding a subscription or a stream: never idle, looked at an idle time later.
        assert_eq!(check(t0 + 2 * idle, None, false), Ok(t0 + 3 * idle));
        // Never sooner than 10 ms from now.
        let late = t0 + frame - Duration::from_millis(1);
        assert_eq!(
            check(late, Some(t0), false),
            Ok(late + Duration::from_millis(10))
        );
    }
}
