//! The C ABI for sharing I/O procedures through a library (documented in
//! `docs/io-procedures.md`, mirrored by `include/purveyor/io.h`).
//!
//! A procedure library exports one function, [`INSTALL_SYMBOL`]:
//! `int32_t purveyor_io_install(const pv_io_registry *registry)`. It calls
//! `registry->install(registry->ctx, "XOR ", &procedure)` once per procedure. A
//! procedure is a table whose `message` function handles every message of
//! [`crate::message`] for it; streams are the procedure's own `void *`.
//! Return values: ≥ 0 success, a negative errno on failure (`-ENOSYS`: unsupported).
//!
//! A Rust author implements [`IoProcedure`] and writes
//! `purveyor_io::export_io_procedures!(install);` with
//! `fn install(registry: &mut purveyor_io::abi::Installer) -> Result<(), IoError>`.

use std::ffi::{CStr, c_char, c_void};
use std::io::SeekFrom;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::message as msg;
use crate::{FourCC, IoError, IoName, IoProcedure, IoStream, OpenMode};

/// The one symbol a procedure library exports.
pub const INSTALL_SYMBOL: &str = "purveyor_io_install";
/// The I/O ABI's version.
pub const PV_IO_ABI_VERSION: u32 = 1;

/// `int64_t message(void *state, void **stream, uint32_t message, int64_t arg, void *buf, uint64_t len)`.
pub type MessageFn = unsafe extern "C" fn(
    state: *mut c_void,
    stream: *mut *mut c_void,
    message: u32,
    arg: i64,
    buf: *mut c_void,
    len: u64,
) -> i64;
/// `void destroy(void *state)`: the procedure is no longer used.
pub type DestroyFn = unsafe extern "C" fn(state: *mut c_void);
/// `int32_t install(void *ctx, const char code[4], const pv_io_procedure *procedure)`.
pub type InstallFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    code: *const c_char,
    procedure: *const PvIoProcedure,
) -> i32;
/// `int32_t purveyor_io_install(const pv_io_registry *registry)`.
pub type LibraryInstallFn = unsafe extern "C" fn(registry: *const PvIoRegistry) -> i32;

/// A procedure's table.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PvIoProcedure {
    pub abi_version: u32,
    pub reserved: u32,
    pub state: *mut c_void,
    /// NUL-terminated; lives as long as the library.
    pub description: *const c_char,
    pub message: Option<MessageFn>,
    pub destroy: Option<DestroyFn>,
}

/// What the host gives the install function.
#[repr(C)]
#[derive(Debug)]
pub struct PvIoRegistry {
    pub abi_version: u32,
    pub reserved: u32,
    pub ctx: *mut c_void,
    pub install: Option<InstallFn>,
}

/// The argument of `OPEN` and `DELETE` (`buf`, with `len = sizeof`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PvIoName {
    /// The container (or plain file) path, UTF-8, not NUL-terminated.
    pub path: *const u8,
    pub path_len: u64,
    /// The element inside it; empty for the whole file.
    pub element: *const u8,
    pub element_len: u64,
    /// `OPEN` only: 1 read, 2 write (create or truncate), 3 read-write.
    pub mode: u32,
    pub reserved: u32,
}

/// The argument of `RENAME`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PvIoRename {
    pub from: PvIoName,
    pub to: PvIoName,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    const P: usize = size_of::<*const u8>();
    assert!(offset_of!(PvIoProcedure, state) == 8);
    assert!(offset_of!(PvIoProcedure, description) == 8 + P);
    assert!(offset_of!(PvIoProcedure, message) == 8 + 2 * P);
    assert!(offset_of!(PvIoProcedure, destroy) == 8 + 3 * P);
    assert!(offset_of!(PvIoRegistry, ctx) == 8);
    assert!(offset_of!(PvIoRegistry, install) == 8 + P);
};

// ---------------------------------------------------------------------------------------
// Host side: a procedure from a library, behind the `IoProcedure` trait.

/// The library's code stays mapped for the life of the process (`RTLD_NODELETE`): a
/// procedure's table, description and streams point into it.
struct LibraryProcedure {
    table: PvIoProcedure,
    description: String,
    library: PathBuf,
    code: FourCC,
}

// SAFETY: the ABI requires a procedure's `message` to be callable from any thread (the
// document says so); the table itself is plain data.
unsafe impl Send for LibraryProcedure {}
// SAFETY: as above; the host never calls one stream from two threads at once.
unsafe impl Sync for LibraryProcedure {}

impl Drop for LibraryProcedure {
    fn drop(&mut self) {
        if let Some(destroy) = self.table.destroy {
            // SAFETY: called once, when the last stream and the registry entry are gone.
            unsafe { destroy(self.table.state) };
        }
    }
}

fn name_args(name: &IoName, mode: u32, path: &str) -> PvIoName {
    PvIoName {
        path: path.as_ptr(),
        path_len: path.len() as u64,
        element: name.element.as_ptr(),
        element_len: name.element.len() as u64,
        mode,
        reserved: 0,
    }
}

impl LibraryProcedure {
    fn call(
        &self,
        stream: *mut *mut c_void,
        message: u32,
        arg: i64,
        buf: *mut c_void,
        len: u64,
    ) -> i64 {
        let f = self.table.message.expect("checked at install");
        // SAFETY: the table came from the library's install call and the library stays
        // mapped; `stream`, `buf` and `len` follow the message's documented contract.
        unsafe { f(self.table.state, stream, message, arg, buf, len) }
    }

    /// A message whose argument is one struct (`buf` = `args`, `len` = its size); a
    /// negative answer becomes an error about `verb name`.
    fn send_args<T>(
        &self,
        stream: *mut *mut c_void,
        message: u32,
        args: &mut T,
        verb: &str,
        name: &IoName,
    ) -> Result<i64, IoError> {
        let rc = self.call(
            stream,
            message,
            0,
            (args as *mut T).cast(),
            size_of::<T>() as u64,
        );
        if rc < 0 {
            return Err(IoError::from_errno(-rc as i32, self.what(verb, name)));
        }
        Ok(rc)
    }

    fn what(&self, verb: &str, name: &IoName) -> String {
        format!(
            "{verb} {name} (procedure {} from {})",
            self.code,
            self.library.display()
        )
    }
}

impl IoProcedure for Arc<LibraryProcedure> {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        let path = name.path.to_string_lossy();
        let mut args = name_args(name, mode.to_raw(), &path);
        let mut stream: *mut c_void = std::ptr::null_mut();
        self.send_args(&mut stream, msg::OPEN, &mut args, "open", name)?;
        Ok(Box::new(LibraryStream {
            procedure: self.clone(),
            stream,
            what: name.to_string(),
        }))
    }

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        let (fp, tp) = (from.path.to_string_lossy(), to.path.to_string_lossy());
        let mut args = PvIoRename {
            from: name_args(from, 0, &fp),
            to: name_args(to, 0, &tp),
        };
        self.send_args(std::ptr::null_mut(), msg::RENAME, &mut args, "rename", from)
            .map(drop)
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        let path = name.path.to_string_lossy();
        let mut args = name_args(name, 0, &path);
        self.send_args(std::ptr::null_mut(), msg::DELETE, &mut args, "delete", name)
            .map(drop)
    }
}

struct LibraryStream {
    procedure: Arc<LibraryProcedure>,
    stream: *mut c_void,
    what: String,
}

// SAFETY: a stream is used by one thread at a time (`&mut self`); the ABI lets a stream
// move between threads.
unsafe impl Send for LibraryStream {}

impl LibraryStream {
    fn send(
        &mut self,
        message: u32,
        arg: i64,
        buf: *mut c_void,
        len: u64,
        verb: &str,
    ) -> Result<i64, IoError> {
        let rc = self
            .procedure
            .call(&mut self.stream, message, arg, buf, len);
        if rc < 0 {
            Err(IoError::from_errno(
                -rc as i32,
                format!("{verb} {} (procedure {})", self.what, self.procedure.code),
            ))
        } else {
            Ok(rc)
        }
    }
}

impl IoStream for LibraryStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let n = self.send(
            msg::READ,
            0,
            buf.as_mut_ptr().cast(),
            buf.len() as u64,
            "read",
        )?;
        if n as u64 > buf.len() as u64 {
            return Err(IoError::Failed(format!(
                "procedure {} claims to have read {n} bytes into a {}-byte buffer",
                self.procedure.code,
                buf.len()
            )));
        }
        Ok(n as usize)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let n = self.send(
            msg::WRITE,
            0,
            buf.as_ptr().cast_mut().cast(),
            buf.len() as u64,
            "write",
        )?;
        Ok((n as usize).min(buf.len()))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.send(msg::WRITE_FLUSH, 0, std::ptr::null_mut(), 0, "flush")
            .map(drop)
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        let (offset, whence) = match pos {
            SeekFrom::Start(n) => (n as i64, 0),
            SeekFrom::Current(d) => (d, 1),
            SeekFrom::End(d) => (d, 2),
        };
        self.send(msg::SEEK, offset, std::ptr::null_mut(), whence, "seek")
            .map(|p| p as u64)
    }

    fn message(&mut self, message: u32, input: &[u8]) -> Result<i64, IoError> {
        if message < msg::USER {
            return Err(IoError::unsupported(format!(
                "message {message:#x} (custom messages start at {:#x})",
                msg::USER
            )));
        }
        self.send(
            message,
            0,
            input.as_ptr().cast_mut().cast(),
            input.len() as u64,
            "message",
        )
    }

    fn close(mut self: Box<Self>) -> Result<(), IoError> {
        let result = self
            .send(msg::CLOSE, 0, std::ptr::null_mut(), 0, "close")
            .map(drop);
        self.stream = std::ptr::null_mut();
        result
    }
}

impl Drop for LibraryStream {
    fn drop(&mut self) {
        if !self.stream.is_null() {
            let _ = self
                .procedure
                .call(&mut self.stream, msg::CLOSE, 0, std::ptr::null_mut(), 0);
        }
    }
}

/// The procedures a library installed, by code.
pub(crate) type Installed = Vec<(FourCC, Arc<dyn IoProcedure>)>;

/// What the host's install callback collects.
struct Collected {
    library: PathBuf,
    procedures: Installed,
    problem: Option<String>,
}

unsafe extern "C" fn collect(
    ctx: *mut c_void,
    code: *const c_char,
    procedure: *const PvIoProcedure,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Collected` that `load_library` passed, alive for the
        // install call this callback is part of.
        let collected = unsafe { &mut *ctx.cast::<Collected>() };
        if code.is_null() || procedure.is_null() {
            collected.problem = Some("install was called with a null code or procedure".into());
            return -libc::EINVAL;
        }
        // SAFETY: the ABI says `code` points at 4 bytes.
        let bytes = unsafe { *code.cast::<[u8; 4]>() };
        let code = match FourCC::from_bytes(bytes) {
            Ok(code) => code,
            Err(e) => {
                collected.problem = Some(e.to_string());
                return -libc::EINVAL;
            }
        };
        // SAFETY: non-null, and the ABI says it points at a table (copied here).
        let table = unsafe { *procedure };
        if table.abi_version != PV_IO_ABI_VERSION {
            collected.problem = Some(format!(
                "procedure {code} speaks I/O ABI version {}, this host speaks version {PV_IO_ABI_VERSION}",
                table.abi_version
            ));
            return -libc::EINVAL;
        }
        if table.message.is_none() {
            collected.problem = Some(format!("procedure {code} has no message function"));
            return -libc::EINVAL;
        }
        let description = if table.description.is_null() {
            String::new()
        } else {
            // SAFETY: documented as a NUL-terminated string that lives with the library.
            unsafe { CStr::from_ptr(table.description) }
                .to_string_lossy()
                .into_owned()
        };
        let procedure = Arc::new(LibraryProcedure {
            table,
            description,
            library: collected.library.clone(),
            code,
        });
        collected.procedures.push((code, Arc::new(procedure)));
        0
    }));
    outcome.unwrap_or(-libc::EFAULT)
}

/// Loads a procedure library and runs its install function; returns what it installed.
pub(crate) fn load_library(path: &Path) -> Result<Installed, IoError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    let shown = path.display();
    // SAFETY: loading a library runs its initialisers; loading a procedure library is the
    // documented trust decision of whoever names it.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE) }
        .map_err(|e| IoError::Failed(format!("cannot load I/O procedure library {shown}: {e}")))?;
    // SAFETY: the symbol's type is the documented install function.
    let install: LibraryInstallFn = unsafe {
        *library
            .get::<LibraryInstallFn>(INSTALL_SYMBOL.as_bytes())
            .map_err(|_| {
                IoError::Failed(format!(
                    "{shown} is not an I/O procedure library: it does not export {INSTALL_SYMBOL}"
                ))
            })?
    };
    let mut collected = Collected {
        library: path.to_path_buf(),
        procedures: Vec::new(),
        problem: None,
    };
    let registry = PvIoRegistry {
        abi_version: PV_IO_ABI_VERSION,
        reserved: 0,
        ctx: (&raw mut collected).cast(),
        install: Some(collect),
    };
    // SAFETY: the documented install call; `registry` and `collected` outlive it.
    let rc = unsafe { install(&registry) };
    // RTLD_NODELETE keeps the code mapped after this handle closes.
    drop(library);
    if let Some(problem) = collected.problem {
        return Err(IoError::Failed(format!("{shown}: {problem}")));
    }
    if rc < 0 {
        return Err(IoError::from_errno(
            -rc,
            format!("the install function of {shown}"),
        ));
    }
    if collected.procedures.is_empty() {
        return Err(IoError::Failed(format!(
            "{shown} installed no I/O procedure"
        )));
    }
    Ok(collected.procedures)
}

// ---------------------------------------------------------------------------------------
// Library side: Rust procedures exported through the C table.

/// What a Rust library's install function gets: `installer.install(code, procedure)`.
pub struct Installer {
    registry: *const PvIoRegistry,
    installed: usize,
}

struct Exported {
    procedure: Box<dyn IoProcedure>,
    description: std::ffi::CString,
}

impl Installer {
    /// Installs one procedure into the registry the host passed.
    pub fn install(
        &mut self,
        code: FourCC,
        procedure: impl IoProcedure + 'static,
    ) -> Result<(), IoError> {
        let description =
            std::ffi::CString::new(procedure.describe().replace('\0', " ")).unwrap_or_default();
        let exported = Box::new(Exported {
            procedure: Box::new(procedure),
            description,
        });
        let table = PvIoProcedure {
            abi_version: PV_IO_ABI_VERSION,
            reserved: 0,
            description: exported.description.as_ptr(),
            state: Box::into_raw(exported).cast(),
            message: Some(exported_message),
            destroy: Some(exported_destroy),
        };
        // SAFETY: `registry` is the pointer the host passed to the install function, valid
        // during it (the only time an `Installer` exists).
        let registry = unsafe { &*self.registry };
        let install = registry
            .install
            .ok_or_else(|| IoError::Failed("the host's registry has no install function".into()))?;
        let bytes = code.as_bytes();
        // SAFETY: the host's documented install callback.
        let rc = unsafe { install(registry.ctx, bytes.as_ptr().cast(), &table) };
        if rc < 0 {
            // SAFETY: the host refused it, so it never took the state; free it here.
            unsafe { exported_destroy(table.state) };
            return Err(IoError::from_errno(-rc, format!("installing {code}")));
        }
        self.installed += 1;
        Ok(())
    }
}

/// The body of the exported install function (see [`crate::export_io_procedures!`]).
///
/// # Safety
/// `registry` must be the host's valid registry pointer.
pub unsafe fn install_into(
    registry: *const PvIoRegistry,
    install: fn(&mut Installer) -> Result<(), IoError>,
) -> i32 {
    if registry.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: non-null, the host's registry, valid for this call.
    if unsafe { (*registry).abi_version } != PV_IO_ABI_VERSION {
        return -libc::EPROTO;
    }
    let mut installer = Installer {
        registry,
        installed: 0,
    };
    match catch_unwind(AssertUnwindSafe(|| install(&mut installer))) {
        Ok(Ok(())) => installer.installed as i32,
        Ok(Err(e)) => -e.errno(),
        Err(_) => -libc::EFAULT,
    }
}

unsafe extern "C" fn exported_destroy(state: *mut c_void) {
    if !state.is_null() {
        // SAFETY: `state` is the `Box<Exported>` made by `Installer::install`, destroyed once.
        drop(unsafe { Box::from_raw(state.cast::<Exported>()) });
    }
}

/// A Rust string from an ABI name argument.
///
/// # Safety
/// The pointers and lengths must describe valid memory (the ABI contract).
unsafe fn read_name(args: &PvIoName) -> Result<(IoName, u32), IoError> {
    let text = |ptr: *const u8, len: u64| -> Result<String, IoError> {
        if len == 0 {
            return Ok(String::new());
        }
        // SAFETY: the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
        String::from_utf8(bytes.to_vec())
            .map_err(|_| IoError::Invalid("a name is not UTF-8".into()))
    };
    let path = text(args.path, args.path_len)?;
    let element = text(args.element, args.element_len)?;
    Ok((
        IoName {
            code: None,
            path: PathBuf::from(path),
            element,
        },
        args.mode,
    ))
}

unsafe extern "C" fn exported_message(
    state: *mut c_void,
    stream: *mut *mut c_void,
    message: u32,
    arg: i64,
    buf: *mut c_void,
    len: u64,
) -> i64 {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<i64, IoError> {
        // SAFETY: `state` is our `Exported`, alive until destroy.
        let exported = unsafe { &*state.cast::<Exported>() };
        let procedure = &*exported.procedure;
        // The open stream, a `Box<Box<dyn IoStream>>` behind `*stream`.
        let open = || -> Result<&mut Box<dyn IoStream>, IoError> {
            let ptr = if stream.is_null() {
                std::ptr::null_mut()
            } else {
                // SAFETY: for stream messages the host passes the slot OPEN filled.
                unsafe { *stream }
            };
            if ptr.is_null() {
                return Err(IoError::Invalid("no open stream".into()));
            }
            // SAFETY: made by OPEN below, freed only by CLOSE.
            Ok(unsafe { &mut *ptr.cast::<Box<dyn IoStream>>() })
        };
        let bytes_in = || {
            if len == 0 || buf.is_null() {
                &[][..]
            } else {
                // SAFETY: `buf`/`len` describe the caller's buffer, per the ABI.
                unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) }
            }
        };
        match message {
            msg::OPEN => {
                if stream.is_null() || buf.is_null() || len < size_of::<PvIoName>() as u64 {
                    return Err(IoError::Invalid(
                        "OPEN needs a stream slot and a pv_io_name".into(),
                    ));
                }
                // SAFETY: checked non-null and large enough.
                let (name, mode) = unsafe { read_name(&*buf.cast::<PvIoName>()) }?;
                let mode = OpenMode::from_raw(mode)
                    .ok_or_else(|| IoError::Invalid(format!("open mode {mode}")))?;
                let opened = procedure.open(&name, mode)?;
                // SAFETY: checked non-null.
                unsafe { *stream = Box::into_raw(Box::new(opened)).cast() };
                Ok(0)
            }
            msg::CLOSE => {
                open()?;
                // SAFETY: checked by `open`; taken once, and the slot is cleared.
                let boxed = unsafe { Box::from_raw((*stream).cast::<Box<dyn IoStream>>()) };
                // SAFETY: non-null (checked by `open`).
                unsafe { *stream = std::ptr::null_mut() };
                (*boxed).close().map(|()| 0)
            }
            msg::READ => {
                let s = open()?;
                if len == 0 {
                    return Ok(0);
                }
                // SAFETY: the caller's writable buffer of `len` bytes.
                let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize) };
                s.read(out).map(|n| n as i64)
            }
            msg::WRITE => open()?.write(bytes_in()).map(|n| n as i64),
            msg::WRITE_FLUSH => {
                let s = open()?;
                let data = bytes_in();
                let mut done = 0;
                while done < data.len() {
                    match s.write(&data[done..])? {
                        0 => break,
                        n => done += n,
                    }
                }
                s.flush()?;
                Ok(done as i64)
            }
            msg::SEEK => {
                let pos = match len {
                    0 => SeekFrom::Start(arg as u64),
                    1 => SeekFrom::Current(arg),
                    2 => SeekFrom::End(arg),
                    other => return Err(IoError::Invalid(format!("seek whence {other}"))),
                };
                open()?.seek(pos).map(|p| p as i64)
            }
            msg::RENAME => {
                if buf.is_null() || len < size_of::<PvIoRename>() as u64 {
                    return Err(IoError::Invalid("RENAME needs a pv_io_rename".into()));
                }
                // SAFETY: checked non-null and large enough.
                let args = unsafe { &*buf.cast::<PvIoRename>() };
                // SAFETY: the ABI contract on the names.
                let (from, _) = unsafe { read_name(&args.from) }?;
                // SAFETY: as above.
                let (to, _) = unsafe { read_name(&args.to) }?;
                procedure.rename(&from, &to).map(|()| 0)
            }
            msg::DELETE => {
                if buf.is_null() || len < size_of::<PvIoName>() as u64 {
                    return Err(IoError::Invalid("DELETE needs a pv_io_name".into()));
                }
                // SAFETY: checked non-null and large enough.
                let (name, _) = unsafe { read_name(&*buf.cast::<PvIoName>()) }?;
                procedure.delete(&name).map(|()| 0)
            }
            other if other >= msg::USER => open()?.message(other, bytes_in()),
            other => Err(IoError::unsupported(format!("message {other:#x}"))),
        }
    }));
    match outcome {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => -(e.errno() as i64),
        Err(_) => -(libc::EFAULT as i64),
    }
}

/// Exports a Rust install function as the library's `purveyor_io_install`:
///
/// ```ignore
/// fn install(registry: &mut purveyor_io::abi::Installer) -> Result<(), purveyor_io::IoError> {
///     registry.install(purveyor_io::FourCC::new("XOR ")?, Xor)
/// }
/// purveyor_io::export_io_procedures!(install);
/// ```
#[macro_export]
macro_rules! export_io_procedures {
    ($install:path) => {
        /// The I/O procedure library's install function (`include/purveyor/io.h`).
        ///
        /// # Safety
        /// `registry` is the host's registry, valid for the call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn purveyor_io_install(
            registry: *const $crate::abi::PvIoRegistry,
        ) -> i32 {
            // SAFETY: forwarded from the host, per the ABI.
            unsafe { $crate::abi::install_into(registry, $install) }
        }
    };
}
