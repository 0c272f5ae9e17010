//! One client connection after its handshake: requests in, replies and pushes out, many
//! requests in flight, replies in completion order, and the connection's limits
//! (`docs/security.md`, "Limits").
//!
//! The loop waits on five things — a reply ready, a push queued, the socket readable, the
//! daemon stopping, the silence timer — and hands each to a method of [`Connection`].
//! Requests that need no waiting are answered on this thread ([`requests::answer_now`]);
//! the rest run as futures on this task.
//!
//! **Invariants.**
//! - Replies are written only between calls, never while a request's thread is inside a
//!   provider: so the watchdog may answer a stuck call from its own thread ([`Site`]).
//! - At most `max_in_flight` requests run and at most [`OUT_CAP`] reply bytes wait
//!   unwritten; past either, the socket is not read.
//! - Pushes queued before a reply go out before it.
//! - See "Intake" below for how requests are peeked and taken off the socket.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use purveyor_protocol::{
    ClientMessage, Encoding, ErrorCode, FrameBuffer, Outcome, Push, RemoteError, Request, Response,
    ServerMessage, decode, encode_frame, encode_server_frame,
};
use tokio::sync::watch;

use crate::config::Limits;
use crate::cx::Cx;
use crate::local_io::LocalIo;
use crate::policy::{self, Silence};
use crate::requests;
use crate::session::Session;
use crate::state::Shared;

mod polling;
mod quiet;
mod site;
mod spliced;
mod transport;
use site::{ConnectionSite, Site};
pub(crate) use transport::{Arrived, Reader, Writer};
pub use transport::{CarriedIo, Carrier};

/// The most reply bytes a connection buffers before it writes them and waits for the
/// client to take them (`docs/security.md`, "Limits"): requests answered at once stop
/// being read until then, so a client that pipelines without reading holds at most this
/// much (plus the reply being encoded) in the daemon.
pub const OUT_CAP: usize = 1 << 20;

/// How a connection's frames are written: its encoding, the largest frame, and the
/// client's protocol minor (error codes it cannot read are sent as older ones).
#[derive(Clone, Copy)]
pub(crate) struct Wire {
    pub encoding: Encoding,
    pub max: u32,
    pub minor: u16,
}

impl Wire {
    /// Appends the reply to request `id` to `out`.
    pub fn reply(self, id: u32, outcome: Outcome, out: &mut Vec<u8>) {
        let outcome = match outcome {
            Outcome::Err(mut error) => {
                error.code = error.code.for_minor(self.minor);
                Outcome::Err(error)
            }
            ok => ok,
        };
        let msg = ServerMessage::Reply { id, outcome };
        if let Err(e) = encode_server_frame(self.encoding, &msg, self.max, out) {
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

/// The socket a connection serves, split.
pub(crate) struct Socket<'s> {
    pub rd: Reader<'s>,
    pub wr: Writer<'s>,
    pub fd: RawFd,
    /// A local client's socket (peeked, able to pass descriptors, written raw by the
    /// watchdog); else a carried stream (a remote client's TLS).
    pub local: bool,
}

/// A request being answered on the connection's task.
type Answering<'a> = Pin<Box<dyn Future<Output = (u32, Outcome)> + Send + 'a>>;

/// What a connection's loop keeps between events.
struct Connection<'a> {
    id: u32,
    fd: RawFd,
    shared: &'a Arc<Shared>,
    session: &'a Session,
    site: Arc<ConnectionSite>,
    wire: Wire,
    limits: Limits,
    max_in_flight: usize,
    frames: FrameBuffer,
    out: Vec<u8>,
    /// Descriptors to send with the next write (`io_opened` with `fd`, `direct`).
    fds: Vec<OwnedFd>,
    /// Bytes of requests read with `MSG_PEEK` and not yet taken off the socket (see
    /// "Intake").
    owed: usize,
    /// Whether to peek the next request: the last one took long to answer.
    peek_next: bool,
    reading: bool,
    goodbye: Option<RemoteError>,
    /// When the client last sent bytes, and since when a frame has been arriving.
    last_heard: Instant,
    partial_since: Option<Instant>,
    /// How long to look at the socket after a reply before blocking (see "Polling").
    poll: Duration,
    /// When the last reply was written, and whether the last request came right behind
    /// the reply before it: then the next is looked for before blocking.
    last_reply: Option<Instant>,
    back_to_back: bool,
    /// `out` holds a push: its write is not a reply (see "Polling").
    pushed: bool,
    /// The millisecond this connection was last counted in [`polling::Recent`], and the
    /// runtime's worker threads.
    noted: u64,
    threads: usize,
    /// The socket's send buffer was raised for spliced replies ([`crate::pipes::widen`]).
    widened: bool,
}

/// Serves `session` on `socket` after the handshake (`frames` may already hold requests
/// the client sent behind its hello) until the client leaves, a limit closes it, or
/// `stop` says the daemon is shutting down; then says goodbye with the reason.
pub(crate) async fn serve(
    mut socket: Socket<'_>,
    frames: FrameBuffer,
    wire: Wire,
    shared: &Arc<Shared>,
    session: &Session,
    id: u32,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let config = shared.config();
    let mut conn = Connection {
        id,
        fd: socket.fd,
        shared,
        session,
        site: Arc::new(ConnectionSite {
            fd: socket.fd,
            raw: socket.local,
            wire,
            abandoned: AtomicBool::new(false),
        }),
        wire,
        limits: config.limits,
        max_in_flight: config.max_in_flight,
        frames,
        // Allocated by the first reply: an idle connection holds no reply buffer.
        out: Vec::new(),
        fds: Vec::new(),
        owed: 0,
        peek_next: true,
        reading: true,
        goodbye: None,
        last_heard: Instant::now(),
        partial_since: None,
        poll: config.poll,
        last_reply: None,
        back_to_back: false,
        pushed: false,
        noted: u64::MAX,
        threads: tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()),
        widened: false,
    };
    let mut in_flight: FuturesUnordered<Answering<'_>> = FuturesUnordered::new();
    let quiet = quiet::Quiet::new();
    let wr = &mut socket.wr;
    // Requests the client sent right behind its hello are already buffered.
    conn.start_buffered(&mut in_flight, wr).await?;
    conn.write_out(wr).await?;
    let limits = conn.limits;
    // One timer for both limits, armed for the earliest moment either could be due and
    // checked when it fires (so a busy connection costs no timer work per request).
    let timer = tokio::time::sleep_until(
        (conn.last_heard + limits.conn_idle.min(limits.conn_frame_time)).into(),
    );
    tokio::pin!(timer);
    let sink = session.sink();
    loop {
        if !conn.reading && in_flight.is_empty() {
            break;
        }
        let room = in_flight.len() < conn.max_in_flight;
        // Requests arriving back to back: look for the next one before blocking.
        if conn.reading
            && in_flight.is_empty()
            && conn.back_to_back
            && polling::recent().may_poll(conn.threads)
            && purveyor_protocol::poll::readable_within(conn.fd, conn.poll)
        {
            let more = match &mut socket.rd {
                Reader::Unix(io) => {
                    let more = conn
                        .readable(None, &mut in_flight, wr, timer.as_mut())
                        .await?;
                    // Answered at once and polling on: no registration while the
                    // connection polls, so no other runtime thread is woken by its
                    // requests (see `local_io`).
                    if conn.threads > 1 && in_flight.is_empty() {
                        io.rest();
                    }
                    more
                }
                // A carried stream (TLS): its socket has bytes; the stream decodes them.
                Reader::Stream(_) => match socket.rd.read(conn.frames.spare()).await {
                    Ok(n) => {
                        conn.took(n, false, &mut in_flight, wr, timer.as_mut())
                            .await?
                    }
                    Err(e) => {
                        session.client_gone();
                        return Err(e);
                    }
                },
            };
            if !more {
                return Ok(());
            }
            // A client asking back to back never makes this task wait: give the thread
            // back to the runtime when its budget says so, so other tasks run.
            tokio::task::consume_budget().await;
            continue;
        }
        tokio::select! {
            biased;
            Some((rid, outcome)) = quiet.next(&mut in_flight), if !in_flight.is_empty() => {
                if conn.site.abandoned.load(Ordering::Acquire) {
                    // The watchdog answered and closed the socket.
                    return Ok(());
                }
                conn.replied(rid, outcome, &mut in_flight, wr).await?;
            }
            () = sink.ready() => {
                conn.encode_pushes();
                conn.write_out(wr).await?;
            }
            arrived = socket.rd.arrive(&mut conn.frames), if conn.reading && room => {
                let more = match arrived {
                    Arrived::Readable(Err(e)) | Arrived::Read(Err(e)) => {
                        session.client_gone();
                        return Err(e);
                    }
                    Arrived::Readable(Ok(())) => {
                        conn.readable(socket.rd.unix(), &mut in_flight, wr, timer.as_mut()).await?
                    }
                    Arrived::Read(Ok(n)) => {
                        conn.took(n, false, &mut in_flight, wr, timer.as_mut()).await?
                    }
                };
                if !more {
                    return Ok(());
                }
            }
            _ = stop.changed(), if conn.reading => {
                conn.reading = false;
                conn.goodbye = Some(RemoteError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
            }
            () = &mut timer, if conn.reading => {
                let idle = in_flight.is_empty() && !session.holds_state();
                conn.timer_fired(idle, timer.as_mut());
            }
        }
    }
    conn.say_goodbye(wr).await;
    Ok(())
}

impl<'a> Connection<'a> {
    /// Starts request `rid` on the connection's task.
    fn start(&self, rid: u32, request: Request) -> Answering<'a> {
        let (shared, session) = (self.shared, self.session);
        let at = Site {
            conn: self.site.clone(),
            id: rid,
        };
        Box::pin(async move {
            let cx = Cx::in_session(session, Some(&at));
            let outcome = match requests::answer(shared, cx, request).await {
                Ok(response) => Outcome::Ok(response),
                Err(error) => Outcome::Err(error),
            };
            (rid, outcome)
        })
    }

    /// Answers request `rid` into `out` if it needs no waiting; else gives it back.
    fn answer_now(&mut self, rid: u32, request: Request) -> Result<(), Request> {
        let at = Site {
            conn: self.site.clone(),
            id: rid,
        };
        let outcome = match requests::answer_now(self.shared, self.session, Some(&at), request)? {
            Ok(response) => Outcome::Ok(response),
            Err(error) => Outcome::Err(error),
        };
        // Pushes queued before this reply go before it.
        self.encode_pushes();
        self.wire.reply(rid, outcome, &mut self.out);
        Ok(())
    }

    /// Answers or starts the requests of the complete frames buffered, writing answers
    /// whenever [`OUT_CAP`] bytes are ready, until no whole frame is left or
    /// `max_in_flight` requests run. A bad frame ends reading, with the goodbye set.
    async fn start_buffered(
        &mut self,
        in_flight: &mut FuturesUnordered<Answering<'a>>,
        wr: &mut Writer<'_>,
    ) -> std::io::Result<()> {
        loop {
            let result = self.start_requests(in_flight);
            if !self.out.is_empty() && (result.is_err() || self.out.len() >= OUT_CAP) {
                self.write_out(wr).await?;
            }
            if let Err(message) = result {
                tracing::warn!(connection = self.id, message = %purveyor_protocol::shorten(&message, 200), "bad frame; closing the connection");
                self.goodbye = Some(RemoteError::new(ErrorCode::Protocol, message));
                self.reading = false;
                return Ok(());
            }
            if !self.frames.frame_ready() || in_flight.len() >= self.max_in_flight {
                return Ok(());
            }
        }
    }

    /// Answers or starts a request for each complete frame, until `out` holds
    /// [`OUT_CAP`] bytes or `max_in_flight` requests run. A frame that is oversized or
    /// does not decode is an error: the connection must close. A well-framed request
    /// with a bad name or value is refused, and the connection lives on.
    fn start_requests(
        &mut self,
        in_flight: &mut FuturesUnordered<Answering<'a>>,
    ) -> Result<(), String> {
        while self.out.len() < OUT_CAP && in_flight.len() < self.max_in_flight {
            let decoded = match self.frames.next_frame().map_err(|e| e.to_string())? {
                Some(payload) => decode_request(self.wire.encoding, payload),
                None => break,
            };
            match decoded {
                Ok(ClientMessage::Request { id, request }) => {
                    if let Err(request) = self.answer_now(id, request) {
                        in_flight.push(self.start(id, request));
                    }
                }
                Err((e, Some(id))) => {
                    let error = RemoteError::new(
                        ErrorCode::InvalidRequest,
                        format!("request {id} does not decode: {}", e.message),
                    );
                    self.wire.reply(id, Outcome::Err(error), &mut self.out);
                }
                Err((e, None)) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// A request finished: writes its reply with every other reply already done (and the
    /// pushes queued before them), then starts requests left buffered.
    async fn replied(
        &mut self,
        rid: u32,
        outcome: Outcome,
        in_flight: &mut FuturesUnordered<Answering<'a>>,
        wr: &mut Writer<'_>,
    ) -> std::io::Result<()> {
        // A dialog's last update and its close come before the reply of the call that
        // opened it.
        self.encode_pushes();
        let mut next = Some((rid, outcome));
        while let Some((rid, outcome)) = next.take() {
            self.take_fd(&outcome);
            match self.take_spliced(rid, &outcome) {
                Some(spliced) => self.send_spliced(rid, spliced, wr).await?,
                None => self.wire.reply(rid, outcome, &mut self.out),
            }
            if self.out.len() < OUT_CAP {
                next = in_flight.next().now_or_never().flatten();
            }
        }
        // A request that had to wait was slow: peek the next one.
        self.peek_next = true;
        self.send_fds(wr).await?;
        self.write_out(wr).await?;
        take_owed(self.fd, &mut self.owed)?;
        // Requests left buffered while `max_in_flight` ran.
        if self.reading && self.frames.frame_ready() && in_flight.len() < self.max_in_flight {
            self.start_buffered(in_flight, wr).await?;
            self.write_out(wr).await?;
        }
        Ok(())
    }

    /// Sends the descriptors waiting with the first bytes of `out`.
    pub(super) async fn send_fds(&mut self, wr: &mut Writer<'_>) -> std::io::Result<()> {
        // Descriptors wait for the bytes of the message that names them.
        if !self.fds.is_empty() && !self.out.is_empty() {
            // The descriptors ride on the first byte of this write, so the client has
            // them before it reads the replies that name them.
            // Only a local socket is ever given descriptors to pass (`allow_fds`).
            if let Some(unix) = wr.unix() {
                let sent = send_with_fds(unix, &self.out, &self.fds).await?;
                self.out.drain(..sent);
                self.last_reply = (!self.pushed).then(Instant::now);
                self.pushed &= !self.out.is_empty();
            }
            self.fds.clear();
        }
        Ok(())
    }

    /// The socket is readable: reads (or peeks) what came, answers or starts its
    /// requests, and times a frame begun. `false` when the connection must end now (the
    /// watchdog closed it). With `rd`, the read goes through the runtime's readiness;
    /// without, straight to the socket (polling found input).
    async fn readable(
        &mut self,
        rd: Option<&LocalIo>,
        in_flight: &mut FuturesUnordered<Answering<'a>>,
        wr: &mut Writer<'_>,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> std::io::Result<bool> {
        // Peek only when no partial frame is buffered: the bytes then stay on the socket
        // until the replies are out (see "Intake").
        let peek = self.peek_next && self.frames.buffered() == 0;
        let fd = self.fd;
        let flags = if peek { libc::MSG_PEEK } else { 0 };
        let read = take_owed(fd, &mut self.owed).and_then(|()| match rd {
            Some(io) => io.try_read(|| recv(fd, self.frames.spare(), flags)),
            None => recv(fd, self.frames.spare(), flags),
        });
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => {
                self.session.client_gone();
                return Err(e);
            }
        };
        self.took(n, peek, in_flight, wr, timer).await
    }

    /// `n` bytes arrived into the frame buffer (`peeked`: still on the socket, to be
    /// taken once answered): answers or starts their requests, and times a frame begun.
    /// `false` when the connection must end now (the watchdog closed it).
    async fn took(
        &mut self,
        n: usize,
        peeked: bool,
        in_flight: &mut FuturesUnordered<Answering<'a>>,
        wr: &mut Writer<'_>,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> std::io::Result<bool> {
        if n == 0 {
            self.client_left();
            return Ok(true);
        }
        let read_at = Instant::now();
        self.last_heard = read_at;
        self.back_to_back = self
            .last_reply
            .is_some_and(|at| read_at.saturating_duration_since(at) < polling::BACK_TO_BACK);
        polling::recent().note(read_at, &mut self.noted);
        self.frames.filled(n);
        if peeked {
            self.owed = n;
        }
        let waiting = in_flight.len();
        self.start_buffered(in_flight, wr).await?;
        self.time_partial_frame(read_at, timer);
        if self.site.abandoned.load(Ordering::Acquire) {
            // The watchdog answered an overdue in-daemon call and closed the socket.
            return Ok(false);
        }
        if !self.out.is_empty() {
            // Answered at once: decide how to read the next request by how long these
            // answers took.
            self.peek_next = read_at.elapsed() > QUICK_ANSWER;
            self.write_out(wr).await?;
        }
        if in_flight.len() == waiting {
            // Nothing left to answer from these bytes: take them now.
            take_owed(self.fd, &mut self.owed)?;
        }
        Ok(true)
    }

    /// The client closed its side: nobody will answer its dialogs, so they close now and
    /// the calls waiting on them finish; a frame cut short is a protocol error.
    fn client_left(&mut self) {
        self.reading = false;
        self.session.client_gone();
        if self.frames.buffered() > 0 {
            self.goodbye = Some(RemoteError::new(
                ErrorCode::Protocol,
                format!(
                    "truncated frame: the connection closed after {} bytes of a frame",
                    self.frames.buffered()
                ),
            ));
        }
    }

    /// What is left buffered is a frame begun: timed from when it began; the timer must
    /// fire by its end.
    fn time_partial_frame(&mut self, read_at: Instant, timer: Pin<&mut tokio::time::Sleep>) {
        if self.frames.buffered() > 0 && !self.frames.frame_ready() {
            if self.partial_since.is_none() {
                self.partial_since = Some(read_at);
                let due = read_at + self.limits.conn_frame_time;
                if due < timer.deadline().into_std() {
                    timer.reset(due.into());
                }
            }
        } else {
            self.partial_since = None;
        }
    }

    /// The silence timer fired: closes the connection for a frame too slow or for
    /// silence while holding nothing (`idle`), or re-arms the timer
    /// ([`policy::connection_check`]).
    fn timer_fired(&mut self, idle: bool, timer: Pin<&mut tokio::time::Sleep>) {
        let partial = self
            .partial_since
            .filter(|_| self.frames.buffered() > 0 && !self.frames.frame_ready());
        let limits = self.limits;
        let why = match policy::connection_check(
            Instant::now(),
            partial,
            idle,
            self.last_heard,
            limits.conn_frame_time,
            limits.conn_idle,
        ) {
            Ok(next) => {
                timer.reset(next.into());
                return;
            }
            Err(why) => why,
        };
        self.reading = false;
        self.session.client_gone();
        self.goodbye = Some(match why {
            Silence::Frame => RemoteError::new(
                ErrorCode::Protocol,
                format!(
                    "closing this connection: a frame took longer than {} to arrive (conn.frame_time)",
                    humantime::format_duration(limits.conn_frame_time)
                ),
            ),
            Silence::Idle => RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "closing this connection: nothing was asked or held on it for {} (conn.idle)",
                    humantime::format_duration(limits.conn_idle)
                ),
            ),
        });
    }

    /// Encodes every push queued for the session into `out`.
    fn encode_pushes(&mut self) {
        let Wire { encoding, max, .. } = self.wire;
        for (handle, push) in self.session.sink().take() {
            if matches!(push, Push::DialogChannel) {
                // The channel's end rides on its push; without it (already taken) the
                // push is not sent: the dialog then goes through the host.
                match self.session.sink().take_channel(handle) {
                    Some(fd) => self.fds.push(fd),
                    None => continue,
                }
            }
            // A request that answers a push is not asked back to back (see "Polling").
            self.pushed = true;
            let msg = ServerMessage::Push { handle, push };
            if let Err(e) = encode_frame(encoding, &msg, max, &mut self.out) {
                // Too large for a frame: the client is told it lost one.
                tracing::warn!(connection = self.id, error = %e, "push too large to send; dropped");
                let lost = ServerMessage::Push {
                    handle,
                    push: Push::Lost { dropped: 1 },
                };
                let _ = encode_frame(encoding, &lost, max, &mut self.out);
            }
        }
    }

    /// The descriptor an `io_opened` reply with `fd`, or a `direct` reply, promises,
    /// from the session's stash.
    fn take_fd(&mut self, outcome: &Outcome) {
        let token = match outcome {
            Outcome::Ok(Response::IoOpened {
                handle, fd: true, ..
            }) => *handle,
            Outcome::Ok(Response::Direct { token, .. }) => *token,
            _ => return,
        };
        if let Some(fd) = self.session.take_fd(token) {
            self.fds.push(fd);
        }
    }

    /// Writes what `out` holds.
    pub(super) async fn write_out(&mut self, wr: &mut Writer<'_>) -> std::io::Result<()> {
        // Descriptors ride on the first bytes written after the messages that name them.
        self.send_fds(wr).await?;
        if !self.out.is_empty() {
            wr.write_all(&self.out).await?;
            self.out.clear();
            // A write that carried a push is not a reply to time the next request by.
            self.last_reply = (!std::mem::take(&mut self.pushed)).then(Instant::now);
        }
        Ok(())
    }

    /// Says why the connection ends, if it is the daemon's choice, and shuts the socket.
    async fn say_goodbye(mut self, wr: &mut Writer<'_>) {
        if let Some(mut error) = self.goodbye.take() {
            error.code = error.code.for_minor(self.wire.minor);
            let msg = ServerMessage::Goodbye { error };
            if encode_frame(self.wire.encoding, &msg, self.wire.max, &mut self.out).is_ok() {
                // The peer may already be gone; that is fine.
                let _ = wr.write_all(&self.out).await;
            }
        }
        let _ = wr.shutdown().await;
    }
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
/// CPU has gone back to sleep, so peeking would not help it (see "Intake"): the next
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

/// Sends the start of `bytes` with `fds` attached (`SCM_RIGHTS`); returns how many bytes
/// went (at least one).
async fn send_with_fds(io: &LocalIo, bytes: &[u8], fds: &[OwnedFd]) -> std::io::Result<usize> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    io.write_with(|fd| purveyor_protocol::fds::send(fd, bytes, &raw))
        .await
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
