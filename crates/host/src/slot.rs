//! One provider's lifecycle: registered → loading → loaded → releasing → registered, or
//! failed with a back-off before the next attempt (see `docs/lifecycle.md`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use purveyor_hosting::Hosted;
use purveyor_hosting::lock::Locked;
use purveyor_model::{ClassPath, ClassSchema, ProviderState, Timestamp};
use purveyor_protocol::{ErrorCode, ProviderStatus, RemoteError};
use tokio::sync::watch;
// The runtime's clock: the system's in the daemon, a paused one in tests
// (`requests::tests`), so the lifecycle is tested without sleeping.
use tokio::time::Instant;

use crate::accounting::{Histogram, Running, Usage, process_usage};
use crate::cache_control::CacheControl;
use crate::manifest::Manifest;
use crate::policy::{self, Crashes, FIRST_BACKOFF, Idle};

mod requestor;

/// The schemas a loaded provider serves, by class. (Looked up on every request: a fast
/// hash, as in the registry; class paths are validated names, not attacker-chosen keys
/// in a way that matters here, and foldhash is seeded per process.)
pub(crate) type SchemaSet = HashMap<ClassPath, Arc<ClassSchema>, foldhash::fast::RandomState>;

/// A subscription's hold on its provider: see [`Slot::pin`].
pub(crate) struct SlotPin(Arc<Slot>);

impl Drop for SlotPin {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
        // Its idle time counts from the end of the last subscription.
        self.0.touch();
    }
}

/// A provider that is loaded and serving. Calls hold an `Arc` to it, so a release waits
/// for nothing and in-flight calls finish on the instance they started with.
pub(crate) struct Loaded {
    hosted: Hosted,
    schemas: SchemaSet,
    /// Held while it is loaded: closes its dialogs when it is released (its process's
    /// end closes them sooner, with the reason).
    _hold: Option<Box<dyn Send + Sync>>,
}

impl Loaded {
    pub fn new(hosted: Hosted, schemas: SchemaSet, hold: Option<Box<dyn Send + Sync>>) -> Self {
        Loaded {
            hosted,
            schemas,
            _hold: hold,
        }
    }

    /// The provider, wherever it runs.
    pub fn hosted(&self) -> &Hosted {
        &self.hosted
    }

    /// The schemas of the classes its manifest lists.
    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// Whether its calls run on the calling thread ([`Hosted::calls_inline`]).
    pub fn calls_inline(&self) -> bool {
        self.hosted.calls_inline()
    }
}

/// Why a loaded provider is lost.
pub(crate) enum Lost {
    /// Its process ended (crash, exit, signal): counts towards quarantine.
    Crashed(String),
    /// Its process was killed after a missed deadline: restarted on next use.
    Killed,
    /// An in-daemon provider that missed a deadline: marked failed (its thread may still
    /// be stuck in it), retried after the back-off.
    Failed(RemoteError),
}

/// What a load produced.
pub(crate) type LoadResult = Result<Loaded, RemoteError>;

/// How often a provider with a memory limit has its resident memory looked at.
const MEMORY_CHECK: Duration = Duration::from_millis(100);

/// One provider's place in the host: its manifest, its lifecycle state, and its
/// statistics.
pub(crate) struct Slot {
    manifest: Manifest,
    /// The kinds' `clear_after` windows, for a manifest that gives none
    /// (`cache_control.rs`); `None` in tests of the slot alone.
    cache: Option<Arc<CacheControl>>,
    // Invariant: the state only moves Registered|Failed → Loading → Loaded|Failed and
    // Loaded → Releasing → Registered; only the task that moved it to Loading or Releasing
    // moves it on, and it then signals the watch so waiters look again.
    state: Mutex<State>,
    loads: AtomicU64,
    unloads: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds after `born` at the end of the last call; 0 when never used.
    last_use: AtomicU64,
    last_error: Mutex<Option<String>>,
    crashes: AtomicU64,
    /// Calls that missed their deadline.
    timeouts: AtomicU64,
    /// Times its process was stopped for passing a limit.
    limit_kills: AtomicU64,
    /// CPU time of its calls on the host's threads (builtin, in-daemon), in nanoseconds.
    inline_cpu_ns: AtomicU64,
    /// Every call's wall time (`accounting.rs`).
    latency: Histogram,
    /// Its calls running on host threads now, for their CPU so far.
    running: Running,
    /// Recent crashes, for quarantine.
    recent_crashes: Mutex<Crashes>,
    in_flight: AtomicU32,
    /// A reload changed or removed this provider: it never loads again (`reload.rs`).
    retired: AtomicBool,
    /// Open subscriptions to its classes: while there are any, it is not idle-unloaded
    /// (it is the source of their events).
    subscribers: AtomicU32,
    /// Nanoseconds after `born` of the last activity (a call starting or ending, a load).
    last_activity: AtomicU64,
    born: Instant,
    /// The wall clock at `born`: `last_use` is shown as `born_wall` plus it, so a call
    /// reads the clock once (`docs/performance.md`).
    born_wall: Timestamp,
    /// `user = "requestor"`: each user's own slot (this one never loads).
    requestors: Option<requestor::Requestors>,
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
    Quarantined(RemoteError),
    ReleasedAsClient,
}

impl Slot {
    /// A registered provider, quarantined after `crashes` crashes within `window`, whose
    /// `clear_after` is `cache`'s for its kind unless its manifest gives one.
    pub fn new(
        manifest: Manifest,
        crashes: u32,
        window: Duration,
        cache: Option<Arc<CacheControl>>,
    ) -> Self {
        let per_user = manifest.requestor && manifest.run_as.is_none();
        let requestors =
            per_user.then(|| requestor::Requestors::new(crashes, window, cache.clone()));
        Slot {
            requestors,
            manifest,
            cache,
            state: Mutex::new(State::Registered),
            loads: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_use: AtomicU64::new(0),
            last_error: Mutex::new(None),
            crashes: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            limit_kills: AtomicU64::new(0),
            inline_cpu_ns: AtomicU64::new(0),
            latency: Histogram::default(),
            running: Running::default(),
            recent_crashes: Mutex::new(Crashes::new(crashes, window)),
            in_flight: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            subscribers: AtomicU32::new(0),
            last_activity: AtomicU64::new(0),
            born: Instant::now(),
            born_wall: Timestamp::now(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How long the provider may stay idle before it is released: its manifest's
    /// `clear_after`, else its kind's window now (`purveyor.cache_control`).
    pub fn clear_after(&self) -> Duration {
        match &self.cache {
            Some(cache) if !self.manifest.clear_after_given => cache.get(self.manifest.kind),
            _ => self.manifest.clear_after,
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
            if self.retired.load(Ordering::Acquire) {
                return Err(self.error(
                    ErrorCode::NotFound,
                    format!(
                        "provider {} was changed or removed by a reload; ask again",
                        self.manifest().name
                    ),
                ));
            }
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
                            humantime::format_duration(policy::shown_wait(wait))
                        );
                        return Err(error);
                    }
                    State::Quarantined(error) => return Err(error.clone()),
                    State::Registered | State::ReleasedAsClient | State::Failed { .. } => {
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
                                        format!(
                                            "loading provider {} panicked",
                                            slot.manifest().name
                                        ),
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

    fn finish_load(self: &Arc<Self>, result: LoadResult, attempts: u32) {
        let mut state = self.lock();
        match result {
            Ok(loaded) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(provider = %self.manifest().name, pid = ?loaded.hosted.pid(), "provider loaded");
                let loaded = Arc::new(loaded);
                self.touch();
                *state = State::Loaded(loaded.clone());
                drop(state);
                self.watch_idle(&loaded);
                if let Some(limit) = self.manifest.limits.memory {
                    self.watch_memory(&loaded, limit);
                }
            }
            Err(error) => {
                let attempts = attempts + 1;
                let backoff = policy::backoff(attempts);
                tracing::warn!(provider = %self.manifest().name, error = %error, attempts, "provider failed to load");
                self.record_error(&error);
                *state = State::Failed {
                    error,
                    retry_at: Instant::now() + backoff,
                    attempts,
                };
            }
        }
    }

    /// Releases the provider if it is loaded: no new call reaches it, calls in flight get
    /// up to its call timeout to finish, its cleanup hook runs (bounded by the same
    /// timeout), its process exits, and it returns to `registered` — or, if it is not pure,
    /// to `released-as-client`.
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
        tracing::info!(provider = %self.manifest().name, why, "releasing provider");
        let timeout = self.manifest().call_timeout;
        let drained = tokio::time::timeout(timeout, async {
            while self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(provider = %self.manifest().name, "calls still running at release; releasing anyway");
        }
        let shared = self.shared_process().is_some();
        // Its process's CPU stays charged to it after the process is gone (a shared
        // worker's goes on counting in the process).
        if !shared && let Some(used) = loaded.hosted.pid().and_then(process_usage) {
            self.charge_cpu(used.cpu);
        }
        loaded
            .hosted
            .release(timeout, self.manifest().pure, shared)
            .await;
        *self.lock() = if self.manifest().pure {
            State::Registered
        } else {
            State::ReleasedAsClient
        };
        self.unloads.fetch_add(1, Ordering::Relaxed);
        drop(tx);
        // The last reference may run a library's cleanup entry point: not on this thread.
        tokio::task::spawn_blocking(move || drop(loaded));
    }

    /// What a process end says of a limit: the kernel ends a process past its CPU time
    /// limit with SIGXCPU.
    pub fn limit_note(&self, why: &str) -> Option<String> {
        let cpu = self.manifest.limits.cpu?;
        why.contains("SIGXCPU").then(|| {
            format!(
                ": CPU time limit {} exceeded",
                humantime::format_duration(cpu)
            )
        })
    }

    /// No load from now on: a reload replaced or removed this provider.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.user_slots().iter().for_each(|s| s.retire());
    }

    /// The host group, when this provider shares a worker.
    fn shared_process(&self) -> Option<&str> {
        match &self.manifest().entry {
            crate::manifest::Entry::Library { host_group, .. } => host_group.as_deref(),
            _ => None,
        }
    }

    /// Whether `loaded` is still what this slot serves (not released, crashed or replaced).
    pub fn is_current(&self, loaded: &Arc<Loaded>) -> bool {
        matches!(&*self.lock(), State::Loaded(current) if Arc::ptr_eq(current, loaded))
    }

    /// Forgets `loaded` after it was lost (see [`Lost`]), if it is still the current one.
    pub fn lost(&self, loaded: &Arc<Loaded>, how: Lost) {
        let mut state = self.lock();
        let State::Loaded(current) = &*state else {
            return;
        };
        if !Arc::ptr_eq(current, loaded) {
            return;
        }
        match how {
            Lost::Killed => {
                self.crashes.fetch_add(1, Ordering::Relaxed);
                *state = State::Registered;
            }
            Lost::Crashed(mut why) => {
                self.crashes.fetch_add(1, Ordering::Relaxed);
                if let Some(note) = self.limit_note(&why) {
                    why.push_str(&note);
                    self.limit_kills.fetch_add(1, Ordering::Relaxed);
                }
                let mut recent = self.recent_crashes.locked();
                *state = match recent.record(Instant::now().into_std()) {
                    Some(count) => {
                        let name = &self.manifest().name;
                        let error = self.error(
                            ErrorCode::ProviderFailed,
                            format!(
                                "provider {name} is quarantined: it crashed {count} times within {} (last: {why}); run `purveyor providers enable {name}`",
                                humantime::format_duration(recent.window())
                            ),
                        );
                        tracing::error!(provider = %name, "provider quarantined");
                        State::Quarantined(error)
                    }
                    None => State::Registered,
                };
            }
            Lost::Failed(error) => {
                *state = State::Failed {
                    error,
                    retry_at: Instant::now() + FIRST_BACKOFF,
                    attempts: 1,
                };
            }
        }
    }

    /// The loaded provider if it is loaded now (no waiting, no loading).
    pub fn loaded_now(&self) -> Option<Arc<Loaded>> {
        match &*self.lock() {
            State::Loaded(loaded) => Some(loaded.clone()),
            _ => None,
        }
    }

    /// Lets a quarantined provider load again. False if it was not quarantined.
    pub fn enable(&self) -> bool {
        let mut state = self.lock();
        if matches!(&*state, State::Quarantined(_)) {
            *state = State::Registered;
            true
        } else {
            false
        }
    }

    /// Kills the provider's process, if it has one (shutdown, after the grace period).
    pub fn kill_process(&self) {
        if let State::Loaded(loaded) = &*self.lock()
            && self.manifest().pure
        {
            loaded.hosted.kill(None);
        }
    }

    /// A call starts, unless the manifest's `limits.calls` (calls running at once) are
    /// running: counted and checked in one step, so two calls cannot both take the last
    /// place. A passive call (an exporter's scrape) keeps the provider from being released
    /// while it runs but does not count as use. No clock here: while a call runs the
    /// provider is busy, not idle, and its idle time counts from the call's end.
    pub fn begin_limited_call(&self) -> Result<(), RemoteError> {
        let running = self.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.manifest.limits.calls {
            Some(cap) if running >= cap => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(self.error(
                    ErrorCode::LimitExceeded,
                    format!(
                        "provider {} has {running} calls running, its limit (limits.calls = {cap})",
                        self.manifest.name
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// A call ended: its end is the provider's last use, and (unless passive) its last
    /// activity.
    pub fn end_call(&self, passive: bool) {
        let now = self.since_born();
        if !passive {
            self.last_activity.fetch_max(now, Ordering::AcqRel);
        }
        self.last_use.fetch_max(now.max(1), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A worker's news of direct calls (`DirectNews::Used`): `calls` ended, `errors` of
    /// them failed; with `keep` above zero the provider was used now and counts as in use
    /// until `keep` from now (the worker tells again if it is used after that).
    pub fn used_directly(&self, calls: u64, errors: u64, keep: Duration) {
        if !keep.is_zero() {
            let now = self.since_born();
            self.last_activity
                .fetch_max(now + keep.as_nanos() as u64, Ordering::AcqRel);
            self.last_use.fetch_max(now.max(1), Ordering::Relaxed);
        }
        self.calls.fetch_add(calls, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    fn since_born(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    fn touch(&self) {
        self.last_activity
            .fetch_max(self.since_born(), Ordering::AcqRel);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last_activity.load(Ordering::Acquire));
        self.born.elapsed().saturating_sub(last)
    }

    /// Releases `loaded` once it has been idle for `clear_after`: the rule is "released
    /// at the first moment it has had no call running for `clear_after`", checked by a
    /// timer set to exactly that moment (so the delay past it is timer latency only). A
    /// change of its kind's window (`purveyor.cache_control`) wakes the timer, which then
    /// looks again with the new window.
    fn watch_idle(self: &Arc<Self>, loaded: &Arc<Loaded>) {
        let slot = Arc::downgrade(self);
        let loaded = Arc::downgrade(loaded);
        let mut changed = self.cache.as_ref().map(|c| c.watch());
        tokio::spawn(async move {
            loop {
                let Some(s) = slot.upgrade() else { return };
                let current = matches!(&*s.lock(), State::Loaded(l) if std::ptr::eq(Arc::as_ptr(l), loaded.as_ptr()));
                if !current {
                    return;
                }
                let busy = s.in_flight.load(Ordering::Acquire) > 0
                    || s.subscribers.load(Ordering::Acquire) > 0;
                let wait = match policy::idle_step(busy, s.idle_for(), s.clear_after()) {
                    Idle::Release => {
                        s.release("idle").await;
                        return;
                    }
                    Idle::Wait(wait) => wait,
                };
                drop(s);
                let woken = match &mut changed {
                    Some(changed) => tokio::select! {
                        () = tokio::time::sleep(wait) => true,
                        result = changed.changed() => result.is_ok(),
                    },
                    None => {
                        tokio::time::sleep(wait).await;
                        true
                    }
                };
                if !woken {
                    // The host is gone: its cache control with it.
                    changed = None;
                }
            }
        });
    }

    /// Stops the provider's process when its resident memory passes `limit` (its
    /// manifest's `limits.memory`), looking every [`MEMORY_CHECK`] while it is loaded. The
    /// process ends as a crash whose reason names the limit, so a provider that keeps
    /// passing it is quarantined like any crash loop.
    fn watch_memory(self: &Arc<Self>, loaded: &Arc<Loaded>, limit: u64) {
        let slot = Arc::downgrade(self);
        let loaded = Arc::downgrade(loaded);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MEMORY_CHECK).await;
                let (Some(s), Some(l)) = (slot.upgrade(), loaded.upgrade()) else {
                    return;
                };
                if !s.is_current(&l) {
                    return;
                }
                let Some(used) = l.hosted.pid().and_then(process_usage) else {
                    continue;
                };
                if used.rss_bytes > limit {
                    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                    let why = format!(
                        "memory limit {:.0} MiB exceeded (resident {:.1} MiB)",
                        mib(limit),
                        mib(used.rss_bytes)
                    );
                    tracing::warn!(provider = %s.manifest().name, %why, "provider stopped at its limit");
                    s.limit_kills.fetch_add(1, Ordering::Relaxed);
                    l.hosted.kill(Some(&why));
                    let name = s.manifest().name.clone();
                    s.record_error(&s.error(
                        ErrorCode::ProviderFailed,
                        format!("provider {name} was stopped: {why}"),
                    ));
                    s.lost(&l, Lost::Crashed(why));
                    return;
                }
            }
        });
    }

    /// Keeps the provider loaded for as long as the returned guard lives (a subscription
    /// to one of its classes).
    pub fn pin(self: &Arc<Self>) -> SlotPin {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        SlotPin(self.clone())
    }

    /// Records one call's outcome and how long it took.
    pub fn record_call(&self, error: Option<&RemoteError>, took: Option<Duration>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            self.latency.record(took);
        }
        if error.is_some_and(|e| e.code == ErrorCode::Timeout) {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(error) = error {
            self.record_error(error);
        }
    }

    /// Its calls running on host threads now.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Charges CPU time spent in one of its calls on a host thread.
    pub fn charge_cpu(&self, cpu: Duration) {
        self.inline_cpu_ns
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
    }

    /// What the provider has cost (`accounting.rs`).
    pub fn usage(&self) -> Usage {
        let (pid, bytes) = match &*self.lock() {
            State::Loaded(l) => (l.hosted.pid(), l.hosted.bytes()),
            _ => (None, None),
        };
        let process = pid.and_then(process_usage);
        let inline = Duration::from_nanos(self.inline_cpu_ns.load(Ordering::Relaxed))
            + self.running.so_far();
        Usage {
            cpu: inline + process.map(|p| p.cpu).unwrap_or_default(),
            rss_bytes: process.map(|p| p.rss_bytes),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            limit_kills: self.limit_kills.load(Ordering::Relaxed),
            bytes,
            p50: self.latency.quantile(0.5),
            p99: self.latency.quantile(0.99),
        }
    }

    /// Records a failure that is not a call of its own (a failed load, a bad answer).
    pub fn record_error(&self, error: &RemoteError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.locked();
        *last = Some(error.message.clone());
    }

    pub fn state(&self) -> ProviderState {
        state_of(&self.lock())
    }

    pub fn status(&self) -> ProviderStatus {
        let last_use = match self.last_use.load(Ordering::Relaxed) {
            0 => None,
            since_born => Some(Timestamp(
                self.born_wall
                    .0
                    .saturating_add(since_born.min(i64::MAX as u64) as i64),
            )),
        };
        let (state, pid) = {
            let guard = self.lock();
            let pid = match &*guard {
                State::Loaded(l) => l.hosted.pid(),
                _ => None,
            };
            (state_of(&guard), pid)
        };
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let unload_in_ms = (state == ProviderState::Loaded && in_flight == 0).then(|| {
            self.clear_after()
                .saturating_sub(self.idle_for())
                .as_millis() as u64
        });
        ProviderStatus {
            name: self.manifest().name.clone(),
            hosting: self.manifest().hosting,
            state,
            classes: self.manifest().classes.clone(),
            pure: self.manifest().pure,
            clear_after_ms: self.manifest().clear_after.as_millis() as u64,
            manifest: self.manifest().source.to_string(),
            loads: self.loads.load(Ordering::Relaxed),
            unloads: self.unloads.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_use,
            last_error: self.last_error.locked().clone(),
            pid,
            crashes: self.crashes.load(Ordering::Relaxed),
            in_flight,
            unload_in_ms,
        }
    }

    /// Its name and the reads its manifest offers, for building answers
    /// ([`purveyor_hosting::answer`]).
    pub fn offers(&self) -> purveyor_hosting::answer::Offers<'_> {
        purveyor_hosting::answer::Offers {
            name: &self.manifest().name,
            get: self.manifest().offers(purveyor_model::Capability::Get),
            enumerate: self
                .manifest()
                .offers(purveyor_model::Capability::Enumerate),
        }
    }

    /// An error about this provider, carrying its name.
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError::new(code, message).with_provider(self.manifest().name.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed (every
        // assignment is a single move), so a poisoned lock is still consistent.
        self.state.locked()
    }
}

fn state_of(state: &State) -> ProviderState {
    match state {
        State::Registered => ProviderState::Registered,
        State::Loading(_) => ProviderState::Loading,
        State::Loaded(_) => ProviderState::Loaded,
        State::Releasing(_) => ProviderState::Releasing,
        State::Failed { .. } => ProviderState::Failed,
        State::Quarantined(_) => ProviderState::Quarantined,
        State::ReleasedAsClient => ProviderState::ReleasedAsClient,
    }
}
