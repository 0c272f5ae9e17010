//! Direct channels (`docs/protocol.md`, "Direct channels"): a socket pair from a client to
//! the isolated worker serving a class, one end handed to the worker with the caller's
//! credentials, the schemas of the classes the access policy lets it read and which of
//! them it may put and delete, the other stashed in the session for the reply to carry.

use std::sync::Arc;

use purveyor_model::{Capability, ClassPath, ClassSchema};
use purveyor_protocol::{DirectAttach, ErrorCode, RemoteError, Response};

use crate::access::Permission;
use crate::calls::{allowed, loaded_for};
use crate::cx::Cx;
use crate::loading::direct_keep;
use crate::state::Shared;

pub(super) async fn open(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    class: ClassPath,
) -> Result<Response, RemoteError> {
    let session = cx.session("a direct channel")?;
    // Read before any permission is decided: a reload after this closes the channel.
    let policy = host.access_generation();
    allowed(host, cx, Permission::Read, class.as_str())?;
    let unsupported = |why: String| Err(RemoteError::new(ErrorCode::Unsupported, why));
    if session.shows() {
        return unsupported(
            "a connection that shows dialogs calls through the daemon, which holds its dialogs"
                .into(),
        );
    }
    if !session.streams().fds_allowed() {
        return unsupported(
            "this connection cannot carry a socket: direct channels need a local Unix socket"
                .into(),
        );
    }
    let (slot, loaded) = loaded_for(host, cx.caller, &class, None).await?;
    let manifest = slot.manifest();
    if !loaded.hosted().takes_direct() {
        return unsupported(format!(
            "provider {} of {class} is not in an isolated worker (hosting {}): its calls go through the daemon",
            manifest.name, manifest.hosting
        ));
    }
    let mut classes: Vec<ClassSchema> = loaded
        .schemas()
        .iter()
        .filter(|(path, _)| allowed(host, cx, Permission::Read, path.as_str()).is_ok())
        .map(|(_, schema)| schema.as_ref().clone())
        .collect();
    classes.sort_by(|a, b| a.path().cmp(b.path()));
    let paths: Vec<ClassPath> = classes.iter().map(|c| c.path().clone()).collect();
    // Puts and deletes go on the channel too where the caller may make them here (the
    // same checks as `route` and `write::put` / `write::delete` make); a method call goes
    // through the host.
    let may_write: Vec<ClassPath> = paths
        .iter()
        .filter(|path| allowed(host, cx, Permission::Write, path.as_str()).is_ok())
        .cloned()
        .collect();
    let offered = |capability| {
        if manifest.offers(capability) {
            may_write.clone()
        } else {
            Vec::new()
        }
    };
    let (writable, deletable) = (offered(Capability::Put), offered(Capability::Delete));
    let offers = slot.offers();
    let attach = DirectAttach {
        provider: manifest.name.to_string(),
        caller: cx.caller.info(),
        classes,
        offers_get: offers.get,
        offers_enumerate: offers.enumerate,
        deadline_ms: manifest.call_timeout.as_millis() as u64,
        keep_ms: direct_keep(&slot).as_millis() as u64,
        writable,
        deletable,
        policy,
        dialog: None,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| {
        RemoteError::new(
            ErrorCode::Internal,
            format!("cannot make a direct channel: {e}"),
        )
    })?;
    loaded
        .hosted()
        .attach_direct(&attach, &theirs)
        .map_err(|e| slot.error(ErrorCode::ProviderFailed, e))?;
    drop(theirs);
    let token = session.streams().stash_fd(ours.into());
    Ok(Response::Direct {
        token,
        provider: manifest.name.clone(),
        classes: paths,
    })
}
