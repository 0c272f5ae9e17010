//! One loaded provider, wherever it runs. This is the only module that knows the hosting
//! models: a new one is a variant of the private `Backend` and an arm in each match below,
//! and nothing else in Purveyor changes.
//!
//! What a provider may ask of the host while it runs (dialogs, events raised outside a
//! call, news of its direct channels, the end of its process) goes through [`HostLink`],
//! which the host implements and tests implement with a recording double.
//!
//! **Invariants.** Every call into provider code runs under `catch_unwind` (or in a
//! process of its own) and within the provider's deadline: a blocking call is abandoned at
//! it, a process call kills the process, and an inline library call is watched by the
//! [`Watchdog`]. Errors come back as [`CallError`] / [`LoadError`], whose text names the
//! provider; the host turns them into wire errors at its edge.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use purveyor_model::{ClassPath, ClassSchema};
use purveyor_protocol::{
    CallerInfo, DialogEvent, DialogOp, DirectAttach, DirectNews, Encoding, ProviderCall,
    ProviderReply, ProviderRequest, ProviderResponse, RaisedEvent, ReadCall,
};
use purveyor_provider::abi::{fault, serve_call, serve_read};
use purveyor_provider::{CallContext, Caller, Provider};

use crate::builtin::{BuiltinProvider, Dispatch};
use crate::error::{CallError, LoadError, Shown};
use crate::library::{HostLineFn, LibraryProvider};
use crate::procedures::{ProcedureServer, close_off_thread};
use crate::process::{CallFailure, ProcessConn, ProcessKind};
use crate::watchdog::Watchdog;

/// Hands a provider's worker the socket of its dialog number `dialog`.
pub type DialogChannels =
    Box<dyn Fn(u32, &std::os::fd::OwnedFd) -> Result<(), String> + Send + Sync>;

/// What a running provider may ask of its host. Called from any thread, never with a
/// lock of the provider's held; an implementation must not block.
pub trait HostLink: Send + Sync + 'static {
    /// The provider opens, updates or closes its dialog number `dialog`.
    fn dialog_op(&self, dialog: u32, op: DialogOp);
    /// Events the provider raised outside any call (an external provider's own frames).
    fn raised(&self, events: Vec<RaisedEvent>);
    /// A worker's news of the calls its direct channels served for this provider, from
    /// `process`.
    fn direct_news(&self, news: DirectNews, process: ProcessRef);
    /// The provider's process ended, for `reason`.
    fn exited(&self, reason: &str);
}

/// What to load, as the manifest says.
pub enum Spec {
    /// A provider compiled into this binary.
    Builtin(BuiltinProvider),
    /// A provider library, in this process.
    Library { path: PathBuf },
    /// An I/O procedure library, in this process.
    Procedures { path: PathBuf },
    /// A provider library (`io`: a procedure library) in a worker process, maybe shared
    /// by a host group ([`spawn_worker`]).
    Worker {
        conn: Arc<ProcessConn>,
        path: PathBuf,
        io: bool,
    },
    /// An executable speaking the provider channel in JSON, run in `dir`.
    External {
        program: OsString,
        args: Vec<OsString>,
        dir: Option<PathBuf>,
        io: bool,
        /// Who it runs as and what it may use.
        confine: crate::Confine,
    },
}

/// A loaded provider.
pub struct Hosted {
    /// The provider's name (its manifest's), also its name inside a shared process.
    name: String,
    backend: Backend,
}

/// Where a loaded provider's calls go.
enum Backend {
    /// A builtin, in this process.
    Local {
        provider: Arc<dyn Provider>,
        dispatch: Dispatch,
    },
    /// An in-daemon library, called on the requesting thread under the watchdog. Its
    /// cleanup entry point runs when the last reference goes.
    Library(Arc<LibraryProvider>),
    /// In a process of its own: an isolated worker (maybe shared) or an external
    /// executable.
    Process(Arc<ProcessConn>),
    /// An in-daemon I/O procedure library, served on the blocking pool.
    Io(Arc<ProcedureServer>),
}

/// A provider process, as named in [`HostLink::direct_news`]: compare it with
/// [`Hosted::runs_in`].
#[derive(Clone)]
pub struct ProcessRef(Weak<ProcessConn>);

/// What a call needs besides the call itself.
pub struct CallCx<'a> {
    pub caller: &'a Caller,
    /// The provider's deadline for one call.
    pub timeout: Duration,
    /// The token a provider may open an in-call dialog with (0: none).
    pub ui: u32,
    /// When the deadline passes: a later one, if the call's dialog is open.
    pub extend: &'a (dyn Fn() -> Option<Instant> + Sync),
}

/// What a call on the requesting thread needs ([`Hosted::call_inline`]).
pub struct InlineCx<'a> {
    pub caller: &'a Caller,
    pub timeout: Duration,
    pub watchdog: &'a Watchdog,
    /// Run by the watchdog's thread if an in-daemon library's call overruns, while the
    /// call still runs.
    pub overdue: &'a (dyn Fn() + Sync),
}

/// A call that runs inline: a read borrowing the request's class and key, or any call,
/// owned (a put's instance moves into a builtin without a copy).
pub enum InlineCall<'a> {
    Read(ReadCall<'a>),
    Owned(ProviderCall),
}

/// Why a step on the blocking pool did not return a value ([`blocking`]).
#[derive(Debug)]
pub enum Overrun {
    /// It panicked, with this message.
    Panicked(String),
    /// Its task was lost (the runtime is shutting down).
    Task(String),
    /// It ran past the deadline; it goes on, abandoned.
    Timeout,
}

/// Runs `f` on the blocking pool under `catch_unwind`, waiting at most `timeout`: the one
/// place the "panicked / task lost / too slow" ladder is written.
pub async fn blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Overrun> {
    let task = tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(f)));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(panic))) => Err(Overrun::Panicked(
            purveyor_provider::abi::panic_message(&*panic).to_string(),
        )),
        Ok(Err(join)) => Err(Overrun::Task(join.to_string())),
        Err(_) => Err(Overrun::Timeout),
    }
}

/// Starts an isolated worker (`program worker`) for `name` (its first provider), which a
/// host group may share.
pub async fn spawn_worker(
    program: &std::path::Path,
    name: &str,
    label: String,
    timeout: Duration,
    confine: &crate::Confine,
) -> Result<Arc<ProcessConn>, LoadError> {
    let args: [OsString; 1] = ["worker".into()];
    ProcessConn::spawn(
        program.as_os_str(),
        &args,
        Encoding::Binary,
        name,
        label,
        timeout,
        ProcessKind::Worker { confine },
    )
    .await
    .map_err(|e| LoadError::Failed(name.into(), e))
}

/// Loads the provider `name` as `spec` says, each step within `timeout`; returns it and
/// the classes it describes (none for a procedure library). `link` is how it reaches the
/// host from now on.
pub async fn load(
    name: &str,
    spec: Spec,
    timeout: Duration,
    link: Arc<dyn HostLink>,
) -> Result<(Hosted, Vec<ClassSchema>), LoadError> {
    let (backend, classes) = match spec {
        Spec::Builtin(builtin) => load_builtin(name, builtin, timeout).await?,
        Spec::Procedures { path } => {
            let server =
                in_pool(name, timeout, move || ProcedureServer::from_library(&path)).await?;
            (Backend::Io(Arc::new(server)), Vec::new())
        }
        Spec::Library { path } => load_library(name, path, timeout, link).await?,
        Spec::Worker { conn, path, io } => {
            let classes = load_in_worker(name, &conn, path, io, timeout).await?;
            wire_process(name, &conn, &link, false);
            (Backend::Process(conn), classes)
        }
        Spec::External {
            program,
            args,
            dir,
            io,
            confine,
        } => {
            let kind = ProcessKind::External {
                dir: dir.as_deref(),
                confine: &confine,
            };
            let label = format!("external provider {name}");
            let conn =
                ProcessConn::spawn(&program, &args, Encoding::Json, name, label, timeout, kind)
                    .await
                    .map_err(|e| LoadError::Failed(name.into(), e))?;
            let classes = if io {
                Vec::new()
            } else {
                process_classes(name, timeout, &conn).await?
            };
            wire_process(name, &conn, &link, true);
            (Backend::Process(conn), classes)
        }
    };
    let hosted = Hosted {
        name: name.to_string(),
        backend,
    };
    Ok((hosted, classes))
}

/// Makes a builtin and asks for its classes, on the blocking pool.
async fn load_builtin(
    name: &str,
    builtin: BuiltinProvider,
    timeout: Duration,
) -> Result<(Backend, Vec<ClassSchema>), LoadError> {
    let factory = builtin.factory.clone();
    let (provider, classes) = in_pool(name, timeout, move || {
        let provider = factory().map_err(|e| e.to_string())?;
        let classes = provider.classes();
        Ok((provider, classes))
    })
    .await?;
    let backend = Backend::Local {
        provider,
        dispatch: builtin.dispatch,
    };
    Ok((backend, classes))
}

/// Opens a provider library in this process, on the blocking pool, and attaches the
/// host's line: its dialog operations come back on it to `link`.
async fn load_library(
    name: &str,
    path: PathBuf,
    timeout: Duration,
    link: Arc<dyn HostLink>,
) -> Result<(Backend, Vec<ClassSchema>), LoadError> {
    let provider = name.to_string();
    let line = move |encoding: Encoding| -> HostLineFn {
        Box::new(move |bytes| {
            match purveyor_protocol::decode::<ProviderResponse>(encoding, bytes) {
                Ok(ProviderResponse {
                    reply: ProviderReply::Dialog { dialog, op, .. },
                    ..
                }) => link.dialog_op(dialog, *op),
                Ok(other) => {
                    tracing::warn!(%provider, reply = other.reply.kind(), "a library sent a message that is not a dialog; ignored")
                }
                Err(e) => {
                    tracing::warn!(%provider, error = %e, "a library sent a malformed dialog message")
                }
            }
        })
    };
    let n = name.to_string();
    let (library, classes) = in_pool(name, timeout, move || {
        let mut library = LibraryProvider::open(&path, &n)?;
        let encoding = library.encoding();
        library.attach_host(line(encoding))?;
        let classes = library.classes();
        Ok((Arc::new(library), classes))
    })
    .await?;
    Ok((Backend::Library(library), classes))
}

/// Has a worker load a provider (`io`: procedure) library; its classes.
async fn load_in_worker(
    name: &str,
    conn: &Arc<ProcessConn>,
    path: PathBuf,
    io: bool,
    timeout: Duration,
) -> Result<Vec<ClassSchema>, LoadError> {
    let library = path.to_string_lossy().into_owned();
    let call = if io {
        ProviderCall::LoadIo { library }
    } else {
        ProviderCall::Load { library }
    };
    match process_call(name, timeout, conn, call).await? {
        ProviderReply::Loaded => {}
        ProviderReply::Error(fault) => return Err(LoadError::Failed(name.into(), fault.message)),
        other => {
            return Err(LoadError::Failed(
                name.into(),
                format!("its worker answered `{}` to load", other.kind()),
            ));
        }
    }
    if io {
        Ok(Vec::new())
    } else {
        process_classes(name, timeout, conn).await
    }
}

/// Routes what `conn` says for provider `name` to `link`: its dialog operations, the end
/// of the process, its direct channels' news (a worker), and (`events`: an external
/// provider) the events it raises on its own.
fn wire_process(name: &str, conn: &Arc<ProcessConn>, link: &Arc<dyn HostLink>, events: bool) {
    conn.on_dialogs(name, {
        let link = link.clone();
        Arc::new(move |dialog, op| link.dialog_op(dialog, op))
    });
    conn.on_exit({
        let link = link.clone();
        Box::new(move |reason| link.exited(reason))
    });
    if conn.takes_direct() {
        let (link, process) = (link.clone(), ProcessRef(Arc::downgrade(conn)));
        conn.on_direct(
            name,
            Arc::new(move |news| link.direct_news(news, process.clone())),
        );
    }
    if events {
        let link = link.clone();
        conn.on_events(Box::new(move |events| link.raised(events)));
    }
}

impl Hosted {
    /// Whether its calls run on the calling thread, to completion, with nothing to await:
    /// a builtin dispatched inline or an in-daemon library.
    pub fn calls_inline(&self) -> bool {
        matches!(
            self.backend,
            Backend::Local {
                dispatch: Dispatch::Inline,
                ..
            } | Backend::Library(_)
        )
    }

    /// Bytes sent to it and received from it: its process's channel, or an in-daemon
    /// library's encoded requests and replies (`None`: a builtin, which gets and gives
    /// values, not bytes).
    pub fn bytes(&self) -> Option<(u64, u64)> {
        match &self.backend {
            Backend::Process(conn) => Some(conn.bytes()),
            Backend::Library(library) => Some(library.bytes()),
            Backend::Local { .. } | Backend::Io(_) => None,
        }
    }

    /// The pid of its process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Process(conn) => Some(conn.pid),
            Backend::Local { .. } | Backend::Library(_) | Backend::Io(_) => None,
        }
    }

    /// Why its process is gone, if it had one and it is.
    pub fn dead_reason(&self) -> Option<String> {
        match &self.backend {
            Backend::Process(conn) => conn.dead_reason(),
            _ => None,
        }
    }

    /// Whether it runs in `process`.
    pub fn runs_in(&self, process: &ProcessRef) -> bool {
        matches!(&self.backend, Backend::Process(conn) if std::ptr::eq(Arc::as_ptr(conn), process.0.as_ptr()))
    }

    /// Kills its process, if it has one, so that pending and later calls fail: `after` a
    /// missed deadline (the message), or at shutdown (`None`).
    pub fn kill(&self, after: Option<&str>) {
        if let Backend::Process(conn) = &self.backend {
            conn.kill(match after {
                Some(message) => format!("{} was killed: {message}", conn.label()),
                None => format!("{} was killed at shutdown", conn.label()),
            });
        }
    }

    /// How to tell it news of its dialogs, for a provider that can open them (a library
    /// in the daemon or a provider in a process). Holds it weakly.
    pub fn dialog_news(&self) -> Option<Box<dyn Fn(u32, DialogEvent) + Send + Sync>> {
        let name = self.name.clone();
        match &self.backend {
            Backend::Library(library) => {
                let library = Arc::downgrade(library);
                Some(Box::new(move |dialog, event| {
                    if let Some(library) = library.upgrade() {
                        let _ =
                            library.forward(&ProviderRequest::dialog_news(&name, dialog, event));
                    }
                }))
            }
            Backend::Process(conn) => {
                let conn = Arc::downgrade(conn);
                Some(Box::new(move |dialog, event| {
                    if let Some(conn) = conn.upgrade() {
                        conn.notify_dialog(&name, dialog, event);
                    }
                }))
            }
            Backend::Local { .. } | Backend::Io(_) => None,
        }
    }

    /// How to hand its worker a dialog's direct channel (`docs/dialogs.md`, "Direct
    /// channels"): for a provider in an isolated worker. Holds the process weakly.
    pub fn dialog_channels(&self) -> Option<DialogChannels> {
        let Backend::Process(conn) = &self.backend else {
            return None;
        };
        if !conn.takes_direct() {
            return None;
        }
        let (conn, provider) = (Arc::downgrade(conn), self.name.clone());
        Some(Box::new(move |dialog, channel| {
            let conn = conn.upgrade().ok_or("its worker is gone")?;
            let attach = DirectAttach {
                provider: provider.clone(),
                caller: CallerInfo::default(),
                classes: Vec::new(),
                offers_get: false,
                offers_enumerate: false,
                deadline_ms: 0,
                keep_ms: 0,
                writable: Vec::new(),
                deletable: Vec::new(),
                policy: 0,
                dialog: Some(dialog),
            };
            conn.attach(&attach, channel)
        }))
    }

    /// Whether it takes direct channels (it is in an isolated worker).
    pub fn takes_direct(&self) -> bool {
        matches!(&self.backend, Backend::Process(conn) if conn.takes_direct())
    }

    /// Closes its direct channels opened under an access policy older than generation
    /// `policy`, if it is in an isolated worker (a reload replaced the policy: their
    /// clients come back through the host). Waits for the worker, up to `timeout`; a
    /// worker that does not answer is left as it is.
    pub async fn close_direct(&self, policy: u64, timeout: Duration) {
        let Backend::Process(conn) = &self.backend else {
            return;
        };
        if !conn.takes_direct() {
            return;
        }
        let closed = conn
            .call(
                &self.name,
                CallerInfo::default(),
                timeout,
                ProviderCall::CloseDirect { policy },
            )
            .await;
        if let Err(e) = closed {
            tracing::warn!(provider = %self.name, error = ?e, "could not close its direct channels");
        }
    }

    /// Hands its worker one end of a direct channel.
    pub fn attach_direct(
        &self,
        attach: &DirectAttach,
        channel: &impl AsRawFd,
    ) -> Result<(), String> {
        match &self.backend {
            Backend::Process(conn) => conn.attach(attach, channel),
            _ => Err(format!("provider {} is not in a worker", self.name)),
        }
    }

    /// The classes a builtin that fills a namespace describes now; `None` for any other
    /// provider (its classes are fixed at load).
    pub fn classes_now(&self) -> Option<Result<Vec<ClassSchema>, CallError>> {
        let Backend::Local { provider, .. } = &self.backend else {
            return None;
        };
        Some(catch_unwind(AssertUnwindSafe(|| provider.classes())).map_err(|p| self.panicked(&*p)))
    }

    /// The schema of `class` from a builtin that fills a namespace; `None` for any other.
    pub fn schema_now(
        &self,
        class: &ClassPath,
    ) -> Option<Result<Option<Arc<ClassSchema>>, CallError>> {
        let Backend::Local { provider, .. } = &self.backend else {
            return None;
        };
        Some(
            catch_unwind(AssertUnwindSafe(|| provider.schema(class)))
                .map_err(|p| self.panicked(&*p)),
        )
    }

    fn panicked(&self, panic: &(dyn std::any::Any + Send)) -> CallError {
        let what = purveyor_provider::abi::panic_message(panic);
        tracing::error!(provider = %self.name, panic = %what, "provider panicked");
        CallError::Panicked(self.name.clone(), what.to_string())
    }

    /// Calls it wherever it runs, within `cx.timeout` (extended while a dialog of the call
    /// is open). A provider's own error is an `Ok(ProviderReply::Error)`.
    pub async fn call(
        &self,
        cx: &CallCx<'_>,
        call: ProviderCall,
    ) -> Result<ProviderReply, CallError> {
        let name = &self.name;
        let timeout = cx.timeout;
        match &self.backend {
            Backend::Local {
                dispatch: Dispatch::Inline,
                ..
            }
            | Backend::Library(_) => Err(CallError::NotInline(name.clone())),
            Backend::Local {
                provider,
                dispatch: Dispatch::Blocking,
            } => {
                let provider = provider.clone();
                let ctx = CallContext::new(cx.caller.clone(), Some(Instant::now() + timeout));
                let reply = blocking(timeout, move || serve_call(&*provider, call, &ctx)).await;
                reply.map_err(|overrun| match overrun {
                    Overrun::Panicked(what) => {
                        tracing::error!(provider = %name, panic = %what, "provider panicked");
                        CallError::Panicked(name.clone(), what)
                    }
                    Overrun::Task(why) => CallError::Task(name.clone(), why),
                    Overrun::Timeout => CallError::Overdue(name.clone(), Shown(timeout)),
                })
            }
            Backend::Io(server) => {
                let (server, who) = (server.clone(), cx.caller.info());
                let reply = blocking(timeout, move || server.answer(call, who)).await;
                reply.map_err(|overrun| match overrun {
                    Overrun::Panicked(why) | Overrun::Task(why) => {
                        CallError::ProcedurePanicked(name.clone(), why)
                    }
                    Overrun::Timeout => CallError::ProcedureOverdue(name.clone(), Shown(timeout)),
                })
            }
            Backend::Process(conn) => {
                match conn
                    .call_with(name, cx.caller.info(), timeout, call, cx.ui, cx.extend)
                    .await
                {
                    Ok(reply) => Ok(reply),
                    Err(CallFailure::Died(why)) => Err(CallError::Crashed(name.clone(), why)),
                    Err(CallFailure::Timeout) => {
                        let error = CallError::Overdue(name.clone(), Shown(timeout));
                        self.kill(Some(&error.to_string()));
                        Err(CallError::Killed(name.clone(), Shown(timeout)))
                    }
                }
            }
        }
    }

    /// [`Hosted::call`] for a provider whose calls run on this thread
    /// ([`Hosted::calls_inline`]): a builtin under `catch_unwind`, or an in-daemon library
    /// under `catch_unwind` and the watchdog, which runs `cx.overdue` if the call overruns
    /// its deadline (the thread may be stuck in the library); the call then ends with
    /// [`CallError::Stuck`].
    pub fn call_inline(
        &self,
        cx: &InlineCx<'_>,
        call: InlineCall<'_>,
    ) -> Result<ProviderReply, CallError> {
        let timeout = cx.timeout;
        match &self.backend {
            Backend::Local {
                provider,
                dispatch: Dispatch::Inline,
            } => {
                let ctx = CallContext::new(cx.caller.clone(), Some(Instant::now() + timeout));
                catch_unwind(AssertUnwindSafe(|| match call {
                    InlineCall::Read(read) => serve_read(&**provider, read, &ctx),
                    InlineCall::Owned(call) => serve_call(&**provider, call, &ctx),
                }))
                .map_err(|panic| self.panicked(&*panic))
            }
            Backend::Library(library) => {
                let deadline = Instant::now() + timeout;
                let (result, expired) = cx.watchdog.within(deadline, cx.overdue, || {
                    catch_unwind(AssertUnwindSafe(|| match call {
                        InlineCall::Read(read) => {
                            library.read_within(read, cx.caller, Some(timeout))
                        }
                        InlineCall::Owned(call) => {
                            library.request_within(&call, cx.caller, Some(timeout))
                        }
                    }))
                });
                if expired {
                    return Err(CallError::Stuck(self.name.clone(), Shown(timeout)));
                }
                result
                    .map(|r| r.unwrap_or_else(|e| ProviderReply::Error(fault(e))))
                    .map_err(|panic| self.panicked(&*panic))
            }
            _ => Err(CallError::NotInline(self.name.clone())),
        }
    }

    /// Closes stream `id` of a client that has gone, without waiting: on the blocking pool
    /// for a procedure library here, by a call for one in a process (`keep` lives until
    /// that call ends). A provider of any other kind has no streams.
    pub fn close_abandoned(&self, id: u32, timeout: Duration, keep: impl Send + 'static) {
        match &self.backend {
            Backend::Io(server) => close_off_thread(server.clone(), id),
            Backend::Process(conn) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (conn, name) = (conn.clone(), self.name.clone());
                    runtime.spawn(async move {
                        let call = ProviderCall::IoClose { stream: id };
                        let _ = conn.call(&name, CallerInfo::default(), timeout, call).await;
                        drop(keep);
                    });
                }
            }
            Backend::Local { .. } | Backend::Library(_) => {}
        }
    }

    /// Releases it: a builtin's cleanup hook runs (within `timeout`); a process is told
    /// to release it and then exits — unless the provider is not `pure` (it lives on as a
    /// client: the process is let go) or others share the process (`shared`: it stays for
    /// them). A library's cleanup entry point runs when the last reference goes.
    pub async fn release(&self, timeout: Duration, pure: bool, shared: bool) {
        match &self.backend {
            Backend::Local { provider, .. } => {
                let provider = provider.clone();
                match blocking(timeout, move || provider.release()).await {
                    Ok(()) => {}
                    Err(Overrun::Timeout) => {
                        tracing::warn!(provider = %self.name, "cleanup hook did not finish in time")
                    }
                    Err(_) => tracing::warn!(provider = %self.name, "cleanup hook panicked"),
                }
            }
            Backend::Library(_) | Backend::Io(_) => {}
            Backend::Process(conn) => {
                let reply = conn
                    .call(
                        &self.name,
                        CallerInfo::default(),
                        timeout,
                        ProviderCall::Release,
                    )
                    .await;
                if let Err(e) = reply {
                    tracing::warn!(provider = %self.name, error = ?e, "release call failed");
                }
                if !pure {
                    conn.detach();
                } else if Arc::strong_count(conn) == 1 || !shared {
                    conn.close(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// Runs a load step on the blocking pool, under `catch_unwind`, within `timeout`.
async fn in_pool<T: Send + 'static>(
    name: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, LoadError> {
    match blocking(timeout, f).await {
        Ok(Ok(made)) => Ok(made),
        Ok(Err(e)) => Err(LoadError::Failed(name.into(), e)),
        Err(Overrun::Panicked(what)) => {
            tracing::error!(provider = %name, panic = %what, "provider panicked");
            Err(LoadError::Panicked(name.into(), what))
        }
        Err(Overrun::Task(why)) => Err(LoadError::Task(name.into(), why)),
        Err(Overrun::Timeout) => Err(LoadError::Overdue(name.into(), Shown(timeout))),
    }
}

/// One call to a provider process during its load.
async fn process_call(
    name: &str,
    timeout: Duration,
    conn: &Arc<ProcessConn>,
    call: ProviderCall,
) -> Result<ProviderReply, LoadError> {
    conn.call(name, CallerInfo::default(), timeout, call)
        .await
        .map_err(|e| match e {
            CallFailure::Died(why) => LoadError::Failed(name.into(), why),
            CallFailure::Timeout => {
                conn.kill(format!(
                    "{} was killed: it did not load in time",
                    conn.label()
                ));
                LoadError::ProcessOverdue(name.into(), Shown(timeout))
            }
        })
}

async fn process_classes(
    name: &str,
    timeout: Duration,
    conn: &Arc<ProcessConn>,
) -> Result<Vec<ClassSchema>, LoadError> {
    match process_call(name, timeout, conn, ProviderCall::Classes).await? {
        ProviderReply::Classes(classes) => Ok(classes),
        ProviderReply::Error(fault) => Err(LoadError::Failed(name.into(), fault.message)),
        other => Err(LoadError::Answered(name.into(), other.kind())),
    }
}
