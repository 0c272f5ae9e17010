//! The hub's table of open dialogs, below its lock: where an in-call dialog goes, who
//! owns a dialog, ending one, and what is done once the lock is released.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use purveyor_protocol::{DialogEvent, ErrorCode, Push, RemoteError};

use super::{After, Open, SessionUi, State};
use crate::push::PushSink;

/// Where an in-call dialog goes: the client whose call has the token `call`, if that
/// call still runs and its client shows dialogs (the call's count of open dialogs grows).
pub(super) fn in_call(
    state: &mut State,
    call: u32,
) -> Result<(u64, Arc<PushSink>, Option<u32>), String> {
    let Some(c) = state.calls.get_mut(&call) else {
        return Err(format!(
            "no UI available: the call (token {call}) is over or was not made by a client that shows dialogs"
        ));
    };
    if !c.shows {
        return Err(format!(
            "no UI available: the client (pid {}) cannot show dialogs (--no-input, or no terminal)",
            c.pid
        ));
    }
    c.open += 1;
    Ok((c.session, c.sink.clone(), c.request))
}

/// A direct channel for dialog `handle`: the application's end queued on `sink` (a
/// `dialog_channel` push, before the open), the provider's end returned. `None` (the
/// dialog goes through the host) when no socket can be made or the queue is full.
pub(super) fn direct_channel(sink: &PushSink, handle: u32) -> Option<OwnedFd> {
    let (ours, theirs) = purveyor_protocol::dialog_channel::DialogChannel::pair()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot make a dialog channel"))
        .ok()?;
    sink.offer_channel(handle, ours).then_some(theirs)
}

/// The dialog `handle` if `session` owns it.
pub(super) fn owned<'s>(
    state: &'s mut State,
    session: &SessionUi,
    handle: u32,
) -> Result<&'s mut Open, RemoteError> {
    match state.dialogs.get_mut(&handle) {
        Some(open) if open.session == session.id => Ok(open),
        _ => Err(RemoteError::new(
            ErrorCode::NotFound,
            format!("this connection has no dialog {handle} (it may have closed)"),
        )),
    }
}

/// Ends dialog `handle`, telling the provider and/or the client `reason`.
pub(super) fn close(
    state: &mut State,
    handle: u32,
    reason: &str,
    tell_provider: bool,
    tell_client: bool,
    after: &mut Vec<After>,
) {
    let Some(open) = state.dialogs.remove(&handle) else {
        return;
    };
    state.by_local.remove(&(open.origin.id, open.local));
    if let Some(call) = state.calls.get_mut(&open.call) {
        call.open = call.open.saturating_sub(1);
        call.last_end = Some(Instant::now());
    }
    tracing::info!(dialog = handle, provider = %open.origin.provider, %reason, "dialog closed");
    if tell_provider {
        after.push(After::Provider(
            open.origin.clone(),
            open.local,
            DialogEvent::Closed {
                reason: reason.to_string(),
            },
        ));
    }
    if tell_client {
        after.push(After::Client(
            open.sink.clone(),
            handle,
            Push::DialogClosed {
                reason: reason.to_string(),
            },
        ));
    }
}

pub(super) fn run(after: Vec<After>) {
    for action in after {
        match action {
            After::Provider(origin, local, event) => (origin.notify)(local, event),
            After::Client(sink, handle, push) => {
                // A client whose queue is full is not reading; it learns when it does
                // that the dialog is gone (its requests for it fail).
                let _ = sink.offer_reliable(handle, push);
            }
            After::Direct(origin, local, handle, theirs, direct) => {
                let handed = origin.channels.as_ref().map(|hand| hand(local, &theirs));
                let event = match handed {
                    Some(Ok(())) => {
                        direct.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        DialogEvent::Direct { handle, fd: -1 }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(dialog = handle, error = %e, "dialog channel not handed over; the dialog goes through the host");
                        DialogEvent::Opened { handle }
                    }
                    None => DialogEvent::Opened { handle },
                };
                drop(theirs);
                (origin.notify)(local, event);
            }
        }
    }
}
