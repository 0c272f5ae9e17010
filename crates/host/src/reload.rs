//! Reload without restart (`docs/lifecycle.md`, "Reload"): the manifests are read again
//! into a new registry, which replaces the old one as a whole, with the access policy the
//! caller read — or nothing changes.
//!
//! **Invariants.** A reload is all or nothing: a manifest problem that the registry in
//! force does not have already refuses it, and then neither the registry nor the policy
//! changes. A provider whose manifest is unchanged keeps its slot (loaded or not, its
//! statistics, its subscriptions); a changed or removed provider's slot is retired — no
//! new load — and released after its calls in flight (within its call timeout, as any
//! release). A request keeps the registry it started with, so it ends as it began. One
//! reload runs at a time. A `reload` request is answered once the retired providers are
//! released, or after [`SETTLE`] if calls still run in them: so a retired isolated
//! provider's worker no longer answers on its direct channels when the reload is
//! reported done. A reload that reads the access policy closes every direct channel
//! (each was opened for what the old policy allowed its caller), and is answered once the
//! workers have closed them: from then on, no channel opened under the old policy takes
//! a request it had not already received.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use purveyor_hosting::lock::Locked;
use purveyor_protocol::{ErrorCode, ReloadReport, RemoteError};

use crate::access::AccessPolicy;
use crate::registry::Registry;
use crate::state::Shared;

/// What a reload re-reads besides the manifests ([`crate::state::ReloadHook`]).
pub type Reloader = Arc<crate::state::ReloadHook>;

/// A whole reload: the reloader's, or the manifests alone.
pub(crate) fn run(host: &Arc<Shared>) -> Result<ReloadReport, RemoteError> {
    match host.reloader() {
        Some(hook) => hook(&crate::Host::from_shared(host.clone())),
        None => reload(host, None),
    }
}

/// How long a `reload` request waits for the providers it retired to be released.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// Waits (at most [`SETTLE`]) for the releases the reloads so far started; those still
/// running go on without a waiter.
pub(crate) async fn settle(host: &Shared) {
    let releases = std::mem::take(&mut *host.retiring().locked());
    let _ = tokio::time::timeout(SETTLE, futures_util::future::join_all(releases)).await;
}

/// A library reloaded in-daemon into a daemon that started with one runtime thread (see
/// the server's `default_runtime_threads`) would stop it if it hung: say so.
fn warn_of_in_daemon_on_one_thread(host: &Shared, report: &ReloadReport) {
    let one_thread =
        tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() == 1);
    if !one_thread {
        return;
    }
    let registry = host.registry();
    for name in report.added.iter().chain(&report.changed) {
        let in_daemon = (registry.slots().iter()).any(|(n, s)| {
            n.as_str() == name && s.manifest().hosting == purveyor_model::Hosting::InDaemon
        });
        if in_daemon {
            tracing::warn!(
                provider = %name,
                "hosted in-daemon on a daemon started with one runtime thread (no in-daemon library at start): if it hangs, the daemon stops serving until restarted; restart the daemon, or pass --threads 2"
            );
        }
    }
}

/// Closes every loaded isolated provider's direct channels: each was opened for the
/// classes the old policy let its caller read and write. Their clients go through the
/// daemon, under the new policy, and attach again. The reload's answer waits for the
/// workers (as for retired providers).
fn close_direct_channels(host: &Arc<Shared>, registry: &Registry, policy: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for slot in registry.slots().values() {
        for slot in std::iter::once(slot.clone()).chain(slot.user_slots()) {
            let Some(loaded) = slot.loaded_now() else {
                continue;
            };
            if !loaded.hosted().takes_direct() {
                continue;
            }
            let closing = runtime.spawn(async move {
                loaded
                    .hosted()
                    .close_direct(policy, Duration::from_secs(2))
                    .await;
            });
            let mut retiring = host.retiring().locked();
            retiring.retain(|r| !r.is_finished());
            retiring.push(closing);
        }
    }
}

/// Reads the manifests again and, if nothing new is wrong, puts the new registry and
/// `policy` (when given) in force.
pub(crate) fn reload(
    host: &Arc<Shared>,
    policy: Option<AccessPolicy>,
) -> Result<ReloadReport, RemoteError> {
    let _one = host.one_reload().locked();
    let old = host.registry();
    let new = Registry::build(
        host.config(),
        host.builtins(),
        Some(&old),
        Some(host.cache_control()),
    );
    let known: HashSet<String> = old.problems().iter().map(|p| p.to_string()).collect();
    let fresh: Vec<String> = new
        .problems()
        .iter()
        .map(|p| p.to_string())
        .filter(|p| !known.contains(p))
        .collect();
    if !fresh.is_empty() {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!(
                "reload refused, the configuration in force keeps serving: {}",
                fresh.join("; ")
            ),
        ));
    }
    let mut report = ReloadReport::default();
    let mut retired = Vec::new();
    for (name, slot) in old.slots() {
        match new.slots().get(name) {
            None => {
                report.removed.push(name.to_string());
                retired.push(slot.clone());
            }
            Some(now) if !Arc::ptr_eq(now, slot) => {
                report.changed.push(name.to_string());
                retired.push(slot.clone());
            }
            Some(_) => {}
        }
    }
    report.added = new
        .slots()
        .keys()
        .filter(|name| !old.slots().contains_key(*name))
        .map(|name| name.to_string())
        .collect();
    host.set_registry(new);
    if let Some(policy) = policy {
        let generation = host.set_access(policy);
        close_direct_channels(host, &host.registry(), generation);
    }
    for slot in retired {
        slot.retire();
        // A requestor provider's workers are its users' slots.
        for slot in std::iter::once(slot.clone()).chain(slot.user_slots()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let release = runtime.spawn(async move { slot.release("reload").await });
                let mut retiring = host.retiring().locked();
                // Reloads by SIGHUP have no waiter: keep only the releases still running.
                retiring.retain(|r| !r.is_finished());
                retiring.push(release);
            }
        }
    }
    warn_of_in_daemon_on_one_thread(host, &report);
    tracing::info!(
        added = ?report.added,
        removed = ?report.removed,
        changed = ?report.changed,
        "manifests reloaded"
    );
    Ok(report)
}
