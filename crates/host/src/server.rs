//! The daemon's socket server: one task per connection, many requests in flight on each,
//! replies in completion order.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use purveyor_protocol::{
    BINARY_INSTANCES_SINCE, ClientMessage, Encoding, ErrorCode, FrameBuffer, Hello, Outcome,
    PROTOCOL_MINOR, PROTOCOL_VERSION, Push, RemoteError, Request, Response, ServerMessage, Welcome,
    decode, encode_frame,
};
use purveyor_provider::Caller;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::cx::{CallSite, Cx};
use crate::state::SERVER_NAME;
use crate::{Host, Session};

/// Serves `host` on `listener` until `shutdown` completes. Then it stops accepting, lets
/// in-flight requests finish within the configured grace period, tells every client
/// goodbye, and releases the providers. The caller owns the socket file.
pub async fn serve(
    listener: tokio::net::UnixListener,
    host: Host,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id: u32 = 0;
    let admission = Arc::new(crate::admission::Admission::default());
    // Accept failures (out of descriptors) are logged once per ten seconds, with a count.
    let mut accept_failures: u64 = 0;
    let mut failure_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    // Idle `MEM ` buffers are freed within a quarter of their idle time (at most a minute).
    let idle = host.config().limits.io_mem.idle;
    let mut sweep = tokio::time::interval((idle / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    ));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                let freed = host.shared().memory().sweep(std::time::Instant::now());
                if freed > 0 {
                    tracing::debug!(freed, "idle MEM buffers freed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id = next_id.wrapping_add(1);
                    connections.spawn(connection(stream, host.clone(), next_id, stop_rx.clone(), admission.clone()));
                }
                Err(e) => {
                    // Out of descriptors or a peer that vanished: keep serving the others.
                    accept_failures += 1;
                    if failure_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failures = accept_failures, "accept failed (logged at most every 10 s)");
                        failure_logged = Some(Instant::now());
                        accept_failures = 0;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!(connections = connections.len(), "shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = host.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections still busy after the grace period; cutting them off"
        );
        connections.abort_all();
        // A connection whose thread is stuck in an in-daemon provider never ends: give the
        // others a moment to unwind, then leave it behind.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.detach_all();
    }
    host.shutdown().await;
    Ok(())
}

async fn connection(
    stream: UnixStream,
    host: Host,
    id: u32,
    stop: watch::Receiver<bool>,
    admission: Arc<crate::admission::Admission>,
) {
    let caller = match crate::socket::peer_credentials(&stream) {
        Ok(caller) => caller,
        Err(e) => {
            tracing::warn!(connection = id, error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let shared = host.shared();
    let config = shared.config();
    let privileged = caller.uid == 0 || caller.uid == config.access.owner();
    let _ticket = match admission.admit(caller.uid, privileged, &config.limits) {
        Ok(ticket) => ticket,
        Err(message) => {
            shared.counters().connection_refused();
            tracing::debug!(connection = id, uid = caller.uid, %message, "connection refused");
            // Said before the hello is read: the client reads it as the answer to its hello.
            let bye = ServerMessage::Goodbye {
                error: RemoteError::new(ErrorCode::LimitExceeded, message),
            };
            let mut out = Vec::new();
            if encode_frame(Encoding::Json, &bye, u32::MAX, &mut out).is_ok() {
                let _ = stream.try_write(&out);
            }
            return;
        }
    };
    shared.counters().connection_opened();
    let span = tracing::debug_span!("connection", id, uid = caller.uid, pid = caller.pid);
    let result = Connection::run(stream, &host, id, caller, stop)
        .instrument(span)
        .await;
    if let Err(e) = result {
        tracing::debug!(connection = id, error = %e, "connection ended with an I/O error");
    }
    shared.counters().connection_closed();
}

/// A request on a connection ([`CallSite`]): lets the watchdog answer a call whose thread
/// is stuck in an in-daemon provider.
struct Site {
    conn: Arc<ConnectionSite>,
    id: u32,
}

struct ConnectionSite {
    /// The socket, open for as long as the connection task runs, which is at least as
    /// long as any call on it.
    fd: RawFd,
    wire: Wire,
    /// Set when the watchdog answered for a stuck call: the connection task must not
    /// write again and ends as soon as the call returns.
    abandoned: AtomicBool,
}

impl CallSite for Site {
    fn request(&self) -> u32 {
        self.id
    }

    /// Answers this request with `error`, says goodbye and shuts the socket, from the
    /// watchdog's thread while the connection's own thread is stuck in `provider`. Safe
    /// because that thread is inside the call, not writing: replies are only written
    /// between calls.
    fn abandon(&self, error: RemoteError, provider: &str) {
        let conn = &self.conn;
        if conn.abandoned.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut out = Vec::new();
        conn.wire.reply(self.id, Outcome::Err(error), &mut out);
        let bye = ServerMessage::Goodbye {
            error: RemoteError::new(
                ErrorCode::ProviderFailed,
                format!(
                    "closing this connection: its thread is stuck in in-daemon provider {provider}, which missed its deadline; connect again"
                ),
            ),
        };
        let _ = encode_frame(conn.wire.encoding, &bye, conn.wire.max, &mut out);
        send_all(conn.fd, &out, Duration::from_millis(500));
        // SAFETY: the descriptor is open (see `ConnectionSite::fd`).
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
    }
}

/// Writes `bytes` to a non-blocking socket, waiting for room at most `patience` overall.
fn send_all(fd: RawFd, mut bytes: &[u8], patience: Duration) {
    let give_up = Instant::now() + patience;
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for its length; the descriptor is open.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        let left = give_up.saturating_duration_since(Instant::now());
        if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock && !left.is_zero() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            continue;
        }
        return;
    }
}

struct Connection;

impl Connection {
    async fn run(
        mut stream: UnixStream,
        host: &Host,
        id: u32,
        caller: Caller,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let config = host.config();
        let max = config.max_frame;
        // What the client may send: `conn.request_max`, at most the frame limit.
        let request_max = config.limits.conn_request_max.min(max);
        let fd = stream.as_raw_fd();
        let (mut rd, mut wr) = stream.split();
        let mut frames = FrameBuffer::new(request_max);
        let mut out = Vec::with_capacity(4096);

        let Some((encoding, ui, minor)) =
            handshake(&mut rd, &mut wr, &mut frames, host, id).await?
        else {
            return Ok(());
        };

        let wire = Wire {
            encoding,
            max,
            minor,
        };
        let site = Arc::new(ConnectionSite {
            fd,
            wire,
            abandoned: AtomicBool::new(false),
        });
        let session = host.session(caller);
        session.set_shows(ui);
        // A Unix socket can carry file descriptors (plain files opened for reading).
        session.allow_fds();
        let session = &session;
        let shared = host.shared();
        let mut fds: Vec<std::os::fd::OwnedFd> = Vec::new();
        let answer = |rid: u32, request: Request| {
            let at = Site {
                conn: site.clone(),
                id: rid,
            };
            async move {
                let cx = Cx::in_session(session, Some(&at));
                let outcome = match crate::requests::answer(shared, cx, request).await {
                    Ok(response) => Outcome::Ok(response),
                    Err(error) => Outcome::Err(error),
                };
                (rid, outcome)
            }
        };
        let mut in_flight = FuturesUnordered::new();
        // Bytes of requests read with `MSG_PEEK` and not yet taken off the socket; taken
        // after their replies are written, or before the next read (see `Intake`).
        let mut owed = 0usize;
        // Whether to peek the next request: the last one took long to answer.
        let mut peek_next = true;
        let mut reading = true;
        let mut goodbye: Option<RemoteError> = None;
        // Answers a request at once when it needs no waiting (`Host::answer_now`), into
        // `out`; gives it back otherwise.
        let now = |rid: u32, request: Request, out: &mut Vec<u8>| {
            let at = Site {
                conn: site.clone(),
                id: rid,
            };
            let outcome = match crate::requests::answer_now(shared, session, Some(&at), request)? {
                Ok(response) => Outcome::Ok(response),
                Err(error) => Outcome::Err(error),
            };
            // Pushes queued before this reply go before it.
            encode_pushes(session, encoding, max, id, out);
            wire.reply(rid, outcome, out);
            Ok(())
        };
        let max_in_flight = config.max_in_flight;
        // Starts what `frames` holds, writing answers whenever `OUT_CAP` bytes are ready, until
        // no whole frame is left or `max_in_flight` requests run. `Err` is a bad frame.
        macro_rules! start_buffered {
            () => {{
                loop {
                    let result = start_requests(
                        &mut frames,
                        wire,
                        &mut in_flight,
                        max_in_flight,
                        &answer,
                        &now,
                        &mut out,
                    );
                    if !out.is_empty() && (result.is_err() || out.len() >= OUT_CAP) {
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                    if result.is_err() || !frames.frame_ready() || in_flight.len() >= max_in_flight
                    {
                        break result;
                    }
                }
            }};
        }
        // Requests the client sent right behind its hello are already buffered.
        if let Err(message) = start_buffered!() {
            goodbye = Some(RemoteError::new(ErrorCode::Protocol, message));
            reading = false;
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        let limits = config.limits;
        // When the client last sent bytes, and since when a frame has been arriving.
        let mut last_heard = Instant::now();
        let mut partial_since: Option<Instant> = None;
        // One timer for both limits, armed for the earliest moment either could be due and
        // checked when it fires (so a busy connection costs no timer work per request).
        let timer = tokio::time::sleep_until(
            (last_heard + limits.conn_idle.min(limits.conn_frame_time)).into(),
        );
        tokio::pin!(timer);
        loop {
            if !reading && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some((rid, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    if site.abandoned.load(Ordering::Acquire) {
                        // The watchdog answered and closed the socket.
                        return Ok(());
                    }
                    // Pushes queued before this reply go before it (a dialog's last update
                    // and its close come before the reply of the call that opened it).
                    encode_pushes(session, encoding, max, id, &mut out);
                    take_fd(session, &outcome, &mut fds);
                    wire.reply(rid, outcome, &mut out);
                    // Batch every other reply that is already done into the same write.
                    while out.len() < OUT_CAP
                        && let Some(Some((rid, outcome))) = in_flight.next().now_or_never()
                    {
                        take_fd(session, &outcome, &mut fds);
                        wire.reply(rid, outcome, &mut out);
                    }
                    // A request that had to wait was slow: peek the next one.
                    peek_next = true;
                    if fds.is_empty() {
                        wr.write_all(&out).await?;
                    } else {
                        // The descriptors ride on the first byte of this write, so the
                        // client has them before it reads the replies that name them.
                        let sent = send_with_fds(wr.as_ref(), &out, &fds).await?;
                        fds.clear();
                        wr.write_all(&out[sent..]).await?;
                    }
                    out.clear();
                    take_owed(fd, &mut owed)?;
                    // Requests left buffered while `max_in_flight` ran.
                    if reading && frames.frame_ready() && in_flight.len() < max_in_flight {
                        if let Err(message) = start_buffered!() {
                            tracing::warn!(connection = id, message = %purveyor_protocol::shorten(&message, 200), "bad frame; closing the connection");
                            goodbye = Some(RemoteError::new(ErrorCode::Protocol, message));
                            reading = false;
                        }
                        if !out.is_empty() {
                            wr.write_all(&out).await?;
                            out.clear();
                        }
                    }
                }
                () = session.sink().ready() => {
                    encode_pushes(session, encoding, max, id, &mut out);
                    if !out.is_empty() {
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                }
                ready = std::future::poll_fn(|cx| rd.as_ref().poll_read_ready(cx)), if reading && in_flight.len() < config.max_in_flight => {
                    // Peek only when no partial frame is buffered: the bytes then stay
                    // on the socket until the replies are out (see `Intake`).
                    let peek = peek_next && frames.buffered() == 0;
                    let read = ready.and_then(|()| take_owed(fd, &mut owed)).and_then(|()| {
                        rd.as_ref().try_io(tokio::io::Interest::READABLE, || {
                            recv(fd, frames.spare(), if peek { libc::MSG_PEEK } else { 0 })
                        })
                    });
                    let n = match read {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => {
                            session.client_gone();
                            return Err(e);
                        }
                    };
                    if n == 0 {
                        reading = false;
                        // Nobody will answer this client's dialogs: close them now, so
                        // the calls waiting on them finish.
                        session.client_gone();
                        if frames.buffered() > 0 {
                            goodbye = Some(RemoteError::new(
                                ErrorCode::Protocol,
                                format!("truncated frame: the connection closed after {} bytes of a frame", frames.buffered()),
                            ));
                        }
                        continue;
                    }
                    let read_at = Instant::now();
                    last_heard = read_at;
                    frames.filled(n);

                    if peek {
                        owed = n;
                    }
                    let waiting = in_flight.len();
                    if let Err(message) = start_buffered!() {
                        tracing::warn!(connection = id, message = %purveyor_protocol::shorten(&message, 200), "bad frame; closing the connection");
                        goodbye = Some(RemoteError::new(ErrorCode::Protocol, message));
                        reading = false;
                    }
                    // What is left is a frame begun: timed from when it began; the timer
                    // must fire by its end.
                    if frames.buffered() > 0 && !frames.frame_ready() {
                        if partial_since.is_none() {
                            partial_since = Some(read_at);
                            let due = read_at + limits.conn_frame_time;
                            if due < timer.deadline().into_std() {
                                timer.as_mut().reset(due.into());
                            }
                        }
                    } else {
                        partial_since = None;
                    }
                    if site.abandoned.load(Ordering::Acquire) {
                        // The watchdog answered an overdue in-daemon call and closed the
                        // socket.
                        return Ok(());
                    }
                    if !out.is_empty() {
                        // Answered at once: decide how to read the next request by how
                        // long these answers took.
                        peek_next = read_at.elapsed() > QUICK_ANSWER;
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                    if in_flight.len() == waiting {
                        // Nothing left to answer from these bytes: take them now.
                        take_owed(fd, &mut owed)?;
                    }
                }
                _ = stop.changed(), if reading => {
                    reading = false;
                    goodbye = Some(RemoteError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
                }
                () = &mut timer, if reading => {
                    // A frame begun must arrive within `conn.frame_time`; a connection
                    // holding nothing may stay silent for `conn.idle`.
                    let now = Instant::now();
                    let partial = partial_since.filter(|_| frames.buffered() > 0 && !frames.frame_ready());
                    let idle = in_flight.is_empty() && !session.holds_state();
                    let why = match partial {
                        Some(since) if now >= since + limits.conn_frame_time => Some(Timeout::Frame),
                        None if idle && now >= last_heard + limits.conn_idle => Some(Timeout::Idle),
                        _ => None,
                    };
                    let Some(why) = why else {
                        // Not due: the earliest moment one could be (a connection that
                        // holds something is looked at again an idle time from now).
                        let next = match partial {
                            Some(since) => since + limits.conn_frame_time,
                            None if idle => last_heard + limits.conn_idle,
                            None => now + limits.conn_idle,
                        };
                        timer.as_mut().reset(next.max(now + Duration::from_millis(10)).into());
                        continue;
                    };
                    reading = false;
                    session.client_gone();
                    goodbye = Some(match why {
                        Timeout::Frame => RemoteError::new(
                            ErrorCode::Protocol,
                            format!(
                                "closing this connection: a frame took longer than {} to arrive (conn.frame_time)",
                                humantime::format_duration(limits.conn_frame_time)
                            ),
                        ),
                        Timeout::Idle => RemoteError::new(
                            ErrorCode::LimitExceeded,
                            format!(
                                "closing this connection: nothing was asked or held on it for {} (conn.idle)",
                                humantime::format_duration(limits.conn_idle)
                            ),
                        ),
                    });
                }
            }
        }
        if let Some(mut error) = goodbye {
            error.code = error.code.for_minor(minor);
            let msg = ServerMessage::Goodbye { error };
            if encode_frame(encoding, &msg, max, &mut out).is_ok() {
                // The peer may already be gone; that is fine.
                let _ = wr.write_all(&out).await;
            }
        }
        let _ = wr.shutdown().await;
        Ok(())
    }
}

/// Why a connection is timed out.
#[derive(Clone, Copy)]
enum Timeout {
    /// A frame began and did not finish within `conn.frame_time`.
    Frame,
    /// Nothing was asked or held for `conn.idle`.
    Idle,
}

// Intake: why requests are peeked, and taken off the socket only after their replies.
//
// When a reader takes bytes off a Unix stream socket, the kernel tells the *sender* there
// is room to write again (`unix_write_space`), and that wakes the sender even when it
// sleeps in `recv` waiting for our reply: its wait queue is shared by readers and
// writers, and a blocking `recv` does not filter wake-ups by event. The client's CPU
// thus wakes when we read its request, finds nothing, and sleeps again. When the reply
// comes within about a microsecond the client is still awake and the wake-up was free;
// when the host needs longer (any real request), the client's (virtual) CPU has halted
// again and waking it a second time costs several microseconds (measured in
// `docs/performance.md`). So a request is read with `MSG_PEEK`, answered, and only then
// taken off the socket: the client is woken once, by its reply.
//
// Invariants: `owed` counts bytes that are in `frames` (already parsed) and still on the
// socket; they are taken (`take_owed`) before any other read, so the socket and the frame
// buffer never disagree. Peeking happens only when `frames` holds no partial frame, so a
// large frame arriving in pieces is read normally, never peeked twice.

/// An answer written within this long of reading its request comes before the client's
/// CPU has gone back to sleep, so peeking would not help it (see `Intake`): the next
/// request is read normally.
const QUICK_ANSWER: Duration = Duration::from_nanos(1500);

/// `recv(2)` with `flags` into `buf`, non-blocking.
fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Takes the `owed` bytes (already peeked and parsed) off the socket.
fn take_owed(fd: RawFd, owed: &mut usize) -> std::io::Result<()> {
    let mut scratch = [0u8; 4096];
    while *owed > 0 {
        let want = (*owed).min(scratch.len());
        match recv(fd, &mut scratch[..want], 0) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peeked bytes vanished from the socket",
                ));
            }
            Ok(n) => *owed -= n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encodes every push queued for `session` into `out`.
fn encode_pushes(session: &Session, encoding: Encoding, max: u32, id: u32, out: &mut Vec<u8>) {
    for (handle, push) in session.sink().take() {
        let msg = ServerMessage::Push { handle, push };
        if let Err(e) = encode_frame(encoding, &msg, max, out) {
            // Too large for a frame: the client is told it lost one.
            tracing::warn!(connection = id, error = %e, "push too large to send; dropped");
            let lost = ServerMessage::Push {
                handle,
                push: Push::Lost { dropped: 1 },
            };
            let _ = encode_frame(encoding, &lost, max, out);
        }
    }
}

/// The descriptor an `io_opened` reply with `fd`, or a `direct` reply, promises, from the
/// session's stash.
fn take_fd(session: &Session, outcome: &Outcome, fds: &mut Vec<std::os::fd::OwnedFd>) {
    let token = match outcome {
        Outcome::Ok(Response::IoOpened {
            handle, fd: true, ..
        }) => *handle,
        Outcome::Ok(Response::Direct { token, .. }) => *token,
        _ => return,
    };
    if let Some(fd) = session.take_fd(token) {
        fds.push(fd);
    }
}

/// Sends the start of `bytes` with `fds` attached (`SCM_RIGHTS`); returns how many bytes
/// went (at least one).
async fn send_with_fds(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::OwnedFd],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            purveyor_protocol::fds::send(stream.as_raw_fd(), bytes, &raw)
        }) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The most reply bytes a connection buffers before it writes them and waits for the
/// client to take them (`docs/security.md`, "Limits"): requests answered at once stop
/// being read until then, so a client that pipelines without reading holds at most this
/// much (plus the reply being encoded) in the daemon.
pub const OUT_CAP: usize = 1 << 20;

/// Answers or starts a request for complete frames in `frames`: `now` answers one into
/// `out` if it can at once, else gives it back and `answer` starts it. Stops, leaving
/// frames buffered, when `out` holds [`OUT_CAP`] bytes or `max_in_flight` requests are
/// running. A frame that is oversized or does not decode is an error: the connection must
/// close.
fn start_requests<F>(
    frames: &mut FrameBuffer,
    wire: Wire,
    in_flight: &mut FuturesUnordered<F>,
    max_in_flight: usize,
    answer: &impl Fn(u32, Request) -> F,
    now: &impl Fn(u32, Request, &mut Vec<u8>) -> Result<(), Request>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    while out.len() < OUT_CAP && in_flight.len() < max_in_flight {
        let Some(payload) = frames.next_frame().map_err(|e| e.to_string())? else {
            break;
        };
        match decode_request(wire.encoding, payload) {
            Ok(ClientMessage::Request { id, request }) => {
                if let Err(request) = now(id, request, out) {
                    in_flight.push(answer(id, request));
                }
            }
            // A well-framed request with a bad name or value: that request is refused,
            // the connection lives on.
            Err((e, id)) => match id {
                Some(id) => {
                    let error = RemoteError::new(
                        ErrorCode::InvalidRequest,
                        format!("request {id} does not decode: {}", e.message),
                    );
                    wire.reply(id, Outcome::Err(error), out);
                }
                None => return Err(e.to_string()),
            },
        }
    }
    Ok(())
}

/// Payloads at least this large are decoded with the worker thread handed over first.
const LARGE_PAYLOAD: usize = 64 * 1024;

/// Decodes a client's message; when it does not decode, also the request id its envelope
/// holds, if any ([`ClientMessage::request_id`]). A large payload (a 4 MiB frame takes
/// milliseconds to scan) is decoded with `block_in_place`, which hands this worker's other
/// tasks to another thread first: one client's big frames never stall everyone else's
/// small requests.
fn decode_request(
    encoding: Encoding,
    payload: &[u8],
) -> Result<ClientMessage, (purveyor_protocol::DecodeError, Option<u32>)> {
    let decode = || {
        decode::<ClientMessage>(encoding, payload)
            .map_err(|e| (e, ClientMessage::request_id(encoding, payload)))
    };
    let multi_thread = || {
        tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    };
    if payload.len() >= LARGE_PAYLOAD && multi_thread() {
        tokio::task::block_in_place(decode)
    } else {
        decode()
    }
}

/// Reads the client's hello and answers it. `None` when the connection should close (the
/// client was told why, or it left).
async fn handshake(
    rd: &mut ReadHalf<'_>,
    wr: &mut WriteHalf<'_>,
    frames: &mut FrameBuffer,
    host: &Host,
    id: u32,
) -> std::io::Result<Option<(Encoding, bool, u16)>> {
    let config = host.config();
    let first = tokio::time::timeout(config.handshake_timeout, async {
        loop {
            match frames.next_frame() {
                Ok(Some(payload)) => {
                    return Ok(serde_json::from_slice::<Hello>(payload).map_err(|e| {
                        format!(
                            "malformed hello ({e}); expected {{\"protocol\":{PROTOCOL_VERSION},\"encoding\":\"binary\" or \"json\"}}"
                        )
                    }));
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e.to_string())),
            }
            let n = rd.read(frames.spare()).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            frames.filled(n);
        }
    })
    .await;
    let hello = match first {
        Ok(Ok(Ok(hello))) => hello,
        Ok(Ok(Err(message))) => {
            refuse(wr, message).await;
            return Ok(None);
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A peer that half-closed inside its hello is told so (it may still read).
            if frames.buffered() > 0 {
                let message = format!(
                    "truncated hello: the connection closed after {} bytes of a frame",
                    frames.buffered()
                );
                refuse(wr, message).await;
            }
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let message = format!(
                "no hello within {}",
                humantime::format_duration(config.handshake_timeout)
            );
            refuse(wr, message).await;
            return Ok(None);
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}",
            hello.protocol
        );
        refuse(wr, message).await;
        return Ok(None);
    }
    if hello.encoding == Encoding::Binary && hello.minor < BINARY_INSTANCES_SINCE {
        let message = format!(
            "this client speaks minor version {} of protocol {PROTOCOL_VERSION}, whose binary instances this server no longer reads (minor {BINARY_INSTANCES_SINCE} changed them); upgrade the client or use the JSON encoding",
            hello.minor
        );
        refuse(wr, message).await;
        return Ok(None);
    }
    tracing::debug!(connection = id, client = %hello.client, encoding = %hello.encoding, "hello");
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        minor: PROTOCOL_MINOR,
        encoding: hello.encoding,
        server: SERVER_NAME.into(),
        max_frame: config.limits.conn_request_max.min(config.max_frame),
        connection: id,
    };
    let mut out = Vec::new();
    if encode_frame(Encoding::Json, &welcome, u32::MAX, &mut out).is_err() {
        return Ok(None);
    }
    wr.write_all(&out).await?;
    Ok(Some((hello.encoding, hello.ui, hello.minor)))
}

/// Says goodbye in JSON (no encoding was agreed) and gives up on the connection.
async fn refuse(wr: &mut WriteHalf<'_>, message: String) {
    tracing::warn!(%message, "handshake refused");
    let msg = ServerMessage::Goodbye {
        error: RemoteError::new(ErrorCode::Protocol, message),
    };
    let mut out = Vec::new();
    if encode_frame(Encoding::Json, &msg, u32::MAX, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
}

/// How a connection's frames are written: its encoding, the largest frame, and the
/// client's protocol minor (error codes it cannot read are sent as older ones).
#[derive(Clone, Copy)]
struct Wire {
    encoding: Encoding,
    max: u32,
    minor: u16,
}

impl Wire {
    /// Appends the reply to request `id` to `out`.
    fn reply(self, id: u32, outcome: Outcome, out: &mut Vec<u8>) {
        let outcome = match outcome {
            Outcome::Err(mut error) => {
                error.code = error.code.for_minor(self.minor);
                Outcome::Err(error)
            }
            ok => ok,
        };
        let msg = ServerMessage::Reply { id, outcome };
        if let Err(e) = encode_frame(self.encoding, &msg, self.max, out) {
            // A reply too large for a frame becomes an error reply the client can act on.
            let msg = ServerMessage::Reply {
                id,
                outcome: Outcome::Err(RemoteError::new(
                    ErrorCode::Internal,
                    format!("the reply could not be sent: {e}"),
                )),
            };
            let _ = encode_frame(self.encoding, &msg, self.max, out);
        }
    }
}
