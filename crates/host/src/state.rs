//! The host's state: one owner for every piece of it, shared by the requests, the server
//! and the host's own provider through narrow accessors (no field is public).
//!
//! What changes at run time keeps its own lock or atomics: each provider's lifecycle in
//! its [`Slot`], subscriptions in the [`EventBus`], dialogs in the [`DialogHub`], `MEM `
//! buffers in [`purveyor_io::Memory`]. Nothing here is locked across an await except the
//! host-group map, which is held across a worker's spawn so one group gets one worker.

use crate::spare::SpareWorker;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use purveyor_hosting::lock::{Current, Locked};
use purveyor_hosting::{BuiltinProvider, ProcedureServer, ProcessConn, Watchdog};
use purveyor_model::{ProviderState, Timestamp};
use purveyor_protocol::{ErrorCode, HostStatus, PROTOCOL_VERSION, ProviderStatus, RemoteError};

use crate::access::AccessPolicy;
use crate::cache_control::CacheControl;
use crate::config::HostConfig;
use crate::dialogs::DialogHub;
use crate::events::EventBus;
use crate::registry::Registry;
use crate::streams::IoSlots;

/// What a reload re-reads besides the manifests, set by whoever serves the host (the
/// daemon's `serve` reads the policy and `http.toml`): called for the `reload` request and
/// on `SIGHUP`; it calls `Host::reload`. Without one, a reload re-reads the manifests only.
pub type ReloadHook =
    dyn Fn(&crate::Host) -> Result<purveyor_protocol::ReloadReport, RemoteError> + Send + Sync;

/// `purveyor/0.1.0`: how the host names itself in handshakes and status.
pub const SERVER_NAME: &str = concat!("purveyor/", env!("CARGO_PKG_VERSION"));

/// Everything one host holds.
pub(crate) struct Shared {
    config: HostConfig,
    /// The providers and who serves what; replaced as a whole by a reload (`reload.rs`).
    registry: Current<Registry>,
    /// The access policy in force: `config.access` at start, replaced by a reload.
    access: Arc<Current<AccessPolicy>>,
    /// How many times a reload has replaced `access` (bumped after the replacement):
    /// a direct channel is tagged with the number read before its permissions were
    /// decided, and closed by any reload after it.
    access_generation: AtomicU64,
    /// The kinds' `clear_after` windows (`purveyor.cache_control`).
    cache_control: Arc<CacheControl>,
    /// The providers compiled into this build, by the name manifests use.
    catalog: HashMap<String, BuiltinProvider>,
    started: Timestamp,
    /// This process's id, read once (getpid is a system call).
    pid: u32,
    socket: Mutex<Option<PathBuf>>,
    counters: Counters,
    shutting_down: AtomicBool,
    /// Shared workers by host group. Held across a spawn so one group gets one worker.
    workers: tokio::sync::Mutex<HashMap<String, Weak<ProcessConn>>>,
    /// An isolated worker started ahead of need (`crate::spare`).
    spare: Arc<SpareWorker>,
    /// SQL queries' connections, kept between queries (`purveyor_query::Engine`).
    queries: purveyor_query::Engine,
    /// Keeps the deadlines of in-daemon calls, which run on the requesting thread.
    watchdog: Watchdog,
    /// Subscriptions, and the events delivered to and dropped for them.
    events: Arc<EventBus>,
    /// The built-in I/O procedures (`DOS `, `MEM `, `GZ  `, `TAR `).
    builtin_io: Arc<ProcedureServer>,
    /// The built-in `MEM `, for its counters and its sweep.
    memory: Arc<purveyor_io::Memory>,
    /// Slots for the built-in procedures' blocking calls (`io.ops_*`).
    io_slots: IoSlots,
    /// Dialogs, UI agents and the calls that may open dialogs.
    dialogs: Arc<DialogHub>,
    /// What a reload re-reads besides the manifests (`reload.rs`).
    reloader: Mutex<Option<Arc<ReloadHook>>>,
    /// Held by the reload running: one at a time.
    one_reload: Mutex<()>,
    /// The releases of the providers the last reloads retired, until someone waits for
    /// them (`reload::settle`).
    retiring: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The host's own counts, shown by `status` and `purveyor.host`.
#[derive(Default)]
pub(crate) struct Counters {
    connections_open: AtomicU32,
    connections_total: AtomicU64,
    /// Connections refused by a limit (`conn.total`, `conn.per_user`).
    connections_refused: AtomicU64,
    /// HTTP connections refused by `http.connections`.
    http_refused: AtomicU64,
    /// Remote connections refused before their session (`purveyor-remote`).
    remote_refused: AtomicU64,
    requests: AtomicU64,
}

/// The counts at one moment.
pub(crate) struct Counts {
    pub connections_open: u32,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub http_refused: u64,
    pub remote_refused: u64,
    pub requests: u64,
}

impl Counters {
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn http_refused(&self) {
        self.http_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remote_refused(&self) {
        self.remote_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn now(&self) -> Counts {
        Counts {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            http_refused: self.http_refused.load(Ordering::Relaxed),
            remote_refused: self.remote_refused.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// The host's state for `config`, serving `builtins` (the host's own provider among
    /// them).
    pub fn new(config: HostConfig, builtins: Vec<BuiltinProvider>) -> Self {
        // Kept across restarts by a daemon; an embedded host keeps its settings for itself.
        let kept =
            (config.mode == purveyor_protocol::HostMode::Daemon).then(CacheControl::default_file);
        let cache_control = Arc::new(CacheControl::new(config.clear_after, kept));
        let registry = Current::new(Arc::new(Registry::build(
            &config,
            builtins.iter(),
            None,
            Some(&cache_control),
        )));
        let catalog = builtins.into_iter().map(|b| (b.name.clone(), b)).collect();
        let access = Arc::new(Current::new(config.access.clone()));
        let dialogs = Arc::new(DialogHub::new(access.clone()));
        let memory = Arc::new(purveyor_io::Memory::new(config.limits.io_mem));
        let builtin_io = purveyor_io::Registry::with_memory(memory.clone());
        let io_slots = IoSlots::new(&config.limits);
        Shared {
            dialogs,
            config,
            registry,
            access,
            access_generation: AtomicU64::new(0),
            cache_control,
            catalog,
            started: Timestamp::now(),
            pid: std::process::id(),
            socket: Mutex::new(None),
            counters: Counters::default(),
            shutting_down: AtomicBool::new(false),
            workers: tokio::sync::Mutex::new(HashMap::new()),
            spare: Arc::default(),
            queries: purveyor_query::Engine::default(),
            watchdog: Watchdog::default(),
            events: Arc::new(EventBus::default()),
            builtin_io: Arc::new(ProcedureServer::new(builtin_io)),
            memory,
            io_slots,
            reloader: Mutex::new(None),
            one_reload: Mutex::new(()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The registry now. A request keeps the one it took for as long as it runs.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.get()
    }

    /// Replaces the registry (a reload); returns the one replaced.
    pub fn set_registry(&self, registry: Registry) -> Arc<Registry> {
        self.registry.set(Arc::new(registry))
    }

    pub fn cache_control(&self) -> &Arc<CacheControl> {
        &self.cache_control
    }

    /// The access policy now.
    pub fn access(&self) -> Arc<AccessPolicy> {
        self.access.get()
    }

    /// Replaces the access policy (a reload); returns the new generation.
    pub fn set_access(&self, policy: AccessPolicy) -> u64 {
        self.access.set(Arc::new(policy));
        self.access_generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The access policy's generation: read it before deciding what a policy allows, so
    /// that a reload after the read counts as newer.
    pub fn access_generation(&self) -> u64 {
        self.access_generation.load(Ordering::SeqCst)
    }

    pub fn builtin(&self, name: &str) -> Option<&BuiltinProvider> {
        self.catalog.get(name)
    }

    /// The providers compiled into this build.
    pub fn builtins(&self) -> impl Iterator<Item = &BuiltinProvider> {
        self.catalog.values()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn workers(&self) -> &tokio::sync::Mutex<HashMap<String, Weak<ProcessConn>>> {
        &self.workers
    }

    pub fn queries(&self) -> &purveyor_query::Engine {
        &self.queries
    }

    pub fn spare(&self) -> &Arc<SpareWorker> {
        &self.spare
    }

    pub fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    pub fn builtin_io(&self) -> &Arc<ProcedureServer> {
        &self.builtin_io
    }

    pub fn memory(&self) -> &purveyor_io::Memory {
        &self.memory
    }

    pub fn io_slots(&self) -> &IoSlots {
        &self.io_slots
    }

    pub fn reloader(&self) -> Option<Arc<ReloadHook>> {
        self.reloader.locked().clone()
    }

    pub fn set_reloader(&self, hook: Arc<ReloadHook>) {
        *self.reloader.locked() = Some(hook);
    }

    pub fn one_reload(&self) -> &Mutex<()> {
        &self.one_reload
    }

    pub fn retiring(&self) -> &Mutex<Vec<tokio::task::JoinHandle<()>>> {
        &self.retiring
    }

    pub fn dialogs(&self) -> &Arc<DialogHub> {
        &self.dialogs
    }

    pub fn started(&self) -> Timestamp {
        self.started
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn set_socket(&self, path: Option<PathBuf>) {
        *self.socket.locked() = path;
    }

    /// Counts a request, and refuses it once the host is shutting down.
    pub fn admit(&self) -> Result<(), RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(RemoteError::new(
                ErrorCode::ShuttingDown,
                "the host is shutting down",
            ));
        }
        Ok(())
    }

    /// Whether the host is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// From now on, every request is refused.
    pub fn stop_admitting(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn status(&self) -> HostStatus {
        let (providers, providers_loaded) = self.provider_counts();
        let counts = self.counters.now();
        let registry = self.registry();
        HostStatus {
            server: SERVER_NAME.into(),
            protocol: PROTOCOL_VERSION,
            mode: self.config.mode,
            pid: self.pid,
            started: self.started,
            socket: self
                .socket
                .locked()
                .as_ref()
                .map(|p| p.display().to_string()),
            provider_dirs: registry
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            providers,
            providers_loaded,
            connections_open: counts.connections_open,
            connections_total: counts.connections_total,
            requests: counts.requests,
            manifest_problems: registry.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Registered providers, and loaded pure ones (a non-pure provider may live on as a
    /// client after release, so it is never counted as loaded).
    pub fn provider_counts(&self) -> (u32, u32) {
        let registry = self.registry();
        let slots = registry.slots();
        let loaded = slots
            .values()
            .filter(|s| s.manifest().pure && s.state() == ProviderState::Loaded)
            .count();
        (slots.len() as u32, loaded as u32)
    }

    pub fn provider_statuses(&self) -> Vec<ProviderStatus> {
        self.registry()
            .all_slots()
            .iter()
            .map(|s| s.status())
            .collect()
    }
}
