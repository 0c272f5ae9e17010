//! Calling a provider for a request: find and load the slot serving a class, call it with
//! the request's context, record the outcome on the slot, and turn what went wrong into
//! the wire's error — the edge where [`CallError`] becomes a [`RemoteError`].
//!
//! **Invariant:** every call is bracketed by `Slot::begin_limited_call` (which refuses a
//! call past the manifest's `limits.calls`) / `Slot::end_call` (a passive call does not
//! count as use), and a provider whose process died or was killed
//! is marked lost before the error goes back.

use std::sync::Arc;

use purveyor_hosting::{CallCx, CallError, InlineCall, InlineCx};
use purveyor_model::{Capability, ClassPath, Value};
use purveyor_protocol::{ErrorCode, ProviderCall, ProviderReply, ReadCall, RemoteError};
use purveyor_provider::abi::from_fault;

use crate::access::Permission;
use crate::cx::Cx;
use crate::outcomes::{deliver, not_offered, remote, schema_for, unexpected};
use crate::slot::{Loaded, Lost, Slot};
use crate::state::Shared;
use purveyor_provider::Caller;

/// Whether the access policy lets the caller have `permission` on `path`.
pub(crate) fn allowed(
    host: &Shared,
    cx: &Cx<'_>,
    permission: Permission,
    path: &str,
) -> Result<(), RemoteError> {
    host.access()
        .check(cx.caller, permission, path)
        .map_err(|message| RemoteError::new(ErrorCode::AccessDenied, message))
}

/// The slot serving `class`, loaded, after checking it offers `capability`.
pub(crate) async fn loaded_for(
    host: &Arc<Shared>,
    caller: &Caller,
    class: &ClassPath,
    capability: Option<Capability>,
) -> Result<(Arc<Slot>, Arc<Loaded>), RemoteError> {
    let Some(slot) = host.registry().slot_for(class).cloned() else {
        return Err(RemoteError::new(
            ErrorCode::NotFound,
            format!("no provider serves class {class}"),
        ));
    };
    // A requestor provider serves each user from a slot of their own.
    let slot = slot.for_caller(caller)?;
    if let Some(cap) = capability
        && !slot.manifest().offers(cap)
    {
        return Err(not_offered(&slot, cap));
    }
    let loaded = acquire(host, &slot).await?;
    Ok((slot, loaded))
}

/// `slot`'s provider, loading it if needed. A requestor provider's own slot never loads
/// (its users' slots do: [`Slot::for_caller`]).
pub(crate) async fn acquire(
    host: &Arc<Shared>,
    slot: &Arc<Slot>,
) -> Result<Arc<Loaded>, RemoteError> {
    if slot.serves_per_user() {
        return Err(slot.error(
            ErrorCode::Unsupported,
            format!(
                "provider {} runs as each caller (user = \"requestor\"): it serves requests for classes only",
                slot.manifest().name
            ),
        ));
    }
    slot.acquire(|slot| crate::loading::load(host.clone(), slot))
        .await
}

/// Calls the provider wherever it runs, within its deadline, and records the outcome. A
/// provider error in the reply becomes the returned error.
pub(crate) async fn call(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    call: ProviderCall,
) -> Result<ProviderReply, RemoteError> {
    if loaded.calls_inline() {
        return call_inline(host, cx, slot, loaded, InlineCall::Owned(call));
    }
    let timeout = slot.manifest().call_timeout;
    // A call whose client shows dialogs may wait for one: its deadline is suspended while
    // a dialog of it is open.
    let (ui, hub) = (cx.ui, host.dialogs());
    let extend = move || {
        (ui != 0)
            .then(|| hub.extended_deadline(ui, timeout))
            .flatten()
    };
    let call_cx = CallCx {
        caller: cx.caller,
        timeout,
        ui,
        extend: &extend,
    };
    slot.begin_limited_call()?;
    let started = host.config().accounting.then(std::time::Instant::now);
    let result = loaded.hosted().call(&call_cx, call).await;
    let result = result.map_err(|e| failed(slot, loaded, e));
    finish_call(slot, cx.passive, result, started)
}

/// [`call`] for a read whose class and key are borrowed from the request: a provider
/// whose calls run on this thread reads them where they are, any other is sent a copy.
pub(crate) async fn read(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    read: ReadCall<'_>,
) -> Result<ProviderReply, RemoteError> {
    if loaded.calls_inline() {
        return call_inline(host, cx, slot, loaded, InlineCall::Read(read));
    }
    call(host, cx, slot, loaded, read.to_call()).await
}

/// [`call`] for a provider whose calls run on this thread ([`Loaded::calls_inline`]). An
/// in-daemon library's call is watched: past its deadline, the watchdog marks the
/// provider failed and, for a request over a socket, answers the client and closes the
/// connection whose thread is stuck.
pub(crate) fn call_inline(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    call: InlineCall<'_>,
) -> Result<ProviderReply, RemoteError> {
    let timeout = slot.manifest().call_timeout;
    let site = cx.site;
    // Run by the watchdog's thread if the call overruns, while it still runs.
    let overdue = || {
        let error = remote(
            slot,
            &CallError::Stuck(
                slot.manifest().name.to_string(),
                purveyor_hosting::Shown(timeout),
            ),
        );
        slot.record_error(&error);
        slot.lost(loaded, Lost::Failed(error.clone()));
        if let Some(site) = site {
            site.abandon(error, slot.manifest().name.as_str());
        }
    };
    let inline = InlineCx {
        caller: cx.caller,
        timeout,
        watchdog: host.watchdog(),
        overdue: &overdue,
    };
    slot.begin_limited_call()?;
    let started = host.config().accounting.then(std::time::Instant::now);
    // Its calls run on this thread: this thread's CPU time is the call's (counted while
    // it runs, too).
    let running = started.map(|_| slot.running().start());
    let result = loaded.hosted().call_inline(&inline, call);
    if let Some(running) = running {
        let used = slot.running().finish(running);
        slot.charge_cpu(used);
    }
    match result {
        Err(stuck @ CallError::Stuck(..)) => {
            // The watchdog recorded the error when the deadline passed.
            slot.end_call(cx.passive);
            let stuck = remote(slot, &stuck);
            slot.record_call(Some(&stuck), started.map(|s| s.elapsed()));
            Err(stuck)
        }
        result => {
            let result = result.map_err(|e| failed(slot, loaded, e));
            finish_call(slot, cx.passive, result, started)
        }
    }
}

/// A failed call as the client sees it; a provider whose process died or was killed is
/// marked lost first.
fn failed(slot: &Slot, loaded: &Arc<Loaded>, error: CallError) -> RemoteError {
    match &error {
        CallError::Crashed(_, why) => slot.lost(loaded, Lost::Crashed(why.clone())),
        CallError::Killed(..) => slot.lost(loaded, Lost::Killed),
        _ => {}
    }
    let mut remote = remote(slot, &error);
    if let CallError::Crashed(_, why) = &error
        && let Some(note) = slot.limit_note(why)
    {
        remote.message.push_str(&note);
    }
    remote
}

/// Ends a call begun with `slot.begin_limited_call()` (a `passive` one does not count as use):
/// records its outcome, and makes a provider error in the reply the returned error.
fn finish_call(
    slot: &Slot,
    passive: bool,
    result: Result<ProviderReply, RemoteError>,
    started: Option<std::time::Instant>,
) -> Result<ProviderReply, RemoteError> {
    slot.end_call(passive);
    let result = result.and_then(|reply| match reply {
        ProviderReply::Error(fault) => Err(slot.offers().provider_error(from_fault(fault))),
        other => Ok(other),
    });
    slot.record_call(result.as_ref().err(), started.map(|s| s.elapsed()));
    if let Err(error) = &result {
        tracing::debug!(provider = %slot.manifest().name, %error, "provider call failed");
    }
    result
}

/// A put, delete or call: the provider's result, after its events are checked and
/// delivered.
pub(crate) async fn write_call(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    provider_call: ProviderCall,
) -> Result<Option<Value>, RemoteError> {
    let what = provider_call.kind();
    match call(host, cx, slot, loaded, provider_call).await? {
        ProviderReply::Done { result, events } => {
            deliver(host.events(), slot, events, |class| {
                schema_for(slot, loaded, class)
            });
            Ok(result)
        }
        other => Err(unexpected(slot, what, &other)),
    }
}
