//! Deadlines for calls that run on the caller's own thread.
//!
//! An in-daemon library is called directly on the thread serving the request: no hand-off
//! to another thread, so the call costs what the library costs. Such a call cannot be
//! interrupted, so its deadline is kept by this watchdog instead: one thread per host,
//! started on first use, that runs a call's expiry action when the call is still running
//! past its deadline. The host's action marks the provider failed (no new call enters
//! it) and, when the request came over a socket, answers the client and closes that
//! connection, whose thread is stuck (see the host's `cx::CallSite`).
//!
//! **Invariants.** An expiry action runs at most once, with the state lock held, and only
//! while its call is still registered: a call cannot finish (and its connection cannot
//! close) while its action runs. A call is registered only inside [`Watchdog::within`],
//! which unregisters it before returning, by unwinding too; so the action, borrowed from
//! the caller's frame, is alive whenever the watchdog can reach it (no allocation, no
//! reference count per call). Registration takes one uncontended lock and wakes the
//! thread only when it has parked, which it does after a second with no calls.

use crate::lock::Locked;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How often a running watchdog looks for expired calls: the precision of a deadline.
const TICK: Duration = Duration::from_millis(10);
/// A watchdog that has seen no call for this long parks until the next one.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// A registered call's action, borrowed for the call's span ([`Watchdog::within`]).
struct Expiry(*const (dyn Fn() + Sync + 'static));

// SAFETY: the action is `Sync`, so it may be run from the watchdog's thread; the pointer is
// only followed while the call that lent it is registered (the module's invariants).
unsafe impl Send for Expiry {}

#[derive(Default)]
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: OnceLock<()>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Registered calls by index (a slab: registering reuses a free index, so it neither
    /// hashes nor allocates once the slab has grown to the number of concurrent calls).
    calls: Vec<Option<Watched>>,
    free: Vec<usize>,
    /// How many entries of `calls` are occupied.
    live: usize,
    parked: bool,
    /// Set when the host goes: the thread ends.
    stop: bool,
}

struct Watched {
    deadline: Instant,
    expiry: Option<Expiry>,
}

/// A registered call; dropping it unregisters the call.
struct Guard<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Watchdog {
    /// Runs `call`, which must finish by `deadline`: if it is still running then, the
    /// watchdog's thread runs `expiry` (once, while `call` goes on). Returns what `call`
    /// returned, and whether `expiry` ran.
    pub fn within<R>(
        &self,
        deadline: Instant,
        expiry: &(dyn Fn() + Sync),
        call: impl FnOnce() -> R,
    ) -> (R, bool) {
        // SAFETY: only the lifetime is widened. The guard below unregisters the call
        // before this function returns or unwinds, and the watchdog follows the pointer
        // only while the call is registered, under the lock that unregistering takes.
        let expiry = Expiry(unsafe {
            std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
                expiry,
            )
        });
        let guard = self.register(deadline, expiry);
        let result = call();
        let expired = guard.finish();
        (result, expired)
    }

    fn register(&self, deadline: Instant, expiry: Expiry) -> Guard<'_> {
        self.thread.get_or_init(|| {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("purveyor-watchdog".into())
                .spawn(move || run(&shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the deadline watchdog; in-daemon calls have no deadline");
            }
        });
        let mut state = self.shared.lock();
        let watched = Some(Watched {
            deadline,
            expiry: Some(expiry),
        });
        let index = match state.free.pop() {
            Some(index) => {
                state.calls[index] = watched;
                index
            }
            None => {
                state.calls.push(watched);
                state.calls.len() - 1
            }
        };
        state.live += 1;
        if state.parked {
            state.parked = false;
            self.shared.wake.notify_one();
        }
        Guard {
            shared: &self.shared,
            index,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
    }
}

impl Guard<'_> {
    /// Unregisters the call; true when its deadline had passed and its action ran.
    fn finish(self) -> bool {
        let expired = self
            .shared
            .lock()
            .remove(self.index)
            .is_some_and(|w| w.expiry.is_none());
        std::mem::forget(self);
        expired
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.shared.lock().remove(self.index);
    }
}

impl State {
    fn remove(&mut self, index: usize) -> Option<Watched> {
        let watched = self.calls.get_mut(index)?.take()?;
        self.free.push(index);
        self.live -= 1;
        Some(watched)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }
}

fn run(shared: &Shared) {
    let mut state = shared.lock();
    let mut last_seen = Instant::now();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        if state.live == 0 {
            if now.duration_since(last_seen) >= PARK_AFTER {
                state.parked = true;
                while state.parked && !state.stop {
                    state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                last_seen = Instant::now();
                continue;
            }
        } else {
            last_seen = now;
            for watched in state.calls.iter_mut().flatten() {
                if watched.deadline <= now
                    && let Some(Expiry(expiry)) = watched.expiry.take()
                {
                    // Under the lock: the call cannot finish while this runs.
                    // SAFETY: the call is registered, so the frame that lent the action
                    // is still running it (module invariants).
                    let expiry = unsafe { &*expiry };
                    if let Err(panic) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(expiry))
                    {
                        tracing::error!(
                            panic = %purveyor_provider::abi::panic_message(&*panic),
                            "a deadline action panicked"
                        );
                    }
                }
            }
        }
        state = shared
            .wake
            .wait_timeout(state, TICK)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn an_overdue_call_runs_its_action_once_and_a_prompt_one_never() {
        let dog = Watchdog::default();
        let fired = AtomicU32::new(0);
        let prompt_action = || {
            fired.fetch_add(100, Ordering::SeqCst);
        };
        let late_action = || {
            fired.fetch_add(1, Ordering::SeqCst);
        };
        // The late call runs inside the prompt one: both are registered at once.
        let ((late_value, late_expired), prompt_expired) = dog.within(
            Instant::now() + Duration::from_secs(60),
            &prompt_action,
            || {
                dog.within(
                    Instant::now() + Duration::from_millis(20),
                    &late_action,
                    || {
                        let give_up = Instant::now() + Duration::from_secs(5);
                        while fired.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        // Long enough for more ticks to pass it again.
                        std::thread::sleep(Duration::from_millis(50));
                        7
                    },
                )
            },
        );
        assert_eq!(late_value, 7);
        assert!(late_expired);
        assert!(!prompt_expired);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_call_that_panics_is_unregistered_and_its_action_never_runs() {
        let dog = Watchdog::default();
        let fired = AtomicU32::new(0);
        let action = || {
            fired.fetch_add(1, Ordering::SeqCst);
        };
        // Unwinds at once (no panic hook, no backtrace), well before the deadline.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dog.within(Instant::now() + Duration::from_millis(200), &action, || {
                std::panic::resume_unwind(Box::new("the call failed"))
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(dog.shared.lock().live, 0);
        // Past the deadline, with ticks to spare: had it stayed registered, it would fire.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert_eq!(dog.shared.lock().live, 0);
    }
}
