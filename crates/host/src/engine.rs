//! The host: answers requests by finding the provider that serves a class, loading it if
//! needed, calling it, and checking what it returns.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::join_all;
use purveyor_model::{
    Capability, ClassPath, ClassSchema, Instance, InstanceKey, ProviderState, Timestamp,
};
use purveyor_protocol::{
    ClassList, ErrorCode, HostStatus, InstanceList, PROTOCOL_VERSION, ProviderStatus, RemoteError,
    Request, Response,
};
use purveyor_provider::{CallContext, Caller, Provider, ProviderError};

use crate::builtin::{BuiltinProvider, Dispatch};
use crate::config::HostConfig;
use crate::manifest::{Entry, ManifestError};
use crate::registry::Registry;
use crate::self_provider;
use crate::slot::{LoadResult, Loaded, SchemaSet, Slot};

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
    registry: Registry,
    catalog: Arc<HashMap<String, BuiltinProvider>>,
    pub started: Timestamp,
    /// This process's id, read once (getpid is a system call).
    pub pid: u32,
    socket: Mutex<Option<PathBuf>>,
    pub connections_open: AtomicU32,
    pub connections_total: AtomicU64,
    pub requests: AtomicU64,
    shutting_down: AtomicBool,
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
            HostInner {
                config: self.config,
                registry,
                catalog: Arc::new(catalog),
                started: Timestamp::now(),
                pid: std::process::id(),
                socket: Mutex::new(None),
                connections_open: AtomicU32::new(0),
                connections_total: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
            }
        });
        Host { inner }
    }
}

impl Host {
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder::new(config)
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

    /// Answers one request for `caller`.
    pub async fn handle(&self, request: Request, caller: &Caller) -> Result<Response, RemoteError> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(RemoteError::new(
                ErrorCode::ShuttingDown,
                "the host is shutting down",
            ));
        }
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Status => Ok(Response::Status(self.inner.status())),
            Request::ListProviders => Ok(Response::Providers(self.inner.provider_statuses())),
            Request::ListClasses { namespace } => self.list_classes(namespace).await,
            Request::Describe { class } => {
                let (_, loaded) = self.loaded_for(&class, None).await?;
                Ok(Response::Class(
                    schema_of(&loaded, &class)?.as_ref().clone(),
                ))
            }
            Request::Enumerate { class, selector } => self.enumerate(class, selector, caller).await,
            Request::Get { class, key } => self.get(class, key, caller).await,
            other => Err(RemoteError::new(
                ErrorCode::Unsupported,
                format!("request {other:?} is not supported by this host"),
            )),
        }
    }

    /// Stops taking requests and releases every loaded provider, running cleanup hooks.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let slots = self.inner.registry.slots.values();
        join_all(slots.map(|slot| slot.release("host shutdown"))).await;
    }

    async fn list_classes(
        &self,
        namespace: Option<purveyor_model::NamespacePath>,
    ) -> Result<Response, RemoteError> {
        let wanted = |class: &ClassPath| namespace.as_ref().is_none_or(|ns| ns.contains(class));
        let slots: Vec<&Arc<Slot>> = self
            .inner
            .registry
            .slots
            .values()
            .filter(|s| s.manifest.classes.iter().any(wanted))
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
                }
                Err(error) => list.problems.push(error),
            }
        }
        if list.classes.is_empty()
            && list.problems.is_empty()
            && let Some(ns) = namespace
        {
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no class in namespace {ns}"),
            ));
        }
        list.classes.sort_by(|a, b| a.path().cmp(b.path()));
        Ok(Response::Classes(list))
    }

    async fn enumerate(
        &self,
        class: ClassPath,
        selector: InstanceKey,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, Some(Capability::Enumerate)).await?;
        let schema = schema_of(&loaded, &class)?.clone();
        check_selector(&schema, &selector)?;
        let use_get = selector.is_full_key(&schema) && slot.manifest.offers(Capability::Get);
        let instances = if use_get {
            let (c, k) = (class.clone(), selector.clone());
            self.call(&slot, &loaded, caller, move |p, ctx| p.get(&c, &k, ctx))
                .await?
                .into_iter()
                .collect()
        } else {
            let c = class.clone();
            let mut all = self
                .call(&slot, &loaded, caller, move |p, ctx| p.enumerate(&c, ctx))
                .await?;
            all.retain(|i| i.matches(&selector));
            all
        };
        check_answer(&slot, &schema, &instances)?;
        Ok(Response::Instances(InstanceList { class, instances }))
    }

    async fn get(
        &self,
        class: ClassPath,
        key: InstanceKey,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let (slot, loaded) = self.loaded_for(&class, None).await?;
        let schema = schema_of(&loaded, &class)?.clone();
        check_selector(&schema, &key)?;
        if !key.is_full_key(&schema) {
            let keys: Vec<&str> = schema.keys().map(|k| k.name.as_str()).collect();
            return Err(RemoteError::new(
                ErrorCode::InvalidRequest,
                if keys.is_empty() {
                    format!("{class} is a singleton: get it without a key")
                } else {
                    format!(
                        "{class} is keyed by {}: give exactly those properties (got {key})",
                        keys.join(", ")
                    )
                },
            ));
        }
        let found = if slot.manifest.offers(Capability::Get) {
            let (c, k) = (class.clone(), key.clone());
            self.call(&slot, &loaded, caller, move |p, ctx| p.get(&c, &k, ctx))
                .await?
        } else if slot.manifest.offers(Capability::Enumerate) {
            let c = class.clone();
            self.call(&slot, &loaded, caller, move |p, ctx| p.enumerate(&c, ctx))
                .await?
                .into_iter()
                .find(|i| i.matches(&key))
        } else {
            return Err(slot.error(
                ErrorCode::Unsupported,
                format!(
                    "provider {} offers neither get nor enumerate",
                    slot.manifest.name
                ),
            ));
        };
        match found {
            Some(instance) => {
                check_answer(&slot, &schema, std::slice::from_ref(&instance))?;
                Ok(Response::Instance(instance))
            }
            None => Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no instance of {class} with {key}"),
            )),
        }
    }

    /// The slot serving `class`, loaded, after checking it offers `capability`.
    async fn loaded_for(
        &self,
        class: &ClassPath,
        capability: Option<Capability>,
    ) -> Result<(Arc<Slot>, Arc<Loaded>), RemoteError> {
        let Some(slot) = self.inner.registry.by_class.get(class) else {
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("no provider serves class {class}"),
            ));
        };
        if let Some(cap) = capability
            && !slot.manifest.offers(cap)
        {
            return Err(slot.error(
                ErrorCode::Unsupported,
                format!(
                    "provider {} does not offer {cap} (its manifest's capabilities)",
                    slot.manifest.name
                ),
            ));
        }
        let loaded = self.acquire(slot).await?;
        Ok((slot.clone(), loaded))
    }

    async fn acquire(&self, slot: &Arc<Slot>) -> Result<Arc<Loaded>, RemoteError> {
        let catalog = self.inner.catalog.clone();
        slot.acquire(move |slot| load(catalog.clone(), slot)).await
    }

    /// Calls the provider by its dispatch mode, under `catch_unwind`, within its deadline,
    /// and records the outcome.
    async fn call<T, F>(
        &self,
        slot: &Arc<Slot>,
        loaded: &Arc<Loaded>,
        caller: &Caller,
        f: F,
    ) -> Result<T, RemoteError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Provider, &CallContext) -> Result<T, ProviderError> + Send + 'static,
    {
        let timeout = slot.manifest.call_timeout;
        let ctx = CallContext {
            caller: *caller,
            deadline: Some(Instant::now() + timeout),
        };
        let name = &slot.manifest.name;
        let result = match loaded.dispatch {
            Dispatch::Inline => catch_unwind(AssertUnwindSafe(|| f(&*loaded.provider, &ctx)))
                .map_err(|panic| panicked(slot, &panic)),
            Dispatch::Blocking => {
                let provider = loaded.provider.clone();
                let task = tokio::task::spawn_blocking(move || {
                    catch_unwind(AssertUnwindSafe(|| f(&*provider, &ctx)))
                });
                match tokio::time::timeout(timeout, task).await {
                    Ok(Ok(Ok(result))) => Ok(result),
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
        };
        let result = result.and_then(|r| r.map_err(|e| provider_error(slot, e)));
        slot.record_call(result.as_ref().err());
        if let Err(error) = &result {
            tracing::debug!(provider = %name, %error, "provider call failed");
        }
        result
    }
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

/// Loads the provider a slot describes. Runs on its own task (see [`Slot::acquire`]).
async fn load(catalog: Arc<HashMap<String, BuiltinProvider>>, slot: Arc<Slot>) -> LoadResult {
    let name = slot.manifest.name.clone();
    let builtin = match &slot.manifest.entry {
        Entry::Builtin(entry) => catalog.get(entry).cloned().ok_or_else(|| {
            slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {name}: this build of purveyor has no builtin provider {entry:?}"
                ),
            )
        })?,
        Entry::Library { .. } | Entry::External { .. } => {
            return Err(slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {name}: hosting model {} is not available in this version of purveyor (only builtin)",
                    slot.manifest.hosting
                ),
            ));
        }
    };
    let factory = builtin.factory.clone();
    let task = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| {
            let provider = factory()?;
            let classes = provider.classes();
            Ok::<_, ProviderError>((provider, classes))
        }))
    });
    let timeout = slot.manifest.call_timeout;
    let (provider, classes) = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(Ok(made)))) => made,
        Ok(Ok(Ok(Err(e)))) => {
            return Err(slot.error(
                ErrorCode::ProviderFailed,
                format!("provider {name} failed to load: {e}"),
            ));
        }
        Ok(Ok(Err(panic))) => return Err(panicked(&slot, &panic)),
        Ok(Err(join)) => {
            return Err(slot.error(
                ErrorCode::Internal,
                format!("provider {name}: load task failed: {join}"),
            ));
        }
        Err(_) => {
            return Err(slot.error(
                ErrorCode::Timeout,
                format!(
                    "provider {name} did not finish loading within {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
    };
    let schemas = check_schemas(&slot, classes)?;
    Ok(Loaded {
        provider,
        dispatch: builtin.dispatch,
        schemas,
    })
}

/// The provider must describe exactly the classes its manifest lists.
fn check_schemas(slot: &Slot, classes: Vec<ClassSchema>) -> Result<SchemaSet, RemoteError> {
    let name = &slot.manifest.name;
    let mut set = SchemaSet::new();
    for schema in classes {
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

fn schema_of<'a>(
    loaded: &'a Loaded,
    class: &ClassPath,
) -> Result<&'a Arc<ClassSchema>, RemoteError> {
    loaded.schemas.get(class).ok_or_else(|| {
        RemoteError::new(ErrorCode::Internal, format!("no schema for class {class}"))
    })
}

fn check_selector(schema: &ClassSchema, selector: &InstanceKey) -> Result<(), RemoteError> {
    if let Some(name) = selector.unknown_property(schema) {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!(
                "class {} has no property {:?}",
                schema.path(),
                name.as_str()
            ),
        ));
    }
    for (name, value) in selector.values() {
        if let Some(prop) = schema.property(name.as_str())
            && !value.conforms_to(prop.ty)
        {
            return Err(RemoteError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "property {:?} of {} has type {}, not {}",
                    name.as_str(),
                    schema.path(),
                    prop.ty,
                    value.value_type()
                ),
            ));
        }
    }
    Ok(())
}

/// A provider's answer must fit its own schema; one that does not is a provider failure.
fn check_answer(
    slot: &Slot,
    schema: &ClassSchema,
    instances: &[Instance],
) -> Result<(), RemoteError> {
    for instance in instances {
        if let Err(problem) = schema.check_instance(instance) {
            let error = slot.error(
                ErrorCode::ProviderFailed,
                format!(
                    "provider {} returned a bad instance: {problem}",
                    slot.manifest.name
                ),
            );
            slot.record_error(&error);
            return Err(error);
        }
    }
    Ok(())
}

fn provider_error(slot: &Slot, error: ProviderError) -> RemoteError {
    let name = &slot.manifest.name;
    let (code, message) = match error {
        ProviderError::NotFound(m) => (ErrorCode::NotFound, m),
        ProviderError::Unsupported(m) => (ErrorCode::Unsupported, format!("provider {name}: {m}")),
        ProviderError::InvalidArgument(m) => (ErrorCode::InvalidRequest, m),
        ProviderError::AccessDenied(m) => (ErrorCode::AccessDenied, m),
        other => (
            ErrorCode::ProviderFailed,
            format!("provider {name} failed: {other}"),
        ),
    };
    slot.error(code, message)
}

fn panicked(slot: &Slot, panic: &Box<dyn std::any::Any + Send>) -> RemoteError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    tracing::error!(provider = %slot.manifest.name, panic = %what, "provider panicked");
    slot.error(
        ErrorCode::ProviderFailed,
        format!("provider {} panicked: {what}", slot.manifest.name),
    )
}
