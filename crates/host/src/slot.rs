//! One provider's lifecycle: registered → loading → loaded → releasing → registered, or
//! failed with a back-off before the next attempt (see `docs/lifecycle.md`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use purveyor_model::{ClassPath, ClassSchema, ProviderState, Timestamp};
use purveyor_protocol::{ErrorCode, ProviderStatus, RemoteError};
use purveyor_provider::Provider;
use tokio::sync::watch;

use crate::builtin::Dispatch;
use crate::manifest::Manifest;

/// The schemas a loaded provider serves, by class.
pub(crate) type SchemaSet = HashMap<ClassPath, Arc<ClassSchema>>;

/// A provider that is loaded and serving. Calls hold an `Arc` to it, so a release waits
/// for nothing and in-flight calls finish on the instance they started with.
pub(crate) struct Loaded {
    pub provider: Arc<dyn Provider>,
    pub dispatch: Dispatch,
    pub schemas: SchemaSet,
}

/// What a load produced.
pub(crate) type LoadResult = Result<Loaded, RemoteError>;

/// The longest wait between two load attempts of a failing provider.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The wait after the first failed load; it doubles with each further failure.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Slot {
    pub manifest: Manifest,
    // Invariant: the state only moves Registered|Failed → Loading → Loaded|Failed and
    // Loaded → Releasing → Registered; only the task that moved it to Loading or Releasing
    // moves it on, and it then signals the watch so waiters look again.
    state: Mutex<State>,
    loads: AtomicU64,
    unloads: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds since the epoch; 0 when never used.
    last_use: AtomicI64,
    last_error: Mutex<Option<String>>,
}

enum State {
    Registered,
    Loading(watch::Receiver<()>),
    Loaded(Arc<Loaded>),
    Releasing(watch::Receiver<()>),
    Failed {
        error: RemoteError,
        retry_at: Instant,
        attempts: u32,
    },
}

impl Slot {
    pub fn new(manifest: Manifest) -> Self {
        Slot {
            manifest,
            state: Mutex::new(State::Registered),
            loads: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_use: AtomicI64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The loaded provider, loading it first if needed. Concurrent callers share one load:
    /// the first starts it on its own task (so a caller that goes away does not strand
    /// the others), the rest wait for it.
    pub async fn acquire<F, Fut>(self: &Arc<Self>, load: F) -> Result<Arc<Loaded>, RemoteError>
    where
        F: Fn(Arc<Slot>) -> Fut,
        Fut: std::future::Future<Output = LoadResult> + Send + 'static,
    {
        loop {
            let mut wait = {
                let mut state = self.lock();
                match &*state {
                    State::Loaded(loaded) => return Ok(loaded.clone()),
                    State::Loading(rx) | State::Releasing(rx) => rx.clone(),
                    State::Failed {
                        error, retry_at, ..
                    } if Instant::now() < *retry_at => {
                        let wait = retry_at.saturating_duration_since(Instant::now());
                        let mut error = error.clone();
                        error.message = format!(
                            "{} (next attempt in {})",
                            error.message,
                            humantime::format_duration(round_up_to_secs(wait))
                        );
                        return Err(error);
                    }
                    State::Registered | State::Failed { .. } => {
                        let attempts = match &*state {
                            State::Failed { attempts, .. } => *attempts,
                            _ => 0,
                        };
                        let (tx, rx) = watch::channel(());
                        *state = State::Loading(rx.clone());
                        drop(state);
                        let slot = self.clone();
                        let loading = load(slot.clone());
                        tokio::spawn(async move {
                            // Whatever happens, the slot leaves `loading`: a panic in the
                            // loader becomes a failed load, so waiters are never stranded.
                            let result = AssertUnwindSafe(loading)
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|_| {
                                    Err(slot.error(
                                        ErrorCode::Internal,
                                        format!("loading provider {} panicked", slot.manifest.name),
                                    ))
                                });
                            slot.finish_load(result, attempts);
                            drop(tx);
                        });
                        rx
                    }
                }
            };
            // The sender is dropped when the load or release finishes; then look again.
            while wait.changed().await.is_ok() {}
        }
    }

    fn finish_load(&self, result: LoadResult, attempts: u32) {
        let mut state = self.lock();
        match result {
            Ok(loaded) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(provider = %self.manifest.name, "provider loaded");
                *state = State::Loaded(Arc::new(loaded));
            }
            Err(error) => {
                let attempts = attempts + 1;
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << (attempts - 1).min(16))
                    .min(MAX_BACKOFF);
                tracing::warn!(provider = %self.manifest.name, error = %error, attempts, "provider failed to load");
                self.record_error(&error);
                *state = State::Failed {
                    error,
                    retry_at: Instant::now() + backoff,
                    attempts,
                };
            }
        }
    }

    /// Releases the provider if it is loaded: no new call reaches it, its cleanup hook runs
    /// (bounded by its call timeout), and it returns to `registered`.
    pub async fn release(self: &Arc<Self>, why: &str) {
        let (loaded, tx) = {
            let mut state = self.lock();
            let State::Loaded(loaded) = &*state else {
                return;
            };
            let loaded = loaded.clone();
            let (tx, rx) = watch::channel(());
            *state = State::Releasing(rx);
            (loaded, tx)
        };
        tracing::info!(provider = %self.manifest.name, why, "releasing provider");
        let provider = loaded.provider.clone();
        let hook = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider.release()))
        });
        match tokio::time::timeout(self.manifest.call_timeout, hook).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::warn!(provider = %self.manifest.name, "cleanup hook panicked"),
            Err(_) => {
                tracing::warn!(provider = %self.manifest.name, "cleanup hook did not finish in time")
            }
        }
        *self.lock() = State::Registered;
        self.unloads.fetch_add(1, Ordering::Relaxed);
        drop(tx);
    }

    /// Records one call's outcome.
    pub fn record_call(&self, error: Option<&RemoteError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.last_use.store(Timestamp::now().0, Ordering::Relaxed);
        if let Some(error) = error {
            self.record_error(error);
        }
    }

    /// Records a failure that is not a call of its own (a failed load, a bad answer).
    pub fn record_error(&self, error: &RemoteError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some(error.message.clone());
    }

    pub fn state(&self) -> ProviderState {
        match &*self.lock() {
            State::Registered => ProviderState::Registered,
            State::Loading(_) => ProviderState::Loading,
            State::Loaded(_) => ProviderState::Loaded,
            State::Releasing(_) => ProviderState::Releasing,
            State::Failed { .. } => ProviderState::Failed,
        }
    }

    pub fn status(&self) -> ProviderStatus {
        let last_use = self.last_use.load(Ordering::Relaxed);
        ProviderStatus {
            name: self.manifest.name.clone(),
            hosting: self.manifest.hosting,
            state: self.state(),
            classes: self.manifest.classes.clone(),
            pure: self.manifest.pure,
            clear_after_ms: self.manifest.clear_after.as_millis() as u64,
            manifest: self.manifest.source.to_string(),
            loads: self.loads.load(Ordering::Relaxed),
            unloads: self.unloads.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_use: (last_use != 0).then_some(Timestamp(last_use)),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    /// An error about this provider, carrying its name.
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError::new(code, message).with_provider(self.manifest.name.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed (every
        // assignment is a single move), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn round_up_to_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}
