//! Dialogs in the application (`docs/dialogs.md`): the trait an application implements to
//! show providers' dialogs, and UI modules — shared libraries from directories the
//! application trusts that render a provider's own dialog.
//!
//! Install a [`DialogUi`] with [`crate::Client::set_dialog_ui`] and connect with
//! [`crate::ConnectOptions::ui`]: while the client waits for a reply or an event, it calls
//! the UI as dialogs open, change and close, signals each dialog ready once `open` has
//! returned (so no update is lost), and sends what the UI answers.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use purveyor_protocol::{DialogInput, Form, FormUpdate};
use serde::{Deserialize, Serialize};

/// A dialog a provider opened for this application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenDialog {
    pub handle: u32,
    /// The provider asking.
    pub provider: String,
    /// The request it belongs to (an in-call dialog), or `None` (a spontaneous one, to
    /// this agent).
    pub request: Option<u32>,
    /// Milliseconds before the host closes it.
    pub deadline_ms: u64,
    pub form: Form,
}

/// What the UI does after showing or updating a dialog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UiAction {
    /// Nothing yet (the user answers later, through [`crate::Client::dialog_send`]).
    Wait,
    /// Send this input to the provider.
    Send(DialogInput),
    /// Close the dialog (the provider is told the user closed it).
    Close,
}

/// How an application shows dialogs. Every call is made on the thread that uses the
/// client, while it waits; an implementation may block (a modal prompt) or return
/// [`UiAction::Wait`] and answer later.
pub trait DialogUi {
    /// A dialog opened: show it.
    fn open(&mut self, dialog: &OpenDialog) -> UiAction;
    /// The provider changed what it shows.
    fn update(&mut self, _handle: u32, _update: &FormUpdate) -> UiAction {
        UiAction::Wait
    }
    /// It is closed (by the provider, its deadline, or a side going away): why.
    fn closed(&mut self, _handle: u32, _reason: &str) {}
}

/// The UI module ABI's version.
pub const UI_ABI_VERSION: u32 = 1;
/// The symbol a UI module exports.
pub const UI_INSTALL_SYMBOL: &str = "purveyor_ui_install";

/// `int32_t purveyor_ui_install(uint32_t abi, pv_ui_module *out)`.
pub type UiInstallFn = unsafe extern "C" fn(abi: u32, out: *mut PvUiModule) -> i32;
/// `handle_event(state, event_json, len, &action_json, &action_len)`: an event is
/// `{"open":OpenDialog}`, `{"update":{"handle":N,"update":FormUpdate}}` or
/// `{"closed":{"handle":N,"reason":"…"}}`; the action is a [`UiAction`] in JSON.
pub type UiEventFn = unsafe extern "C" fn(
    state: *mut c_void,
    event: *const u8,
    len: u64,
    action: *mut *mut u8,
    action_len: *mut u64,
) -> i32;
/// Gives back an action buffer.
pub type UiFreeFn = unsafe extern "C" fn(state: *mut c_void, buf: *mut u8, len: u64);
/// Frees the module's state.
pub type UiReleaseFn = unsafe extern "C" fn(state: *mut c_void);

/// The table a UI module fills in (JSON both ways, so a module can be written in C).
#[repr(C)]
#[derive(Debug)]
pub struct PvUiModule {
    pub abi_version: u32,
    pub reserved: u32,
    pub state: *mut c_void,
    pub handle_event: Option<UiEventFn>,
    pub free: Option<UiFreeFn>,
    pub release: Option<UiReleaseFn>,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    const P: usize = size_of::<*const u8>();
    assert!(offset_of!(PvUiModule, state) == 8);
    assert!(offset_of!(PvUiModule, handle_event) == 8 + P);
    assert!(offset_of!(PvUiModule, release) == 8 + 3 * P);
    assert!(size_of::<PvUiModule>() == 8 + 4 * P);
};

/// What a UI module is told, in JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UiEvent {
    Open(OpenDialog),
    Update { handle: u32, update: FormUpdate },
    Closed { handle: u32, reason: String },
}

/// A loaded UI module.
struct Module {
    table: PvUiModule,
    path: PathBuf,
    _library: libloading::Library,
}

// SAFETY: the UI module ABI lets a module be called from any thread, one call at a time
// (docs/dialogs.md); `ModuleUi` takes `&mut self` for every call.
unsafe impl Send for Module {}

impl Module {
    fn event(&self, event: &UiEvent) -> UiAction {
        let Ok(bytes) = serde_json::to_vec(event) else {
            return UiAction::Wait;
        };
        let (Some(handle_event), Some(free)) = (self.table.handle_event, self.table.free) else {
            return UiAction::Wait;
        };
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut len: u64 = 0;
        // SAFETY: the table came from the module's install function; the buffers are
        // valid for the call.
        let rc = unsafe {
            handle_event(
                self.table.state,
                bytes.as_ptr(),
                bytes.len() as u64,
                &mut out,
                &mut len,
            )
        };
        if rc != 0 || out.is_null() {
            return UiAction::Wait;
        }
        // SAFETY: on success the module hands over `len` bytes until `free`.
        let action =
            serde_json::from_slice(unsafe { std::slice::from_raw_parts(out, len as usize) });
        // SAFETY: the module's buffer, given back once.
        unsafe { free(self.table.state, out, len) };
        action.unwrap_or_else(|e| {
            eprintln!(
                "purveyor: UI module {} answered with a malformed action: {e}",
                self.path.display()
            );
            UiAction::Wait
        })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(release) = self.table.release {
            // SAFETY: once, after the last event.
            unsafe { release(self.table.state) };
        }
    }
}

/// A [`DialogUi`] that renders with UI modules from trusted directories where a dialog
/// names one that is there, and with `generic` otherwise.
pub struct ModuleUi<G: DialogUi> {
    dirs: Vec<PathBuf>,
    modules: HashMap<String, Option<Module>>,
    /// Which module shows each open dialog.
    shown_by: HashMap<u32, String>,
    generic: G,
}

impl<G: DialogUi> ModuleUi<G> {
    /// Modules are looked up as `DIR/NAME.so` (or `DIR/libNAME.so`, `-` as `_`) in `dirs`,
    /// in order. The application —
    /// never the provider — names these directories.
    pub fn new(dirs: Vec<PathBuf>, generic: G) -> Self {
        ModuleUi {
            dirs,
            modules: HashMap::new(),
            shown_by: HashMap::new(),
            generic,
        }
    }

    /// The generic UI, for the application's own use (answering a waiting dialog).
    pub fn generic(&mut self) -> &mut G {
        &mut self.generic
    }

    fn module(&mut self, name: &str) -> Option<&Module> {
        if !self.modules.contains_key(name) {
            let loaded = self.find(name).and_then(|path| match load_module(&path) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("purveyor: {e}; using the generic dialog");
                    None
                }
            });
            self.modules.insert(name.to_string(), loaded);
        }
        self.modules.get(name).and_then(Option::as_ref)
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        // A name is a file name in a trusted directory, never a path.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        // `NAME.so`, or as cargo names a cdylib: `libNAME.so` with `-` as `_`.
        let cargo = format!("lib{}.so", name.replace('-', "_"));
        self.dirs
            .iter()
            .flat_map(|d| [d.join(format!("{name}.so")), d.join(&cargo)])
            .find(|p| p.is_file())
    }
}

impl<G: DialogUi> DialogUi for ModuleUi<G> {
    fn open(&mut self, dialog: &OpenDialog) -> UiAction {
        if let Some(name) = dialog.form.ui_module.clone()
            && let Some(module) = self.module(&name)
        {
            let action = module.event(&UiEvent::Open(dialog.clone()));
            self.shown_by.insert(dialog.handle, name);
            return action;
        }
        self.generic.open(dialog)
    }

    fn update(&mut self, handle: u32, update: &FormUpdate) -> UiAction {
        if let Some(name) = self.shown_by.get(&handle).cloned()
            && let Some(module) = self.module(&name)
        {
            return module.event(&UiEvent::Update {
                handle,
                update: update.clone(),
            });
        }
        self.generic.update(handle, update)
    }

    fn closed(&mut self, handle: u32, reason: &str) {
        if let Some(name) = self.shown_by.remove(&handle)
            && let Some(module) = self.module(&name)
        {
            module.event(&UiEvent::Closed {
                handle,
                reason: reason.to_string(),
            });
            return;
        }
        self.generic.closed(handle, reason)
    }
}

/// Loads a UI module after checking it is trustworthy: a regular file owned by root or
/// this user, writable by nobody else.
fn load_module(path: &Path) -> Result<Module, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("UI module {shown}: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "UI module {shown} is owned by uid {}, neither root nor this user: not loaded",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "UI module {shown} is writable by its group or others (mode {:o}): not loaded",
            meta.mode() & 0o7777
        ));
    }
    // SAFETY: loading runs the library's initialisers; it is in a directory the
    // application trusts and passed the ownership checks above.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load UI module {shown}: {e}"))?;
    // SAFETY: the symbol has the ABI's install signature.
    let install: libloading::Symbol<UiInstallFn> =
        unsafe { library.get(UI_INSTALL_SYMBOL.as_bytes()) }
            .map_err(|_| format!("UI module {shown} does not export {UI_INSTALL_SYMBOL}"))?;
    let mut table = PvUiModule {
        abi_version: 0,
        reserved: 0,
        state: std::ptr::null_mut(),
        handle_event: None,
        free: None,
        release: None,
    };
    // SAFETY: a writable table, as the ABI requires.
    let rc = unsafe { install(UI_ABI_VERSION, &mut table) };
    if table.abi_version != UI_ABI_VERSION {
        return Err(format!(
            "UI module {shown} speaks UI ABI version {}; this client speaks version {UI_ABI_VERSION}",
            table.abi_version
        ));
    }
    if rc != 0 || table.handle_event.is_none() || table.free.is_none() {
        return Err(format!(
            "UI module {shown}: {UI_INSTALL_SYMBOL} failed (returned {rc})"
        ));
    }
    Ok(Module {
        table,
        path: path.to_owned(),
        _library: library,
    })
}

/// The body of the install function [`export_ui_module!`] writes.
///
/// # Safety
/// `out` must be null or point to a writable [`PvUiModule`].
pub unsafe fn install_ui<U: DialogUi + Send + 'static>(
    abi: u32,
    out: *mut PvUiModule,
    make: impl FnOnce() -> U,
) -> i32 {
    if out.is_null() {
        return 2;
    }
    // SAFETY: the caller promises a writable table.
    let out = unsafe { &mut *out };
    out.abi_version = UI_ABI_VERSION;
    if abi != UI_ABI_VERSION {
        return 1;
    }
    let ui: Box<std::sync::Mutex<Box<dyn DialogUi + Send>>> =
        Box::new(std::sync::Mutex::new(Box::new(make())));
    out.state = Box::into_raw(ui).cast();
    out.handle_event = Some(ui_event);
    out.free = Some(ui_free);
    out.release = Some(ui_release);
    0
}

unsafe extern "C" fn ui_event(
    state: *mut c_void,
    event: *const u8,
    len: u64,
    action: *mut *mut u8,
    action_len: *mut u64,
) -> i32 {
    if state.is_null() || event.is_null() || action.is_null() || action_len.is_null() {
        return 2;
    }
    // SAFETY: `state` is the box `install_ui` made, live until release; `event` holds
    // `len` bytes.
    let (ui, bytes) = unsafe {
        (
            &*state.cast::<std::sync::Mutex<Box<dyn DialogUi + Send>>>(),
            std::slice::from_raw_parts(event, len as usize),
        )
    };
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ui = ui.lock().unwrap_or_else(|p| p.into_inner());
        match serde_json::from_slice::<UiEvent>(bytes) {
            Ok(UiEvent::Open(dialog)) => ui.open(&dialog),
            Ok(UiEvent::Update { handle, update }) => ui.update(handle, &update),
            Ok(UiEvent::Closed { handle, reason }) => {
                ui.closed(handle, &reason);
                UiAction::Wait
            }
            Err(_) => UiAction::Wait,
        }
    }))
    .unwrap_or(UiAction::Wait);
    let Ok(json) = serde_json::to_vec(&answer) else {
        return 2;
    };
    let boxed = json.into_boxed_slice();
    // SAFETY: writable out-parameters, checked non-null above.
    unsafe {
        *action_len = boxed.len() as u64;
        *action = Box::into_raw(boxed).cast();
    }
    0
}

unsafe extern "C" fn ui_free(_state: *mut c_void, buf: *mut u8, len: u64) {
    if !buf.is_null() {
        // SAFETY: a buffer `ui_event` made from a boxed slice of this length.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf, len as usize)) });
    }
}

unsafe extern "C" fn ui_release(state: *mut c_void) {
    if !state.is_null() {
        // SAFETY: the box `install_ui` made, released once.
        drop(unsafe { Box::from_raw(state.cast::<std::sync::Mutex<Box<dyn DialogUi + Send>>>()) });
    }
}

/// Exports a UI module from a `cdylib`: `export_ui_module!(MyUi::new)`, where `MyUi`
/// implements [`DialogUi`] + `Send`.
#[macro_export]
macro_rules! export_ui_module {
    ($make:expr) => {
        /// The install function a client looks up (see `docs/dialogs.md`).
        ///
        /// # Safety
        /// Called by the client with a writable table.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn purveyor_ui_install(
            abi: u32,
            out: *mut $crate::dialog::PvUiModule,
        ) -> i32 {
            // SAFETY: as the ABI requires.
            unsafe { $crate::dialog::install_ui(abi, out, $make) }
        }
    };
}
