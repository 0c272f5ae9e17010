//! [`Host`], the façade: what a daemon, an embedded client or the HTTP gateway calls.
//! Every method is a short delegation — the requests live in [`crate::requests`], the
//! state in [`crate::state`].

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::join_all;
use purveyor_hosting::BuiltinProvider;
use purveyor_model::{ClassPath, NamespacePath};
use purveyor_protocol::{
    ClassList, InstanceList, IoProcedureInfo, ReloadReport, RemoteError, Request, Response,
};
use purveyor_provider::Caller;

use crate::access::AccessPolicy;
use crate::config::HostConfig;
use crate::cx::Cx;
use crate::manifest::{Manifest, ManifestError};
use crate::requests;
use crate::session::Session;
use crate::state::Shared;

/// Collects built-in providers, then builds a [`Host`].
pub struct HostBuilder {
    config: HostConfig,
    builtins: Vec<BuiltinProvider>,
}

/// A provider host. Cheap to clone; every clone is the same host.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
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
        let shared = Arc::new_cyclic(|weak| {
            let mut builtins = self.builtins;
            builtins.push(crate::self_provider::builtin(weak.clone()));
            Shared::new(self.config, builtins)
        });
        Host { shared }
    }
}

impl Host {
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder::new(config)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Host {
        Host { shared }
    }

    /// Reads the manifests again and puts them in force with `policy` (when given), all
    /// or nothing (`docs/lifecycle.md`, "Reload"): a new manifest problem refuses it with
    /// an `invalid_request` naming each `FILE:LINE`, and the configuration in force keeps
    /// serving. Unchanged providers keep running; changed and removed ones are released
    /// after their calls in flight.
    pub fn reload(&self, policy: Option<AccessPolicy>) -> Result<ReloadReport, RemoteError> {
        crate::reload::reload(&self.shared, policy)
    }

    /// What a `reload` request (and [`Host::reload_all`]) runs: `hook` re-reads the files
    /// its server owns, then calls [`Host::reload`]. Without one, the manifests alone.
    pub fn set_reloader(&self, hook: crate::Reloader) {
        self.shared.set_reloader(hook);
    }

    /// A whole reload, as the `reload` request runs it (for `SIGHUP`).
    pub fn reload_all(&self) -> Result<ReloadReport, RemoteError> {
        crate::reload::run(&self.shared)
    }

    pub fn config(&self) -> &HostConfig {
        self.shared.config()
    }

    /// Providers a root daemon would run as root without their manifest asking for it.
    pub fn root_warnings(&self) -> Vec<String> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        self.shared
            .registry()
            .slots()
            .values()
            .filter_map(|s| s.manifest().runs_as_root_unasked(uid))
            .collect()
    }

    /// Manifests that were refused when the host was built.
    pub fn problems(&self) -> Vec<ManifestError> {
        self.shared.registry().problems().to_vec()
    }

    /// Records the socket the daemon listens on, for `status`.
    pub fn set_socket(&self, path: Option<PathBuf>) {
        self.shared.set_socket(path);
    }

    /// Counts an HTTP connection refused by `http.connections` (shown in `purveyor.host`).
    pub fn note_http_refused(&self) {
        self.shared.counters().http_refused();
    }

    /// Counts a remote connection refused before its session: no or a bad certificate,
    /// no user for it, too many handshakes, a handshake too slow (`purveyor.host`).
    pub fn note_remote_refused(&self) {
        self.shared.counters().remote_refused();
    }

    /// A session for `caller`: what a connection (or an embedded client) holds so that it
    /// can subscribe, open streams and show dialogs. Dropping it ends all of them.
    pub fn session(&self, caller: Caller) -> Session {
        let shared = &self.shared;
        Session::new(
            caller,
            shared.config().event_queue,
            shared.events().clone(),
            shared.dialogs().clone(),
        )
    }

    /// Answers one request for `caller`, outside any session (so it cannot subscribe).
    pub async fn handle(&self, request: Request, caller: &Caller) -> Result<Response, RemoteError> {
        requests::answer(&self.shared, Cx::one_off(caller), request).await
    }

    /// Answers one request made in `session`.
    pub async fn handle_in(
        &self,
        request: Request,
        session: &Session,
    ) -> Result<Response, RemoteError> {
        requests::answer(&self.shared, Cx::in_session(session, None), request).await
    }

    /// The classes under `namespaces` that `caller` may read, for an exporter (see
    /// [`requests::export_classes`]: only providers loaded now, or that `wake` allows).
    pub async fn export_classes(
        &self,
        namespaces: &[NamespacePath],
        wake: &(dyn Fn(&Manifest) -> bool + Sync),
        caller: &Caller,
    ) -> ClassList {
        requests::export_classes(&self.shared, namespaces, wake, caller).await
    }

    /// The instances of `class` for an exporter; its calls do not count as use.
    pub async fn scrape(
        &self,
        class: ClassPath,
        caller: &Caller,
    ) -> Result<InstanceList, RemoteError> {
        requests::scrape(&self.shared, class, caller).await
    }

    /// Every I/O procedure this host serves, in lookup order.
    pub fn io_list(&self) -> Vec<IoProcedureInfo> {
        requests::io_list(&self.shared)
    }

    /// Stops taking requests and releases every loaded provider in parallel, running
    /// cleanup hooks, within the shutdown grace period; then kills any provider process
    /// still running. (In-daemon providers still in a call are cut off.)
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.stop_admitting();
        // Open dialogs hold their providers: close them first, telling both sides.
        shared.dialogs().shutdown();
        let registry = shared.registry();
        let slots = registry.all_slots();
        let released = tokio::time::timeout(
            shared.config().shutdown_grace,
            join_all(slots.iter().map(|slot| slot.release("host shutdown"))),
        )
        .await;
        if released.is_err() {
            tracing::warn!(
                "providers still releasing after the grace period; killing their processes"
            );
        }
        for slot in &slots {
            slot.kill_process();
        }
    }
}
