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

use crate::lock::Locked;
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
        let mut stream = self.stream.locked();
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
        self.streams.locked().len()
    }

    fn stream(&self, id: u32) -> Result<Arc<Open>, IoError> {
        self.streams
            .locked()
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
            } => self.open(io_name(&code, path, element)?, open_mode(mode), who(groups)),
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
                let done = self.stream(stream)?.with(|s| write_all(s, &data, flush))?;
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

    /// Opens `name` for `owner`, as `owner`: the stream keeps its owner's credentials.
    fn open(
        &self,
        name: IoName,
        mode: OpenMode,
        owner: Requester,
    ) -> Result<ProviderReply, IoError> {
        let stream = as_caller(&owner, || self.registry.open_name_for(&owner, &name, mode))?;
        let size = stream.size();
        let (inner, guard) = stream.into_parts();
        let id = self.insert(inner, owner, guard);
        Ok(ProviderReply::IoOpened { stream: id, size })
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
        let mut streams = self.streams.locked();
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
            .locked()
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

    /// Reads up to `max` bytes of stream `id` for `caller` into the empty pipe `pipe`
    /// without copying them (`splice`), when the stream is a plain file: answered with
    /// `io_value`, the bytes now in the pipe (0 at the end). Any other stream is read as
    /// [`ProcedureServer::answer`] reads it, answered with `io_data`.
    pub fn read_to_pipe(
        &self,
        id: u32,
        max: u32,
        pipe: std::os::fd::BorrowedFd<'_>,
        caller: CallerInfo,
    ) -> ProviderReply {
        use std::os::fd::AsRawFd;
        let spliced = self.stream(id).and_then(|open| {
            open.with(|s| {
                let Some(file) = s.plain_file() else {
                    return Ok(None);
                };
                // SAFETY: both descriptors are open for the call; null offsets use and
                // advance the file's own position, as a read would.
                let n = unsafe {
                    libc::splice(
                        file.as_raw_fd(),
                        std::ptr::null_mut(),
                        pipe.as_raw_fd(),
                        std::ptr::null_mut(),
                        max as usize,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                if n < 0 {
                    return Err(IoError::os(
                        "read (splice)".to_string(),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(Some(n as usize))
            })
        });
        match spliced {
            Ok(Some(n)) => ProviderReply::IoValue(n as i64),
            Ok(None) => self.answer(ProviderCall::IoRead { stream: id, max }, caller),
            Err(e) => ProviderReply::Error(io_fault(&e)),
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

/// Writes all of `data` that the stream takes (it may stop early), flushing if asked;
/// how much it took.
fn write_all(s: &mut dyn IoStream, data: &[u8], flush: bool) -> Result<usize, IoError> {
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

/// Closes stream `id` of `server` on the blocking pool (finishing a stream may write and
/// sync a file), or here when there is no runtime: for a stream whose client has gone.
pub fn close_off_thread(server: Arc<ProcedureServer>, id: u32) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || server.close(id))),
        Err(_) => drop(server.close(id)),
    }
}
