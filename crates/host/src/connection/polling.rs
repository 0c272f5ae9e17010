//! When a connection looks at its socket before blocking.
//!
//! On a machine whose idle CPUs halt, a connection task that blocks after each reply is
//! woken for the next request on a halted CPU, which costs more than the request
//! (`docs/performance.md`, "Placement"). A connection whose last request came within
//! [`BACK_TO_BACK`] of the reply before it looks at its socket for `HostConfig::poll`
//! (`PURVEYOR_POLL_US`, default 50 µs) before going back to the runtime, yielding the CPU
//! between looks. A client that asks once a second never makes it poll; one that asks
//! back to back costs at most the window per request. While it polls, the task's other
//! events (a push, the timer, shutdown) wait at most the window. A request that follows a
//! push (a dialog agent's input after an update) is not back to back: its client answers
//! the daemon, and polling for it would only hold the thread the push's sender needs.
//!
//! A thread looking at one socket keeps the other connections on that thread waiting. So
//! while more connections have sent requests in the last millisecond or two than the
//! runtime has threads, none polls ([`Recent::may_poll`]): with that many clients busy the
//! threads are not idle long enough for their CPUs to halt. Each connection counts itself
//! at most once per millisecond ([`Recent::note`]).
//!
//! A connection polling back to back never waits on the runtime, so it gives its thread
//! back when tokio's cooperative budget runs out (every 128 requests): the other tasks on
//! its thread run (a new connection's accept among them). On a runtime of two or more
//! threads, a connection whose requests are answered at once takes its socket off the
//! runtime's I/O driver while it polls (`crate::local_io`), so the idle runtime thread,
//! waiting in `epoll_wait`, is not woken by each of its requests.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

pub(super) use purveyor_protocol::poll::BACK_TO_BACK;

/// Connections that sent requests in this millisecond and the one before.
#[derive(Default)]
pub(super) struct Recent {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// The millisecond (since [`epoch`]) that `now` counts.
    at: u64,
    now: usize,
    before: usize,
}

impl Counts {
    /// Moves the window to millisecond `at`.
    fn roll(&mut self, at: u64) {
        if at == self.at {
            return;
        }
        self.before = if at == self.at + 1 { self.now } else { 0 };
        self.now = 0;
        self.at = at;
    }
}

/// This process's clock for [`Recent`], in milliseconds.
fn millisecond(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_millis() as u64
}

/// The connections of this process.
pub(super) fn recent() -> &'static Recent {
    static RECENT: OnceLock<Recent> = OnceLock::new();
    RECENT.get_or_init(Recent::default)
}

impl Recent {
    /// A connection sent a request at `t`; `noted` is the millisecond it was last
    /// counted in (kept by the connection, starting at `u64::MAX`).
    pub(super) fn note(&self, t: Instant, noted: &mut u64) {
        let at = millisecond(t);
        if *noted == at {
            return;
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have read a later clock first: never move the window back.
        let at = at.max(c.at);
        c.roll(at);
        c.now += 1;
        *noted = at;
    }

    /// Whether a connection may poll now on a runtime of `threads`.
    pub(super) fn may_poll(&self, threads: usize) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let at = millisecond(Instant::now()).max(c.at);
        c.roll(at);
        c.now.max(c.before) <= threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_connection_counts_once_per_millisecond_and_old_ones_fall_out() {
        let recent = Recent::default();
        let start = Instant::now();
        let (mut a, mut b) = (u64::MAX, u64::MAX);
        recent.note(start, &mut a);
        recent.note(start, &mut a);
        assert!(recent.may_poll(1), "one connection, noted twice, is one");
        recent.note(start, &mut b);
        assert!(!recent.may_poll(1), "two busy connections on one thread");
        assert!(recent.may_poll(2));
        // Two milliseconds on, the window has moved past both.
        let later = start + Duration::from_millis(2);
        let mut c = recent.counts.lock().unwrap();
        c.roll(millisecond(later) + 1);
        drop(c);
        assert!(recent.may_poll(1));
    }
}
