//! Direct channels (`docs/protocol.md`, "Direct channels"): after a class has been read
//! or written through the daemon [`ATTACH_AFTER`] times, a blocking client asks the
//! daemon for a socket to the isolated worker serving it, and sends that provider's gets,
//! enumerates, puts and deletes there — one hop instead of two. Anything else, and any
//! class whose provider is not in an isolated worker, goes through the daemon as before.
//! A write the channel answers `unsupported` (the caller may not make it there) was not
//! made: it goes through the daemon, as do that class's later writes of its kind; one
//! answered `shutting_down` (the worker released the provider) goes through the daemon and
//! the channel is dropped. A write whose channel ends after it was read is reported, never
//! sent again: it may have been made.
//!
//! When a channel fails (the worker exited, was released or crashed) the request goes
//! through the daemon instead, which restarts the provider or reports how it died; the
//! channel is dropped, and the class is routed through the daemon again, to be attached
//! again after [`ATTACH_AFTER`] more reads — or, when the channel failed before it ever
//! answered (or the daemon could not open one), after four times as many as last time
//! (up to 1 024 × [`ATTACH_AFTER`]), so a worker that keeps closing channels costs a
//! failed attempt only now and then. A class the daemon says cannot have one
//! (`unsupported`: not in an isolated worker) stays on the daemon.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use purveyor_model::ClassPath;
use purveyor_protocol::{
    Encoding, FrameBuffer, MAX_FRAME_DEFAULT, Request, Response, encode_frame,
};
use serde::Serialize;

use crate::ClientError;
use crate::wire::{Incoming, parse_incoming};

/// Reads or writes of a class through the daemon before a direct channel is asked for.
pub(crate) const ATTACH_AFTER: u32 = 2;

/// The first protocol minor version whose servers open direct channels.
pub(crate) const DIRECT_SINCE: u16 = 7;

/// How a class's reads go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Through the daemon: `reads` so far; a channel is asked for after
    /// `ATTACH_AFTER << 2 * misses` (misses: channels in a row that failed unused).
    Daemon { reads: u32, misses: u32 },
    /// On the channel at this index.
    Channel(usize),
    /// Through the daemon, always (it said no, or a channel failed before serving).
    Never,
}

/// What to do with a read.
pub(crate) enum Plan {
    /// Send it on this channel.
    Channel(usize),
    /// Send it through the daemon; then, if it succeeded, ask for a channel.
    DaemonThenAttach,
    Daemon,
}

/// A blocking client's direct channels and routes.
#[derive(Default)]
pub(crate) struct DirectRoutes {
    routes: HashMap<ClassPath, Route>,
    channels: Vec<Option<DirectConn>>,
    /// Classes whose writes of a kind (bits of [`Use::bit`]) a channel answered
    /// `unsupported`: they go through the daemon.
    no_writes: HashMap<ClassPath, u8>,
}

/// What a routed request does to its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    Read,
    Put,
    Delete,
}

impl Use {
    /// Its bit in [`DirectRoutes::no_writes`] (none for a read).
    fn bit(self) -> u8 {
        match self {
            Use::Read => 0,
            Use::Put => 1,
            Use::Delete => 2,
        }
    }

    /// What `request` does, if it is routed at all.
    pub fn of(request: &Request) -> Option<(&ClassPath, Use)> {
        match request {
            Request::Get { class, .. } | Request::Enumerate { class, .. } => {
                Some((class, Use::Read))
            }
            Request::Put { class, .. } => Some((class, Use::Put)),
            Request::Delete { class, .. } => Some((class, Use::Delete)),
            _ => None,
        }
    }
}

/// A channel's failure before an answer. A read may go through the daemon instead; a
/// write only if it was not `sent` (else the worker may have made it).
pub(crate) struct Lost {
    pub sent: bool,
    /// The provider the channel went to (empty if there was no channel).
    pub provider: String,
}

impl Lost {
    const fn new(sent: bool) -> Lost {
        Lost {
            sent,
            provider: String::new(),
        }
    }
}

impl DirectRoutes {
    /// How to send a request that does `what` to `class`.
    pub fn plan(&mut self, class: &ClassPath, what: Use) -> Plan {
        if !self.routes.contains_key(class) {
            self.routes.insert(
                class.clone(),
                Route::Daemon {
                    reads: 0,
                    misses: 0,
                },
            );
        }
        let route = self.routes.get_mut(class).expect("inserted above");
        match route {
            Route::Channel(_)
                if self
                    .no_writes
                    .get(class)
                    .is_some_and(|refused| refused & what.bit() != 0) =>
            {
                Plan::Daemon
            }
            Route::Channel(at) => Plan::Channel(*at),
            Route::Never => Plan::Daemon,
            Route::Daemon { reads, misses } => {
                *reads += 1;
                if *reads >= ATTACH_AFTER << (2 * (*misses).min(5)) {
                    Plan::DaemonThenAttach
                } else {
                    Plan::Daemon
                }
            }
        }
    }

    /// A channel answered a write (`what`) of `class` `unsupported`: such writes of it go
    /// through the daemon.
    pub fn refused_write(&mut self, class: &ClassPath, what: Use) {
        *self.no_writes.entry(class.clone()).or_default() |= what.bit();
    }

    /// The daemon will not open a channel for `class`: never (`unsupported`), or not
    /// now (any other error: asked again after more reads).
    pub fn refused(&mut self, class: &ClassPath, never: bool) {
        let route = if never {
            Route::Never
        } else {
            let misses = self.misses(class) + 1;
            Route::Daemon { reads: 0, misses }
        };
        self.routes.insert(class.clone(), route);
    }

    fn misses(&self, class: &ClassPath) -> u32 {
        match self.routes.get(class) {
            Some(Route::Daemon { misses, .. }) => *misses,
            _ => 0,
        }
    }

    /// A channel to `provider` is open for `classes`.
    pub fn attached(&mut self, provider: String, classes: Vec<ClassPath>, stream: UnixStream) {
        let misses = classes.iter().map(|c| self.misses(c)).max().unwrap_or(0);
        let conn = DirectConn {
            provider,
            stream,
            frames: FrameBuffer::new(MAX_FRAME_DEFAULT),
            out: Vec::with_capacity(256),
            served: false,
            misses,
        };
        let at = match self.channels.iter().position(Option::is_none) {
            Some(free) => {
                self.channels[free] = Some(conn);
                free
            }
            None => {
                self.channels.push(Some(conn));
                self.channels.len() - 1
            }
        };
        for class in classes {
            self.routes.insert(class, Route::Channel(at));
        }
    }

    /// Sends `request` with `id` on channel `at` and waits for its reply.
    pub fn call(
        &mut self,
        at: usize,
        id: u32,
        request: &Request,
    ) -> Result<Result<Response, ClientError>, Lost> {
        let Some(conn) = self.channels.get_mut(at).and_then(Option::as_mut) else {
            return Err(Lost::new(false));
        };
        match conn.call(id, request) {
            Ok(Answer::Reply(reply)) => {
                conn.served = true;
                Ok(reply)
            }
            Ok(Answer::None(timeout)) => {
                // The worker is stuck or gone and may still answer late: the channel is
                // dropped, later reads go through the daemon.
                self.drop_channel(at);
                Ok(Err(timeout))
            }
            Err(lost) => {
                let provider = self.drop_channel(at).unwrap_or_default();
                Err(Lost { provider, ..lost })
            }
        }
    }

    /// Forgets channel `at`, returning the provider it went to; its classes go through
    /// the daemon again, and are attached again later (much later if it never answered).
    pub fn drop_channel(&mut self, at: usize) -> Option<String> {
        let conn = self.channels.get_mut(at).and_then(Option::take)?;
        let next = Route::Daemon {
            reads: 0,
            misses: if conn.served { 0 } else { conn.misses + 1 },
        };
        for route in self.routes.values_mut() {
            if *route == Route::Channel(at) {
                *route = next;
            }
        }
        Some(conn.provider)
    }

    /// The providers this client has direct channels to, with their classes.
    pub fn channels(&self) -> Vec<(String, Vec<ClassPath>)> {
        let mut out: Vec<(String, Vec<ClassPath>)> = Vec::new();
        for (at, conn) in self.channels.iter().enumerate() {
            if let Some(conn) = conn {
                let mut classes: Vec<ClassPath> = self
                    .routes
                    .iter()
                    .filter(|(_, r)| **r == Route::Channel(at))
                    .map(|(c, _)| c.clone())
                    .collect();
                classes.sort();
                out.push((conn.provider.clone(), classes));
            }
        }
        out.sort();
        out
    }
}

/// One direct channel: a socket to a worker, speaking binary requests and replies.
struct DirectConn {
    provider: String,
    stream: UnixStream,
    frames: FrameBuffer,
    out: Vec<u8>,
    /// It has answered at least once.
    served: bool,
    /// Its classes' channels before it that failed unused, in a row.
    misses: u32,
}

/// What came back on a channel.
enum Answer {
    /// The worker's reply (an answer or an error).
    Reply(Result<Response, ClientError>),
    /// Nothing in time: this timeout error.
    None(ClientError),
}

/// [`purveyor_protocol::ClientMessage`] with the request borrowed: the same bytes, without
/// cloning the request (which may have to go through the daemon after all).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ClientMessageRef<'a> {
    Request { id: u32, request: &'a Request },
}

impl DirectConn {
    /// `Err(Lost)` when the channel failed before an answer.
    fn call(&mut self, id: u32, request: &Request) -> Result<Answer, Lost> {
        self.out.clear();
        let message = ClientMessageRef::Request { id, request };
        // A request not written whole was not read (a worker reads whole frames).
        if encode_frame(Encoding::Binary, &message, MAX_FRAME_DEFAULT, &mut self.out).is_err()
            || self.stream.write_all(&self.out).is_err()
        {
            return Err(Lost::new(false));
        }
        loop {
            match self.frames.next_frame() {
                Ok(Some(payload)) => match parse_incoming(Encoding::Binary, payload) {
                    Ok(Incoming::Reply(got, reply)) if got == id => {
                        return Ok(Answer::Reply(reply));
                    }
                    // A late answer to an earlier request: not ours.
                    Ok(Incoming::Reply(..)) => continue,
                    _ => return Err(Lost::new(true)),
                },
                Ok(None) => {}
                Err(_) => return Err(Lost::new(true)),
            }
            // The worker answers within microseconds: look before blocking
            // (`purveyor_protocol::poll`).
            purveyor_protocol::poll::readable_within(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                purveyor_protocol::poll::poll_window(),
            );
            match self.stream.read(self.frames.spare()) {
                Ok(0) => return Err(Lost::new(true)),
                Ok(n) => self.frames.filled(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The worker closed its end with the request unread (the kernel says so
                // with a reset, not an end of stream): it was not made.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Err(Lost::new(false));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let waited = self.stream.read_timeout().ok().flatten();
                    return Ok(Answer::None(ClientError::Timeout {
                        provider: Some(self.provider.clone()),
                        message: format!(
                            "provider {} did not answer on its direct channel within {:?}",
                            self.provider,
                            waited.unwrap_or(Duration::ZERO)
                        ),
                    }));
                }
                Err(_) => return Err(Lost::new(true)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::InstanceKey;
    use purveyor_protocol::ClientMessage;

    #[test]
    fn the_borrowed_message_encodes_as_the_owned_one() {
        let request = Request::Get {
            class: ClassPath::new("demo.uptime").unwrap(),
            key: InstanceKey::new(),
        };
        for encoding in [Encoding::Binary, Encoding::Json] {
            let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
            let message = ClientMessage::Request {
                id: 7,
                request: request.clone(),
            };
            encode_frame(encoding, &message, u32::MAX, &mut owned).unwrap();
            let message = ClientMessageRef::Request {
                id: 7,
                request: &request,
            };
            encode_frame(encoding, &message, u32::MAX, &mut borrowed).unwrap();
            assert_eq!(owned, borrowed, "{encoding}");
        }
    }

    #[test]
    fn a_class_is_attached_after_its_reads_through_the_daemon() {
        let class = ClassPath::new("demo.uptime").unwrap();
        let mut routes = DirectRoutes::default();
        assert!(matches!(routes.plan(&class, Use::Read), Plan::Daemon));
        assert!(matches!(
            routes.plan(&class, Use::Read),
            Plan::DaemonThenAttach
        ));
        routes.refused(&class, true);
        for _ in 0..100 {
            assert!(matches!(routes.plan(&class, Use::Read), Plan::Daemon));
        }
    }

    /// Routes with one channel, for `class` of `provider`, and the worker's end of it.
    fn one_channel(class: &ClassPath, provider: &str) -> (DirectRoutes, UnixStream) {
        let mut routes = DirectRoutes::default();
        let (ours, theirs) = UnixStream::pair().unwrap();
        routes.attached(provider.into(), vec![class.clone()], ours);
        (routes, theirs)
    }

    /// A put of `class` with nothing in it (the tests' worker never decodes it).
    fn empty_put(class: &ClassPath) -> Request {
        Request::Put {
            class: class.clone(),
            instance: purveyor_model::Instance::new(),
        }
    }

    /// How many reads through the daemon until a channel is asked for.
    /// A worker on the other end of a channel that reads one request, answers it (as
    /// request 1) with `answer` if given, and goes away.
    fn reads_once(mut theirs: UnixStream, answer: Option<Response>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let _ = theirs.read(&mut buf);
            if let Some(response) = answer {
                let reply = purveyor_protocol::ServerMessage::Reply {
                    id: 1,
                    outcome: purveyor_protocol::Outcome::Ok(response),
                };
                let mut out = Vec::new();
                encode_frame(Encoding::Binary, &reply, u32::MAX, &mut out).unwrap();
                theirs.write_all(&out).unwrap();
            }
        })
    }

    fn reads_until_attach(routes: &mut DirectRoutes, class: &ClassPath) -> u32 {
        (1..=10_000)
            .find(|_| matches!(routes.plan(class, Use::Read), Plan::DaemonThenAttach))
            .expect("asked within 10 000 reads")
    }

    #[test]
    fn a_channel_that_never_served_is_asked_for_again_later_and_later() {
        let class = ClassPath::new("demo.uptime").unwrap();
        let (mut routes, theirs) = one_channel(&class, "uptime");
        assert!(matches!(routes.plan(&class, Use::Read), Plan::Channel(0)));
        drop(theirs);
        let request = Request::Get {
            class: class.clone(),
            key: InstanceKey::new(),
        };
        // Not written (the worker had gone): a put may go through the daemon.
        assert!(matches!(
            routes.call(0, 1, &request),
            Err(Lost { sent: false, .. })
        ));
        assert!(routes.channels().is_empty());
        assert_eq!(reads_until_attach(&mut routes, &class), 8);
        routes.refused(&class, false);
        assert_eq!(reads_until_attach(&mut routes, &class), 32);
    }

    #[test]
    fn a_channel_that_served_is_asked_for_again_soon() {
        let class = ClassPath::new("demo.uptime").unwrap();
        let (mut routes, theirs) = one_channel(&class, "uptime");
        // A worker that answers once, then goes away.
        let worker = reads_once(theirs, Some(Response::Pong));
        let request = Request::Get {
            class: class.clone(),
            key: InstanceKey::new(),
        };
        assert!(matches!(
            routes.call(0, 1, &request),
            Ok(Ok(Response::Pong))
        ));
        worker.join().unwrap();
        assert!(routes.call(0, 2, &request).is_err());
        assert_eq!(reads_until_attach(&mut routes, &class), ATTACH_AFTER);
    }

    #[test]
    fn a_request_the_worker_read_and_never_answered_counts_as_sent() {
        let class = ClassPath::new("demo.setting").unwrap();
        let (mut routes, theirs) = one_channel(&class, "config");
        // A worker that reads the put, then dies before answering.
        let worker = reads_once(theirs, None);
        let put = empty_put(&class);
        assert!(matches!(
            routes.call(0, 1, &put),
            Err(Lost { sent: true, provider }) if provider == "config"
        ));
        worker.join().unwrap();
        assert!(routes.channels().is_empty());
    }

    #[test]
    fn a_request_the_worker_closed_unread_counts_as_not_sent() {
        let class = ClassPath::new("demo.setting").unwrap();
        let (mut routes, theirs) = one_channel(&class, "config");
        // A worker that goes away after the put arrived, without reading it.
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(theirs);
        });
        let put = empty_put(&class);
        assert!(matches!(
            routes.call(0, 1, &put),
            Err(Lost { sent: false, .. })
        ));
        worker.join().unwrap();
    }

    #[test]
    fn a_class_whose_puts_a_channel_refused_puts_through_the_daemon_and_reads_and_deletes_on_it() {
        let class = ClassPath::new("demo.setting").unwrap();
        let (mut routes, _theirs) = one_channel(&class, "config");
        assert!(matches!(routes.plan(&class, Use::Put), Plan::Channel(0)));
        routes.refused_write(&class, Use::Put);
        assert!(matches!(routes.plan(&class, Use::Put), Plan::Daemon));
        assert!(matches!(routes.plan(&class, Use::Read), Plan::Channel(0)));
        assert!(
            matches!(routes.plan(&class, Use::Delete), Plan::Channel(0)),
            "a refused put says nothing of deletes"
        );
        // Puts count towards asking for a channel, as reads do.
        let other = ClassPath::new("demo.other").unwrap();
        assert!(matches!(routes.plan(&other, Use::Put), Plan::Daemon));
        assert!(matches!(
            routes.plan(&other, Use::Put),
            Plan::DaemonThenAttach
        ));
    }
}
