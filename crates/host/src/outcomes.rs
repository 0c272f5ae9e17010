//! What a provider's answer means: hosting errors as wire errors, events checked against
//! the schemas and delivered, and read replies checked and turned into responses. Shared
//! by the calls (`calls.rs`) and the loading of providers (`loading.rs`).

use std::sync::Arc;

use purveyor_hosting::CallError;
use purveyor_model::{Capability, ClassPath, ClassSchema, InstanceKey};
use purveyor_protocol::{ErrorCode, ProviderReply, RaisedEvent, ReadCall, RemoteError, Response};

use crate::events::EventBus;
use crate::slot::{Loaded, Slot};

/// A hosting error as a wire error about `slot`'s provider.
pub(crate) fn remote(slot: &Slot, error: &impl HasCode) -> RemoteError {
    slot.error(error.code(), error.to_string())
}

/// The hosting errors, which carry their wire code.
pub(crate) trait HasCode: std::fmt::Display {
    fn code(&self) -> ErrorCode;
}

impl HasCode for CallError {
    fn code(&self) -> ErrorCode {
        CallError::code(self)
    }
}

impl HasCode for purveyor_hosting::LoadError {
    fn code(&self) -> ErrorCode {
        purveyor_hosting::LoadError::code(self)
    }
}

/// Checks events a provider raised against its schemas (`schema_of`) and offers them to
/// subscribers. An event that does not fit is dropped and recorded as the provider's
/// error; the change that raised it stands.
pub(crate) fn deliver(
    bus: &EventBus,
    slot: &Slot,
    events: Vec<RaisedEvent>,
    schema_of: impl Fn(&ClassPath) -> Result<Arc<ClassSchema>, RemoteError>,
) {
    for event in events {
        if !bus.has_subscribers(&event.class) {
            continue;
        }
        let problem = if !slot.manifest().serves(&event.class) {
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
                        slot.manifest().name
                    ),
                );
                tracing::warn!(provider = %slot.manifest().name, %error, "event dropped");
                slot.record_error(&error);
            }
        }
    }
}

/// The schema of `class`: fixed at load, or asked of a provider that fills a namespace.
pub(crate) fn schema_for(
    slot: &Slot,
    loaded: &Loaded,
    class: &ClassPath,
) -> Result<Arc<ClassSchema>, RemoteError> {
    if let Some(schema) = loaded.schemas().get(class) {
        return Ok(schema.clone());
    }
    if slot.manifest().in_namespace(class)
        && let Some(found) = loaded.hosted().schema_now(class)
    {
        let found = found.map_err(|e| remote(slot, &e))?;
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

pub(crate) fn not_offered(slot: &Slot, cap: Capability) -> RemoteError {
    slot.offers().not_offered(&cap.to_string())
}

/// Counts an error that is the provider's fault as its error.
pub(crate) fn recorded(slot: &Slot, error: RemoteError) -> RemoteError {
    if error.code == ErrorCode::ProviderFailed {
        slot.record_error(&error);
    }
    error
}

/// A reply of the wrong kind, recorded as the provider's error.
pub(crate) fn unexpected(slot: &Slot, what: &str, reply: &ProviderReply) -> RemoteError {
    recorded(slot, slot.offers().unexpected(what, reply))
}

/// A get's schema and provider call, after checking the key.
pub(crate) fn get_call_for<'a>(
    slot: &Slot,
    loaded: &Loaded,
    class: &'a ClassPath,
    key: &'a InstanceKey,
) -> Result<(Arc<ClassSchema>, ReadCall<'a>), RemoteError> {
    let schema = schema_for(slot, loaded, class)?;
    let call = slot.offers().get_call(&schema, class, key)?;
    Ok((schema, call))
}

/// A get's response from its provider's reply.
pub(crate) fn get_answer(
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

/// An enumerate's schema and provider call.
pub(crate) fn enumerate_call_for<'a>(
    slot: &Slot,
    loaded: &Loaded,
    class: &'a ClassPath,
    selector: &'a InstanceKey,
) -> Result<(Arc<ClassSchema>, ReadCall<'a>), RemoteError> {
    let schema = schema_for(slot, loaded, class)?;
    let call = slot.offers().enumerate_call(&schema, class, selector)?;
    Ok((schema, call))
}

/// An enumerate's response from its provider's reply.
pub(crate) fn enumerate_answer(
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
