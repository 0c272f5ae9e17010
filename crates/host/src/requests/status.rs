//! The host's own requests that change state: `enable_provider`, `reload`. (Ping,
//! status and the provider list are one line each in the table.)

use purveyor_model::ProviderName;
use std::sync::Arc;

use purveyor_protocol::{ErrorCode, RemoteError, Response};

use crate::access::Permission;
use crate::calls::allowed;
use crate::cx::Cx;
use crate::state::Shared;

/// Lets a quarantined provider load again; the daemon's owner only.
pub(super) fn enable_provider(
    host: &Shared,
    cx: &Cx<'_>,
    name: &ProviderName,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Write, "purveyor")?;
    let Some(slot) = host.registry().slots().get(name).cloned() else {
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

/// Reloads the configuration (`reload.rs`); whoever may write `purveyor` (the daemon's
/// owner by default).
pub(super) async fn reload(host: &Arc<Shared>, cx: &Cx<'_>) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Write, "purveyor")?;
    let report = crate::reload::run(host)?;
    crate::reload::settle(host).await;
    Ok(Response::Reloaded(report))
}
