//! The Purveyor provider SDK.
//!
//! A provider implements [`Provider`]: it declares the schemas of the classes it serves and
//! answers calls for their instances. The host decides where the code runs (compiled in,
//! in the daemon, in a worker process) from the provider's manifest; the trait is the same.
//!
//! **API boundary:** provider authors depend on this crate and `purveyor-model` only.

use std::sync::Mutex;
use std::time::Instant;

pub mod abi;
pub mod dialog;
#[cfg(feature = "store")]
pub mod store;

/// The state directory: `$PURVEYOR_STATE_DIR`; else `/var/lib/purveyor` for root; else
/// `$XDG_STATE_HOME/purveyor` or `~/.local/state/purveyor`.
pub fn state_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("PURVEYOR_STATE_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/lib/purveyor".into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(dir).join("purveyor");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    std::path::PathBuf::from(home).join(".local/state/purveyor")
}

pub use purveyor_model as model;
use purveyor_model::{ClassPath, ClassSchema, Identifier, Instance, InstanceKey, Value};
pub use purveyor_protocol as protocol;
use purveyor_protocol::RaisedEvent;

pub use dialog::{Dialog, DialogError, DialogTarget, HostHandle};
pub use purveyor_protocol::{Button, DialogInput, Field, FieldKind, Form, FormUpdate, Progress};

/// A provider: the code that supplies the instances of some classes.
///
/// Calls may arrive concurrently from several threads. A call that cannot finish before
/// [`CallContext::deadline`] is abandoned by the host and the client is told so; the
/// provider should not hold locks across slow work.
pub trait Provider: Send + Sync + 'static {
    /// The schemas of the classes this provider serves. Called once after loading; every
    /// class its manifest lists must be here. A provider that fills a namespace at run
    /// time (`"app.*"` in its manifest) is asked again whenever classes are listed, and
    /// answers with the classes it has now.
    fn classes(&self) -> Vec<ClassSchema>;

    /// The current schema of `class`, for a provider that fills a namespace at run time;
    /// `None` when there is no such class now. Others keep the default.
    fn schema(&self, _class: &ClassPath) -> Option<std::sync::Arc<ClassSchema>> {
        None
    }

    /// Every instance of `class`.
    fn enumerate(
        &self,
        class: &ClassPath,
        ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError>;

    /// The instance with this full key (empty for a singleton class), or `None`. The
    /// default enumerates and picks; override it when one instance is cheaper to read.
    fn get(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        Ok(self
            .enumerate(class, ctx)?
            .into_iter()
            .find(|instance| instance.matches(key)))
    }

    /// Creates or updates the instance whose key properties `instance` carries. The host
    /// has checked it against the schema. Return only once the change is durable (commit
    /// it with [`store::Store`]): the host may stop the provider at any moment after.
    /// Raise change events with [`CallContext::emit`].
    fn put(
        &self,
        class: &ClassPath,
        _instance: Instance,
        _ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{class} cannot be written"
        )))
    }

    /// Deletes the instance with this full key; [`ProviderError::NotFound`] when there is
    /// none. Durable on return, like [`Provider::put`].
    fn delete(
        &self,
        class: &ClassPath,
        _key: &InstanceKey,
        _ctx: &CallContext,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "instances of {class} cannot be deleted"
        )))
    }

    /// Runs a method of the instance with this key (empty for a singleton or a static
    /// method). The host has checked the arguments against the method's parameters, and
    /// checks the result against its declared type. Durable on return, like
    /// [`Provider::put`].
    fn call(
        &self,
        class: &ClassPath,
        _key: &InstanceKey,
        method: &Identifier,
        _args: Instance,
        _ctx: &CallContext,
    ) -> Result<Option<Value>, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "method {class}.{method} is not implemented"
        )))
    }

    /// The cleanup hook: called once when the host releases the provider (idle unload or
    /// shutdown), after the last call. Close what the OS does not reclaim here.
    fn release(&self) {}

    /// Called once after loading, before any call, by a host that routes dialogs: keep
    /// `host` to open spontaneous dialogs later, from any thread
    /// ([`HostHandle::open_dialog`]).
    fn attach(&self, _host: HostHandle) {}
}

/// Who is calling, and until when; and the events the call raises.
#[derive(Debug)]
pub struct CallContext {
    pub caller: Caller,
    /// The host abandons the call after this instant.
    pub deadline: Option<Instant>,
    /// Events raised by this call, delivered when it returns successfully.
    events: Mutex<Vec<RaisedEvent>>,
    /// The line to the host for dialogs, when the host routes them.
    host: Option<HostHandle>,
    /// The token of this call's client for in-call dialogs; 0 when it cannot show one.
    ui: u32,
}

/// The peer a request came from, from the socket's credentials (`SO_PEERCRED` and
/// `SO_PEERGROUPS`, read once when the connection was accepted); in embedded mode, the
/// current process.
///
/// Invariant: never refreshed from `/proc/PID`: the pid is for the record only (the
/// process may have exited and its pid gone to another user's process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups. Empty when the host did not pass them (a provider process is
    /// told uid, gid and pid only; the host applies group rules itself).
    pub groups: Groups,
    /// A client on another machine (`docs/remote.md`): uid, gid and groups are those of
    /// the local user its certificate maps to, and pid is 0. The access policy's `@local`
    /// does not include it; `@remote` does.
    pub remote: bool,
}

/// A caller's supplementary groups: cheap to clone, and no allocation when there are none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Groups(Option<std::sync::Arc<[u32]>>);

impl std::ops::Deref for Groups {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Vec<u32>> for Groups {
    fn from(groups: Vec<u32>) -> Self {
        Groups((!groups.is_empty()).then(|| groups.into()))
    }
}

/// A provider's failure, reported to the client with the provider's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("{0}")]
    Failed(String),
}

impl CallContext {
    pub fn new(caller: Caller, deadline: Option<Instant>) -> Self {
        CallContext {
            caller,
            deadline,
            events: Mutex::new(Vec::new()),
            host: None,
            ui: 0,
        }
    }

    /// This context with a line to the host for dialogs, and the token (the request's
    /// `ui`, 0 for none) that lets the call open an in-call dialog.
    pub fn with_dialogs(mut self, host: Option<HostHandle>, ui: u32) -> Self {
        self.host = host;
        self.ui = ui;
        self
    }

    /// The line to the host, for spontaneous dialogs; `None` when the host does not route
    /// dialogs to this provider.
    pub fn host(&self) -> Option<&HostHandle> {
        self.host.as_ref()
    }

    /// Opens an in-call dialog: the host shows `form` to the client whose call this is,
    /// and this call waits for it (the call's deadline is suspended while the dialog is
    /// open). Refused at once with "no UI available" when the client cannot show one
    /// (`--no-input`, no terminal, an HTTP request).
    pub fn dialog(&self, form: Form) -> Result<Dialog, DialogError> {
        let Some(host) = &self.host else {
            return Err(DialogError::Refused(
                "no UI available: this provider's host does not route dialogs to it".into(),
            ));
        };
        if self.ui == 0 {
            return Err(DialogError::Refused(
                "no UI available: this call did not come from a client that can show dialogs"
                    .into(),
            ));
        }
        host.open(form, self.ui, None, None, None)
    }

    /// A context for calls made by the host itself or by tests.
    pub fn internal() -> Self {
        Self::new(Caller::current_process(), None)
    }

    /// Raises an event of `class` (declared in its schema) carrying `data`. The host
    /// checks it and delivers it to matching subscribers once the call has succeeded; a
    /// call that fails raises nothing. An event name that is not an identifier is an
    /// error naming it (return it, and a store transaction around the emit aborts).
    pub fn emit(
        &self,
        class: &ClassPath,
        event: &str,
        data: Instance,
    ) -> Result<(), ProviderError> {
        let event = Identifier::new(event).map_err(|e| {
            ProviderError::Failed(format!("cannot raise event {event:?} of {class}: {e}"))
        })?;
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RaisedEvent {
                class: class.clone(),
                event,
                data,
            });
        Ok(())
    }

    /// The events raised so far, taken out.
    pub fn take_events(&self) -> Vec<RaisedEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Caller {
    /// The current process's own credentials.
    pub fn current_process() -> Self {
        Caller {
            uid: current_uid(),
            gid: current_gid(),
            pid: std::process::id(),
            groups: current_groups().into(),
            remote: false,
        }
    }

    /// Who this caller is, as the provider channel says it (`caller` of a request).
    pub fn info(&self) -> purveyor_protocol::CallerInfo {
        purveyor_protocol::CallerInfo {
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
        }
    }

    /// A caller known by uid, gid and pid only (no supplementary groups).
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Caller {
            uid,
            gid,
            pid,
            groups: Groups::default(),
            remote: false,
        }
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn current_groups() -> Vec<u32> {
    // SAFETY: with a size of 0, getgroups only counts.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups = vec![0 as libc::gid_t; n.max(0) as usize];
    // SAFETY: getgroups writes at most `groups.len()` entries into `groups`.
    let got = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(got.max(0) as usize);
    groups
}

fn current_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_name_that_is_not_an_identifier_is_an_error_naming_it() {
        let ctx = CallContext::internal();
        let class = ClassPath::new("config.setting").unwrap();
        let err = ctx.emit(&class, "Changed", Instance::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot raise event \"Changed\" of config.setting: "),
            "{err}"
        );
        ctx.emit(&class, "changed", Instance::new()).unwrap();
        assert_eq!(ctx.take_events().len(), 1);
    }
}
