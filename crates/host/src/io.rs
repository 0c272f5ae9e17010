//! I/O procedures served by the host (`docs/io-procedures.md`, "Global procedures").
//!
//! A [`ProcedureServer`] answers the provider channel's I/O calls (`io_open`, `io_read`…)
//! from a registry of procedures, keeping each open stream under a 32-bit id. The daemon
//! has one for its built-ins (`DOS `, `MEM `, `GZ  `, `TAR `) and one per in-daemon
//! procedure library; an isolated worker has one per procedure library it loaded. So a
//! procedure is served the same way whatever its hosting.
//!
//! **Invariant:** every call into a procedure runs with the file-system credentials of
//! the client it is for ([`as_caller`]): open, delete and rename as the caller; read,
//! write, seek, custom messages and close — also a close after the client has gone — as
//! the client that opened the stream, whose credentials the stream keeps. So a client
//! reaches through the host only the files it could reach itself, whatever a procedure
//! does and whenever it does it (`TAR ` writes its archive at close).

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use purveyor_io::{
    FourCC, IoError, IoName, IoStream, OpenMode, Registry, Requester, Scope, StreamGuard,
};
use purveyor_protocol::{
    CallerInfo, FaultKind, IoMode, IoWhence, ProviderCall, ProviderFault, ProviderReply,
};

/// The largest read the host answers in one reply.
pub const MAX_READ: u32 = 4 << 20;

struct Open {
    stream: Mutex<Box<dyn IoStream>>,
    /// Who opened it: every later call on it runs with these credentials.
    owner: Requester,
    _guard: StreamGuard,
}

impl Open {
    /// Runs `f` on the stream, as its owner.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn IoStream) -> Result<T, IoError>,
    ) -> Result<T, IoError> {
        let mut stream = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        as_caller(&self.owner, || f(&mut **stream))
    }
}

/// Serves the I/O calls of the provider channel from one registry.
pub struct ProcedureServer {
    pub registry: Registry,
    streams: Mutex<HashMap<u32, Arc<Open>>>,
    next: AtomicU32,
}

impl ProcedureServer {
    pub fn new(registry: Registry) -> Self {
        ProcedureServer {
            registry,
            streams: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
        }
    }

    /// A server for the procedures a library installs (`purveyor_io_install`).
    pub fn from_library(path: &std::path::Path) -> Result<Self, String> {
        let registry = Registry::empty();
        registry
            .install_library_in(path, Scope::Global)
            .map_err(|e| e.to_string())?;
        Ok(Self::new(registry))
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn stream(&self, id: u32) -> Result<Arc<Open>, IoError> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or_else(|| IoError::NotFound(format!("stream {id}")))
    }

    /// Answers one I/O call for `caller`. Calls that are not I/O calls are refused.
    pub fn answer(&self, call: ProviderCall, caller: CallerInfo) -> ProviderReply {
        match self.serve(call, caller) {
            Ok(reply) => reply,
            Err(e) => ProviderReply::Error(io_fault(&e)),
        }
    }

    fn serve(&self, call: ProviderCall, caller: CallerInfo) -> Result<ProviderReply, IoError> {
        let who = |groups: Vec<u32>| Requester {
            uid: caller.uid,
            gid: caller.gid,
            groups,
        };
        let done = || ProviderReply::Done {
            result: None,
            events: Vec::new(),
        };
        match call {
            ProviderCall::IoOpen {
                code,
                path,
                element,
                mode,
                groups,
            } => {
                let name = io_name(&code, path, element)?;
                let mode = open_mode(mode);
                let owner = who(groups);
                let stream =
                    as_caller(&owner, || self.registry.open_name_for(&owner, &name, mode))?;
                let size = stream.size();
                let (inner, guard) = stream.into_parts();
                let id = self.insert(inner, owner, guard);
                Ok(ProviderReply::IoOpened { stream: id, size })
            }
            ProviderCall::IoRead { stream, max } => {
                let mut buf = vec![0; max.min(MAX_READ) as usize];
                let n = self.stream(stream)?.with(|s| s.read(&mut buf))?;
                buf.truncate(n);
                Ok(ProviderReply::IoData(buf))
            }
            ProviderCall::IoWrite {
                stream,
                data,
                flush,
            } => {
                let done = self.stream(stream)?.with(|s| {
                    let mut done = 0;
                    while done < data.len() {
                        match s.write(&data[done..])? {
                            0 => break,
                            n => done += n,
                        }
                    }
                    if flush {
                        s.flush()?;
                    }
                    Ok(done)
                })?;
                Ok(ProviderReply::IoValue(done as i64))
            }
            ProviderCall::IoSeek {
                stream,
                offset,
                whence,
            } => {
                let pos = match whence {
                    IoWhence::Start => SeekFrom::Start(offset.max(0) as u64),
                    IoWhence::Current => SeekFrom::Current(offset),
                    IoWhence::End => SeekFrom::End(offset),
                };
                let at = self.stream(stream)?.with(|s| s.seek(pos))?;
                Ok(ProviderReply::IoValue(at as i64))
            }
            ProviderCall::IoMessage {
                stream,
                message,
                input,
            } => {
                let value = self.stream(stream)?.with(|s| s.message(message, &input))?;
                Ok(ProviderReply::IoValue(value))
            }
            ProviderCall::IoClose { stream } => {
                self.close(stream)?;
                Ok(done())
            }
            ProviderCall::IoDelete {
                code,
                path,
                element,
                groups,
            } => {
                let name = io_name(&code, path, element)?;
                let procedure = self.procedure(&name)?;
                let who = who(groups);
                as_caller(&who, || procedure.delete_for(&who, &name))?;
                Ok(done())
            }
            ProviderCall::IoRename {
                code,
                from,
                from_element,
                to,
                to_element,
                groups,
            } => {
                let from = io_name(&code, from, from_element)?;
                let to = io_name(&code, to, to_element)?;
                let procedure = self.procedure(&from)?;
                let who = who(groups);
                as_caller(&who, || procedure.rename_for(&who, &from, &to))?;
                Ok(done())
            }
            other => Err(IoError::unsupported(format!(
                "the provider call {} (this is an I/O procedure provider)",
                other.kind()
            ))),
        }
    }

    /// The procedure a name from an I/O call routes to.
    fn procedure(&self, name: &IoName) -> Result<Arc<dyn purveyor_io::IoProcedure>, IoError> {
        let code = name.code.expect("io_name sets the code");
        self.registry
            .find(code)
            .map(|(procedure, _)| procedure)
            .ok_or(IoError::NoProcedure(code))
    }

    fn insert(&self, stream: Box<dyn IoStream>, owner: Requester, guard: StreamGuard) -> u32 {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let id = loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !streams.contains_key(&id) {
                break id;
            }
        };
        streams.insert(
            id,
            Arc::new(Open {
                stream: Mutex::new(stream),
                owner,
                _guard: guard,
            }),
        );
        id
    }

    /// Closes a stream: its procedure finishes it, as the stream's owner.
    pub fn close(&self, id: u32) -> Result<(), IoError> {
        let open = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .ok_or_else(|| IoError::NotFound(format!("stream {id}")))?;
        // A read in progress holds the stream; closing waits for it.
        match Arc::try_unwrap(open) {
            Ok(open) => {
                let stream = open
                    .stream
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                as_caller(&open.owner, || stream.close())
            }
            Err(shared) => shared.with(|s| s.flush()),
        }
    }

    /// Takes a just-opened stream's plain file out (closing the stream), for handing its
    /// descriptor to a local client. `None` (and the stream stays) when there is none.
    pub fn take_plain_file(&self, id: u32) -> Option<std::fs::File> {
        let open = self.stream(id).ok()?;
        let file = open
            .with(|s| {
                s.plain_file()
                    .and_then(|f| f.try_clone().ok())
                    .ok_or_else(|| IoError::unsupported("a plain file"))
            })
            .ok()?;
        let _ = self.close(id);
        Some(file)
    }
}

/// The name an I/O call carries, with its code.
fn io_name(code: &str, path: String, element: String) -> Result<IoName, IoError> {
    let code = FourCC::new(code).map_err(|e| IoError::Invalid(e.to_string()))?;
    Ok(IoName {
        code: Some(code),
        path: PathBuf::from(path),
        element,
    })
}

pub fn open_mode(mode: IoMode) -> OpenMode {
    match mode {
        IoMode::Read => OpenMode::Read,
        IoMode::Write => OpenMode::Write,
        IoMode::ReadWrite => OpenMode::ReadWrite,
    }
}

/// An I/O error as it crosses the provider channel.
pub fn io_fault(e: &IoError) -> ProviderFault {
    let kind = match e {
        IoError::Unsupported(_) => FaultKind::Unsupported,
        IoError::NotFound(_) | IoError::NoProcedure(_) => FaultKind::NotFound,
        IoError::Name(_) | IoError::Invalid(_) => FaultKind::InvalidArgument,
        IoError::Os { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            FaultKind::AccessDenied
        }
        _ => FaultKind::Failed,
    };
    ProviderFault {
        kind,
        message: e.to_string(),
    }
}

/// Runs `f` (which may open, read, write, delete or rename files) with `who`'s
/// file-system credentials on this thread:
/// - `who` is this process's user: as is;
/// - this process is root: `setfsuid`/`setfsgid`/`setgroups` as raw system calls, which
///   change this thread only (glibc's wrappers would change every thread), restored
///   before returning, also when `f` panics;
/// - otherwise the host cannot act as `who`, and refuses.
///
/// Only this thread changes: a procedure that does file work on threads of its own does
/// it with the host's credentials (`docs/security.md`, "What runs as the caller").
pub fn as_caller<T>(who: &Requester, f: impl FnOnce() -> Result<T, IoError>) -> Result<T, IoError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if who.uid == euid {
        return f();
    }
    if euid != 0 {
        return Err(IoError::Os {
            what: format!(
                "the host runs as uid {euid} and cannot open files for uid {}",
                who.uid
            ),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        });
    }
    let mut groups = who.groups.clone();
    if !groups.contains(&who.gid) {
        groups.push(who.gid);
    }
    let _restore = FsCredentials::switch(who.uid, who.gid, &groups)?;
    f()
}

/// This thread's file-system credentials while switched; restored on drop.
struct FsCredentials {
    groups: Vec<libc::gid_t>,
}

impl FsCredentials {
    fn switch(uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<Self, IoError> {
        let mut saved = vec![0 as libc::gid_t; 256];
        // SAFETY: getgroups writes at most `saved.len()` entries into `saved`.
        let n = unsafe { libc::getgroups(saved.len() as i32, saved.as_mut_ptr()) };
        saved.truncate(n.max(0) as usize);
        let restore = FsCredentials { groups: saved };
        let failed = |what: &str| IoError::Os {
            what: format!("cannot take the file permissions of uid {uid} ({what})"),
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: raw system calls that change only this thread's credentials; `groups`
        // is a valid array of its length.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                return Err(failed("setgroups"));
            }
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
            // setfsuid reports the previous value; asking again with -1 reads it back.
            if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid
                || libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 != gid
            {
                return Err(failed("setfsuid"));
            }
        }
        Ok(restore)
    }
}

impl Drop for FsCredentials {
    fn drop(&mut self) {
        // SAFETY: as in `switch`; back to root's own credentials on this thread.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, 0u32);
            libc::syscall(libc::SYS_setfsgid, 0u32);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// Where a session's stream lives.
pub(crate) enum StreamTarget {
    /// The host's built-ins.
    Builtin(Arc<ProcedureServer>),
    /// A provider's procedure (in the daemon or in its process), loaded as `loaded`.
    Provider {
        slot: Arc<crate::slot::Slot>,
        loaded: Arc<crate::slot::Loaded>,
        _pin: crate::slot::SlotPin,
    },
}

/// One stream a session opened.
pub(crate) struct SessionStream {
    pub name: String,
    pub target: StreamTarget,
    /// The stream's id in its procedure server.
    pub id: u32,
}

/// A session's streams and the descriptors waiting to be passed to its client.
#[derive(Default)]
pub struct SessionIo {
    streams: Mutex<HashMap<u32, Arc<SessionStream>>>,
    next: AtomicU32,
    fds: Mutex<HashMap<u32, std::os::fd::OwnedFd>>,
    /// Whether this session's connection can carry descriptors (a Unix socket).
    pass_fds: std::sync::atomic::AtomicBool,
}

impl SessionIo {
    fn handle(&self, taken: impl Fn(u32) -> bool) -> u32 {
        loop {
            let h = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if h != 0 && !taken(h) {
                return h;
            }
        }
    }

    pub(crate) fn insert(&self, stream: SessionStream) -> u32 {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let h = self.handle(|h| streams.contains_key(&h));
        streams.insert(h, Arc::new(stream));
        h
    }

    pub(crate) fn get(&self, handle: u32) -> Option<Arc<SessionStream>> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&handle)
            .cloned()
    }

    pub(crate) fn remove(&self, handle: u32) -> Option<Arc<SessionStream>> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle)
    }

    pub fn open_streams(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Lets the host hand this session's client file descriptors.
    pub fn allow_fds(&self) {
        self.pass_fds.store(true, Ordering::Relaxed);
    }

    pub(crate) fn fds_allowed(&self) -> bool {
        self.pass_fds.load(Ordering::Relaxed)
    }

    /// Keeps a descriptor until the server sends it with the reply naming `token`.
    pub(crate) fn stash_fd(&self, fd: std::os::fd::OwnedFd) -> u32 {
        let mut fds = self.fds.lock().unwrap_or_else(PoisonError::into_inner);
        let token = self.handle(|h| fds.contains_key(&h));
        fds.insert(token, fd);
        token
    }

    /// The descriptor for the reply with `token` (the server sends it along).
    pub fn take_fd(&self, token: u32) -> Option<std::os::fd::OwnedFd> {
        self.fds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token)
    }
}

impl Drop for SessionIo {
    /// The client went away: its streams are closed (finished) by their procedures.
    fn drop(&mut self) {
        let streams =
            std::mem::take(&mut *self.streams.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, stream) in streams {
            close_abandoned(stream);
        }
    }
}

/// Closes a stream of a local procedure server on the blocking pool (finishing a stream
/// may write and sync a file), or here when there is no runtime.
fn close_off_thread(server: Arc<ProcedureServer>, id: u32) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || server.close(id))),
        Err(_) => drop(server.close(id)),
    }
}

/// Closes a stream whose client is gone, without waiting for it.
fn close_abandoned(stream: Arc<SessionStream>) {
    use crate::slot::Backend;
    let id = stream.id;
    match &stream.target {
        StreamTarget::Builtin(server) => close_off_thread(server.clone(), id),
        StreamTarget::Provider { loaded, slot, .. } => match &loaded.backend {
            Backend::Io(server) => close_off_thread(server.clone(), id),
            Backend::Process { conn, name } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (conn, name) = (conn.clone(), name.clone());
                    let timeout = slot.manifest.call_timeout;
                    let keep = stream.clone();
                    runtime.spawn(async move {
                        let call = ProviderCall::IoClose { stream: id };
                        let _ = conn.call(&name, CallerInfo::default(), timeout, call).await;
                        drop(keep);
                    });
                }
            }
            Backend::Local { .. } | Backend::Library(_) => {}
        },
    }
}

/// The built-in procedures' calls running at once: at most `io.ops_per_user` per user and
/// `io.ops_total` in all, so that a user whose calls are stuck (a file on a hung NFS
/// server) holds only their own slots, never every blocking thread.
pub(crate) struct IoSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_user: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
}

/// A call's slots: its user's and one of the total.
pub(crate) struct IoPermits {
    _user: tokio::sync::OwnedSemaphorePermit,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl IoSlots {
    pub(crate) fn new(limits: &crate::config::Limits) -> Self {
        IoSlots {
            total: Arc::new(tokio::sync::Semaphore::new(limits.io_ops_total as usize)),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// Waits (at most `io.op_time`) for a slot of `uid`'s and one of the total.
    async fn acquire(
        &self,
        uid: u32,
        limits: &crate::config::Limits,
    ) -> Result<IoPermits, RemoteError> {
        let mine = self
            .per_user
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(limits.io_ops_per_user as usize))
            })
            .clone();
        let wait = async {
            let user = mine.acquire_owned().await.ok()?;
            let total = self.total.clone().acquire_owned().await.ok()?;
            Some(IoPermits {
                _user: user,
                _total: total,
            })
        };
        match tokio::time::timeout(limits.io_op_time, wait).await {
            Ok(Some(permits)) => Ok(permits),
            _ => Err(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "no I/O slot came free within {}: uid {uid} may run {} I/O calls at once (io.ops_per_user), everyone {} (io.ops_total)",
                    humantime::format_duration(limits.io_op_time),
                    limits.io_ops_per_user,
                    limits.io_ops_total
                ),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The engine's side: requests that open and use streams.

use purveyor_protocol::{ErrorCode, IoProcedureInfo, RemoteError, Request, Response};
use purveyor_provider::Caller;

use crate::access::Permission;
use crate::events::Session;
use crate::slot::Backend;

fn who(caller: &Caller) -> CallerInfo {
    CallerInfo {
        uid: caller.uid,
        gid: caller.gid,
        pid: caller.pid,
    }
}

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

impl crate::Host {
    /// Answers the I/O requests (`Request::Io*`).
    pub(crate) async fn io_request(
        &self,
        request: Request,
        caller: &Caller,
        session: Option<&Session>,
    ) -> Result<Response, RemoteError> {
        match request {
            Request::IoList => Ok(Response::IoProcedures(self.io_list())),
            Request::IoOpen {
                name,
                mode,
                pass_fd,
            } => {
                let permission = match mode {
                    IoMode::Read => Permission::Read,
                    IoMode::Write | IoMode::ReadWrite => Permission::Write,
                };
                self.allowed(caller, permission, "io")?;
                let session = session.ok_or_else(needs_session)?;
                self.io_open(&name, mode, pass_fd, session).await
            }
            Request::IoRead { handle, max } => {
                let (stream, session) = stream_of(session, handle)?;
                let call = ProviderCall::IoRead {
                    stream: stream.id,
                    max: max.min(MAX_READ),
                };
                match self.io_call(&stream, call, &session.caller).await? {
                    ProviderReply::IoData(data) => Ok(Response::IoData(data)),
                    other => Err(unexpected_io(&stream, &other)),
                }
            }
            Request::IoWrite {
                handle,
                data,
                flush,
            } => {
                let (stream, session) = stream_of(session, handle)?;
                let call = ProviderCall::IoWrite {
                    stream: stream.id,
                    data,
                    flush,
                };
                self.io_value(&stream, call, &session.caller).await
            }
            Request::IoSeek {
                handle,
                offset,
                whence,
            } => {
                let (stream, session) = stream_of(session, handle)?;
                let call = ProviderCall::IoSeek {
                    stream: stream.id,
                    offset,
                    whence,
                };
                self.io_value(&stream, call, &session.caller).await
            }
            Request::IoMessage {
                handle,
                message,
                input,
            } => {
                let (stream, session) = stream_of(session, handle)?;
                let call = ProviderCall::IoMessage {
                    stream: stream.id,
                    message,
                    input,
                };
                self.io_value(&stream, call, &session.caller).await
            }
            Request::IoClose { handle } => {
                let session = session.ok_or_else(needs_session)?;
                let stream = session.io.remove(handle).ok_or_else(|| no_stream(handle))?;
                let call = ProviderCall::IoClose { stream: stream.id };
                self.io_call(&stream, call, &session.caller).await?;
                Ok(Response::Done)
            }
            Request::IoDelete { name } => {
                self.allowed(caller, Permission::Write, "io")?;
                let (parsed, code) = parse(&name)?;
                let call = ProviderCall::IoDelete {
                    code: code.as_str().into(),
                    path: parsed.path.to_string_lossy().into_owned(),
                    element: parsed.element.clone(),
                    groups: caller.groups.to_vec(),
                };
                self.io_oneshot(code, call, caller).await
            }
            Request::IoRename { from, to } => {
                self.allowed(caller, Permission::Write, "io")?;
                let (from, code) = parse(&from)?;
                let (to, to_code) = parse(&to)?;
                if code != to_code {
                    return Err(RemoteError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "cannot rename {from} to {to}: they belong to different I/O procedures"
                        ),
                    ));
                }
                let call = ProviderCall::IoRename {
                    code: code.as_str().into(),
                    from: from.path.to_string_lossy().into_owned(),
                    from_element: from.element.clone(),
                    to: to.path.to_string_lossy().into_owned(),
                    to_element: to.element.clone(),
                    groups: caller.groups.to_vec(),
                };
                self.io_oneshot(code, call, caller).await
            }
            other => Err(RemoteError::new(
                ErrorCode::Internal,
                format!("{other:?} is not an I/O request"),
            )),
        }
    }

    /// Every I/O procedure this host serves, in lookup order: providers' global ones,
    /// then the built-ins.
    pub fn io_list(&self) -> Vec<IoProcedureInfo> {
        let inner = self.inner();
        let mut list: Vec<IoProcedureInfo> = Vec::new();
        let mut global: Vec<_> = inner.registry.by_io.iter().collect();
        global.sort_by_key(|(code, _)| **code);
        for (code, slot) in global {
            list.push(IoProcedureInfo {
                code: code.as_str().into(),
                scope: Scope::Global.as_str().into(),
                origin: format!(
                    "provider {} ({})",
                    slot.manifest.name, slot.manifest.hosting
                ),
                description: slot.manifest.description.clone(),
                open_streams: 0,
                shadowed: false,
            });
        }
        for l in inner.builtin_io.registry.list() {
            let shadowed = l.shadowed || inner.registry.by_io.contains_key(&l.code);
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
    async fn io_target(&self, code: FourCC) -> Result<StreamTarget, RemoteError> {
        let inner = self.inner();
        if let Some(slot) = inner.registry.by_io.get(&code) {
            let loaded = self.acquire(slot).await?;
            return Ok(StreamTarget::Provider {
                slot: slot.clone(),
                loaded,
                _pin: slot.pin(),
            });
        }
        if inner.builtin_io.registry.find(code).is_some() {
            return Ok(StreamTarget::Builtin(inner.builtin_io.clone()));
        }
        Err(RemoteError::new(
            ErrorCode::NotFound,
            format!(
                "no I/O procedure is installed for {code} (no provider of this host installs it, and it is not built in)"
            ),
        ))
    }

    async fn io_open(
        &self,
        name: &str,
        mode: IoMode,
        pass_fd: bool,
        session: &Session,
    ) -> Result<Response, RemoteError> {
        let (parsed, code) = parse(name)?;
        let target = self.io_target(code).await?;
        let call = ProviderCall::IoOpen {
            code: code.as_str().into(),
            path: parsed.path.to_string_lossy().into_owned(),
            element: parsed.element.clone(),
            mode,
            groups: session.caller.groups.to_vec(),
        };
        let mut stream = SessionStream {
            name: parsed.to_string(),
            target,
            id: 0,
        };
        let (id, size) = match self.io_call(&stream, call, &session.caller).await? {
            ProviderReply::IoOpened { stream, size } => (stream, size),
            other => return Err(unexpected_io(&stream, &other)),
        };
        stream.id = id;
        // A plain local file for reading: its descriptor, opened with the caller's
        // permissions, goes to the client, which then reads at the file's own speed.
        if pass_fd
            && mode == IoMode::Read
            && session.io.fds_allowed()
            && let StreamTarget::Builtin(server) = &stream.target
            && let Some(file) = server.take_plain_file(id)
        {
            let token = session.io.stash_fd(file.into());
            return Ok(Response::IoOpened {
                handle: token,
                size,
                fd: true,
            });
        }
        let handle = session.io.insert(stream);
        Ok(Response::IoOpened {
            handle,
            size,
            fd: false,
        })
    }

    /// Deletes or renames: no stream.
    async fn io_oneshot(
        &self,
        code: FourCC,
        call: ProviderCall,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        let stream = SessionStream {
            name: String::new(),
            target: self.io_target(code).await?,
            id: 0,
        };
        self.io_call(&stream, call, caller).await?;
        Ok(Response::Done)
    }

    async fn io_value(
        &self,
        stream: &SessionStream,
        call: ProviderCall,
        caller: &Caller,
    ) -> Result<Response, RemoteError> {
        match self.io_call(stream, call, caller).await? {
            ProviderReply::IoValue(v) => Ok(Response::IoValue(v)),
            other => Err(unexpected_io(stream, &other)),
        }
    }

    /// One I/O call to wherever the stream lives. A stream whose provider crashed or was
    /// released fails with an error that says so.
    async fn io_call(
        &self,
        stream: &SessionStream,
        call: ProviderCall,
        caller: &Caller,
    ) -> Result<ProviderReply, RemoteError> {
        match &stream.target {
            StreamTarget::Builtin(server) => {
                let server = server.clone();
                let who = who(caller);
                let limits = &self.inner().config.limits;
                let permits = self.inner().io_slots.acquire(caller.uid, limits).await?;
                let task = tokio::task::spawn_blocking(move || {
                    // Held until the call returns, however long after its client gave up.
                    let _permits = permits;
                    server.answer(call, who)
                });
                let reply = match tokio::time::timeout(limits.io_op_time, task).await {
                    Ok(done) => done.map_err(|e| {
                        RemoteError::new(ErrorCode::Internal, format!("I/O task failed: {e}"))
                    })?,
                    Err(_) => {
                        return Err(RemoteError::new(
                            ErrorCode::Timeout,
                            format!(
                                "the I/O call on {} took longer than {} (io.op_time); it finishes without its client, holding one of uid {}'s I/O slots",
                                if stream.name.is_empty() {
                                    "a name"
                                } else {
                                    &stream.name
                                },
                                humantime::format_duration(limits.io_op_time),
                                caller.uid
                            ),
                        ));
                    }
                };
                match reply {
                    ProviderReply::Error(fault) => Err(from_fault(fault)),
                    other => Ok(other),
                }
            }
            StreamTarget::Provider { slot, loaded, .. } => {
                let opening = matches!(call, ProviderCall::IoOpen { .. });
                let dead = || match &loaded.backend {
                    Backend::Process { conn, .. } => conn.dead_reason(),
                    _ => None,
                };
                // The stream lived in a provider that is gone: say which, and why.
                let lost = |why: Option<String>| {
                    let provider = &slot.manifest.name;
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
                        slot.lost(loaded, crate::slot::Lost::Crashed(why.clone()));
                    }
                    return Err(lost(why));
                }
                let result = self.call(slot, loaded, caller, call).await;
                match (result, dead()) {
                    (Err(_), Some(why)) if !opening => Err(lost(Some(why))),
                    (result, _) => result,
                }
            }
        }
    }
}

fn stream_of(
    session: Option<&Session>,
    handle: u32,
) -> Result<(Arc<SessionStream>, &Session), RemoteError> {
    let session = session.ok_or_else(needs_session)?;
    let stream = session.io.get(handle).ok_or_else(|| no_stream(handle))?;
    Ok((stream, session))
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
