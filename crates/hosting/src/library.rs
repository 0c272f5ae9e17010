//! Provider libraries: a shared object exporting `purveyor_provider_install`, opened with
//! `dlopen` and called through the C table it fills (see `docs/provider-abi.md`).
//!
//! **The `dlclose` rule.** Libraries are opened with `RTLD_NODELETE`: releasing a provider
//! runs its cleanup entry point and frees everything it allocated through the table, and
//! `dlclose` balances the `dlopen`, but the code stays mapped until the process exits.
//! Unmapping a Rust library whose thread-local destructors are still registered on some
//! pool thread crashes that thread later (rust-lang/rust#59629), and the host cannot know
//! which libraries have them. Loading the same library again reuses the mapping, so
//! loading and unloading it any number of times does not grow the process (the test
//! `library_load_unload_1000_times` proves it).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey};
use purveyor_protocol::{
    Encoding, PROVIDER_ABI_VERSION, ProviderCall, ProviderReply, ProviderRequest,
    ProviderRequestRef, ProviderResponse, ReadCall, decode, encode_payload,
};
use purveyor_provider::abi::{
    ATTACH_SYMBOL, AttachFn, INSTALL_SYMBOL, InstallFn, PV_ENCODING_BINARY, PV_ENCODING_JSON,
    PV_ERR_ABI, PV_OK, PvHost, PvProvider, from_fault,
};
use purveyor_provider::{CallContext, Provider, ProviderError};
use serde::Serialize;

/// A request of the host's own (id 0, no provider name, no dialog token) for `caller`,
/// with `left` to run (`None`: no deadline; at least 1 ms otherwise, as 0 means none).
fn request_ref<'a, C>(
    call: C,
    caller: &purveyor_provider::Caller,
    left: Option<std::time::Duration>,
) -> ProviderRequestRef<'a, C> {
    ProviderRequestRef {
        id: 0,
        provider: "",
        caller: caller.info(),
        deadline_ms: left.map_or(0, |d| d.as_millis().max(1) as u64),
        ui: 0,
        call,
    }
}

/// A provider library, installed and ready for calls.
pub struct LibraryProvider {
    table: PvProvider,
    encoding: Encoding,
    path: PathBuf,
    classes: Vec<ClassSchema>,
    /// The host's line for dialogs, when attached: freed after the cleanup entry point.
    host_line: Option<Box<HostLine>>,
    /// Bytes of requests handed to the library and of its replies, for accounting.
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
    _library: libloading::Library,
}

/// Receives each message a library sends on the host's line.
pub type HostLineFn = Box<dyn Fn(&[u8]) + Send + Sync>;

/// What `purveyor_provider_attach` is given: `table.state` points at `send`.
struct HostLine {
    table: PvHost,
    send: HostLineFn,
}

unsafe extern "C" fn host_send(state: *mut std::ffi::c_void, message: *const u8, len: u64) {
    if state.is_null() || message.is_null() {
        return;
    }
    // SAFETY: `state` points at the `HostLine`'s `send`, alive until after `release`;
    // the library passes `len` readable bytes.
    let (send, bytes) = unsafe {
        (
            &*state.cast::<HostLineFn>(),
            std::slice::from_raw_parts(message, len as usize),
        )
    };
    // A panic must not unwind into the library's C frames.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send(bytes)));
}

// SAFETY: the ABI requires a library's `call` to be callable from several threads at
// once, and its state to be usable from any thread (docs/provider-abi.md, "Threads").
// The table itself is never written after `open`.
unsafe impl Send for LibraryProvider {}
// SAFETY: as above.
unsafe impl Sync for LibraryProvider {}

impl LibraryProvider {
    /// Opens `path`, installs the provider named `name` from it and asks for its classes.
    /// Every error names the library.
    pub fn open(path: &Path, name: &str) -> Result<Self, String> {
        let shown = path.display();
        let flags = libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE;
        // SAFETY: loading a library runs its initialisers; the manifest names it as a
        // provider library the administrator installed, which is the trust this needs.
        let library = unsafe { libloading::os::unix::Library::open(Some(path), flags) }
            .map_err(|e| format!("cannot load library {shown}: {}", dl_message(&e)))?;
        let library = libloading::Library::from(library);
        // SAFETY: the symbol is declared with the ABI's install signature; a library that
        // exports it with another signature breaks the ABI contract.
        let install: libloading::Symbol<InstallFn> =
            unsafe { library.get(INSTALL_SYMBOL.as_bytes()) }.map_err(|_| {
                format!(
                    "library {shown} does not export {INSTALL_SYMBOL} (is it a Purveyor provider library?)"
                )
            })?;
        let c_name = CString::new(name).map_err(|_| "provider name contains NUL".to_string())?;
        let mut table = PvProvider::empty();
        // SAFETY: `install` has the ABI signature; `table` is a valid, writable table and
        // `c_name` a NUL-terminated string, both alive for the call.
        let rc = unsafe { install(PROVIDER_ABI_VERSION, c_name.as_ptr(), &mut table) };
        if rc == PV_ERR_ABI || table.abi_version != PROVIDER_ABI_VERSION {
            return Err(format!(
                "library {shown} speaks provider ABI version {}; this host speaks version {PROVIDER_ABI_VERSION}",
                table.abi_version
            ));
        }
        if rc != PV_OK {
            return Err(format!(
                "library {shown}: {INSTALL_SYMBOL} failed (returned {rc})"
            ));
        }
        let encoding = match table.encoding {
            PV_ENCODING_BINARY => Encoding::Binary,
            PV_ENCODING_JSON => Encoding::Json,
            other => {
                return Err(format!(
                    "library {shown} names encoding {other}; the ABI knows 0 (binary) and 1 (JSON)"
                ));
            }
        };
        if table.call.is_none() || table.free_reply.is_none() {
            return Err(format!(
                "library {shown} returned an incomplete table (call and free_reply are required)"
            ));
        }
        let mut provider = LibraryProvider {
            table,
            encoding,
            path: path.to_owned(),
            classes: Vec::new(),
            host_line: None,
            sent: Default::default(),
            received: Default::default(),
            _library: library,
        };
        match provider.request(ProviderCall::Classes, &CallContext::internal()) {
            Ok(ProviderReply::Classes(classes)) => provider.classes = classes,
            Ok(ProviderReply::Error(fault)) => return Err(from_fault(fault).to_string()),
            Ok(other) => {
                return Err(format!(
                    "library {shown} answered `{}` when asked for its classes",
                    other.kind()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(provider)
    }

    /// The encoding of the library's requests, replies and dialog messages.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Gives the library the host's line for dialogs, if it exports
    /// `purveyor_provider_attach`: `send` receives each message it sends (a
    /// `ProviderResponse` with id 0, in [`LibraryProvider::encoding`]). Whether it did.
    pub fn attach_host(&mut self, send: HostLineFn) -> Result<bool, String> {
        // SAFETY: the symbol, when exported, has the ABI's attach signature.
        let attach: libloading::Symbol<AttachFn> =
            match unsafe { self._library.get(ATTACH_SYMBOL.as_bytes()) } {
                Ok(f) => f,
                Err(_) => return Ok(false),
            };
        let attach = *attach;
        let mut line = Box::new(HostLine {
            table: PvHost {
                abi_version: PROVIDER_ABI_VERSION,
                reserved: 0,
                state: std::ptr::null_mut(),
                send: Some(host_send),
            },
            send,
        });
        line.table.state = (&mut line.send as *mut HostLineFn).cast();
        // SAFETY: `state` is the library's live state; the host table lives in a box kept
        // until after `release` (field order and `Drop` below).
        let rc = unsafe { attach(self.table.state, &line.table) };
        self.host_line = Some(line);
        if rc != PV_OK {
            return Err(format!(
                "library {}: {ATTACH_SYMBOL} failed (returned {rc})",
                self.path.display()
            ));
        }
        Ok(true)
    }

    /// Sends one request through the table and decodes the reply.
    pub fn request(
        &self,
        call: ProviderCall,
        ctx: &CallContext,
    ) -> Result<ProviderReply, ProviderError> {
        let left = ctx
            .deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()));
        self.request_within(&call, &ctx.caller, left)
    }

    /// [`LibraryProvider::request`] for a call with `left` to run (`None`: no deadline),
    /// for a caller that has just computed its deadline and need not read the clock again.
    pub fn request_within(
        &self,
        call: &ProviderCall,
        caller: &purveyor_provider::Caller,
        left: Option<std::time::Duration>,
    ) -> Result<ProviderReply, ProviderError> {
        self.send(&request_ref(call, caller, left))
    }

    /// [`LibraryProvider::request_within`] for a read whose class and key are borrowed
    /// from the client's request: nothing is copied but the bytes the library reads.
    pub fn read_within(
        &self,
        call: ReadCall<'_>,
        caller: &purveyor_provider::Caller,
        left: Option<std::time::Duration>,
    ) -> Result<ProviderReply, ProviderError> {
        self.send(&request_ref(call, caller, left))
    }

    /// Passes a request to the library as it is, and returns its reply as it is (the
    /// isolated worker's path: every call crosses unchanged, events included).
    pub fn forward(&self, request: &ProviderRequest) -> Result<ProviderReply, ProviderError> {
        self.send(request)
    }

    /// Encodes `request` (a [`ProviderRequest`] or a [`ProviderRequestRef`]: the same
    /// bytes) into this thread's buffer and calls the library with it.
    pub(crate) fn send(&self, request: &impl Serialize) -> Result<ProviderReply, ProviderError> {
        thread_local! {
            // This thread's request buffer, kept between calls (a call does not recurse
            // into another library call on the same thread while its bytes are in use;
            // if one did, it would find the buffer taken and use a fresh one).
            static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut bytes = BUFFER.take();
        bytes.clear();
        let result = self.forward_bytes(request, &mut bytes);
        if bytes.capacity() <= 64 * 1024 {
            BUFFER.set(bytes);
        }
        result
    }

    fn forward_bytes(
        &self,
        request: &impl Serialize,
        bytes: &mut Vec<u8>,
    ) -> Result<ProviderReply, ProviderError> {
        encode_payload(self.encoding, request, bytes)
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        let (call, free) = (
            self.table.call.expect("checked in open"),
            self.table.free_reply.expect("checked in open"),
        );
        let mut reply: *mut u8 = std::ptr::null_mut();
        let mut reply_len: u64 = 0;
        // SAFETY: the table came from the library's install function and `state` is live
        // until `release`, which only runs after the last call (the host holds an `Arc`
        // to this provider for every call in flight). The buffers are valid for the call.
        let rc = unsafe {
            call(
                self.table.state,
                bytes.as_ptr(),
                bytes.len() as u64,
                &mut reply,
                &mut reply_len,
            )
        };
        if rc != PV_OK || reply.is_null() {
            return Err(ProviderError::Failed(format!(
                "library {}: call returned {rc} with {}",
                self.path.display(),
                if reply.is_null() {
                    "no reply"
                } else {
                    "a reply"
                }
            )));
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.sent.fetch_add(bytes.len() as u64, Relaxed);
        self.received.fetch_add(reply_len, Relaxed);
        // SAFETY: on success the library hands over `reply_len` readable bytes at `reply`,
        // valid until we give them back with `free_reply` below.
        let slice = unsafe { std::slice::from_raw_parts(reply, reply_len as usize) };
        let decoded = decode::<ProviderResponse>(self.encoding, slice);
        // SAFETY: the buffer the library made, given back once.
        unsafe { free(self.table.state, reply, reply_len) };
        let response = decoded.map_err(|e| {
            ProviderError::Failed(format!("library {} replied with {e}", self.path.display()))
        })?;
        Ok(response.reply)
    }

    fn expect_reply<T>(
        &self,
        call: ProviderCall,
        ctx: &CallContext,
        pick: impl FnOnce(ProviderReply) -> Result<T, ProviderReply>,
    ) -> Result<T, ProviderError> {
        let what = call.kind();
        match pick(self.request(call, ctx)?) {
            Ok(v) => Ok(v),
            Err(ProviderReply::Error(fault)) => Err(from_fault(fault)),
            Err(other) => Err(ProviderError::Failed(format!(
                "library {} answered `{}` to {what}",
                self.path.display(),
                other.kind()
            ))),
        }
    }
}

impl LibraryProvider {
    /// Bytes of requests handed to the library and of its replies so far.
    pub fn bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.sent.load(Relaxed), self.received.load(Relaxed))
    }

    /// A put, delete or call: the result, with the library's events raised again in `ctx`.
    fn written(
        &self,
        call: ProviderCall,
        ctx: &CallContext,
    ) -> Result<Option<purveyor_model::Value>, ProviderError> {
        let (result, events) = self.expect_reply(call, ctx, |r| match r {
            ProviderReply::Done { result, events } => Ok((result, events)),
            other => Err(other),
        })?;
        for e in events {
            ctx.emit(&e.class, e.event.as_str(), e.data)?;
        }
        Ok(result)
    }
}

impl Provider for LibraryProvider {
    fn classes(&self) -> Vec<ClassSchema> {
        self.classes.clone()
    }

    fn enumerate(
        &self,
        class: &ClassPath,
        ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        let call = ProviderCall::Enumerate {
            class: class.clone(),
        };
        self.expect_reply(call, ctx, |r| match r {
            ProviderReply::Instances(v) => Ok(v),
            other => Err(other),
        })
    }

    fn get(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        let call = ProviderCall::Get {
            class: class.clone(),
            key: key.clone(),
        };
        self.expect_reply(call, ctx, |r| match r {
            ProviderReply::Instance(v) => Ok(v),
            other => Err(other),
        })
    }

    fn put(
        &self,
        class: &ClassPath,
        instance: Instance,
        ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let call = ProviderCall::Put {
            class: class.clone(),
            instance,
        };
        self.written(call, ctx).map(drop)
    }

    fn delete(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        let call = ProviderCall::Delete {
            class: class.clone(),
            key: key.clone(),
        };
        self.written(call, ctx).map(drop)
    }

    fn call(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        method: &purveyor_model::Identifier,
        args: Instance,
        ctx: &CallContext,
    ) -> Result<Option<purveyor_model::Value>, ProviderError> {
        let call = ProviderCall::Call {
            class: class.clone(),
            key: key.clone(),
            method: method.clone(),
            args,
        };
        self.written(call, ctx)
    }

    // `release` is left as the trait's no-op: the library's cleanup entry point frees its
    // state, so it must run after the last call, including a call the host abandoned at
    // its deadline that is still running on a pool thread. Every call holds an `Arc` to
    // this provider, so the last one to finish drops it, and `Drop` runs the entry point.
}

impl Drop for LibraryProvider {
    fn drop(&mut self) {
        if let Some(release) = self.table.release {
            // SAFETY: `drop` runs once, after every holder of this provider (every call)
            // is gone; no call can follow.
            unsafe { release(self.table.state) };
        }
    }
}

fn dl_message(e: &libloading::Error) -> String {
    match e {
        libloading::Error::DlOpen { desc } => format!("{desc:?}").trim_matches('"').to_string(),
        other => other.to_string(),
    }
}
