//! The provider library ABI (documented in `docs/provider-abi.md`, mirrored by
//! `include/purveyor/provider.h`), and the Rust side of it.
//!
//! A provider library exports one function, [`INSTALL_SYMBOL`]. The host calls it with its
//! ABI version; the library fills a [`PvProvider`] table of C function pointers. Only C
//! types cross: each request is a [`ProviderRequest`] encoded as bytes, each reply a
//! [`ProviderResponse`] encoded as bytes, in the encoding the table names.
//!
//! A Rust author does not touch any of this: implement [`Provider`] and write
//! `purveyor_provider::export_provider!(MyProvider::new);`.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use purveyor_protocol::{
    Encoding, FaultKind, PROVIDER_ABI_VERSION, ProviderCall, ProviderFault, ProviderReply,
    ProviderRequest, ProviderResponse, ReadCall, decode, encode_payload,
};

use crate::{CallContext, Caller, HostHandle, Provider, ProviderError};

/// The name of the one symbol a provider library exports.
pub const INSTALL_SYMBOL: &str = "purveyor_provider_install";
/// The optional second export: the host's line for dialogs (`docs/dialogs.md`).
pub const ATTACH_SYMBOL: &str = "purveyor_provider_attach";

/// `encoding` values in [`PvProvider`].
pub const PV_ENCODING_BINARY: u32 = 0;
pub const PV_ENCODING_JSON: u32 = 1;

/// Return values of the install function and of `call`.
pub const PV_OK: i32 = 0;
/// The library does not speak the host's ABI version (it still sets `abi_version`).
pub const PV_ERR_ABI: i32 = 1;
/// Any other failure.
pub const PV_ERR_FAILED: i32 = 2;

/// `int32_t purveyor_provider_install(uint32_t host_abi, const char *name, pv_provider *out)`.
pub type InstallFn =
    unsafe extern "C" fn(host_abi: u32, name: *const c_char, out: *mut PvProvider) -> i32;

/// `call(state, request, request_len, &reply, &reply_len)`.
pub type CallFn = unsafe extern "C" fn(
    state: *mut c_void,
    request: *const u8,
    request_len: u64,
    reply: *mut *mut u8,
    reply_len: *mut u64,
) -> i32;
/// `free_reply(state, reply, reply_len)`: gives back a reply buffer `call` made.
pub type FreeFn = unsafe extern "C" fn(state: *mut c_void, reply: *mut u8, reply_len: u64);
/// `release(state)`: the cleanup hook; no call follows it.
pub type ReleaseFn = unsafe extern "C" fn(state: *mut c_void);

/// `send(host_state, message, len)`: a [`ProviderResponse`] with id 0 carrying a
/// `dialog` reply, in the table's encoding. Never blocks for long; callable from any
/// thread, at any time between `attach` and `release`.
pub type HostSendFn = unsafe extern "C" fn(host_state: *mut c_void, message: *const u8, len: u64);

/// `int32_t purveyor_provider_attach(void *state, const pv_host *host)`: called once after
/// install, before any call; `host` stays valid until after `release`.
pub type AttachFn = unsafe extern "C" fn(state: *mut c_void, host: *const PvHost) -> i32;

/// The host's side of the line, given to `purveyor_provider_attach`. Layout pinned below
/// and by the C header.
#[repr(C)]
#[derive(Debug)]
pub struct PvHost {
    pub abi_version: u32,
    pub reserved: u32,
    pub state: *mut c_void,
    pub send: Option<HostSendFn>,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    const P: usize = size_of::<*const u8>();
    assert!(offset_of!(PvHost, abi_version) == 0);
    assert!(offset_of!(PvHost, reserved) == 4);
    assert!(offset_of!(PvHost, state) == 8);
    assert!(offset_of!(PvHost, send) == 8 + P);
    assert!(size_of::<PvHost>() == 8 + 2 * P);
};

/// The table a library fills in. Layout pinned by the assertions below and by the C
/// header's `_Static_assert`s.
#[repr(C)]
#[derive(Debug)]
pub struct PvProvider {
    pub abi_version: u32,
    pub encoding: u32,
    pub state: *mut c_void,
    pub call: Option<CallFn>,
    pub free_reply: Option<FreeFn>,
    pub release: Option<ReleaseFn>,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    const P: usize = size_of::<*const u8>();
    assert!(offset_of!(PvProvider, abi_version) == 0);
    assert!(offset_of!(PvProvider, encoding) == 4);
    assert!(offset_of!(PvProvider, state) == 8);
    assert!(offset_of!(PvProvider, call) == 8 + P);
    assert!(offset_of!(PvProvider, free_reply) == 8 + 2 * P);
    assert!(offset_of!(PvProvider, release) == 8 + 3 * P);
    assert!(size_of::<PvProvider>() == 8 + 4 * P);
};

impl PvProvider {
    /// An empty table, for the host to pass to an install function.
    pub fn empty() -> Self {
        PvProvider {
            abi_version: 0,
            encoding: 0,
            state: std::ptr::null_mut(),
            call: None,
            free_reply: None,
            release: None,
        }
    }
}

/// Answers one request with `provider`: the dispatch every hosting model shares. `host`
/// is the line for dialogs, when the host gave one.
pub fn serve(
    provider: &dyn Provider,
    request: ProviderRequest,
    host: Option<&HostHandle>,
) -> ProviderReply {
    let ctx = CallContext::new(
        Caller::new(request.caller.uid, request.caller.gid, request.caller.pid),
        (request.deadline_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(request.deadline_ms)),
    )
    .with_dialogs(host.cloned(), request.ui);
    serve_call(provider, request.call, &ctx)
}

/// Answers one call with `provider`, in `ctx`. The call is moved in, so a put's
/// instance and a method's arguments reach the provider without a copy.
pub fn serve_call(provider: &dyn Provider, call: ProviderCall, ctx: &CallContext) -> ProviderReply {
    if let Some(read) = call.as_read() {
        return serve_read(provider, read, ctx);
    }
    let result = match call {
        ProviderCall::Release => {
            provider.release();
            Ok(ProviderReply::Released)
        }
        ProviderCall::Put { class, instance } => provider
            .put(&class, instance, ctx)
            .map(|()| done(None, ctx)),
        ProviderCall::Delete { class, key } => {
            provider.delete(&class, &key, ctx).map(|()| done(None, ctx))
        }
        ProviderCall::Call {
            class,
            key,
            method,
            args,
        } => provider
            .call(&class, &key, &method, args, ctx)
            .map(|result| done(result, ctx)),
        ProviderCall::Dialog { dialog, event } => match ctx.host() {
            Some(host) => {
                host.deliver(dialog, event);
                Ok(done(None, ctx))
            }
            None => Err(ProviderError::Unsupported(
                "dialog news for a provider the host never attached".into(),
            )),
        },
        other => Err(ProviderError::Unsupported(format!(
            "this provider does not handle {other:?}"
        ))),
    };
    result.unwrap_or_else(|e| ProviderReply::Error(fault(e)))
}

/// Answers one read with `provider`, in `ctx`: the class and key are borrowed from
/// whoever holds them, so a host's own providers read without a copy.
pub fn serve_read(provider: &dyn Provider, call: ReadCall<'_>, ctx: &CallContext) -> ProviderReply {
    let result = match call {
        ReadCall::Classes => Ok(ProviderReply::Classes(provider.classes())),
        ReadCall::Enumerate { class } => {
            provider.enumerate(class, ctx).map(ProviderReply::Instances)
        }
        ReadCall::Get { class, key } => provider.get(class, key, ctx).map(ProviderReply::Instance),
    };
    result.unwrap_or_else(|e| ProviderReply::Error(fault(e)))
}

fn done(result: Option<purveyor_model::Value>, ctx: &CallContext) -> ProviderReply {
    ProviderReply::Done {
        result,
        events: ctx.take_events(),
    }
}

/// A [`ProviderError`] as it crosses a boundary.
pub fn fault(error: ProviderError) -> ProviderFault {
    let (kind, message) = match error {
        ProviderError::NotFound(m) => (FaultKind::NotFound, m),
        ProviderError::Unsupported(m) => (FaultKind::Unsupported, m),
        ProviderError::InvalidArgument(m) => (FaultKind::InvalidArgument, m),
        ProviderError::AccessDenied(m) => (FaultKind::AccessDenied, m),
        ProviderError::Failed(m) => (FaultKind::Failed, m),
    };
    ProviderFault { kind, message }
}

/// A [`ProviderFault`] back as a [`ProviderError`].
pub fn from_fault(fault: ProviderFault) -> ProviderError {
    match fault.kind {
        FaultKind::NotFound => ProviderError::NotFound(fault.message),
        FaultKind::Unsupported => ProviderError::Unsupported(fault.message),
        FaultKind::InvalidArgument => ProviderError::InvalidArgument(fault.message),
        FaultKind::AccessDenied => ProviderError::AccessDenied(fault.message),
        FaultKind::Failed => ProviderError::Failed(fault.message),
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// What a Rust library's table points at: the provider, or why it could not be made.
struct State {
    provider: Result<Box<dyn Provider>, ProviderError>,
    /// Set by `purveyor_provider_attach`.
    host: std::sync::OnceLock<HostHandle>,
}

/// The body of the install function [`export_provider!`] writes.
///
/// # Safety
/// `out` must be null or point to a writable [`PvProvider`].
pub unsafe fn install<P, F>(host_abi: u32, out: *mut PvProvider, make: F) -> i32
where
    P: Provider,
    F: FnOnce() -> Result<P, ProviderError>,
{
    if out.is_null() {
        return PV_ERR_FAILED;
    }
    // SAFETY: the caller promises `out` points to a writable table.
    let out = unsafe { &mut *out };
    out.abi_version = PROVIDER_ABI_VERSION;
    if host_abi != PROVIDER_ABI_VERSION {
        return PV_ERR_ABI;
    }
    // A provider that fails to initialise (or panics doing so) still installs: every call
    // answers with the reason, so the host reports it as a failed load, with the message.
    let provider = match catch_unwind(AssertUnwindSafe(make)) {
        Ok(made) => made.map(|p| Box::new(p) as Box<dyn Provider>),
        Err(panic) => Err(ProviderError::Failed(format!(
            "the provider panicked while initialising: {}",
            panic_message(&*panic)
        ))),
    };
    let state = Box::new(State {
        provider,
        host: std::sync::OnceLock::new(),
    });
    out.encoding = PV_ENCODING_BINARY;
    out.state = Box::into_raw(state).cast();
    out.call = Some(call_trampoline);
    out.free_reply = Some(free_trampoline);
    out.release = Some(release_trampoline);
    PV_OK
}

unsafe extern "C" fn call_trampoline(
    state: *mut c_void,
    request: *const u8,
    request_len: u64,
    reply: *mut *mut u8,
    reply_len: *mut u64,
) -> i32 {
    if state.is_null() || request.is_null() || reply.is_null() || reply_len.is_null() {
        return PV_ERR_FAILED;
    }
    // SAFETY: `state` is the pointer `install` made from a live `Box<State>`; the host
    // calls `release` (which frees it) only after the last call has returned.
    let state = unsafe { &*state.cast::<State>() };
    // SAFETY: the host passes a buffer of `request_len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(request, request_len as usize) };
    let answer = catch_unwind(AssertUnwindSafe(|| {
        let request: ProviderRequest = match decode(Encoding::Binary, bytes) {
            Ok(r) => r,
            Err(e) => {
                return ProviderResponse {
                    id: 0,
                    reply: ProviderReply::Error(ProviderFault {
                        kind: FaultKind::InvalidArgument,
                        message: e.to_string(),
                    }),
                };
            }
        };
        let id = request.id;
        let reply = match &state.provider {
            Ok(p) => serve(&**p, request, state.host.get()),
            Err(e) => ProviderReply::Error(fault(e.clone())),
        };
        ProviderResponse { id, reply }
    }))
    .unwrap_or_else(|panic| ProviderResponse {
        id: 0,
        reply: ProviderReply::Error(ProviderFault {
            kind: FaultKind::Failed,
            message: format!("the provider panicked: {}", panic_message(&*panic)),
        }),
    });
    let mut out = REPLY_BUFFER.try_with(|b| b.take()).unwrap_or_default();
    out.clear();
    out.extend_from_slice(&[0; REPLY_HEADER]);
    if encode_payload(Encoding::Binary, &answer, &mut out).is_err() {
        return PV_ERR_FAILED;
    }
    // The reply is the buffer itself, handed over with its capacity written in front of
    // the bytes the host reads: `free_trampoline` rebuilds it from that and keeps it for
    // the next call. No copy, and no allocation once the buffer has grown.
    let len = (out.len() - REPLY_HEADER) as u64;
    let capacity = out.capacity() as u64;
    out[..REPLY_HEADER].copy_from_slice(&capacity.to_le_bytes());
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: checked non-null above; the host passes writable out-parameters. The
    // pointer stays inside the buffer, which holds at least `REPLY_HEADER` bytes.
    unsafe {
        *reply_len = len;
        *reply = out.as_mut_ptr().add(REPLY_HEADER);
    }
    PV_OK
}

/// Bytes in front of a reply that hold its buffer's capacity.
const REPLY_HEADER: usize = 8;

thread_local! {
    /// This thread's reply buffer, between a reply given back and the next call. A
    /// reply freed on another thread's call leaves its buffer there instead.
    static REPLY_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

unsafe extern "C" fn free_trampoline(_state: *mut c_void, reply: *mut u8, reply_len: u64) {
    if reply.is_null() {
        return;
    }
    // SAFETY: `reply` and `reply_len` are a reply `call_trampoline` made, given back once:
    // `REPLY_HEADER` bytes in front of it start its `Vec`'s allocation and hold that
    // allocation's capacity; its length is the header and the reply.
    let buffer = unsafe {
        let base = reply.sub(REPLY_HEADER);
        let capacity = u64::from_le_bytes(std::ptr::read_unaligned(base.cast::<[u8; 8]>()));
        Vec::from_raw_parts(base, REPLY_HEADER + reply_len as usize, capacity as usize)
    };
    // Kept for this thread's next reply unless it is large (one big reply should not
    // hold its memory for good) or the thread already has one.
    if buffer.capacity() <= 64 * 1024 {
        let _ = REPLY_BUFFER.try_with(|slot| {
            let old = slot.take();
            slot.set(if old.capacity() == 0 { buffer } else { old });
        });
    }
}

unsafe extern "C" fn release_trampoline(state: *mut c_void) {
    if state.is_null() {
        return;
    }
    // SAFETY: `state` came from `Box::into_raw` in `install`; the host calls `release`
    // once, after the last call.
    let state = unsafe { Box::from_raw(state.cast::<State>()) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(p) = &state.provider {
            p.release();
        }
        drop(state);
    }));
}

/// The host's send function and state, callable from any thread (the ABI's promise).
struct HostLine {
    send: HostSendFn,
    state: *mut c_void,
}

impl HostLine {
    fn send(&self, bytes: &[u8]) {
        // SAFETY: the host keeps `send` and its state valid until after `release`.
        unsafe { (self.send)(self.state, bytes.as_ptr(), bytes.len() as u64) };
    }
}

// SAFETY: the ABI requires `send` to be callable from any thread with `state`, until after
// `release` (docs/dialogs.md); the provider's handles never outlive that.
unsafe impl Send for HostLine {}
// SAFETY: as above.
unsafe impl Sync for HostLine {}

/// The body of `purveyor_provider_attach` that [`export_provider!`] writes: keeps the
/// host's line and hands the provider a [`HostHandle`] on it.
///
/// # Safety
/// `state` must be the table's state from [`install`]; `host` null or valid until after
/// `release`.
pub unsafe fn attach(state: *mut c_void, host: *const PvHost) -> i32 {
    if state.is_null() || host.is_null() {
        return PV_ERR_FAILED;
    }
    // SAFETY: the caller promises both pointers are live.
    let (state, host) = unsafe { (&*state.cast::<State>(), &*host) };
    let Some(send) = host.send else {
        return PV_ERR_FAILED;
    };
    let line = HostLine {
        send,
        state: host.state,
    };
    let handle = HostHandle::new(move |dialog, op| {
        let message = ProviderResponse {
            id: 0,
            reply: ProviderReply::Dialog {
                provider: String::new(),
                dialog,
                op: Box::new(op),
            },
        };
        let mut bytes = Vec::new();
        if encode_payload(Encoding::Binary, &message, &mut bytes).is_ok() {
            line.send(&bytes);
        }
    });
    if state.host.set(handle.clone()).is_err() {
        return PV_ERR_FAILED;
    }
    let attached = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(p) = &state.provider {
            p.attach(handle);
        }
    }));
    if attached.is_ok() {
        PV_OK
    } else {
        PV_ERR_FAILED
    }
}

/// Exports a provider from a `cdylib`: `export_provider!(MyProvider::new)`, where the
/// expression is a function returning `Result<MyProvider, ProviderError>`.
///
/// `export_provider!(named MyProvider::for_name)` passes the provider's name from its
/// manifest (a `&str`), for a library that serves several providers.
#[macro_export]
macro_rules! export_provider {
    (named $make:expr) => {
        /// The install function the host looks up (see `docs/provider-abi.md`).
        ///
        /// # Safety
        /// Called by the host with a writable table and a NUL-terminated name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn purveyor_provider_install(
            host_abi: u32,
            name: *const ::std::ffi::c_char,
            out: *mut $crate::abi::PvProvider,
        ) -> i32 {
            let name = if name.is_null() {
                ""
            } else {
                // SAFETY: the host passes a NUL-terminated name, alive for the call.
                unsafe { ::std::ffi::CStr::from_ptr(name) }
                    .to_str()
                    .unwrap_or("")
            };
            // SAFETY: the host passes a writable table, as the ABI requires.
            unsafe { $crate::abi::install(host_abi, out, || ($make)(name)) }
        }
        $crate::export_provider!(@attach);
    };
    ($make:expr) => {
        /// The install function the host looks up (see `docs/provider-abi.md`).
        ///
        /// # Safety
        /// Called by the host with a writable table.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn purveyor_provider_install(
            host_abi: u32,
            _name: *const ::std::ffi::c_char,
            out: *mut $crate::abi::PvProvider,
        ) -> i32 {
            // SAFETY: the host passes a writable table, as the ABI requires.
            unsafe { $crate::abi::install(host_abi, out, $make) }
        }
        $crate::export_provider!(@attach);
    };
    (@attach) => {
        /// The host's line for dialogs (see `docs/dialogs.md`).
        ///
        /// # Safety
        /// Called by the host with the table's state and a host table valid until release.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn purveyor_provider_attach(
            state: *mut ::std::ffi::c_void,
            host: *const $crate::abi::PvHost,
        ) -> i32 {
            // SAFETY: as the ABI requires (see above).
            unsafe { $crate::abi::attach(state, host) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::{ClassPath, ClassSchema, Instance, Value};

    /// `enumerate` answers with as many instances as the class's name is long × 1000, so a
    /// test can ask for a small reply and for one past the kept buffer's size.
    struct Sized;

    impl Provider for Sized {
        fn classes(&self) -> Vec<ClassSchema> {
            Vec::new()
        }
        fn enumerate(
            &self,
            class: &ClassPath,
            _ctx: &CallContext,
        ) -> Result<Vec<Instance>, ProviderError> {
            let n = if class.name() == "big" { 5000 } else { 1 };
            Ok((0..n)
                .map(|i| Instance::from_pairs([("n", Value::U64(i))]))
                .collect())
        }
    }

    fn call(table: &PvProvider, class: &str) -> (*mut u8, u64) {
        let request = ProviderRequest {
            id: 1,
            provider: String::new(),
            caller: Default::default(),
            deadline_ms: 0,
            ui: 0,
            call: ProviderCall::Enumerate {
                class: ClassPath::new(class).unwrap(),
            },
        };
        let mut bytes = Vec::new();
        encode_payload(Encoding::Binary, &request, &mut bytes).unwrap();
        let (mut reply, mut len) = (std::ptr::null_mut(), 0u64);
        // SAFETY: a table `install` filled, live until `release` below.
        let rc = unsafe {
            (table.call.unwrap())(
                table.state,
                bytes.as_ptr(),
                bytes.len() as u64,
                &mut reply,
                &mut len,
            )
        };
        assert_eq!(rc, PV_OK);
        (reply, len)
    }

    fn instances(reply: *mut u8, len: u64) -> usize {
        // SAFETY: a reply the table made, not yet given back.
        let bytes = unsafe { std::slice::from_raw_parts(reply, len as usize) };
        match decode::<ProviderResponse>(Encoding::Binary, bytes)
            .unwrap()
            .reply
        {
            ProviderReply::Instances(all) => all.len(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_are_whole_until_freed_on_any_thread_and_any_order() {
        let mut table = PvProvider::empty();
        // SAFETY: `table` is writable.
        let rc = unsafe { install(PROVIDER_ABI_VERSION, &mut table, || Ok(Sized)) };
        assert_eq!(rc, PV_OK);
        let free = |(reply, len): (*mut u8, u64)| {
            // SAFETY: a reply of this table, given back once.
            unsafe { (table.free_reply.unwrap())(table.state, reply, len) }
        };
        for _ in 0..3 {
            // Two replies alive at once, freed in the other order; a large one between.
            let a = call(&table, "t.small");
            let big = call(&table, "t.big");
            let b = call(&table, "t.small");
            assert_ne!(a.0, b.0);
            assert_eq!(instances(big.0, big.1), 5000);
            free(big);
            assert_eq!(instances(a.0, a.1), 1);
            assert_eq!(instances(b.0, b.1), 1);
            free(b);
            free(a);
        }
        // A reply made on one thread and freed on another.
        let made = call(&table, "t.small");
        let (addr, len) = (made.0 as usize, made.1);
        let state = table.state as usize;
        let free_reply = table.free_reply.unwrap();
        std::thread::spawn(move || {
            // SAFETY: as above; the pointer crossed threads as an address.
            unsafe { free_reply(state as *mut c_void, addr as *mut u8, len) }
        })
        .join()
        .unwrap();
        let again = call(&table, "t.small");
        assert_eq!(instances(again.0, again.1), 1);
        free(again);
        // SAFETY: no call is in flight; the table is not used after.
        unsafe { (table.release.unwrap())(table.state) };
    }
}
