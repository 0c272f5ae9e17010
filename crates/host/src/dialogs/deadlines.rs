//! Dialog deadlines: one thread per host, started with the first dialog, that closes
//! each dialog when its deadline passes (both sides told why) and sleeps until the next.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{DialogHub, close, run};

impl DialogHub {
    /// Starts the thread that closes dialogs past their deadline (once).
    pub(super) fn start_deadlines(self: &Arc<Self>) {
        self.deadline_thread.get_or_init(|| {
            let hub = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("purveyor-dialogs".into())
                .spawn(move || expire_loop(hub));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the dialog deadline thread; dialogs have no deadline");
            }
        });
    }
}

/// Closes dialogs past their deadline until the hub goes or stops.
fn expire_loop(hub: Weak<DialogHub>) {
    loop {
        let Some(hub) = hub.upgrade() else { return };
        let mut after = Vec::new();
        {
            let mut state = hub.lock();
            if state.stop {
                return;
            }
            let now = Instant::now();
            let late: Vec<(u32, Duration)> = state
                .dialogs
                .iter()
                .filter(|(_, d)| d.deadline <= now)
                .map(|(h, d)| (*h, d.span))
                .collect();
            for (handle, span) in late {
                let reason = format!(
                    "its deadline passed (open for {})",
                    humantime::format_duration(span)
                );
                close(&mut state, handle, &reason, true, true, &mut after);
            }
        };
        run(after);
        let state = hub.lock();
        // Read under the lock the wait releases, so an open's wake-up cannot be missed.
        let next = state.dialogs.values().map(|d| d.deadline).min();
        let wait = next.map_or(Duration::from_secs(60), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if !wait.is_zero() {
            // Woken early when a dialog with an earlier deadline opens.
            let _unused = hub.wake.wait_timeout(state, wait);
        }
    }
}
