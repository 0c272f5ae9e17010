//! The spare worker: one isolated worker started ahead of need, so that loading an
//! isolated provider does not wait for a process to start (two forks, an exec of the
//! `purveyor` binary, its start-up and hello: most of an isolated cold start).
//!
//! The next isolated provider that needs a worker of its own (or a host group's first
//! provider) takes the spare, renames it (`worker for provider NAME`) and loads its
//! library into it; another spare is started behind it after [`REFILL_PAUSE`], so that
//! starting it does not compete with the load that took the last one. Only a daemon keeps
//! a spare, and only after its first isolated load; `PURVEYOR_SPARE_WORKER=0` turns it
//! off (`docs/lifecycle.md`). A spare holds no provider and no client's state: it is the
//! same program, started the same way, as any worker, and it is killed with the host.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use purveyor_hosting::lock::Locked;
use purveyor_hosting::{ProcessConn, spawn_worker};

/// How long after a spare was taken the next one starts.
const REFILL_PAUSE: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct SpareWorker {
    worker: std::sync::Mutex<Option<Arc<ProcessConn>>>,
    /// A spare is being started.
    starting: AtomicBool,
}

impl SpareWorker {
    /// The spare, if there is one and it is alive.
    pub fn take(&self) -> Option<Arc<ProcessConn>> {
        self.worker
            .locked()
            .take()
            .filter(|w| w.dead_reason().is_none())
    }

    /// Starts a spare in the background (`program worker`, its hello answered within
    /// `timeout`) unless there is one or one is starting.
    pub fn refill(self: &Arc<Self>, program: PathBuf, timeout: Duration) {
        if self.worker.locked().is_some() || self.starting.swap(true, Ordering::SeqCst) {
            return;
        }
        let spare = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_PAUSE).await;
            let unconfined = purveyor_hosting::Confine::default();
            match spawn_worker(
                &program,
                "spare",
                "spare worker".into(),
                timeout,
                &unconfined,
            )
            .await
            {
                Ok(worker) => {
                    spare.worker.locked().get_or_insert(worker);
                }
                Err(e) => tracing::warn!(error = %e, "cannot start a spare worker"),
            }
            spare.starting.store(false, Ordering::SeqCst);
        });
    }
}
