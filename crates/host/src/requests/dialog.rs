//! A client's side of dialogs: registering as its user's UI agent, and the dialog
//! requests (`ready`, `send`, `close`) for dialogs its session owns.

use purveyor_protocol::{DialogInput, RemoteError, Response};

use crate::cx::Cx;
use crate::state::Shared;

pub(super) fn register_agent(host: &Shared, cx: &Cx<'_>) -> Result<Response, RemoteError> {
    let session = cx.session("registering an agent")?;
    Ok(Response::Agent {
        handle: host.dialogs().register_agent(session.ui()),
    })
}

pub(super) fn ready(host: &Shared, cx: &Cx<'_>, handle: u32) -> Result<Response, RemoteError> {
    let session = cx.session("a dialog")?;
    host.dialogs()
        .ready(session.ui(), handle)
        .map(|()| Response::Done)
}

pub(super) fn send(
    host: &Shared,
    cx: &Cx<'_>,
    handle: u32,
    input: DialogInput,
) -> Result<Response, RemoteError> {
    let session = cx.session("a dialog")?;
    host.dialogs()
        .send(session.ui(), handle, input)
        .map(|()| Response::Done)
}

pub(super) fn close(host: &Shared, cx: &Cx<'_>, handle: u32) -> Result<Response, RemoteError> {
    let session = cx.session("a dialog")?;
    host.dialogs()
        .client_close(session.ui(), handle)
        .map(|()| Response::Done)
}
