//! The requests, one module per family, each a set of free functions taking the host's
//! state and the request's context first. [`answer`] is the table: one line per request.
//! A new request is a function in its family's module and a line here.
//!
//! [`answer_now`] is the synchronous path the server tries first: a request that needs no
//! waiting is answered on the connection's own thread, with no task, future or wake-up
//! (`docs/performance.md`). Both paths give the same answer; `tests` below proves it.

use std::sync::Arc;

use purveyor_protocol::{ErrorCode, ProviderCall, RemoteError, Request, Response};

use crate::access::Permission;
use crate::calls::allowed;
use crate::cx::Cx;
use crate::session::Session;
use crate::state::Shared;

mod classes;
mod dialog;
mod direct;
mod io;
mod query;
mod read;
mod status;
mod subscribe;
mod write;

pub(crate) use classes::{export_classes, scrape};
pub(crate) use io::io_list;

/// Answers one request in context `cx`. A client that shows dialogs gets, with each call
/// to a provider, a token its provider can open an in-call dialog with, for as long as the
/// call runs.
pub(crate) async fn answer(
    host: &Arc<Shared>,
    cx: Cx<'_>,
    request: Request,
) -> Result<Response, RemoteError> {
    host.admit()?;
    if let Some(session) = cx.session
        && session.shows()
        && matches!(
            request,
            Request::Get { .. }
                | Request::Enumerate { .. }
                | Request::Put { .. }
                | Request::Delete { .. }
                | Request::Call { .. }
        )
    {
        let token = host
            .dialogs()
            .begin_call(session.ui(), cx.site.map(|site| site.request()));
        let cx = Cx {
            ui: token.token,
            ..cx
        };
        return route(host, &cx, request).await;
    }
    route(host, &cx, request).await
}

/// The table: which function answers which request.
async fn route(host: &Arc<Shared>, cx: &Cx<'_>, request: Request) -> Result<Response, RemoteError> {
    use Permission::{Call, Read, Subscribe, Write};
    match request {
        Request::Ping => Ok(Response::Pong),
        Request::Status => Ok(Response::Status(host.status())),
        Request::ListProviders => Ok(Response::Providers(host.provider_statuses())),
        Request::EnableProvider { name } => status::enable_provider(host, cx, &name),
        Request::ListClasses { namespace } => classes::list(host, cx, namespace).await,
        Request::Describe { class } => classes::describe(host, cx, class).await,
        Request::Enumerate { class, selector } => {
            allowed(host, cx, Read, class.as_str())?;
            read::enumerate(host, cx, class, selector).await
        }
        Request::Get { class, key } => {
            allowed(host, cx, Read, class.as_str())?;
            read::get(host, cx, class, key).await
        }
        Request::Direct { class } => direct::open(host, cx, class).await,
        Request::Put { class, instance } => {
            allowed(host, cx, Write, class.as_str())?;
            write::put(host, cx, class, instance).await
        }
        Request::Delete { class, key } => {
            allowed(host, cx, Write, class.as_str())?;
            write::delete(host, cx, class, key).await
        }
        Request::Call {
            class,
            method,
            key,
            args,
        } => {
            allowed(host, cx, Call, class.as_str())?;
            write::call_method(host, cx, class, method, key, args).await
        }
        Request::Subscribe {
            class,
            event,
            filter,
        } => {
            allowed(host, cx, Subscribe, class.as_str())?;
            subscribe::subscribe(host, cx, class, event, filter).await
        }
        Request::WatchChanges {
            class,
            filter,
            interval_ms,
            counters,
        } => {
            allowed(host, cx, Read, class.as_str())?;
            subscribe::watch_changes(host, cx, class, filter, interval_ms, counters).await
        }
        Request::Unsubscribe { handle } => subscribe::unsubscribe(host, cx, handle),
        Request::RegisterAgent => dialog::register_agent(host, cx),
        Request::DialogReady { handle } => dialog::ready(host, cx, handle),
        Request::DialogSend { handle, input } => dialog::send(host, cx, handle, input),
        Request::DialogClose { handle } => dialog::close(host, cx, handle),
        Request::IoList => Ok(Response::IoProcedures(io::io_list(host))),
        Request::IoOpen {
            name,
            mode,
            pass_fd,
        } => io::open(host, cx, &name, mode, pass_fd).await,
        Request::IoRead { handle, max } => io::read(host, cx, handle, max).await,
        Request::IoWrite {
            handle,
            data,
            flush,
        } => {
            let call = |stream| ProviderCall::IoWrite {
                stream,
                data,
                flush,
            };
            io::on_stream(host, cx, handle, call).await
        }
        Request::IoSeek {
            handle,
            offset,
            whence,
        } => {
            let call = |stream| ProviderCall::IoSeek {
                stream,
                offset,
                whence,
            };
            io::on_stream(host, cx, handle, call).await
        }
        Request::IoMessage {
            handle,
            message,
            input,
        } => {
            let call = |stream| ProviderCall::IoMessage {
                stream,
                message,
                input,
            };
            io::on_stream(host, cx, handle, call).await
        }
        Request::IoClose { handle } => io::close(host, cx, handle).await,
        Request::IoDelete { name } => io::delete(host, cx, &name).await,
        Request::IoRename { from, to } => io::rename(host, cx, &from, &to).await,
        Request::Query { sql, plan } => query::query(host, cx, sql, plan).await,
        Request::Reload => status::reload(host, cx).await,
        other => Err(RemoteError::new(
            ErrorCode::Unsupported,
            format!("request {other:?} is not supported by this host"),
        )),
    }
}

/// Answers `request` on this thread, at once, when nothing in it needs waiting: a ping,
/// the status, or a get or enumerate of a loaded provider whose calls run inline (a
/// builtin dispatched inline, an in-daemon library). Otherwise gives the request back, to
/// be answered by [`answer`]. A client that shows dialogs gets a dialog token with each
/// call, which only the asynchronous path gives.
pub(crate) fn answer_now(
    host: &Shared,
    session: &Session,
    site: Option<&dyn crate::cx::CallSite>,
    request: Request,
) -> Result<Result<Response, RemoteError>, Request> {
    let ready = match &request {
        Request::Ping | Request::Status => None,
        Request::Get { class, .. } | Request::Enumerate { class, .. } if !session.shows() => {
            match read::ready_now(host, class) {
                Some(ready) => Some(ready),
                None => return Err(request),
            }
        }
        _ => return Err(request),
    };
    if let Err(refused) = host.admit() {
        return Ok(Err(refused));
    }
    let cx = Cx::in_session(session, site);
    Ok(match (request, ready) {
        (Request::Ping, _) => Ok(Response::Pong),
        (Request::Status, _) => Ok(Response::Status(host.status())),
        (Request::Get { class, key }, Some((slot, loaded))) => {
            read::get_now(host, &cx, &slot, &loaded, class, key)
        }
        (Request::Enumerate { class, selector }, Some((slot, loaded))) => {
            read::enumerate_now(host, &cx, &slot, &loaded, class, selector)
        }
        (other, _) => Err(RemoteError::new(
            ErrorCode::Internal,
            format!("request {other:?} cannot be answered at once"),
        )),
    })
}

#[cfg(test)]
mod tests;
