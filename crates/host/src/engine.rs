//! The host: answers requests by finding the provider that serves a class, loading it if
//! needed, calling it, and checking what it returns.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::join_all;
use purveyor_model::Hosting;
use purveyor_model::{
    Capability, ClassPath, ClassSchema, Condition, Identifier, Instance, InstanceKey,
    ProviderState, Timestamp, Value,
};
use purveyor_protocol::{
    CallerInfo, ClassList, DirectNews, Encoding, ErrorCode, HostStatus, InstanceList,
    PROTOCOL_VERSION, ProviderCall, ProviderReply, ProviderStatus, RaisedEvent, ReadCall,
    RemoteError, Request, Response,
};
use purveyor_provider::abi::{fault, from_fault, serve_call, serve_read};
use purveyor_provider::{CallContext, Caller, Provider};

use crate::access::Permission;
use crate::answer::check_full_key;
use crate::builtin::{BuiltinProvider, Dispatch};
use crate::config::HostConfig;
use crate::dialogs::DialogHub;
use crate::events::{EventBus, Session};
use crate::io::ProcedureServer;
use crate::library::LibraryProvider;
use crate::manifest::{Entry, Manifest, ManifestError};
use crate::process::{CallFailure, ProcessConn, ProcessKind};
use crate::registry::Registry;
use crate::self_provider;
use crate::slot::{Backend, LoadResult, Loaded, Lost, SchemaSet, Slot};
use crate::watchdog::Watchdog;

/// `purveyor/0.1.0`: how the host names itself in handshakes and status.
pub const SERVER_NAME: &str = concat!("purveyor/", env!("CARGO_PKG_VERSION"));

/// Collects built-in providers, then builds a [`Host`].
pub struct HostBuilder {
    config: HostConfig,
    builtins: Vec<BuiltinProvider>,
}

/// A provider host. Cheap to clone; every clone is the same host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub config: HostConfig,
    pub(crate) registry: Registry,
    catalog: Arc<HashMap<String, BuiltinProvider>>,
    pub started: Timestamp,
    /// This process's id, read once (getpid is a system call).
    pub pid: u32,
    socket: Mutex<Option<PathBuf>>,
    pub connections_open: AtomicU32,
    pub connections_total: AtomicU64,
    /// Connections refused by a limit (`conn.total`, `conn.per_user`).
    pub connections_refused: AtomicU64,
    /// HTTP connections refused by `http.connections`.
    pub http_refused: AtomicU64,
    pub requests: AtomicU64,
    shutting_down: AtomicBool,
    /// Shared workers by host group. Held across a spawn so one group gets one worker.
    groups: tokio::sync::Mutex<HashMap<String, std::sync::Weak<ProcessConn>>>,
    /// Keeps the deadlines of in-daemon calls, which run on the requesting thread.
    watchdog: Watchdog,
    /// Subscriptions, and the events delivered to and dropped for them.
    pub events: Arc<EventBus>,
    /// The built-in I/O procedures (`DOS `, `MEM `, `GZ  `, `TAR `).
    pub builtin_io: Arc<ProcedureServer>,
    /// The built-in `MEM `, for its counters and its sweep.
    pub memory: Arc<purveyor_io::Memory>,
    /// Slots for the built-in procedures' blocking calls (`io.ops_*`).
    pub(crate) io_slots: crate::io::IoSlots,
    /// Dialogs, UI agents and the calls that may open dialogs.
    pub dialogs: Arc<DialogHub>,
}

impl HostBuilder {
    pub fn new(config: HostConfig) -> Self {
        HostBuilder {
            config,
            builtins: Vec::new(),
        }
    }

    /// Adds a provider compiled into the binary.
    pub fn builtin(mut self, provider: BuiltinProvider) -> Self {
        self.builtins.push(provider);
        self
    }

    /// Reads the manifests and builds the host. Refused manifests are logged and listed by
    /// [`Host::problems`]; the host serves every valid provider regardless.
    pub fn build(self) -> Host {
        let inner = Arc::new_cyclic(|weak| {
            let mut builtins = self.builtins;
            builtins.push(self_provider::builtin(weak.clone()));
            let registry = Registry::build(&self.config, &builtins);
            let catalog = builtins.into_iter().map(|b| (b.name.clone(), b)).collect();
            let dialogs = Arc::new(DialogHub::new(self.config.access.clone()));
            let memory = Arc::new(purveyor_io::Memory::new(self.config.limits.io_mem));
            let builtin_io = purveyor_io::Registry::with_memory(memory.clone());
            let io_slots = crate::io::IoSlots::new(&self.config.limits);
            HostInner {
                dialogs,
                config: self.config,
                registry,
                catalog: Arc::new(catalog),
                started: Timestamp::now(),
                pid: std::process::id(),
                socket: Mutex::new(None),
                connections_open: AtomicU32::new(0),
                connections_total: AtomicU64::new(0),
                connections_refused: AtomicU64::new(0),
                http_refused: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
                groups: tokio::sync::Mutex::new(HashMap::new()),
                watchdog: Watchdog::default(),
                events: Arc::new(EventBus::default()),
                builtin_io: Arc::new(ProcedureServer::new(builtin_io)),
                memory,
                io_slots,
            }
        });
        Host { inner }
    }
}

impl Host {
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder::new(config)
    }

    /// Counts an HTTP connection refused by `http.connections` (shown in `purveyor.host`).
    pub fn note_http_refused(&self) {
        self.inner.http_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Manifests that were refused when the host was built.
    pub fn problems(&self) -> &[ManifestError] {
        &self.inner.registry.problems
    }

    /// Records the socket the daemon listens on, for `status`.
    pub fn set_socket(&self, path: Option<PathBuf>) {
        *self.inner.socket.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }

    pub(crate) fn inner(&self) -> &HostInner {
        &self.inner
    }

    /// A session for `caller`: what a connection (or an embedded client) holds so that
    /// it can subscribe to events. Dropping it ends its subscriptions.
    pub fn session(&self, caller: Caller) -> Session {
        Session::new(
            caller,
            self.inner.events.clone(),
            self.inner.config.event_queue,
            self.inner.dialogs.clone(),
        )
    }

    /// Answers one request for `caller`, outside any session (so it cannot subscribe).
    pub async fn handle(&self, request: Request, caller: &Caller) -> Result<Response, RemoteError> {
        self.dispatch(request, caller, None).await
    }

    /// Answers one request made in `session`.
    pub async fn handle_in(
        &self,
        request: Request,
        session: &Session,
    ) -> Result<Response, RemoteError> {
        self.dispatch(request, &session.caller, Some(session)).await
    }

    async fn dispatch(
        &self,
        request: Request,
        caller: &Caller,
        session: Option<&Session>,
    ) -> Result<Response, RemoteError> {
        self.admit()?;
        // A call from a client that shows dialogs gets a token its provider can open an
        // in-call dialog with, for as long as the call runs.
        if let Some(session) = session
            && session.ui.shows()
            && matches!(
                request,
                Request::Get { .. }
                    | Request::Enumerate { .. }
                    | Request::Put { .. }
                    | Request::Delete { .. }
                    | Request::Call { .. }
            )
        {
            let id = crate::server::CALL_SITE.try_with(|site| site.id()).ok();
            let token = self.inner.dialogs.begin_call(&session.ui, id);
            return UI_TOKEN
                .scope(token.token, self.answer(request, caller, Some(session)))
                .await;
        }
        self.answer(request, caller, session).await
    }

    /// Counts a request, and refuses it once the host is shutting down.
    fn admit(&self) -> Result<(), RemoteError> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(RemoteError::new(
                ErrorCode::ShuttingDown,
                "the host is shutting down",
            ));
        }
        Ok(())
    }

    async fn answer(
        &self,
        request: Request,
        caller: &Caller,
        session: Option<&Session>,
    ) -> Result<Response, RemoteError> {
        let dialogs = &self.inner.dialogs;
        let need_session = |what: &str| {
            RemoteError::new(
                ErrorCode::Unsupported,
                format!("{what} needs a session (a connection); use Host::handle_in"),
            )
        };
        match request {
            Request::RegisterAgent => {
                let session = session.ok_or_else(|| need_session("registering an agent"))?;
                Ok(Response::Agent {
                    handle: dialogs.register_agent(&session.ui),
                })
            }
            Request::DialogReady { handle } => {
                let session = session.ok_or_else(|| need_session("a dialog"))?;
                dialogs.ready(&session.ui, handle).map(|()| Response::Done)
            }
            Request::DialogSend { handle, input } => {
                let session = session.ok_or_else(|| need_session("a dialog"))?;
                dialogs
                    .send(&session.ui, handle, input)
                    .map(|()| Response::Done)
            }
            Request::DialogClose { handle } => {
                let session = session.ok_or_else(|| need_session("a dialog"))?;
                dialogs
                    .client_close(&session.ui, handle)
                    .map(|()| Response::Done)
            }
            Request::Ping => Ok(Response::Pong),
            Request::Status => Ok(Response::Status(self.inner.status())),
            Request::ListProviders => Ok(Response::Providers(self.inner.provider_statuses())),
            Request::EnableProvider { name } => {
                self.allowed(caller, Permission::Write, "purveyor")?;
                self.enable_provider(&name)
            }
            Request::ListClasses { namespace } => self.list_classes(namespace, caller).await,
            Request::Describe { class } => {
                self.allowed(caller, Permission::Read, class.as_str())?;
                let (slot, loaded) = self.loaded_for(&class, None).await?;
                Ok(Response::Class(
                    schema_for(&slot, &loaded, &class)?.as_ref().clone(),
                ))
            }
            Request::Enumerate { class, selector } => {
                self.allowed(caller, Permission::Read, class.as_str())?;
                self.enumerate(class, selector, caller).await
            }
            Request::Get { class, key } => {
                self.allowed(caller, Permission::Read, class.as_str())?;
                self.get(class, key, caller).await
            }
            Request::Direct { class } => {
                let session = session.ok_or_else(|| need_session("a direct channel"))?;
                self.allowed(caller, Permission::Read, class.as_str())?;
                self.direct(class, session).await
            }
            Request::Put { class, instance } => {
                self.allowed(caller, Permission::Write, class.as_str())?;
                self.put(class, instance, caller).await
            }
            Request::Delete { class, key } => {
                self.allowed(caller, Permission::Write, class.as_str())?;
                self.delete(class, key, caller).await
            }
            Request::Call {
                class,
                method,
                key,
                args,
            } => {
                self.allowed(caller, Permission::Call, class.as_str())?;
                self.call_method(class, method, key, args, caller).await
            }
            Request::Subscribe {
                class,
                event,
                filter,
            } => {
                self.allowed(caller, Permission::Subscribe, class.as_str())?;
                let session = session.ok_or_else(|| {
                    RemoteError::new(
                        ErrorCode::Unsupported,
                        "subscribing needs a session (a connection); use Host::handle_in",
                    )
                })?;
                self.subscribe(class, event, filter, session).await
            }
            Request::Unsubscribe { handle } => {
                let ended =
                    session.is_some_and(|s| self.inner.events.unsubscribe(handle, s.sink()));
                if ended {
                    Ok(Response::Done)
                } else {
                    Err(RemoteError::new(
                        ErrorCode::NotFound,
                        format!("this connection has no subscription {handle}"),
                    ))
                }
            }
            io @ (Request::IoList
            | Request::IoOpen { .. }
            | Request::IoRead { .. }
            | Request::IoWrite { .. }
            | Request::IoSeek { .. }
            | Request::IoMessage { .. }
            | Request::IoClose { .. }
            | Request::IoDelete { .. }
            | Request::IoRename { .. }) => self.io_request(io, caller, session).await,
            other => Err(RemoteError::new(
                ErrorCode::Unsupported,
                format!("request {other:?} is not supported by this host"),
            )),
        }
    }

    /// Whether the access policy lets `caller` have `permission` on `path`.
    pub(crate) fn allowed(
        &self,
        caller: &Caller,
        permission: Permission,
        path: &str,
    ) -> Result<(), RemoteError> {
        self.inner
            .config
            .access
            .check(caller, permission, path)
            .map_err(|message| RemoteError::new(ErrorCode::AccessDenied, message))
    }

    /// Stops taking requests and releases every loaded provider in parallel, running
    /// cleanup hooks, within the shutdown grace period; then kills any provider process
    /// still running. (In-daemon providers still in a call are cut off.)
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        // Open dialogs hold their providers: close them first, telling both sides.
        self.inner.dialogs.shutdown();
        let slots = self.inner.registry.slots.values();
        let released = tokio::time::timeout(
            self.inner.config.shutdown_grace,
            join_all(slots.map(|slot| slot.release("host shutdown"))),
        )
        .await;
        if released.is_err() {
            tracing::warn!(
                "providers still releasing after the grace period; killing their processes"
            );
        }
        for slot in self.inner.registry.slots.values() {
            slot.kill_process();
        }
    }

    fn enable_provider(
        &self,
        name: &purveyor_model::ProviderName,
    ) -> Result<Response, RemoteError> {
        let Some(slot) = self.inner.registry.slots.get(name) else {
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no provider named {name}"),
            ));
        };
        if !slot.enable() {
            return Err(slot.error(
                ErrorCode::InvalidRequest,
                format!(
                    "provider {name} is not quarantined (it is {})",
                    slot.state()
                ),
            ));
        }
        tracing::info!(provider = %name, "provider enabled after quarantine");
        Ok(Response::Providers(vec![slot.status()]))
    }

    async fn list_classes(
        &self,
        namespace: Option<purveyor_model::NamespacePath>,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let access = &self.inner.config.access;
        let mut refused: Option<String> = None;
        let mut readable =
            |class: &ClassPath| match access.check(caller, Permission::Read, class.as_str()) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert(why);
                    false
                }
            };
        let mut list = self
            .collect_classes(namespace.as_slice(), &|_: &Slot| true)
            .await;
        // Classes the caller may not read are left out, as if they were not there.
        list.classes.retain(|c| readable(c.path()));
        if list.classes.is_empty()
            && list.problems.is_empty()
            && let Some(ns) = namespace
        {
            return Err(match refused {
                Some(why) => RemoteError::new(ErrorCode::AccessDenied, why),
                None => {
                    RemoteError::new(ErrorCode::NotFound, format!("no class in namespace {ns}"))
                }
            });
        }
        list.classes.sort_by(|a, b| a.path().cmp(b.path()));
        Ok(Response::Classes(list))
    }

    /// The classes under `namespaces` (every class when empty) that `caller` may read,
    /// for an exporter such as the HTTP gateway's `/metrics`. A scrape must not wake
    /// providers that idle unload released: only providers that are loaded now are asked,
    /// plus those `wake` allows loading (the gateway lets builtin providers and the
    /// namespaces its configuration names be loaded).
    pub async fn export_classes(
        &self,
        namespaces: &[purveyor_model::NamespacePath],
        wake: &(dyn Fn(&Manifest) -> bool + Sync),
        caller: &Caller,
    ) -> ClassList {
        let take = |slot: &Slot| slot.state() == ProviderState::Loaded || wake(&slot.manifest);
        let mut list = self.collect_classes(namespaces, &take).await;
        let access = &self.inner.config.access;
        list.classes.retain(|c| {
            access
                .check(caller, Permission::Read, c.path().as_str())
                .is_ok()
        });
        list.classes.sort_by(|a, b| a.path().cmp(b.path()));
        list
    }

    /// The instances of `class` for an exporter: the same as an `Enumerate` request by
    /// `caller`, except that the provider's calls do not count as use, so periodic scrapes
    /// do not keep an otherwise idle provider loaded.
    pub async fn scrape(
        &self,
        class: ClassPath,
        caller: &Caller,
    ) -> Result<InstanceList, RemoteError> {
        let request = Request::Enumerate {
            class,
            selector: InstanceKey::new(),
        };
        match PASSIVE.scope((), self.handle(request, caller)).await? {
            Response::Instances(list) => Ok(list),
            other => Err(RemoteError::new(
                ErrorCode::Internal,
                format!("enumerate answered {other:?}"),
            )),
        }
    }

    /// The classes under `namespaces` (all when empty) of the providers `take` accepts,
    /// loading them; one problem per provider that failed.
    async fn collect_classes(
        &self,
        namespaces: &[purveyor_model::NamespacePath],
        take: &(dyn Fn(&Slot) -> bool + Sync),
    ) -> ClassList {
        let wanted = |class: &ClassPath| {
            namespaces.is_empty() || namespaces.iter().any(|ns| ns.contains(class))
        };
        let overlaps = |ns: &purveyor_model::NamespacePath| {
            namespaces.is_empty() || namespaces.iter().any(|want| want.overlaps(ns))
        };
        let slots: Vec<&Arc<Slot>> = self
            .inner
            .registry
            .slots
            .values()
            .filter(|s| {
                (s.manifest.classes.iter().any(wanted)
                    || s.manifest.namespaces.iter().any(overlaps))
                    && take(s)
            })
            .collect();
        let loads = join_all(slots.iter().map(|slot| self.acquire(slot))).await;
        let mut list = ClassList {
            classes: Vec::new(),
            problems: Vec::new(),
        };
        for (slot, loaded) in slots.iter().zip(loads) {
            match loaded {
                Ok(loaded) => {
                    for class in slot.manifest.classes.iter().filter(|c| wanted(c)) {
                        if let Some(schema) = loaded.schemas.get(class) {
                            list.classes.push(schema.as_ref().clone());
                        }
                    }
                    if !slot.manifest.namespaces.is_empty()
                        && let Backend::Local { provider, .. } = &loaded.backend
                    {
                        let now = catch_unwind(AssertUnwindSafe(|| provider.classes()))
                            .map_err(|panic| panicked(slot, &panic));
                        match now {
                            Ok(classes) => list.classes.extend(classes.into_iter().filter(|c| {
                                slot.manifest.in_namespace(c.path()) && wanted(c.path())
                            })),
                            Err(error) => list.problems.push(error),
                        }
                    }
                }
                Err(error) => list.problems.push(error),
            }
        }
        list
    }

    async fn enumerate(
        &self,
        class: ClassPath,
        selector: InstanceKey,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Enumerate)).await?;
        let (schema, call) = enumerate_call_for(&slot, &loaded, &class, &selector)?;
        let asked_get = matches!(call, ReadCall::Get { .. });
        let reply = self.read(&slot, &loaded, caller, call).await?;
        enumerate_answer(&slot, &schema, class, &selector, asked_get, reply)
    }

    async fn get(
        &self,
        class: ClassPath,
        key: InstanceKey,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, None).await?;
        let (schema, call) = get_call_for(&slot, &loaded, &class, &key)?;
        let asked_get = matches!(call, ReadCall::Get { .. });
        let reply = self.read(&slot, &loaded, caller, call).await?;
        get_answer(&slot, &schema, &class, &key, asked_get, reply)
    }

    /// [`Host::call`] for a read whose class and key are borrowed from the request: a
    /// provider whose calls run on this thread reads them where they are, any other is
    /// sent a copy.
    async fn read(
        &self,
        slot: &Arc<Slot>,
        loaded: &Arc<Loaded>,
        caller: &Caller,
        call: ReadCall<'_>,
    ) -> Result<ProviderReply, RemoteError> {
        if loaded.calls_inline() {
            return self.call_inline(slot, loaded, caller, InlineCall::Read(call));
        }
        self.call(slot, loaded, caller, call.to_call()).await
    }

    /// Answers `request` on this thread, at once, when nothing in it needs waiting: a
    /// ping, the status, or a get or enumerate of a loaded provider whose calls run
    /// inline (a builtin dispatched inline, an in-daemon library). Otherwise gives the
    /// request back, to be answered by [`Host::handle_in`]. The server calls this first
    /// so the common request costs no task, no future and no wake-up
    /// (`docs/performance.md`); both paths give the same answer.
    pub(crate) fn answer_now(
        &self,
        request: Request,
        session: &Session,
    ) -> Result<Result<Response, RemoteError>, Request> {
        let ready = match &request {
            Request::Ping | Request::Status => None,
            // A client that shows dialogs gets a dialog token with each call: async path.
            Request::Get { class, .. } | Request::Enumerate { class, .. }
                if !session.ui.shows() =>
            {
                match self.inner.registry.slot_for(class) {
                    Some(slot) => match slot.loaded_now() {
                        Some(loaded) if loaded.calls_inline() => Some((slot, loaded)),
                        _ => return Err(request),
                    },
                    None => return Err(request),
                }
            }
            _ => return Err(request),
        };
        if let Err(refused) = self.admit() {
            return Ok(Err(refused));
        }
        let caller = &session.caller;
        Ok(match (request, ready) {
            (Request::Ping, _) => Ok(Response::Pong),
            (Request::Status, _) => Ok(Response::Status(self.inner.status())),
            (Request::Get { class, key }, Some((slot, loaded))) => (|| {
                self.allowed(caller, Permission::Read, class.as_str())?;
                let (schema, call) = get_call_for(slot, &loaded, &class, &key)?;
                let asked_get = matches!(call, ReadCall::Get { .. });
                let reply = self.call_inline(slot, &loaded, caller, InlineCall::Read(call))?;
                get_answer(slot, &schema, &class, &key, asked_get, reply)
            })(),
            (Request::Enumerate { class, selector }, Some((slot, loaded))) => (|| {
                self.allowed(caller, Permission::Read, class.as_str())?;
                if !slot.manifest.offers(Capability::Enumerate) {
                    return Err(not_offered(slot, Capability::Enumerate));
                }
                let (schema, call) = enumerate_call_for(slot, &loaded, &class, &selector)?;
                let asked_get = matches!(call, ReadCall::Get { .. });
                let reply = self.call_inline(slot, &loaded, caller, InlineCall::Read(call))?;
                enumerate_answer(slot, &schema, class, &selector, asked_get, reply)
            })(),
            (other, _) => Err(RemoteError::new(
                ErrorCode::Internal,
                format!("request {other:?} cannot be answered at once"),
            )),
        })
    }

    async fn put(
        &self,
        class: ClassPath,
        instance: Instance,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Put)).await?;
        let schema = schema_for(&slot, &loaded, &class)?;
        schema
            .check_instance(&instance)
            .map_err(|m| RemoteError::new(ErrorCode::InvalidRequest, m))?;
        let call = ProviderCall::Put { class, instance };
        self.write_call(&slot, &loaded, caller, call).await?;
        Ok(Response::Done)
    }

    async fn delete(
        &self,
        class: ClassPath,
        key: InstanceKey,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Delete)).await?;
        let schema = schema_for(&slot, &loaded, &class)?;
        check_full_key(&schema, &key)?;
        let call = ProviderCall::Delete { class, key };
        self.write_call(&slot, &loaded, caller, call).await?;
        Ok(Response::Done)
    }

    async fn call_method(
        &self,
        class: ClassPath,
        method: Identifier,
        key: InstanceKey,
        args: Instance,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Call)).await?;
        let schema = schema_for(&slot, &loaded, &class)?;
        let Some(def) = schema.method(method.as_str()) else {
            let have: Vec<&str> = schema.methods().iter().map(|m| m.name.as_str()).collect();
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                if have.is_empty() {
                    format!("class {class} has no methods")
                } else {
                    format!(
                        "class {class} has no method {:?} (it has {})",
                        method.as_str(),
                        have.join(", ")
                    )
                },
            ));
        };
        if !key.is_empty() {
            check_full_key(&schema, &key)?;
        }
        def.check_args(&class, &args)
            .map_err(|m| RemoteError::new(ErrorCode::InvalidRequest, m))?;
        let declared = def.result;
        let call = ProviderCall::Call {
            class: class.clone(),
            key,
            method: method.clone(),
            args,
        };
        let result = self.write_call(&slot, &loaded, caller, call).await?;
        let fits = match (&result, declared) {
            (None, None) => true,
            (Some(v), Some(ty)) => v.conforms_to(ty),
            _ => false,
        };
        if !fits {
            let error = slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {} returned {} from {class}.{method}, which is declared to return {}",
                    slot.manifest.name,
                    result
                        .as_ref()
                        .map_or("nothing".to_string(), |v| v.value_type().to_string()),
                    declared.map_or("nothing".to_string(), |t| t.to_string()),
                ),
            );
            slot.record_error(&error);
            return Err(error);
        }
        Ok(Response::Returned(result))
    }

    /// A put, delete or call: the provider's result, after its events are checked and
    /// delivered.
    async fn write_call(
        &self,
        slot: &Arc<Slot>,
        loaded: &Arc<Loaded>,
        caller: &Caller,
        call: ProviderCall,
    ) -> Result<Option<Value>, RemoteError> {
        let what = call.kind();
        match self.call(slot, loaded, caller, call).await? {
            ProviderReply::Done { result, events } => {
                deliver(&self.inner.events, slot, events, |class| {
                    schema_for(slot, loaded, class)
                });
                Ok(result)
            }
            other => Err(unexpected(slot, what, &other)),
        }
    }

    async fn subscribe(
        &self,
        class: ClassPath,
        event: Option<Identifier>,
        filter: Vec<Condition>,
        session: &Session,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Subscribe)).await?;
        let schema = schema_for(&slot, &loaded, &class)?;
        let invalid = |m: String| RemoteError::new(ErrorCode::InvalidRequest, m);
        if schema.events().is_empty() {
            return Err(invalid(format!("class {class} declares no events")));
        }
        let events: Vec<&purveyor_model::EventDef> = match &event {
            Some(name) => match schema.event(name.as_str()) {
                Some(def) => vec![def],
                None => {
                    let have: Vec<&str> = schema.events().iter().map(|e| e.name.as_str()).collect();
                    return Err(RemoteError::new(
                        ErrorCode::NotFound,
                        format!(
                            "class {class} has no event {:?} (it has {})",
                            name.as_str(),
                            have.join(", ")
                        ),
                    ));
                }
            },
            None => schema.events().iter().collect(),
        };
        // A condition must fit every event it can apply to (one that has its property),
        // and at least one must have it.
        for condition in &filter {
            let mut applies = false;
            for def in &events {
                if def.property(condition.property.as_str()).is_some() {
                    applies = true;
                    condition.check(&class, def).map_err(invalid)?;
                }
            }
            if !applies {
                return Err(invalid(format!(
                    "no event of {class}{} has a property {:?} to filter on",
                    event
                        .as_ref()
                        .map(|e| format!(" named {e}"))
                        .unwrap_or_default(),
                    condition.property.as_str()
                )));
            }
        }
        let limit = self.inner.config.limits.conn_subscriptions;
        if session.sink().subscriptions() >= limit as usize {
            return Err(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "this connection holds {} subscriptions, the limit (conn.subscriptions = {limit}); unsubscribe some first",
                    session.sink().subscriptions()
                ),
            ));
        }
        let handle =
            self.inner
                .events
                .subscribe(class, event, filter, session.sink(), Box::new(slot.pin()));
        Ok(Response::Subscribed { handle })
    }

    /// Opens a direct channel from `session`'s client to the isolated worker serving
    /// `class` (`docs/protocol.md`, "Direct channels"): a socket pair, one end handed to
    /// the worker with the caller's credentials and the schemas of the classes the access
    /// policy lets it read, the other stashed for the reply to carry.
    async fn direct(&self, class: ClassPath, session: &Session) -> Result<Response, RemoteError> {
        let unsupported = |why: String| Err(RemoteError::new(ErrorCode::Unsupported, why));
        if session.ui.shows() {
            return unsupported(
                "a connection that shows dialogs calls through the daemon, which holds its dialogs"
                    .into(),
            );
        }
        if !session.io.fds_allowed() {
            return unsupported(
                "this connection cannot carry a socket: direct channels need a local Unix socket"
                    .into(),
            );
        }
        let caller = &session.caller;
        let (slot, loaded) = self.loaded_for(&class, None).await?;
        let conn = match &loaded.backend {
            Backend::Process { conn, .. } if conn.takes_direct() => conn,
            _ => {
                return unsupported(format!(
                    "provider {} of {class} is not in an isolated worker (hosting {}): its calls go through the daemon",
                    slot.manifest.name, slot.manifest.hosting
                ));
            }
        };
        let mut classes: Vec<ClassSchema> = loaded
            .schemas
            .iter()
            .filter(|(path, _)| {
                self.allowed(caller, Permission::Read, path.as_str())
                    .is_ok()
            })
            .map(|(_, schema)| schema.as_ref().clone())
            .collect();
        classes.sort_by(|a, b| a.path().cmp(b.path()));
        let paths = classes.iter().map(|c| c.path().clone()).collect();
        let offers = slot.offers();
        let attach = purveyor_protocol::DirectAttach {
            provider: slot.manifest.name.to_string(),
            caller: CallerInfo {
                uid: caller.uid,
                gid: caller.gid,
                pid: caller.pid,
            },
            classes,
            offers_get: offers.get,
            offers_enumerate: offers.enumerate,
            deadline_ms: slot.manifest.call_timeout.as_millis() as u64,
            keep_ms: direct_keep(slot.manifest.clear_after).as_millis() as u64,
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| {
            RemoteError::new(
                ErrorCode::Internal,
                format!("cannot make a direct channel: {e}"),
            )
        })?;
        conn.attach(&attach, &theirs)
            .map_err(|e| slot.error(ErrorCode::ProviderFailed, e))?;
        drop(theirs);
        let token = session.io.stash_fd(ours.into());
        Ok(Response::Direct {
            token,
            provider: slot.manifest.name.clone(),
            classes: paths,
        })
    }

    /// The slot serving `class`, loaded, after checking it offers `capability`.
    async fn loaded_for(
        &self,
        class: &ClassPath,
        capability: Option<Capability>,
    ) -> Result<(Arc<Slot>, Arc<Loaded>), RemoteError> {
        let Some(slot) = self.inner.registry.slot_for(class) else {
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no provider serves class {class}"),
            ));
        };
        if let Some(cap) = capability
            && !slot.manifest.offers(cap)
        {
            return Err(not_offered(slot, cap));
        }
        let loaded = self.acquire(slot).await?;
        Ok((slot.clone(), loaded))
    }

    pub(crate) async fn acquire(&self, slot: &Arc<Slot>) -> Result<Arc<Loaded>, RemoteError> {
        let host = &self.inner;
        slot.acquire(move |slot| load(host.clone(), slot)).await
    }

    /// Calls the provider wherever it runs, under `catch_unwind` or in its own process,
    /// within its deadline, and records the outcome. A provider error in the reply becomes
    /// the returned error.
    pub(crate) async fn call(
        &self,
        slot: &Arc<Slot>,
        loaded: &Arc<Loaded>,
        caller: &Caller,
        call: ProviderCall,
    ) -> Result<ProviderReply, RemoteError> {
        if loaded.calls_inline() {
            return self.call_inline(slot, loaded, caller, InlineCall::Owned(call));
        }
        let timeout = slot.manifest.call_timeout;
        let name = &slot.manifest.name;
        let passive = PASSIVE.try_with(|_| ()).is_ok();
        slot.begin_call();
        let result = match &loaded.backend {
            Backend::Local {
                dispatch: Dispatch::Inline,
                ..
            }
            | Backend::Library(_) => unreachable!("inline calls return above"),
            Backend::Local {
                provider,
                dispatch: Dispatch::Blocking,
            } => {
                let provider = provider.clone();
                let ctx = CallContext::new(caller.clone(), Some(Instant::now() + timeout));
                let task = tokio::task::spawn_blocking(move || {
                    catch_unwind(AssertUnwindSafe(|| serve_call(&*provider, call, &ctx)))
                });
                match tokio::time::timeout(timeout, task).await {
                    Ok(Ok(Ok(reply))) => Ok(reply),
                    Ok(Ok(Err(panic))) => Err(panicked(slot, &panic)),
                    Ok(Err(join)) => Err(slot.error(
                        ErrorCode::Internal,
                        format!("provider {name}: call task failed: {join}"),
                    )),
                    Err(_) => Err(slot.error(
                        ErrorCode::Timeout,
                        format!(
                            "provider {name} did not answer within {}",
                            humantime::format_duration(timeout)
                        ),
                    )),
                }
            }
            Backend::Io(server) => {
                let server = server.clone();
                let who = CallerInfo {
                    uid: caller.uid,
                    gid: caller.gid,
                    pid: caller.pid,
                };
                let task = tokio::task::spawn_blocking(move || server.answer(call, who));
                match tokio::time::timeout(timeout, task).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(join)) => Err(slot.error(
                        ErrorCode::ProviderFailed,
                        format!("I/O procedure provider {name} panicked: {join}"),
                    )),
                    Err(_) => Err(slot.error(
                        ErrorCode::Timeout,
                        format!(
                            "I/O procedure provider {name} did not answer within {}",
                            humantime::format_duration(timeout)
                        ),
                    )),
                }
            }
            Backend::Process {
                conn,
                name: in_process,
            } => {
                let who = CallerInfo {
                    uid: caller.uid,
                    gid: caller.gid,
                    pid: caller.pid,
                };
                // A call whose client shows dialogs may wait for one: its deadline is
                // suspended while a dialog of it is open.
                let ui = UI_TOKEN.try_with(|t| *t).unwrap_or(0);
                let hub = &self.inner.dialogs;
                let extend = move || {
                    (ui != 0)
                        .then(|| hub.extended_deadline(ui, timeout))
                        .flatten()
                };
                match conn
                    .call_with(in_process, who, timeout, call, ui, &extend)
                    .await
                {
                    Ok(reply) => Ok(reply),
                    Err(CallFailure::Died(why)) => {
                        slot.lost(loaded, Lost::Crashed(why.clone()));
                        Err(slot.error(
                            ErrorCode::ProviderFailed,
                            format!("provider {name} crashed: {why}"),
                        ))
                    }
                    Err(CallFailure::Timeout) => {
                        let message = format!(
                            "provider {name} did not answer within {}",
                            humantime::format_duration(timeout)
                        );
                        conn.kill(format!("{} was killed: {message}", conn.label));
                        slot.lost(loaded, Lost::Killed);
                        Err(slot.error(
                            ErrorCode::Timeout,
                            format!("{message}; its process was killed and restarts on next use"),
                        ))
                    }
                }
            }
        };
        finish_call(slot, passive, result)
    }

    /// [`Host::call`] for a provider whose calls run on this thread
    /// ([`Loaded::calls_inline`]): a builtin under `catch_unwind`, or an in-daemon library
    /// under `catch_unwind` and the watchdog, which answers the client itself if the call
    /// overruns its deadline (the thread may be stuck in the library).
    fn call_inline(
        &self,
        slot: &Arc<Slot>,
        loaded: &Arc<Loaded>,
        caller: &Caller,
        call: InlineCall<'_>,
    ) -> Result<ProviderReply, RemoteError> {
        let timeout = slot.manifest.call_timeout;
        let passive = PASSIVE.try_with(|_| ()).is_ok();
        slot.begin_call();
        let result = match &loaded.backend {
            Backend::Local {
                provider,
                dispatch: Dispatch::Inline,
            } => {
                let ctx = CallContext::new(caller.clone(), Some(Instant::now() + timeout));
                catch_unwind(AssertUnwindSafe(|| match call {
                    InlineCall::Read(read) => serve_read(&**provider, read, &ctx),
                    InlineCall::Owned(call) => serve_call(&**provider, call, &ctx),
                }))
                .map_err(|panic| panicked(slot, &panic))
            }
            Backend::Library(library) => {
                let deadline = Instant::now() + timeout;
                let site = crate::server::CALL_SITE.try_with(Clone::clone).ok();
                // Run by the watchdog's thread if the call overruns, while it still runs.
                let expiry = || {
                    let failed = in_daemon_overdue(slot, timeout);
                    slot.record_error(&failed);
                    slot.lost(loaded, Lost::Failed(failed.clone()));
                    if let Some(site) = &site {
                        site.abandon(failed, slot.manifest.name.as_str());
                    }
                };
                let (result, expired) = self.inner.watchdog.within(deadline, &expiry, || {
                    catch_unwind(AssertUnwindSafe(|| match call {
                        InlineCall::Read(read) => library.read_within(read, caller, Some(timeout)),
                        InlineCall::Owned(call) => {
                            library.request_within(&call, caller, Some(timeout))
                        }
                    }))
                    .map_err(|panic| panicked(slot, &panic))
                });
                if expired {
                    // The watchdog recorded the error when the deadline passed.
                    slot.end_call(passive);
                    slot.record_call(None);
                    return Err(in_daemon_overdue(slot, timeout));
                } else {
                    result.map(|r| r.unwrap_or_else(|e| ProviderReply::Error(fault(e))))
                }
            }
            _ => Err(slot.error(
                ErrorCode::Internal,
                format!(
                    "provider {}: its calls do not run inline",
                    slot.manifest.name
                ),
            )),
        };
        finish_call(slot, passive, result)
    }
}

/// What [`Host::call_inline`] is asked: a read borrowing the request's class and key, or
/// any call, owned (a put's instance moves into a builtin provider without a copy).
enum InlineCall<'a> {
    Read(ReadCall<'a>),
    Owned(ProviderCall),
}

/// Ends a call begun with `slot.begin_call()` (a `passive` one does not count as use):
/// records its outcome, and makes a provider error in the reply the returned error.
fn finish_call(
    slot: &Slot,
    passive: bool,
    result: Result<ProviderReply, RemoteError>,
) -> Result<ProviderReply, RemoteError> {
    slot.end_call(passive);
    let result = result.and_then(|reply| match reply {
        ProviderReply::Error(fault) => Err(slot.offers().provider_error(from_fault(fault))),
        other => Ok(other),
    });
    slot.record_call(result.as_ref().err());
    if let Err(error) = &result {
        tracing::debug!(provider = %slot.manifest.name, %error, "provider call failed");
    }
    result
}

fn not_offered(slot: &Slot, cap: Capability) -> RemoteError {
    slot.offers().not_offered(&cap.to_string())
}

/// Counts an error that is the provider's fault as its error.
fn recorded(slot: &Slot, error: RemoteError) -> RemoteError {
    if error.code == ErrorCode::ProviderFailed {
        slot.record_error(&error);
    }
    error
}

/// A get's schema and provider call, after checking the key ([`Offers::get_call`]).
fn get_call_for<'a>(
    slot: &Slot,
    loaded: &Loaded,
    class: &'a ClassPath,
    key: &'a InstanceKey,
) -> Result<(Arc<ClassSchema>, ReadCall<'a>), RemoteError> {
    let schema = schema_for(slot, loaded, class)?;
    let call = slot.offers().get_call(&schema, class, key)?;
    Ok((schema, call))
}

/// A get's response from its provider's reply ([`Offers::get_answer`]).
fn get_answer(
    slot: &Slot,
    schema: &ClassSchema,
    class: &ClassPath,
    key: &InstanceKey,
    asked_get: bool,
    reply: ProviderReply,
) -> Result<Response, RemoteError> {
    slot.offers()
        .get_answer(schema, class, key, asked_get, reply)
        .map_err(|e| recorded(slot, e))
}

/// An enumerate's schema and provider call ([`Offers::enumerate_call`]).
fn enumerate_call_for<'a>(
    slot: &Slot,
    loaded: &Loaded,
    class: &'a ClassPath,
    selector: &'a InstanceKey,
) -> Result<(Arc<ClassSchema>, ReadCall<'a>), RemoteError> {
    let schema = schema_for(slot, loaded, class)?;
    let call = slot.offers().enumerate_call(&schema, class, selector)?;
    Ok((schema, call))
}

/// An enumerate's response from its provider's reply ([`Offers::enumerate_answer`]).
fn enumerate_answer(
    slot: &Slot,
    schema: &ClassSchema,
    class: ClassPath,
    selector: &InstanceKey,
    asked_get: bool,
    reply: ProviderReply,
) -> Result<Response, RemoteError> {
    slot.offers()
        .enumerate_answer(schema, class, selector, asked_get, reply)
        .map_err(|e| recorded(slot, e))
}

/// A reply of the wrong kind, recorded as the provider's error.
fn unexpected(slot: &Slot, what: &str, reply: &ProviderReply) -> RemoteError {
    recorded(slot, slot.offers().unexpected(what, reply))
}

impl HostInner {
    pub fn status(&self) -> HostStatus {
        let (providers, providers_loaded) = self.provider_counts();
        HostStatus {
            server: SERVER_NAME.into(),
            protocol: PROTOCOL_VERSION,
            mode: self.config.mode,
            pid: self.pid,
            started: self.started,
            socket: self
                .socket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|p| p.display().to_string()),
            provider_dirs: self
                .registry
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            providers,
            providers_loaded,
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            manifest_problems: self
                .registry
                .problems
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }

    /// Registered providers, and loaded pure ones (a non-pure provider may live on as a
    /// client after release, so it is never counted as loaded).
    pub fn provider_counts(&self) -> (u32, u32) {
        let slots = &self.registry.slots;
        let loaded = slots
            .values()
            .filter(|s| s.manifest.pure && s.state() == ProviderState::Loaded)
            .count();
        (slots.len() as u32, loaded as u32)
    }

    pub fn provider_statuses(&self) -> Vec<ProviderStatus> {
        self.registry.slots.values().map(|s| s.status()).collect()
    }
}

tokio::task_local! {
    /// The dialog token of the request being answered (see `DialogHub::begin_call`).
    static UI_TOKEN: u32;
}

tokio::task_local! {
    /// Set while an exporter scrapes (see [`Host::scrape`]): provider calls made in this
    /// scope do not count as use for idle unloading.
    static PASSIVE: ();
}

/// Loads the provider a slot describes, wherever its manifest says it runs. Runs on its
/// own task (see [`Slot::acquire`]).
async fn load(host: Arc<HostInner>, slot: Arc<Slot>) -> LoadResult {
    let name = slot.manifest.name.to_string();
    let timeout = slot.manifest.call_timeout;
    let failed = |message: String| {
        slot.error(
            ErrorCode::ProviderFailed,
            format!("provider {name} failed to load: {message}"),
        )
    };
    let mut guard = None;
    let (backend, classes) = match &slot.manifest.entry {
        Entry::Builtin(entry) => {
            let builtin = host.catalog.get(entry).cloned().ok_or_else(|| {
                failed(format!(
                    "this build of purveyor has no builtin provider {entry:?}"
                ))
            })?;
            let factory = builtin.factory.clone();
            let (provider, classes) = in_pool(&slot, timeout, move || {
                let provider = factory().map_err(|e| e.to_string())?;
                let classes = provider.classes();
                Ok((provider, classes))
            })
            .await?;
            let backend = Backend::Local {
                provider,
                dispatch: builtin.dispatch,
            };
            (backend, classes)
        }
        Entry::Library { path, .. }
            if slot.manifest.hosting == Hosting::InDaemon && !slot.manifest.io.is_empty() =>
        {
            let path = slot.manifest.resolve(&path.to_string_lossy());
            let server =
                in_pool(&slot, timeout, move || ProcedureServer::from_library(&path)).await?;
            (Backend::Io(Arc::new(server)), Vec::new())
        }
        Entry::Library { path, .. } if slot.manifest.hosting == Hosting::InDaemon => {
            let path = slot.manifest.resolve(&path.to_string_lossy());
            let n = name.clone();
            // The library's dialogs: news goes to it through its table, and what it sends
            // comes back through the line `attach` gives it.
            let target: Arc<std::sync::OnceLock<std::sync::Weak<LibraryProvider>>> =
                Default::default();
            let origin = {
                let (target, n) = (target.clone(), name.clone());
                host.dialogs.origin(
                    name.clone(),
                    Box::new(move |dialog, event| {
                        if let Some(library) = target.get().and_then(std::sync::Weak::upgrade) {
                            let _ = library.forward(
                                &purveyor_protocol::ProviderRequest::dialog_news(&n, dialog, event),
                            );
                        }
                    }),
                    pin_for(&slot),
                )
            };
            let line = {
                let (hub, origin) = (Arc::downgrade(&host.dialogs), origin.clone());
                move |encoding: Encoding| -> crate::library::HostLineFn {
                    Box::new(move |bytes| {
                        let Some(hub) = hub.upgrade() else { return };
                        match purveyor_protocol::decode::<purveyor_protocol::ProviderResponse>(
                            encoding, bytes,
                        ) {
                            Ok(purveyor_protocol::ProviderResponse {
                                reply: ProviderReply::Dialog { dialog, op, .. },
                                ..
                            }) => hub.provider_op(&origin, dialog, *op),
                            Ok(other) => {
                                tracing::warn!(provider = %origin.provider, reply = other.reply.kind(), "a library sent a message that is not a dialog; ignored")
                            }
                            Err(e) => {
                                tracing::warn!(provider = %origin.provider, error = %e, "a library sent a malformed dialog message")
                            }
                        }
                    })
                }
            };
            let (library, classes) = in_pool(&slot, timeout, move || {
                let mut library = LibraryProvider::open(&path, &n)?;
                let encoding = library.encoding();
                library.attach_host(line(encoding))?;
                let classes = library.classes();
                Ok((Arc::new(library), classes))
            })
            .await?;
            let _ = target.set(Arc::downgrade(&library));
            guard = Some(host.dialogs.guard(origin));
            (Backend::Library(library), classes)
        }
        Entry::Library { path, host_group } => {
            let path = slot.manifest.resolve(&path.to_string_lossy());
            let program = host.config.worker_program().map_err(failed)?;
            let worker_args: [std::ffi::OsString; 1] = ["worker".into()];
            let spawn = || {
                ProcessConn::spawn(
                    program.as_os_str(),
                    &worker_args,
                    Encoding::Binary,
                    &name,
                    match host_group {
                        Some(g) => format!("worker of host group {g}"),
                        None => format!("worker for provider {name}"),
                    },
                    timeout,
                    ProcessKind::Worker,
                )
            };
            let conn = match host_group {
                Some(group) => {
                    let mut groups = host.groups.lock().await;
                    match groups.get(group).and_then(|w| w.upgrade()) {
                        Some(conn) if conn.dead_reason().is_none() => conn,
                        _ => {
                            let conn = spawn().await.map_err(failed)?;
                            groups.insert(group.clone(), Arc::downgrade(&conn));
                            conn
                        }
                    }
                }
                None => spawn().await.map_err(failed)?,
            };
            let library = path.to_string_lossy().into_owned();
            let io = !slot.manifest.io.is_empty();
            let load = if io {
                ProviderCall::LoadIo { library }
            } else {
                ProviderCall::Load { library }
            };
            match process_call(&slot, &conn, load).await? {
                ProviderReply::Loaded => {}
                ProviderReply::Error(fault) => return Err(failed(fault.message)),
                other => {
                    return Err(failed(format!(
                        "its worker answered `{}` to load",
                        other.kind()
                    )));
                }
            }
            let classes = if io {
                Vec::new()
            } else {
                process_classes(&slot, &conn).await?
            };
            (
                Backend::Process {
                    conn,
                    name: name.clone(),
                },
                classes,
            )
        }
        Entry::External { command } => {
            let program = slot.manifest.resolve(&command[0]);
            // A bare name is looked up in PATH; a path is relative to the manifest.
            let program = if command[0].contains('/') {
                program.into_os_string()
            } else {
                command[0].clone().into()
            };
            let args: Vec<std::ffi::OsString> = command[1..].iter().map(Into::into).collect();
            let conn = ProcessConn::spawn(
                &program,
                &args,
                Encoding::Json,
                &name,
                format!("external provider {name}"),
                timeout,
                ProcessKind::External {
                    dir: slot.manifest.dir(),
                },
            )
            .await
            .map_err(failed)?;
            let classes = if slot.manifest.io.is_empty() {
                process_classes(&slot, &conn).await?
            } else {
                Vec::new()
            };
            (
                Backend::Process {
                    conn,
                    name: name.clone(),
                },
                classes,
            )
        }
    };
    let schemas = check_schemas(&slot, classes)?;
    if let Backend::Process { conn, name } = &backend {
        // Its dialogs: news goes down the channel, operations come up it, and the
        // process's end closes them with the reason.
        let origin = {
            let (weak, n) = (Arc::downgrade(conn), name.clone());
            host.dialogs.origin(
                name.clone(),
                Box::new(move |dialog, event| {
                    if let Some(conn) = weak.upgrade() {
                        conn.notify_dialog(&n, dialog, event);
                    }
                }),
                pin_for(&slot),
            )
        };
        let hub = Arc::downgrade(&host.dialogs);
        conn.on_dialogs(name, {
            let (hub, origin) = (hub.clone(), origin.clone());
            Arc::new(move |dialog, op| {
                if let Some(hub) = hub.upgrade() {
                    hub.provider_op(&origin, dialog, op);
                }
            })
        });
        conn.on_exit({
            let (id, n) = (origin.id(), name.clone());
            Box::new(move |reason| {
                if let Some(hub) = hub.upgrade() {
                    hub.origin_gone(id, &format!("provider {n} went away: {reason}"));
                }
            })
        });
        guard = Some(host.dialogs.guard(origin));
    }
    if let Backend::Process { conn, name } = &backend
        && conn.takes_direct()
    {
        // What its worker tells of the calls its direct channels served.
        let (weak_slot, weak_conn) = (Arc::downgrade(&slot), Arc::downgrade(conn));
        conn.on_direct(
            name,
            Arc::new(move |news| {
                if let Some(slot) = weak_slot.upgrade() {
                    direct_news(&slot, &weak_conn, news);
                }
            }),
        );
    }
    if let (Backend::Process { conn, .. }, Entry::External { .. }) =
        (&backend, &slot.manifest.entry)
    {
        // An external provider may raise events at any time, in frames of its own.
        let (bus, slot, schemas) = (host.events.clone(), Arc::downgrade(&slot), schemas.clone());
        conn.on_events(Box::new(move |events| {
            if let Some(slot) = slot.upgrade() {
                deliver(&bus, &slot, events, |class| {
                    schemas.get(class).cloned().ok_or_else(|| {
                        RemoteError::new(ErrorCode::NotFound, format!("no schema for {class}"))
                    })
                });
            }
        }));
    }
    Ok(Loaded {
        backend,
        schemas,
        _dialogs: guard,
    })
}

/// How long a worker's news that a provider was used through a direct channel keeps it in
/// use: a quarter of its `clear_after`, so it is released between `clear_after` and
/// 1.25 × `clear_after` after its last direct call (`docs/lifecycle.md`).
fn direct_keep(clear_after: std::time::Duration) -> std::time::Duration {
    (clear_after / 4).max(std::time::Duration::from_millis(1))
}

/// Acts on a worker's news of `slot`'s direct channels: use keeps the provider loaded and
/// counts its calls; a missed deadline kills the worker, as one of the host's own calls
/// would (if `conn` is still the process serving the slot).
fn direct_news(slot: &Arc<Slot>, conn: &std::sync::Weak<ProcessConn>, news: DirectNews) {
    match news {
        DirectNews::Used {
            calls,
            errors,
            keep_ms,
        } => slot.used_directly(calls, errors, std::time::Duration::from_millis(keep_ms)),
        DirectNews::Overdue { deadline_ms } => {
            let Some(conn) = conn.upgrade() else { return };
            let Some(loaded) = slot.loaded_now() else {
                return;
            };
            if !matches!(&loaded.backend, Backend::Process { conn: c, .. } if Arc::ptr_eq(c, &conn))
            {
                return;
            }
            let message = format!(
                "provider {} did not answer a direct call within {}",
                slot.manifest.name,
                humantime::format_duration(std::time::Duration::from_millis(deadline_ms))
            );
            tracing::warn!(provider = %slot.manifest.name, "{message}; killing its process");
            conn.kill(format!("{} was killed: {message}", conn.label));
            slot.lost(&loaded, Lost::Killed);
            slot.record_error(&slot.error(ErrorCode::Timeout, message));
        }
    }
}

/// What keeps `slot`'s provider loaded while one of its dialogs is open.
fn pin_for(slot: &Arc<Slot>) -> Box<dyn Fn() -> Box<dyn Send + Sync> + Send + Sync> {
    let slot = Arc::downgrade(slot);
    Box::new(move || Box::new(slot.upgrade().map(|s| s.pin())))
}

/// Checks events a provider raised against its schemas (`schema_of`) and offers them to
/// subscribers. An event that does not fit is dropped and recorded as the provider's
/// error; the change that raised it stands.
fn deliver(
    bus: &EventBus,
    slot: &Slot,
    events: Vec<RaisedEvent>,
    schema_of: impl Fn(&ClassPath) -> Result<Arc<ClassSchema>, RemoteError>,
) {
    for event in events {
        if !bus.has_subscribers(&event.class) {
            continue;
        }
        let problem = if !slot.manifest.serves(&event.class) {
            Some(format!("it does not serve class {}", event.class))
        } else {
            match schema_of(&event.class) {
                Err(e) => Some(e.message),
                Ok(schema) => match schema.event(event.event.as_str()) {
                    None => Some(format!(
                        "class {} declares no event {:?}",
                        event.class,
                        event.event.as_str()
                    )),
                    Some(def) => def.check_data(&event.class, &event.data).err(),
                },
            }
        };
        match problem {
            None => bus.publish(&event),
            Some(problem) => {
                let error = slot.error(
                    ErrorCode::ProviderFailed,
                    format!(
                        "provider {} raised a bad event: {problem}",
                        slot.manifest.name
                    ),
                );
                tracing::warn!(provider = %slot.manifest.name, %error, "event dropped");
                slot.record_error(&error);
            }
        }
    }
}

/// The error for an in-daemon call past its deadline: the provider is marked failed.
fn in_daemon_overdue(slot: &Slot, timeout: std::time::Duration) -> RemoteError {
    slot.error(
        ErrorCode::Timeout,
        format!(
            "provider {} did not answer within {}; marked failed, since an in-daemon provider cannot be stopped",
            slot.manifest.name,
            humantime::format_duration(timeout)
        ),
    )
}

/// Runs a load step on the blocking pool, under `catch_unwind`, within `timeout`.
async fn in_pool<T: Send + 'static>(
    slot: &Arc<Slot>,
    timeout: std::time::Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, RemoteError> {
    let name = &slot.manifest.name;
    let task = tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(f)));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(Ok(made)))) => Ok(made),
        Ok(Ok(Ok(Err(e)))) => Err(slot.error(
            ErrorCode::ProviderFailed,
            format!("provider {name} failed to load: {e}"),
        )),
        Ok(Ok(Err(panic))) => Err(panicked(slot, &panic)),
        Ok(Err(join)) => Err(slot.error(
            ErrorCode::Internal,
            format!("provider {name}: load task failed: {join}"),
        )),
        Err(_) => Err(slot.error(
            ErrorCode::Timeout,
            format!(
                "provider {name} did not finish loading within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// One call to a provider process during its load.
async fn process_call(
    slot: &Slot,
    conn: &Arc<ProcessConn>,
    call: ProviderCall,
) -> Result<ProviderReply, RemoteError> {
    let name = &slot.manifest.name;
    let timeout = slot.manifest.call_timeout;
    conn.call(name.as_str(), CallerInfo::default(), timeout, call)
        .await
        .map_err(|e| {
            let message = match e {
                CallFailure::Died(why) => format!("provider {name} failed to load: {why}"),
                CallFailure::Timeout => {
                    conn.kill(format!(
                        "{} was killed: it did not load in time",
                        conn.label
                    ));
                    format!(
                        "provider {name} did not finish loading within {}",
                        humantime::format_duration(timeout)
                    )
                }
            };
            slot.error(ErrorCode::ProviderFailed, message)
        })
}

async fn process_classes(
    slot: &Slot,
    conn: &Arc<ProcessConn>,
) -> Result<Vec<ClassSchema>, RemoteError> {
    let name = &slot.manifest.name;
    match process_call(slot, conn, ProviderCall::Classes).await? {
        ProviderReply::Classes(classes) => Ok(classes),
        ProviderReply::Error(fault) => Err(slot.error(
            ErrorCode::ProviderFailed,
            format!("provider {name} failed to load: {}", fault.message),
        )),
        other => Err(slot.error(
            ErrorCode::ProviderFailed,
            format!(
                "provider {name} answered `{}` when asked for its classes",
                other.kind()
            ),
        )),
    }
}

/// The provider must describe exactly the classes its manifest lists.
fn check_schemas(slot: &Slot, classes: Vec<ClassSchema>) -> Result<SchemaSet, RemoteError> {
    let name = &slot.manifest.name;
    let mut set = SchemaSet::default();
    for schema in classes {
        if slot.manifest.in_namespace(schema.path())
            && !slot.manifest.classes.contains(schema.path())
        {
            // Filled at run time: asked for when needed.
            continue;
        }
        if !slot.manifest.classes.contains(schema.path()) {
            return Err(slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {name} describes class {} that its manifest ({}) does not list",
                    schema.path(),
                    slot.manifest.source
                ),
            ));
        }
        set.insert(schema.path().clone(), Arc::new(schema));
    }
    if let Some(missing) = slot.manifest.classes.iter().find(|c| !set.contains_key(*c)) {
        return Err(slot.error(
            ErrorCode::ProviderFailed,
            format!(
                "provider {name} does not describe class {missing}, which its manifest ({}) lists",
                slot.manifest.source
            ),
        ));
    }
    Ok(set)
}

/// The schema of `class`: fixed at load, or asked of a provider that fills a namespace.
fn schema_for(
    slot: &Slot,
    loaded: &Loaded,
    class: &ClassPath,
) -> Result<Arc<ClassSchema>, RemoteError> {
    if let Some(schema) = loaded.schemas.get(class) {
        return Ok(schema.clone());
    }
    if slot.manifest.in_namespace(class)
        && let Backend::Local { provider, .. } = &loaded.backend
    {
        let found = catch_unwind(AssertUnwindSafe(|| provider.schema(class)))
            .map_err(|panic| panicked(slot, &panic))?;
        return found.ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("no provider serves class {class}"),
            )
        });
    }
    Err(RemoteError::new(
        ErrorCode::Internal,
        format!("no schema for class {class}"),
    ))
}

fn panicked(slot: &Slot, panic: &Box<dyn std::any::Any + Send>) -> RemoteError {
    let what = purveyor_provider::abi::panic_message(&**panic);
    tracing::error!(provider = %slot.manifest.name, panic = %what, "provider panicked");
    slot.error(
        ErrorCode::ProviderFailed,
        format!("provider {} panicked: {what}", slot.manifest.name),
    )
}
