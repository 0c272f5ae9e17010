//! Reads: `get` and `enumerate`, on the asynchronous path and on the synchronous one
//! ([`super::answer_now`]), which share every step but the wait.

use std::sync::Arc;

use purveyor_hosting::InlineCall;
use purveyor_model::{Capability, ClassPath, InstanceKey};
use purveyor_protocol::{ReadCall, RemoteError, Response};

use crate::access::Permission;
use crate::calls::{allowed, call_inline, loaded_for, read};
use crate::cx::Cx;
use crate::outcomes::{
    enumerate_answer, enumerate_call_for, get_answer, get_call_for, not_offered,
};
use crate::slot::{Loaded, Slot};
use crate::state::Shared;

pub(super) async fn enumerate(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    selector: InstanceKey,
) -> Result<Response, RemoteError> {
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Enumerate)).await?;
    let (schema, call) = enumerate_call_for(&slot, &loaded, &class, &selector)?;
    let asked_get = matches!(call, ReadCall::Get { .. });
    let reply = read(host, cx, &slot, &loaded, call).await?;
    enumerate_answer(&slot, &schema, class, &selector, asked_get, reply)
}

pub(super) async fn get(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    key: InstanceKey,
) -> Result<Response, RemoteError> {
    let (slot, loaded) = loaded_for(host, cx.caller, &class, None).await?;
    let (schema, call) = get_call_for(&slot, &loaded, &class, &key)?;
    let asked_get = matches!(call, ReadCall::Get { .. });
    let reply = read(host, cx, &slot, &loaded, call).await?;
    get_answer(&slot, &schema, &class, &key, asked_get, reply)
}

/// The slot serving `class` and its provider, if it is loaded now and its calls run on
/// this thread: then a read of it can be answered at once.
pub(super) fn ready_now(host: &Shared, class: &ClassPath) -> Option<(Arc<Slot>, Arc<Loaded>)> {
    let slot = host.registry().slot_for(class)?.clone();
    let loaded = slot.loaded_now().filter(|l| l.calls_inline())?;
    Some((slot, loaded))
}

/// [`get`] of a provider [`ready_now`] found.
pub(super) fn get_now(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    class: ClassPath,
    key: InstanceKey,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Read, class.as_str())?;
    let (schema, call) = get_call_for(slot, loaded, &class, &key)?;
    let asked_get = matches!(call, ReadCall::Get { .. });
    let reply = call_inline(host, cx, slot, loaded, InlineCall::Read(call))?;
    get_answer(slot, &schema, &class, &key, asked_get, reply)
}

/// [`enumerate`] of a provider [`ready_now`] found.
pub(super) fn enumerate_now(
    host: &Shared,
    cx: &Cx<'_>,
    slot: &Arc<Slot>,
    loaded: &Arc<Loaded>,
    class: ClassPath,
    selector: InstanceKey,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Read, class.as_str())?;
    if !slot.manifest().offers(Capability::Enumerate) {
        return Err(not_offered(slot, Capability::Enumerate));
    }
    let (schema, call) = enumerate_call_for(slot, loaded, &class, &selector)?;
    let asked_get = matches!(call, ReadCall::Get { .. });
    let reply = call_inline(host, cx, slot, loaded, InlineCall::Read(call))?;
    enumerate_answer(slot, &schema, class, &selector, asked_get, reply)
}
