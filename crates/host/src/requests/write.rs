//! Writes: `put`, `delete` and method calls, each checked against the class's schema
//! before the provider sees it, and a method's result checked after.

use std::sync::Arc;

use purveyor_hosting::answer::check_full_key;
use purveyor_model::{Capability, ClassPath, Identifier, Instance, InstanceKey};
use purveyor_protocol::{ErrorCode, ProviderCall, RemoteError, Response};

use crate::calls::{loaded_for, write_call};
use crate::cx::Cx;
use crate::outcomes::schema_for;
use crate::state::Shared;

pub(super) async fn put(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    instance: Instance,
) -> Result<Response, RemoteError> {
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Put)).await?;
    let schema = schema_for(&slot, &loaded, &class)?;
    schema
        .check_instance(&instance)
        .map_err(|m| RemoteError::new(ErrorCode::InvalidRequest, m))?;
    let call = ProviderCall::Put { class, instance };
    write_call(host, cx, &slot, &loaded, call).await?;
    Ok(Response::Done)
}

pub(super) async fn delete(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    key: InstanceKey,
) -> Result<Response, RemoteError> {
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Delete)).await?;
    let schema = schema_for(&slot, &loaded, &class)?;
    check_full_key(&schema, &key)?;
    let call = ProviderCall::Delete { class, key };
    write_call(host, cx, &slot, &loaded, call).await?;
    Ok(Response::Done)
}

pub(super) async fn call_method(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
    method: Identifier,
    key: InstanceKey,
    args: Instance,
) -> Result<Response, RemoteError> {
    let (slot, loaded) = loaded_for(host, cx.caller, &class, Some(Capability::Call)).await?;
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
    let result = write_call(host, cx, &slot, &loaded, call).await?;
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
                slot.manifest().name,
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
