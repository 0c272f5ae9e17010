//! Providers in processes of their own: isolated workers (`purveyor worker`, loading
//! provider libraries) and external executables. Both speak the provider channel
//! (`docs/provider-abi.md`): length-prefixed frames over the child's stdin and stdout.
//!
//! **Invariants.** A request is registered as pending before its frame is written, and the
//! reader task is the only one that completes pending requests, so a reply can never
//! arrive for a request nobody waits on except after a timeout (then it is dropped). When
//! the process ends — exit, signal, kill after a missed deadline, a malformed frame — every
//! pending request fails with the reason, and so does every later one. Each process runs
//! under a guard ([`crate::contain`]) that stops it and everything it started when it
//! exits, when the host stops it, or when the host dies; so no provider process, nor any
//! process it started, outlives its release or the host.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use purveyor_protocol::{
    CallerInfo, DialogEvent, DialogOp, DirectAttach, DirectNews, Encoding, FrameBuffer,
    PROVIDER_ABI_VERSION, ProviderCall, ProviderHello, ProviderReady, ProviderReply,
    ProviderRequest, ProviderResponse, RaisedEvent, decode, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::exit::{finish, provider_pid, stop};
use crate::lock::Locked;
use tokio::sync::oneshot;

/// The largest frame a provider process may send.
const MAX_PROVIDER_FRAME: u32 = 64 << 20;

/// How a call to a process failed.
#[derive(Debug)]
pub enum CallFailure {
    /// The process is gone; why (exit status or signal, or what it did wrong).
    Died(String),
    /// No answer before the deadline.
    Timeout,
}

type Pending = HashMap<u32, oneshot::Sender<Result<ProviderReply, String>>>;

/// A running provider process.
pub struct ProcessConn {
    /// `worker for uptime`, `worker of group g1`, `external provider uptime`; a spare
    /// worker is renamed when it is taken ([`ProcessConn::rename`]).
    label: std::sync::RwLock<String>,
    /// The provider process's pid (its guard's is the child's).
    pub pid: u32,
    encoding: Encoding,
    /// `None` once closed: dropping it closes the pipe, which the process sees as EOF.
    writer: tokio::sync::Mutex<Option<ChildStdin>>,
    pending: Mutex<Pending>,
    /// Set once the process is gone (or being killed): why.
    dead: Mutex<Option<String>>,
    next_id: AtomicU32,
    /// Bytes of frames sent to the process and received from it (`purveyor.provider`).
    traffic: Traffic,
    child: Mutex<Option<Child>>,
    /// Set when the host no longer owns the process (a non-pure provider released as a
    /// client): it is not killed when this handle goes.
    detached: std::sync::atomic::AtomicBool,
    /// Where events the process raises on its own (frames with id 0) go.
    events: std::sync::OnceLock<EventHandler>,
    /// Where each of its providers' dialog operations go, by provider name.
    dialogs: Mutex<HashMap<String, DialogRoute>>,
    /// Run once with the reason when the process ends; `None` once it has.
    exit_hooks: Mutex<Option<Vec<ExitHook>>>,
    /// Dialog news for the process, written in order by a task of its own.
    notices: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    /// A worker's attach socket: direct channels are handed to it here.
    attach: Option<Mutex<std::os::unix::net::UnixStream>>,
    /// Where each of its providers' direct-channel news goes, by provider name.
    direct: Mutex<HashMap<String, DirectRoute>>,
}

/// What kind of process to start.
pub enum ProcessKind<'a> {
    /// An isolated worker (`purveyor worker`): it also gets an attach socket on fd 3
    /// (`PURVEYOR_ATTACH_FD`), on which the host hands it direct channels.
    Worker { confine: &'a crate::Confine },
    /// An external provider, run in `dir` (its manifest's directory) when given.
    External {
        dir: Option<&'a std::path::Path>,
        confine: &'a crate::Confine,
    },
}

impl ProcessKind<'_> {
    fn confine(&self) -> &crate::Confine {
        match self {
            ProcessKind::External { confine, .. } | ProcessKind::Worker { confine } => confine,
        }
    }
}

/// Bytes of frames sent to a process and received from it.
#[derive(Default)]
struct Traffic {
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
}

/// Receives one provider's direct-channel news.
pub type DirectRoute = Arc<dyn Fn(DirectNews) + Send + Sync>;

/// The descriptor a worker's attach socket has in the worker.
const ATTACH_FD: i32 = 3;

/// Receives one provider's dialog operations: `(dialog, op)`.
pub type DialogRoute = Arc<dyn Fn(u32, DialogOp) + Send + Sync>;
/// Told why the process ended.
pub type ExitHook = Box<dyn FnOnce(&str) + Send>;

/// Receives the events a provider process raises outside any call.
pub type EventHandler = Box<dyn Fn(Vec<RaisedEvent>) + Send + Sync>;

impl ProcessConn {
    /// Starts `program args…`, says hello and waits (up to `timeout`) for its answer.
    pub async fn spawn(
        program: &std::ffi::OsStr,
        args: &[OsString],
        encoding: Encoding,
        provider: &str,
        label: String,
        timeout: Duration,
        kind: ProcessKind<'_>,
    ) -> Result<Arc<ProcessConn>, String> {
        let mut cmd = Command::new(program);
        let confine = kind.confine().clone();
        let (attach, theirs) = match kind {
            ProcessKind::External { dir, .. } => {
                if let Some(dir) = dir {
                    cmd.current_dir(dir);
                }
                (None, None)
            }
            ProcessKind::Worker { .. } => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                    .map_err(|e| format!("cannot make {label}'s attach socket: {e}"))?;
                cmd.env("PURVEYOR_ATTACH_FD", ATTACH_FD.to_string());
                (Some(ours), Some(theirs))
            }
        };
        let theirs_fd = theirs.as_ref().map(|s| s.as_raw_fd());
        // The guard tells the provider's pid here.
        let (report, report_theirs) =
            std::io::pipe().map_err(|e| format!("cannot make {label}'s report pipe: {e}"))?;
        let report_fd = report_theirs.as_raw_fd();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("PURVEYOR_PROVIDER", provider)
            .kill_on_drop(false);
        guard_in_child(&mut cmd, theirs_fd, report_fd, confine)?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {label} ({}): {e}", program.to_string_lossy()))?;
        // The child has its copy: ours would keep the socket open after it exits.
        drop(theirs);
        drop(report_theirs);
        let pid = provider_pid(report).unwrap_or_else(|| child.id().unwrap_or(0));
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let handshake = say_hello(&mut stdin, &mut stdout, encoding, provider);
        let frames = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(frames)) => frames,
            Ok(Err(e)) => {
                let status = finish(&mut child, Duration::from_millis(200)).await;
                return Err(format!("{label} (pid {pid}) failed to start: {e}{status}"));
            }
            Err(_) => {
                finish(&mut child, Duration::ZERO).await;
                return Err(format!(
                    "{label} (pid {pid}) did not answer its hello within {}",
                    humantime::format_duration(timeout)
                ));
            }
        };
        let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = Arc::new(ProcessConn {
            label: std::sync::RwLock::new(label),
            pid,
            encoding,
            writer: tokio::sync::Mutex::new(Some(stdin)),
            pending: Mutex::new(HashMap::new()),
            dead: Mutex::new(None),
            next_id: AtomicU32::new(1),
            traffic: Traffic::default(),
            child: Mutex::new(Some(child)),
            detached: std::sync::atomic::AtomicBool::new(false),
            events: std::sync::OnceLock::new(),
            dialogs: Mutex::new(HashMap::new()),
            exit_hooks: Mutex::new(Some(Vec::new())),
            notices,
            attach: attach.map(Mutex::new),
            direct: Mutex::new(HashMap::new()),
        });
        tokio::spawn(read_replies(Arc::downgrade(&conn), stdout, frames));
        tokio::spawn(write_notices(Arc::downgrade(&conn), notices_rx));
        Ok(conn)
    }

    /// What the process is, for messages: `worker for provider uptime`.
    pub fn label(&self) -> String {
        self.label.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Names the process anew: a spare worker when it is taken for a provider.
    pub fn rename(&self, label: String) {
        *self.label.write().unwrap_or_else(|p| p.into_inner()) = label;
    }

    /// Routes `provider`'s dialog operations to `route`.
    pub fn on_dialogs(&self, provider: &str, route: DialogRoute) {
        self.dialogs.locked().insert(provider.to_string(), route);
    }

    /// Routes `provider`'s direct-channel news to `route`.
    pub fn on_direct(&self, provider: &str, route: DirectRoute) {
        self.direct.locked().insert(provider.to_string(), route);
    }

    /// Whether this process takes direct channels (it is an isolated worker).
    pub fn takes_direct(&self) -> bool {
        self.attach.is_some()
    }

    /// Hands the worker one end of a direct channel, with what it needs to serve it.
    pub fn attach(&self, attach: &DirectAttach, channel: &impl AsRawFd) -> Result<(), String> {
        let Some(socket) = &self.attach else {
            return Err(format!("{} does not take direct channels", self.label()));
        };
        if let Some(why) = self.dead_reason() {
            return Err(why);
        }
        let mut frame = Vec::new();
        encode_frame(Encoding::Json, attach, MAX_PROVIDER_FRAME, &mut frame)
            .map_err(|e| format!("cannot encode a direct channel's attach: {e}"))?;
        let socket = socket.locked();
        // The frame is small and the worker reads its attach socket on a thread of its
        // own: the first send takes it all or fails; the rest goes plainly.
        let sent = purveyor_protocol::fds::send(socket.as_raw_fd(), &frame, &[channel.as_raw_fd()])
            .map_err(|e| format!("cannot hand {} a direct channel: {e}", self.label()))?;
        (&*socket)
            .write_all(&frame[sent..])
            .map_err(|e| format!("cannot hand {} a direct channel: {e}", self.label()))
    }

    /// Bytes of frames sent to the process and received from it so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.traffic.sent.load(Ordering::Relaxed),
            self.traffic.received.load(Ordering::Relaxed),
        )
    }

    /// Runs `hook` with the reason when the process ends (at once if it has).
    pub fn on_exit(&self, hook: ExitHook) {
        let mut hooks = self.exit_hooks.locked();
        match hooks.as_mut() {
            Some(hooks) => hooks.push(hook),
            None => {
                drop(hooks);
                hook(
                    &self
                        .dead_reason()
                        .unwrap_or_else(|| format!("{} ended", self.label())),
                );
            }
        }
    }

    /// Tells `provider` news of its dialog number `dialog` (never answered).
    pub fn notify_dialog(&self, provider: &str, dialog: u32, event: DialogEvent) {
        let request = ProviderRequest::dialog_news(provider, dialog, event);
        let mut frame = Vec::new();
        match encode_frame(self.encoding, &request, MAX_PROVIDER_FRAME, &mut frame) {
            Ok(()) => {
                let _ = self.notices.send(frame);
            }
            Err(e) => {
                tracing::warn!(process = %self.label(), error = %e, "cannot encode dialog news")
            }
        }
    }

    /// Sends one request and waits for its reply until `timeout`.
    pub async fn call(
        &self,
        provider: &str,
        caller: CallerInfo,
        timeout: Duration,
        call: ProviderCall,
    ) -> Result<ProviderReply, CallFailure> {
        self.call_with(provider, caller, timeout, call, 0, &|| None)
            .await
    }

    /// Like [`ProcessConn::call`], with the token `ui` for in-call dialogs; when the
    /// deadline passes, `extend` may give a later one (a dialog of the call is open).
    pub async fn call_with(
        &self,
        provider: &str,
        caller: CallerInfo,
        timeout: Duration,
        call: ProviderCall,
        ui: u32,
        extend: &(dyn Fn() -> Option<std::time::Instant> + Sync),
    ) -> Result<ProviderReply, CallFailure> {
        if let Some(why) = self.dead_reason() {
            return Err(CallFailure::Died(why));
        }
        // Id 0 is the process's own (events raised outside any call): never a request's.
        let id = match self.next_id.fetch_add(1, Ordering::Relaxed) {
            0 => self.next_id.fetch_add(1, Ordering::Relaxed),
            id => id,
        };
        let request = ProviderRequest {
            id,
            provider: provider.to_string(),
            caller,
            deadline_ms: timeout.as_millis() as u64,
            ui,
            call,
        };
        let mut frame = Vec::new();
        encode_frame(self.encoding, &request, MAX_PROVIDER_FRAME, &mut frame)
            .map_err(|e| CallFailure::Died(format!("cannot encode the request: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let exchange = async {
            {
                let mut w = self.writer.lock().await;
                let Some(w) = w.as_mut() else {
                    // Closed by a release: nobody will answer.
                    return None;
                };
                self.traffic
                    .sent
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                if let Err(e) = w.write_all(&frame).await {
                    // The reader reports the exit status; wait for it rather than guess.
                    tracing::debug!(process = %self.label(), error = %e, "write to provider failed");
                }
            }
            Some(rx.await)
        };
        tokio::pin!(exchange);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            match tokio::time::timeout_at(deadline, &mut exchange).await {
                Ok(done) => break Ok(done),
                Err(elapsed) => match extend() {
                    Some(later) if later > std::time::Instant::now() => deadline = later.into(),
                    _ => break Err(elapsed),
                },
            }
        };
        match outcome {
            Ok(Some(Ok(Ok(reply)))) => Ok(reply),
            Ok(Some(Ok(Err(why)))) => Err(CallFailure::Died(why)),
            Ok(None) => {
                self.lock_pending().remove(&id);
                Err(CallFailure::Died(self.dead_reason().unwrap_or_else(|| {
                    format!("{} was released", self.label())
                })))
            }
            Ok(Some(Err(_))) => Err(CallFailure::Died(
                self.dead_reason()
                    .unwrap_or_else(|| "the process went away".into()),
            )),
            Err(_) => {
                self.lock_pending().remove(&id);
                Err(CallFailure::Timeout)
            }
        }
    }

    /// Why the process is gone, if it is.
    pub fn dead_reason(&self) -> Option<String> {
        self.dead.locked().clone()
    }

    /// Kills the process; pending and later calls fail with `why`.
    pub fn kill(&self, why: String) {
        {
            let mut dead = self.dead.locked();
            if dead.is_none() {
                *dead = Some(why);
            }
        }
        if let Some(child) = self.child.locked().as_mut() {
            stop(child);
        }
    }

    /// Closes stdin (the process should exit on EOF) and waits up to `grace` for it to
    /// exit, then kills it.
    pub async fn close(&self, grace: Duration) {
        {
            let mut dead = self.dead.locked();
            if dead.is_none() {
                *dead = Some(format!("{} was released", self.label()));
            }
        }
        drop(self.writer.lock().await.take());
        let child = self.child.locked().take();
        if let Some(mut child) = child {
            finish(&mut child, grace).await;
        }
    }

    /// Sets where the process's own events go (once; later calls are ignored).
    pub fn on_events(&self, handler: EventHandler) {
        let _ = self.events.set(handler);
    }

    /// Lets the process run on after this handle is gone (non-pure providers).
    pub fn detach(&self) {
        self.detached.store(true, Ordering::Relaxed);
    }

    /// A frame from the process: a reply completes its pending request; id 0 carries
    /// what the process says on its own (dialog operations, direct-channel news, events).
    fn received(&self, response: ProviderResponse) {
        match response {
            ProviderResponse {
                id: 0,
                reply:
                    ProviderReply::Dialog {
                        provider,
                        dialog,
                        op,
                    },
            } => {
                let route = {
                    let routes = self.dialogs.locked();
                    match routes.get(&provider) {
                        Some(route) => Some(route.clone()),
                        // A process serving one provider may leave its name out.
                        None if provider.is_empty() && routes.len() == 1 => {
                            routes.values().next().cloned()
                        }
                        None => None,
                    }
                };
                match route {
                    Some(route) => route(dialog, *op),
                    None => {
                        tracing::warn!(process = %self.label(), %provider, "a dialog from a provider this process does not serve; ignored")
                    }
                }
            }
            ProviderResponse {
                id: 0,
                reply: ProviderReply::Direct { provider, news },
            } => {
                let route = self.direct.locked().get(&provider).cloned();
                match route {
                    Some(route) => route(news),
                    None => {
                        tracing::debug!(process = %self.label(), %provider, "direct-channel news of a provider no longer served; ignored")
                    }
                }
            }
            ProviderResponse {
                id: 0,
                reply: ProviderReply::Done { events, .. },
            } => match self.events.get() {
                // Id 0 is never a request's: events raised outside any call.
                Some(handler) => handler(events),
                None => {
                    tracing::debug!(process = %self.label(), "events before the provider loaded; dropped")
                }
            },
            response => {
                if let Some(tx) = self.lock_pending().remove(&response.id) {
                    let _ = tx.send(Ok(response.reply));
                }
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.locked()
    }
}

impl Drop for ProcessConn {
    fn drop(&mut self) {
        if self.detached.load(Ordering::Relaxed) {
            return;
        }
        if let Some(child) = self.child.get_mut().unwrap_or_else(|p| p.into_inner()) {
            // The runtime reaps it in the background.
            stop(child);
        }
    }
}

/// Sets up the child of `cmd` between fork and exec: it dies with the spawning thread,
/// gets the worker's attach socket `attach_fd` (if any) on [`ATTACH_FD`], and becomes the
/// guard of the provider, which it reports on `report_fd` ([`crate::contain`]).
fn guard_in_child(
    cmd: &mut Command,
    attach_fd: Option<i32>,
    report_fd: i32,
    confine: crate::Confine,
) -> Result<(), String> {
    confine.pass_sandbox(cmd)?;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, fcntl, dup2, _exit, and
    // `contain::split`, which is written for this place).
    unsafe {
        cmd.pre_exec(move || {
            // The child dies with the thread that spawned it, which is one of the
            // runtime's long-lived worker threads (never a pool thread that may retire).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would send the signal.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            // A worker's attach socket goes to fd 3, inherited (dup2 clears close-on-exec;
            // when it is fd 3 already, clear it by hand).
            if let Some(fd) = attach_fd {
                let done = if fd == ATTACH_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, ATTACH_FD)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Here the child becomes the guard; the provider goes on to exec, confined
            // (the guard keeps the host's identity).
            crate::contain::split(report_fd)?;
            confine.apply()
        });
    }
    Ok(())
}

/// Says hello to a provider process for `provider` and reads its answer: the frame buffer
/// (which may hold more) on success, else why not.
async fn say_hello(
    stdin: &mut ChildStdin,
    stdout: &mut ChildStdout,
    encoding: Encoding,
    provider: &str,
) -> Result<FrameBuffer, String> {
    let hello = ProviderHello {
        abi: PROVIDER_ABI_VERSION,
        encoding,
        provider: provider.to_string(),
    };
    let mut out = Vec::new();
    encode_frame(Encoding::Json, &hello, MAX_PROVIDER_FRAME, &mut out)
        .map_err(|e| e.to_string())?;
    stdin
        .write_all(&out)
        .await
        .map_err(|e| format!("cannot write its hello: {e}"))?;
    let mut frames = FrameBuffer::new(MAX_PROVIDER_FRAME);
    let payload = read_frame(stdout, &mut frames)
        .await?
        .ok_or_else(|| "it closed its stdout before answering the hello".to_string())?;
    let ready: ProviderReady = serde_json::from_slice(&payload).map_err(|e| {
        format!("its answer to the hello is not {{\"abi\":{PROVIDER_ABI_VERSION}}}: {e}")
    })?;
    if ready.abi != PROVIDER_ABI_VERSION {
        return Err(format!(
            "it speaks provider ABI version {}; this host speaks version {PROVIDER_ABI_VERSION}",
            ready.abi
        ));
    }
    Ok(frames)
}

async fn read_frame(
    stdout: &mut ChildStdout,
    frames: &mut FrameBuffer,
) -> Result<Option<Vec<u8>>, String> {
    loop {
        match frames.next_frame() {
            Ok(Some(payload)) => return Ok(Some(payload.to_vec())),
            Ok(None) => {}
            Err(e) => return Err(format!("it sent a bad frame: {e}")),
        }
        let n = stdout
            .read(frames.spare())
            .await
            .map_err(|e| format!("reading its stdout failed: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        frames.filled(n);
    }
}

/// The reader task: completes pending requests as replies arrive; when the process ends,
/// fails them all with the reason.
async fn read_replies(
    conn: std::sync::Weak<ProcessConn>,
    mut stdout: ChildStdout,
    mut frames: FrameBuffer,
) {
    let why = loop {
        let payload = match read_frame(&mut stdout, &mut frames).await {
            Ok(Some(p)) => p,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        let Some(conn) = conn.upgrade() else { return };
        conn.traffic.received.fetch_add(
            (payload.len() + purveyor_protocol::FRAME_HEADER_LEN) as u64,
            Ordering::Relaxed,
        );
        match decode::<ProviderResponse>(conn.encoding, &payload) {
            Ok(response) => conn.received(response),
            Err(e) => break Some(format!("it sent {e}")),
        }
    };
    let Some(conn) = conn.upgrade() else { return };
    // The host closed or killed it on purpose when a reason is already recorded.
    let expected = why.is_none() && conn.dead_reason().is_some();
    if let Some(why) = &why {
        conn.kill(format!("{} was killed: {why}", conn.label()));
    }
    let child = conn.child.locked().take();
    let ended = match child {
        Some(mut child) => finish(&mut child, Duration::from_secs(2)).await,
        None => String::new(),
    };
    let reason = {
        let mut dead = conn.dead.locked();
        let reason = match dead.take() {
            Some(known) => format!("{known}{ended}"),
            None => format!("{} (pid {}) ended{ended}", conn.label(), conn.pid),
        };
        *dead = Some(reason.clone());
        reason
    };
    if expected {
        tracing::debug!(process = %conn.label(), pid = conn.pid, %reason, "provider process ended");
    } else {
        tracing::warn!(process = %conn.label(), pid = conn.pid, %reason, "provider process ended");
    }
    // Dialogs learn why first, then the calls in flight.
    let hooks = conn.exit_hooks.locked().take().unwrap_or_default();
    for hook in hooks {
        hook(&reason);
    }
    let pending: Vec<_> = conn.lock_pending().drain().collect();
    for (_, tx) in pending {
        let _ = tx.send(Err(reason.clone()));
    }
}

/// Writes dialog news to the process, in the order it was sent, until it goes.
async fn write_notices(
    conn: std::sync::Weak<ProcessConn>,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(frame) = notices.recv().await {
        let Some(conn) = conn.upgrade() else { return };
        let mut w = conn.writer.lock().await;
        let Some(w) = w.as_mut() else { return };
        if let Err(e) = w.write_all(&frame).await {
            tracing::debug!(process = %conn.label(), error = %e, "dialog news not written");
        }
    }
}
