//! Brief polling before blocking, for both ends of a connection (`docs/performance.md`,
//! "Placement").
//!
//! On a machine whose idle CPUs halt (most VMs), waking a thread that sleeps on another
//! CPU costs tens of microseconds — more than the whole request. A side that expects an
//! answer within microseconds therefore looks at its socket for a short window before it
//! blocks: the client after sending a request, the daemon after answering one when
//! requests arrive back to back ([`BACK_TO_BACK`]), and an isolated worker after
//! answering on a direct channel, by the same rule. Between looks it yields the CPU, so a peer on the same
//! CPU runs at once and loses nothing. The window is `PURVEYOR_POLL_US` microseconds
//! (default [`DEFAULT_POLL`], at most [`MAX_POLL`]; `0` turns polling off).

use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A request this soon after the previous reply marks a client asking back to back: the
/// side that answered looks for its next request before blocking.
pub const BACK_TO_BACK: Duration = Duration::from_millis(1);

/// The polling window when `PURVEYOR_POLL_US` is not set.
pub const DEFAULT_POLL: Duration = Duration::from_micros(50);
/// The longest window `PURVEYOR_POLL_US` may ask for.
pub const MAX_POLL: Duration = Duration::from_millis(1);

/// The polling window of this process: `PURVEYOR_POLL_US`, read once.
pub fn poll_window() -> Duration {
    static WINDOW: OnceLock<Duration> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        std::env::var("PURVEYOR_POLL_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_POLL, |us| Duration::from_micros(us).min(MAX_POLL))
    })
}

/// Looks at `fd` for input (or its end) until `window` has passed, yielding the CPU
/// between looks — or, once a yield gave the CPU to another thread, one last time; whether
/// there is something to read. Never blocks.
pub fn readable_within(fd: RawFd, window: Duration) -> bool {
    any_readable_within(&mut [pollfd(fd)], window)
}

/// [`readable_within`] for several descriptors (`POLLIN` each, as [`pollfd`] makes them):
/// whether any has something to read.
pub fn any_readable_within(fds: &mut [libc::pollfd], window: Duration) -> bool {
    if window.is_zero() {
        return false;
    }
    let started = Instant::now();
    loop {
        let n = look(fds);
        if n > 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
        if started.elapsed() >= window {
            return false;
        }
        let before = Instant::now();
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
        if before.elapsed() >= SHARED_CPU {
            // Something else ran on this CPU meanwhile (the peer, likely): polling only
            // adds switches here. One last look, then the caller blocks.
            return look(fds) > 0;
        }
    }
}

/// A yield that takes this long gave the CPU to another thread.
const SHARED_CPU: Duration = Duration::from_micros(3);

/// The `pollfd` that asks whether `fd` has input.
pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Whether `fd` has input (or its end) now.
pub fn readable_now(fd: RawFd) -> bool {
    look(&mut [pollfd(fd)]) > 0
}

/// One look at `fds`, without waiting: `poll`'s answer.
fn look(fds: &mut [libc::pollfd]) -> i32 {
    // SAFETY: a valid array of its length, a zero timeout.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_socket_with_input_is_seen_at_once_and_a_silent_one_after_the_window() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Silent: no input, and the look ends (after the window, or sooner when a yield
        // gave the CPU to another thread).
        let started = Instant::now();
        assert!(!readable_within(b.as_raw_fd(), Duration::from_millis(2)));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!readable_within(b.as_raw_fd(), Duration::ZERO));
        a.write_all(b"x").unwrap();
        assert!(readable_within(b.as_raw_fd(), Duration::from_secs(5)));
        // The peer's end is input too: the reader learns it at once.
        let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(c);
        assert!(readable_within(d.as_raw_fd(), Duration::from_secs(5)));
    }
}
