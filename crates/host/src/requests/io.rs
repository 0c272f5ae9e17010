//! The I/O requests (`docs/io-procedures.md`): opening and using streams of a session,
//! deleting and renaming names, each routed to the provider that installs its procedure
//! globally, else to the host's built-ins.

use std::sync::Arc;

use purveyor_hosting::procedures::MAX_READ;
use purveyor_hosting::{Overrun, blocking};
use purveyor_io::{FourCC, IoName, Scope};
use purveyor_protocol::{
    ErrorCode, FaultKind, IoMode, IoProcedureInfo, ProviderCall, ProviderFault, ProviderReply,
    RemoteError, Response,
};

use crate::access::Permission;
use crate::calls::{acquire, allowed, call};
use crate::cx::Cx;
use crate::pipes::{PIPES, Spliced};
use crate::session::Session;
use crate::slot::Lost;
use crate::state::Shared;
use crate::streams::{SessionStream, StreamTarget};

fn from_fault(fault: ProviderFault) -> RemoteError {
    let code = match fault.kind {
        FaultKind::NotFound => ErrorCode::NotFound,
        FaultKind::Unsupported => ErrorCode::Unsupported,
        FaultKind::InvalidArgument => ErrorCode::InvalidRequest,
        FaultKind::AccessDenied => ErrorCode::AccessDenied,
        FaultKind::Failed => ErrorCode::ProviderFailed,
    };
    RemoteError::new(code, fault.message)
}

fn needs_session() -> RemoteError {
    RemoteError::new(
        ErrorCode::Unsupported,
        "streams need a session (a connection); use Host::handle_in",
    )
}

fn no_stream(handle: u32) -> RemoteError {
    RemoteError::new(
        ErrorCode::NotFound,
        format!("this connection has no stream {handle}"),
    )
}

/// A name from a client, parsed, with its code (`DOS ` for a plain name).
fn parse(name: &str) -> Result<(IoName, FourCC), RemoteError> {
    let parsed = IoName::parse(name)
        .map_err(|e| RemoteError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    if parsed.path.is_relative() {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{name}: the host needs an absolute path (it does not share the client's working directory)"
            ),
        ));
    }
    let code = parsed.code.unwrap_or(FourCC::new("DOS ").expect("valid"));
    Ok((parsed, code))
}

/// Opens a stream for the session (`io_open`).
pub(super) async fn open(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    name: &str,
    mode: IoMode,
    pass_fd: bool,
) -> Result<Response, RemoteError> {
    let permission = match mode {
        IoMode::Read => Permission::Read,
        IoMode::Write | IoMode::ReadWrite => Permission::Write,
    };
    allowed(host, cx, permission, "io")?;
    let session = cx.session.ok_or_else(needs_session)?;
    io_open(host, cx, name, mode, pass_fd, session).await
}

/// Reads up to `max` bytes (at most [`MAX_READ`]) from stream `handle`.
pub(super) async fn read(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    handle: u32,
    max: u32,
) -> Result<Response, RemoteError> {
    let stream = stream_of(cx.session, handle)?;
    let turn = stream.turns.take();
    turn.wait().await;
    let max = max.min(MAX_READ);
    if let Some(response) = read_spliced(host, cx, &stream, max).await? {
        return Ok(response);
    }
    let call = ProviderCall::IoRead {
        stream: stream.id,
        max,
    };
    match io_call(host, cx, &stream, call).await? {
        ProviderReply::IoData(data) => Ok(Response::IoData(data)),
        other => Err(unexpected_io(&stream, &other)),
    }
}

/// A read of a built-in stream for a local client on the binary encoding, through a pipe
/// ([`crate::pipes`]): a plain file's bytes are spliced into it and sent from it behind
/// the reply's head, never copied into the daemon. `None` when this read cannot go so (a
/// provider's stream, a remote or JSON client, every pipe in use).
async fn read_spliced(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    stream: &SessionStream,
    max: u32,
) -> Result<Option<Response>, RemoteError> {
    let (StreamTarget::Builtin(server), Some(session), Some(site)) =
        (&stream.target, cx.session, cx.site)
    else {
        return Ok(None);
    };
    if !site.splices() {
        return Ok(None);
    }
    let Some(pipe) = PIPES.take() else {
        return Ok(None);
    };
    let (id, max) = (stream.id, max.min(pipe.capacity() as u32));
    let (reply, pipe) = builtin_run(host, cx, server, stream, move |server, who| {
        let reply = server.read_to_pipe(id, max, pipe.input(), who);
        (reply, pipe)
    })
    .await?;
    match reply {
        ProviderReply::IoValue(n) if n > 0 => {
            let len = n as usize;
            session
                .streams()
                .stash_spliced(site.request(), Spliced { pipe, len });
            // The connection sends the bytes from the pipe in place of this empty vector.
            Ok(Some(Response::IoData(Vec::new())))
        }
        ProviderReply::IoValue(_) => {
            PIPES.give_back(pipe, true);
            Ok(Some(Response::IoData(Vec::new())))
        }
        ProviderReply::IoData(data) => {
            PIPES.give_back(pipe, true);
            Ok(Some(Response::IoData(data)))
        }
        ProviderReply::Error(fault) => {
            PIPES.give_back(pipe, true);
            Err(from_fault(fault))
        }
        other => Err(unexpected_io(stream, &other)),
    }
}

/// A write, seek or custom message on stream `handle`: `call` makes the provider call
/// from the stream's id; the answer is a number.
pub(super) async fn on_stream(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    handle: u32,
    call: impl FnOnce(u32) -> ProviderCall,
) -> Result<Response, RemoteError> {
    let stream = stream_of(cx.session, handle)?;
    let turn = stream.turns.take();
    turn.wait().await;
    let call = call(stream.id);
    io_value(host, cx, &stream, call).await
}

/// Closes stream `handle`: its procedure finishes it.
pub(super) async fn close(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    handle: u32,
) -> Result<Response, RemoteError> {
    let session = cx.session.ok_or_else(needs_session)?;
    let stream = session
        .streams()
        .remove(handle)
        .ok_or_else(|| no_stream(handle))?;
    // After the requests sent before it.
    let turn = stream.turns.take();
    turn.wait().await;
    let call = ProviderCall::IoClose { stream: stream.id };
    io_call(host, cx, &stream, call).await?;
    Ok(Response::Done)
}

/// Deletes a name, as the caller.
pub(super) async fn delete(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    name: &str,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Write, "io")?;
    let (parsed, code) = parse(name)?;
    let call = ProviderCall::IoDelete {
        code: code.as_str().into(),
        path: parsed.path.to_string_lossy().into_owned(),
        element: parsed.element.clone(),
        groups: cx.caller.groups.to_vec(),
    };
    io_oneshot(host, cx, code, call).await
}

/// Renames a name within one procedure, as the caller.
pub(super) async fn rename(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    from: &str,
    to: &str,
) -> Result<Response, RemoteError> {
    allowed(host, cx, Permission::Write, "io")?;
    let (from, code) = parse(from)?;
    let (to, to_code) = parse(to)?;
    if code != to_code {
        return Err(RemoteError::new(
            ErrorCode::InvalidRequest,
            format!("cannot rename {from} to {to}: they belong to different I/O procedures"),
        ));
    }
    let call = ProviderCall::IoRename {
        code: code.as_str().into(),
        from: from.path.to_string_lossy().into_owned(),
        from_element: from.element.clone(),
        to: to.path.to_string_lossy().into_owned(),
        to_element: to.element.clone(),
        groups: cx.caller.groups.to_vec(),
    };
    io_oneshot(host, cx, code, call).await
}

/// Every I/O procedure this host serves, in lookup order: providers' global ones,
/// then the built-ins.
pub(crate) fn io_list(inner: &Shared) -> Vec<IoProcedureInfo> {
    let mut list: Vec<IoProcedureInfo> = Vec::new();
    let registry = inner.registry();
    let mut global: Vec<_> = registry.io_slots().collect();
    global.sort_by_key(|(code, _)| **code);
    for (code, slot) in global {
        list.push(IoProcedureInfo {
            code: code.as_str().into(),
            scope: Scope::Global.as_str().into(),
            origin: format!(
                "provider {} ({})",
                slot.manifest().name,
                slot.manifest().hosting
            ),
            description: slot.manifest().description.clone(),
            open_streams: 0,
            shadowed: false,
        });
    }
    for l in inner.builtin_io().registry.list() {
        let shadowed = l.shadowed || registry.io_slot(&l.code).is_some();
        list.push(IoProcedureInfo {
            code: l.code.as_str().into(),
            scope: l.scope.as_str().into(),
            origin: l.origin,
            description: l.description,
            open_streams: l.open_streams as u32,
            shadowed,
        });
    }
    list
}

/// Where `code` is served: a provider that installs it globally, else a built-in.
async fn io_target(inner: &Arc<Shared>, code: FourCC) -> Result<StreamTarget, RemoteError> {
    if let Some(slot) = inner.registry().io_slot(&code).cloned() {
        let loaded = acquire(inner, &slot).await?;
        return Ok(StreamTarget::Provider {
            slot: slot.clone(),
            loaded,
            _pin: slot.pin(),
        });
    }
    if inner.builtin_io().registry.find(code).is_some() {
        return Ok(StreamTarget::Builtin(inner.builtin_io().clone()));
    }
    Err(RemoteError::new(
        ErrorCode::NotFound,
        format!(
            "no I/O procedure is installed for {code} (no provider of this host installs it, and it is not built in)"
        ),
    ))
}

async fn io_open(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    name: &str,
    mode: IoMode,
    pass_fd: bool,
    session: &Session,
) -> Result<Response, RemoteError> {
    let (parsed, code) = parse(name)?;
    let target = io_target(host, code).await?;
    let call = ProviderCall::IoOpen {
        code: code.as_str().into(),
        path: parsed.path.to_string_lossy().into_owned(),
        element: parsed.element.clone(),
        mode,
        groups: cx.caller.groups.to_vec(),
    };
    let mut stream = SessionStream::new(parsed.to_string(), target);
    let (id, size) = match io_call(host, cx, &stream, call).await? {
        ProviderReply::IoOpened { stream, size } => (stream, size),
        other => return Err(unexpected_io(&stream, &other)),
    };
    stream.id = id;
    // A plain local file for reading: its descriptor, opened with the caller's
    // permissions, goes to the client, which then reads at the file's own speed.
    if pass_fd
        && mode == IoMode::Read
        && session.streams().fds_allowed()
        && let StreamTarget::Builtin(server) = &stream.target
        && let Some(file) = server.take_plain_file(id)
    {
        let token = session.streams().stash_fd(file.into());
        return Ok(Response::IoOpened {
            handle: token,
            size,
            fd: true,
        });
    }
    let handle = session.streams().insert(stream);
    Ok(Response::IoOpened {
        handle,
        size,
        fd: false,
    })
}

/// Deletes or renames: no stream.
async fn io_oneshot(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    code: FourCC,
    call: ProviderCall,
) -> Result<Response, RemoteError> {
    let stream = SessionStream::new(String::new(), io_target(host, code).await?);
    io_call(host, cx, &stream, call).await?;
    Ok(Response::Done)
}

async fn io_value(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    stream: &SessionStream,
    call: ProviderCall,
) -> Result<Response, RemoteError> {
    match io_call(host, cx, stream, call).await? {
        ProviderReply::IoValue(v) => Ok(Response::IoValue(v)),
        other => Err(unexpected_io(stream, &other)),
    }
}

/// One I/O call to wherever the stream lives. A stream whose provider crashed or was
/// released fails with an error that says so.
async fn io_call(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    stream: &SessionStream,
    provider_call: ProviderCall,
) -> Result<ProviderReply, RemoteError> {
    match &stream.target {
        StreamTarget::Builtin(server) => {
            builtin_call(host, cx, server, stream, provider_call).await
        }
        StreamTarget::Provider { slot, loaded, .. } => {
            let opening = matches!(provider_call, ProviderCall::IoOpen { .. });
            let dead = || loaded.hosted().dead_reason();
            // The stream lived in a provider that is gone: say which, and why.
            let lost = |why: Option<String>| {
                let provider = &slot.manifest().name;
                slot.error(
                    ErrorCode::ProviderFailed,
                    match why {
                        Some(why) => format!(
                            "I/O procedure provider {provider} crashed ({why}); stream {} is lost",
                            stream.name
                        ),
                        None => format!(
                            "I/O procedure provider {provider} was released; stream {} is lost",
                            stream.name
                        ),
                    },
                )
            };
            if !opening && (!slot.is_current(loaded) || dead().is_some()) {
                let why = dead();
                if let Some(why) = &why {
                    slot.lost(loaded, Lost::Crashed(why.clone()));
                }
                return Err(lost(why));
            }
            let result = call(host, cx, slot, loaded, provider_call).await;
            match (result, dead()) {
                (Err(_), Some(why)) if !opening => Err(lost(Some(why))),
                (result, _) => result,
            }
        }
    }
}

/// One call to the host's built-in procedures, on the blocking pool, in one of the
/// caller's I/O slots (`io.ops_*`), within `io.op_time`.
async fn builtin_call(
    host: &Shared,
    cx: &Cx<'_>,
    server: &Arc<purveyor_hosting::ProcedureServer>,
    stream: &SessionStream,
    call: ProviderCall,
) -> Result<ProviderReply, RemoteError> {
    let reply = builtin_run(host, cx, server, stream, move |server, who| {
        server.answer(call, who)
    })
    .await?;
    match reply {
        ProviderReply::Error(fault) => Err(from_fault(fault)),
        other => Ok(other),
    }
}

/// Runs `work` on the built-in procedures on the blocking pool, in one of the caller's
/// I/O slots (`io.ops_*`), within `io.op_time`.
async fn builtin_run<T: Send + 'static>(
    host: &Shared,
    cx: &Cx<'_>,
    server: &Arc<purveyor_hosting::ProcedureServer>,
    stream: &SessionStream,
    work: impl FnOnce(&purveyor_hosting::ProcedureServer, purveyor_protocol::CallerInfo) -> T
    + Send
    + 'static,
) -> Result<T, RemoteError> {
    let (server, who) = (server.clone(), cx.caller.info());
    let limits = &host.config().limits;
    let permits = host.io_slots().acquire(cx.caller.uid, limits).await?;
    // The permits are held until the call returns, however long after its client gave up.
    let reply = blocking(limits.io_op_time, move || {
        let _permits = permits;
        work(&server, who)
    });
    match reply.await {
        Ok(reply) => Ok(reply),
        Err(Overrun::Panicked(why) | Overrun::Task(why)) => Err(RemoteError::new(
            ErrorCode::Internal,
            format!("I/O task failed: {why}"),
        )),
        Err(Overrun::Timeout) => Err(RemoteError::new(
            ErrorCode::Timeout,
            format!(
                "the I/O call on {} took longer than {} (io.op_time); it finishes without its client, holding one of uid {}'s I/O slots",
                if stream.name.is_empty() {
                    "a name"
                } else {
                    &stream.name
                },
                humantime::format_duration(limits.io_op_time),
                cx.caller.uid
            ),
        )),
    }
}

/// Stream `handle` of the request's session.
fn stream_of(session: Option<&Session>, handle: u32) -> Result<Arc<SessionStream>, RemoteError> {
    let session = session.ok_or_else(needs_session)?;
    session
        .streams()
        .get(handle)
        .ok_or_else(|| no_stream(handle))
}

fn unexpected_io(stream: &SessionStream, reply: &ProviderReply) -> RemoteError {
    RemoteError::new(
        ErrorCode::ProviderFailed,
        format!(
            "the I/O procedure for {} answered `{}`, which does not fit the request",
            stream.name,
            reply.kind()
        ),
    )
}
