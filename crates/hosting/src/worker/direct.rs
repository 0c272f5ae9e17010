//! An isolated worker's direct channels (`docs/provider-abi.md`, "Direct channels"): a
//! client's gets, enumerates, puts and deletes of a provider this worker hosts come
//! straight here on a socket the host handed over, and go back the same way, one hop
//! instead of two.
//!
//! The host did what needs the daemon before handing the socket over: it checked the
//! caller's credentials and the access policy (the channel serves only the classes the
//! caller may read, and takes puts and deletes only of those it may write) and gave the
//! schemas. A write's events go to the host, which delivers them, before the write is
//! answered; a write this channel cannot make is answered `unsupported` (not writable
//! here) or `shutting_down` (its provider released), so its client knows to send it
//! through the host. Here each call is planned, checked and answered
//! by the same code the host uses ([`crate::answer`]), within the provider's deadline: the
//! watcher answers a call that overruns it with a timeout and tells the host, which kills
//! the worker as for a call of its own. The host is told of use often enough to keep its
//! idle rule exact (see [`UseReport`]). A channel whose provider this worker no longer
//! serves is closed: the client then asks the host, which loads it again.
//!
//! Invariants: a call's reply is written once, by its thread or (past its deadline) by
//! the watcher, never both; every activity at time `t` is covered by a `used` news sent
//! at some `r ≤ t` with `t < r + keep`.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purveyor_model::{ClassPath, ClassSchema, ProviderName};
use purveyor_protocol::poll::{BACK_TO_BACK, poll_window, readable_within};
use purveyor_protocol::{
    CallerInfo, ClientMessage, DirectAttach, DirectNews, Encoding, ErrorCode, FrameBuffer, Outcome,
    ProviderCall, ProviderReply, ProviderRequestRef, ProviderResponse, ReadCall, RemoteError,
    Request, Response, ServerMessage, encode_frame, encode_server_frame,
};
use purveyor_provider::abi::{fault, from_fault, panic_message};

use super::{MAX_FRAME, Worker};
use crate::answer::Offers;
use crate::error::{CallError, Shown};
use crate::lock::{Locked, RwLocked};

/// The most direct channels one worker serves at once; past it a new channel is closed
/// at once and its client goes on through the host.
const MAX_CHANNELS: usize = 1024;

/// The direct channels open now, and the policy generation each provider's must come from
/// (`ProviderCall::CloseDirect`): one lock, so a channel is either seen by a close or
/// checked against it when it opens.
#[derive(Default)]
pub(super) struct OpenChannels {
    channels: Vec<std::sync::Weak<Channel>>,
    at_least: HashMap<String, u64>,
}

impl OpenChannels {
    /// Keeps `channel` unless a close has passed its policy (then it must not be served).
    fn admit(&mut self, channel: &Arc<Channel>) -> bool {
        if self
            .at_least
            .get(&channel.provider)
            .is_some_and(|&at| channel.policy < at)
        {
            return false;
        }
        self.channels.retain(|c| c.strong_count() > 0);
        self.channels.push(Arc::downgrade(channel));
        true
    }

    /// Shuts the reading side of `provider`'s channels from policies older than
    /// `policy`, and remembers to refuse such channels arriving later.
    fn close(&mut self, provider: &str, policy: u64) {
        let at_least = self.at_least.entry(provider.to_string()).or_default();
        *at_least = (*at_least).max(policy);
        for channel in self.channels.iter().filter_map(std::sync::Weak::upgrade) {
            if channel.provider == provider && channel.policy < policy {
                let _ = channel.writer.locked().shutdown(std::net::Shutdown::Read);
            }
        }
    }
}

/// One direct channel: what the host said when it handed the socket over.
pub(super) struct Channel {
    provider: String,
    name: ProviderName,
    caller: CallerInfo,
    schemas: HashMap<ClassPath, ClassSchema, foldhash::fast::RandomState>,
    offers_get: bool,
    offers_enumerate: bool,
    /// The classes whose puts it takes (`DirectAttach::writable`).
    writable: Vec<ClassPath>,
    /// The classes whose deletes it takes (`DirectAttach::deletable`).
    deletable: Vec<ClassPath>,
    /// The access policy generation its permissions come from.
    policy: u64,
    deadline: Duration,
    usage: Arc<UseReport>,
    writer: Arc<Mutex<UnixStream>>,
}

impl Channel {
    /// The schema of `class`, if this channel serves it.
    fn schema(&self, class: &ClassPath) -> Result<&ClassSchema, RemoteError> {
        self.schemas.get(class).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::Unsupported,
                format!("class {class} is not served on this direct channel; ask the host"),
            )
        })
    }

    fn offers(&self) -> Offers<'_> {
        Offers {
            name: &self.name,
            get: self.offers_get,
            enumerate: self.offers_enumerate,
        }
    }
}

/// A provider's direct use since the host last heard of it.
pub(super) struct UseReport {
    provider: String,
    /// How long a `used` news keeps the provider in use at the host, in nanoseconds.
    keep: u64,
    /// When the last `used` news with `keep` went, in nanoseconds after the worker's
    /// epoch, plus one (0: never).
    last: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

/// A direct call running now, for the watcher.
pub(super) struct Running {
    id: u32,
    deadline: Instant,
    channel: Arc<Channel>,
    /// The watcher answered it (past its deadline): its thread must not.
    answered: bool,
}

/// Direct calls running now: a slab, so starting and ending a call does not hash.
#[derive(Default)]
pub(super) struct RunningCalls {
    slots: Vec<Option<Running>>,
    free: Vec<usize>,
}

impl Worker {
    /// Takes direct channels from the host's attach socket until it closes.
    pub(super) fn take_channels(self: Arc<Self>, socket: UnixStream) {
        let mut frames = FrameBuffer::new(MAX_FRAME);
        let mut fds: VecDeque<OwnedFd> = VecDeque::new();
        loop {
            loop {
                let attach = match frames.next_frame() {
                    Ok(Some(payload)) => serde_json::from_slice::<DirectAttach>(payload),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("purveyor worker: bad frame on the attach socket: {e}");
                        return;
                    }
                };
                let Some(fd) = fds.pop_front() else {
                    eprintln!("purveyor worker: a direct channel's attach came without its socket");
                    continue;
                };
                match attach {
                    Ok(DirectAttach {
                        provider,
                        dialog: Some(dialog),
                        ..
                    }) => self.dialog_socket(provider, dialog, fd),
                    Ok(attach) => self.open_channel(attach, fd),
                    Err(e) => eprintln!("purveyor worker: malformed direct channel attach: {e}"),
                }
            }
            match purveyor_protocol::fds::recv(socket.as_raw_fd(), frames.spare(), &mut fds) {
                Ok(0) => return,
                Ok(n) => frames.filled(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("purveyor worker: reading the attach socket failed: {e}");
                    return;
                }
            }
        }
    }

    fn open_channel(self: &Arc<Self>, attach: DirectAttach, fd: OwnedFd) {
        let name = match ProviderName::new(&attach.provider) {
            Ok(name) => name,
            Err(e) => {
                eprintln!("purveyor worker: a direct channel for a bad provider name: {e}");
                return;
            }
        };
        if self.channels.fetch_add(1, Ordering::SeqCst) >= MAX_CHANNELS {
            self.channels.fetch_sub(1, Ordering::SeqCst);
            eprintln!(
                "purveyor worker: {MAX_CHANNELS} direct channels are open; one more for {} is closed (its client goes through the host)",
                attach.provider
            );
            return;
        }
        let reader = UnixStream::from(fd);
        let writer = match reader.try_clone() {
            Ok(w) => Arc::new(Mutex::new(w)),
            Err(e) => {
                self.channels.fetch_sub(1, Ordering::SeqCst);
                eprintln!("purveyor worker: cannot use a direct channel: {e}");
                return;
            }
        };
        let usage = self.usage_of(&attach.provider, attach.keep_ms);
        let channel = Channel {
            provider: attach.provider,
            name,
            caller: attach.caller,
            schemas: attach
                .classes
                .into_iter()
                .map(|s| (s.path().clone(), s))
                .collect(),
            offers_get: attach.offers_get,
            offers_enumerate: attach.offers_enumerate,
            writable: attach.writable,
            deletable: attach.deletable,
            policy: attach.policy,
            deadline: Duration::from_millis(attach.deadline_ms),
            usage,
            writer,
        };
        let channel = Arc::new(channel);
        if !self.open_channels.locked().admit(&channel) {
            // Opened under a policy a reload has since replaced: its client goes through
            // the host, under the new one.
            self.channels.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let w = self.clone();
        let started = std::thread::Builder::new()
            .name("purveyor-direct".into())
            .spawn(move || {
                w.serve_channel(&channel, reader);
                w.channels.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = started {
            self.channels.fetch_sub(1, Ordering::SeqCst);
            eprintln!("purveyor worker: cannot start a direct channel's thread: {e}");
        }
    }

    /// Closes `provider`'s direct channels from policies older than generation `policy`
    /// for reading (`ProviderCall::CloseDirect`), and any that arrive later: a call
    /// running on one still answers; the next request its client writes fails at once
    /// (`EPIPE`: not made), and the client goes through the host. A request already
    /// waiting on the channel is still read and answered.
    pub(super) fn close_channels(&self, provider: &str, policy: u64) {
        self.open_channels.locked().close(provider, policy);
    }

    /// The use report of `provider`, shared by all its channels.
    fn usage_of(&self, provider: &str, keep_ms: u64) -> Arc<UseReport> {
        let mut uses = self.uses.locked();
        uses.entry(provider.to_string())
            .or_insert_with(|| {
                Arc::new(UseReport {
                    provider: provider.to_string(),
                    keep: keep_ms.max(1) * 1_000_000,
                    last: 0.into(),
                    calls: 0.into(),
                    errors: 0.into(),
                })
            })
            .clone()
    }

    /// Serves one channel until its client closes it, sends something other than a
    /// request, or its provider is no longer served here.
    fn serve_channel(&self, channel: &Arc<Channel>, mut reader: UnixStream) {
        let mut frames = FrameBuffer::new(MAX_FRAME);
        let mut out = Vec::with_capacity(256);
        // When the last reply went, and whether the request it answered came back to back:
        // then the next one is looked for before blocking, as the daemon's connections do
        // (`purveyor_protocol::poll`), so its arrival does not wake a halted CPU.
        let mut last_reply: Option<Instant> = None;
        let mut back_to_back = false;
        loop {
            let request = match frames.next_frame() {
                Ok(Some(payload)) => {
                    back_to_back = last_reply.is_some_and(|t| t.elapsed() < BACK_TO_BACK);
                    match purveyor_protocol::decode::<ClientMessage>(Encoding::Binary, payload) {
                        Ok(ClientMessage::Request { id, request }) => (id, request),
                        Err(e) => {
                            eprintln!(
                                "purveyor worker: a direct channel of {} sent {e}; closed",
                                channel.provider
                            );
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if std::mem::take(&mut back_to_back) {
                        readable_within(reader.as_raw_fd(), poll_window());
                    }
                    match reader.read(frames.spare()) {
                        Ok(0) => return,
                        Ok(n) => frames.filled(n),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "purveyor worker: a direct channel of {} sent a bad frame ({e}); closed",
                        channel.provider
                    );
                    return;
                }
            };
            let (id, request) = request;
            let provider = self.providers.read_locked().get(&channel.provider).cloned();
            // Released here: closing tells the client to ask the host, which loads it. A
            // write is answered first (`shutting_down`), so its client knows it was not
            // made (a read is simply asked again).
            let Some(provider) = provider else {
                if let Request::Put { .. } | Request::Delete { .. } = request {
                    let error = RemoteError::new(
                        ErrorCode::ShuttingDown,
                        format!(
                            "provider {} is no longer served on this direct channel; ask the host",
                            channel.provider
                        ),
                    );
                    let _ = reply(channel, id, Err(error), &mut out);
                }
                return;
            };
            let Some(result) = self.direct_call(channel, &provider, id, request) else {
                continue;
            };
            if reply(channel, id, result, &mut out).is_err() {
                return;
            }
            last_reply = Some(Instant::now());
        }
    }

    /// Answers one request: `None` when the watcher answered it (past its deadline).
    fn direct_call(
        &self,
        channel: &Arc<Channel>,
        provider: &crate::library::LibraryProvider,
        id: u32,
        request: Request,
    ) -> Option<Result<Response, RemoteError>> {
        let unsupported = |why: String| Some(Err(RemoteError::new(ErrorCode::Unsupported, why)));
        let (class, key, is_get) = match request {
            Request::Get { class, key } => (class, key, true),
            Request::Enumerate { class, selector } => (class, selector, false),
            Request::Put { class, instance } if channel.writable.contains(&class) => {
                let checked = channel.schema(&class).and_then(|schema| {
                    schema
                        .check_instance(&instance)
                        .map_err(|m| RemoteError::new(ErrorCode::InvalidRequest, m))
                });
                let call = ProviderCall::Put { class, instance };
                return self.direct_write(channel, provider, id, checked, call);
            }
            Request::Delete { class, key } if channel.deletable.contains(&class) => {
                let checked = channel
                    .schema(&class)
                    .and_then(|schema| crate::answer::check_full_key(schema, &key));
                let call = ProviderCall::Delete { class, key };
                return self.direct_write(channel, provider, id, checked, call);
            }
            Request::Put { class, .. } | Request::Delete { class, .. } => {
                return unsupported(format!(
                    "writes of class {class} of this kind do not go on this direct channel; ask the host"
                ));
            }
            _ => {
                return unsupported(
                    "only get, enumerate, put and delete go on a direct channel; ask the host"
                        .into(),
                );
            }
        };
        let offers = channel.offers();
        // Plan the call: a get or an enumerate, the key checked against the schema.
        let plan = channel.schema(&class).and_then(|schema| {
            let call = if is_get {
                offers.get_call(schema, &class, &key)?
            } else if !offers.enumerate {
                return Err(offers.not_offered("enumerate"));
            } else {
                offers.enumerate_call(schema, &class, &key)?
            };
            Ok((schema, call))
        });
        let (schema, call) = match plan {
            Ok(plan) => plan,
            Err(error) => return Some(Err(error)),
        };
        let asked_get = matches!(call, ReadCall::Get { .. });
        let (reply, answered) = self.run(channel, provider, id, call);
        if answered {
            return None;
        }
        let result = match reply {
            ProviderReply::Error(f) => Err(offers.provider_error(from_fault(f))),
            reply if is_get => offers.get_answer(schema, &class, &key, asked_get, reply),
            reply => offers.enumerate_answer(schema, class, &key, asked_get, reply),
        };
        Some(self.counted(channel, result))
    }

    /// A put or delete, `checked` against the schema as the host checks it, then given
    /// to the provider; the events it raised go to the host before the answer goes back.
    fn direct_write(
        &self,
        channel: &Arc<Channel>,
        provider: &crate::library::LibraryProvider,
        id: u32,
        checked: Result<(), RemoteError>,
        call: ProviderCall,
    ) -> Option<Result<Response, RemoteError>> {
        if let Err(error) = checked {
            return Some(Err(error));
        }
        let what = call.kind();
        let (reply, answered) = self.run(channel, provider, id, call);
        let offers = channel.offers();
        let result = match reply {
            ProviderReply::Done { events, .. } => {
                if !events.is_empty() {
                    self.tell_host(&channel.provider, DirectNews::Events { events });
                }
                Ok(Response::Done)
            }
            ProviderReply::Error(f) => Err(offers.provider_error(from_fault(f))),
            other => Err(offers.unexpected(what, &other)),
        };
        if answered {
            return None;
        }
        Some(self.counted(channel, result))
    }

    /// Gives `call` to the provider within the channel's deadline: its reply, and whether
    /// the watcher answered the call meanwhile (then its thread must not).
    fn run<C: serde::Serialize>(
        &self,
        channel: &Arc<Channel>,
        provider: &crate::library::LibraryProvider,
        id: u32,
        call: C,
    ) -> (ProviderReply, bool) {
        self.call_begins();
        let at = self.running_add(Running {
            id,
            deadline: Instant::now() + channel.deadline,
            channel: channel.clone(),
            answered: false,
        });
        self.report_use(&channel.usage, true);
        let request = ProviderRequestRef {
            id,
            provider: "",
            caller: channel.caller,
            deadline_ms: channel.deadline.as_millis().max(1) as u64,
            ui: 0,
            call,
        };
        let reply = catch_unwind(AssertUnwindSafe(|| provider.send(&request)))
            .map(|r| r.unwrap_or_else(|e| ProviderReply::Error(fault(e))))
            .unwrap_or_else(|panic| {
                ProviderReply::Error(purveyor_protocol::ProviderFault {
                    kind: purveyor_protocol::FaultKind::Failed,
                    message: format!("the provider panicked: {}", panic_message(&*panic)),
                })
            });
        let answered = self.running_remove(at);
        self.busy.fetch_sub(1, Ordering::SeqCst);
        (reply, answered)
    }

    /// Counts a direct call's answer as the host counts its own: a failure the provider
    /// reported, or an answer that is its fault, is an error.
    fn counted(
        &self,
        channel: &Channel,
        result: Result<Response, RemoteError>,
    ) -> Result<Response, RemoteError> {
        let failed = match &result {
            Err(e) => e.code == ErrorCode::ProviderFailed || e.provider.is_some(),
            Ok(_) => false,
        };
        channel.usage.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            channel.usage.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.report_use(&channel.usage, true);
        result
    }

    fn running_add(&self, call: Running) -> usize {
        let mut running = self.running.locked();
        match running.free.pop() {
            Some(at) => {
                running.slots[at] = Some(call);
                at
            }
            None => {
                running.slots.push(Some(call));
                running.slots.len() - 1
            }
        }
    }

    /// Forgets a running call; true if the watcher answered it.
    fn running_remove(&self, at: usize) -> bool {
        let mut running = self.running.locked();
        let call = running.slots[at].take();
        running.free.push(at);
        call.is_some_and(|c| c.answered)
    }

    /// Tells the host `usage`'s provider is in use (`active`) when its last news no
    /// longer covers now, or brings the host's counts up to date (`!active`, when there
    /// are calls to count).
    pub(super) fn report_use(&self, usage: &UseReport, active: bool) {
        let now = self.now() + 1;
        let keep_ms = if active {
            let last = usage.last.load(Ordering::SeqCst);
            if last != 0 && now < last + usage.keep {
                return;
            }
            if usage
                .last
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // Another thread is telling now.
                return;
            }
            usage.keep / 1_000_000
        } else {
            if usage.calls.load(Ordering::Relaxed) == 0 {
                return;
            }
            0
        };
        let news = DirectNews::Used {
            calls: usage.calls.swap(0, Ordering::Relaxed),
            errors: usage.errors.swap(0, Ordering::Relaxed),
            keep_ms,
        };
        self.tell_host(&usage.provider, news);
    }

    /// Brings the host's counts of every provider's direct calls up to date.
    pub(super) fn flush_uses(&self) {
        let uses: Vec<Arc<UseReport>> = self.uses.locked().values().cloned().collect();
        for usage in uses {
            self.report_use(&usage, false);
        }
    }

    /// The watcher's look at running direct calls: one past its deadline is answered with
    /// a timeout and the host is told (it kills this worker); the others keep their
    /// provider in use at the host.
    pub(super) fn check_running(&self) {
        let now = Instant::now();
        let mut overdue = Vec::new();
        let mut in_use = Vec::new();
        {
            let mut running = self.running.locked();
            for call in running.slots.iter_mut().flatten() {
                if call.answered {
                    continue;
                }
                if now >= call.deadline {
                    call.answered = true;
                    overdue.push((call.id, call.channel.clone()));
                } else {
                    in_use.push(call.channel.clone());
                }
            }
        }
        for channel in in_use {
            self.report_use(&channel.usage, true);
        }
        for (id, channel) in overdue {
            // What the daemon says for a call of its own that its worker missed.
            let missed = CallError::Killed(channel.name.to_string(), Shown(channel.deadline));
            let error = channel.offers().error(missed.code(), missed.to_string());
            let mut out = Vec::new();
            let reply = ServerMessage::Reply {
                id,
                outcome: Outcome::Err(error),
            };
            if encode_frame(Encoding::Binary, &reply, MAX_FRAME, &mut out).is_ok() {
                let mut writer = channel.writer.locked();
                let _ = writer.write_all(&out);
            }
            channel.usage.calls.fetch_add(1, Ordering::Relaxed);
            channel.usage.errors.fetch_add(1, Ordering::Relaxed);
            self.tell_host(
                &channel.provider,
                DirectNews::Overdue {
                    deadline_ms: channel.deadline.as_millis() as u64,
                },
            );
        }
    }

    /// Sends the host news of `provider`'s direct channels (a frame with id 0).
    fn tell_host(&self, provider: &str, news: DirectNews) {
        let message = ProviderResponse {
            id: 0,
            reply: ProviderReply::Direct {
                provider: provider.to_string(),
                news,
            },
        };
        let mut frame = Vec::new();
        if encode_frame(self.encoding, &message, MAX_FRAME, &mut frame).is_ok() {
            let mut out = self.output.locked();
            let _ = out.write_all(&frame);
        }
    }
}

/// Writes the answer to request `id` on `channel` (an answer that cannot be encoded
/// becomes an error saying so), using `out` for the frame.
fn reply(
    channel: &Channel,
    id: u32,
    result: Result<Response, RemoteError>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    let outcome = match result {
        Ok(response) => Outcome::Ok(response),
        Err(error) => Outcome::Err(error),
    };
    if let Err(e) = encode_server_frame(
        Encoding::Binary,
        &ServerMessage::Reply { id, outcome },
        MAX_FRAME,
        out,
    ) {
        out.clear();
        let error = channel.offers().error(
            ErrorCode::ProviderFailed,
            format!("cannot encode the reply: {e}"),
        );
        let reply = ServerMessage::Reply {
            id,
            outcome: Outcome::Err(error),
        };
        let _ = encode_frame(Encoding::Binary, &reply, MAX_FRAME, out);
    }
    channel.writer.locked().write_all(out)
}

/// The attach socket the host gave this worker (`PURVEYOR_ATTACH_FD`), if any; the
/// variable is removed so the providers' own children do not see it.
pub(super) fn attach_socket() -> Option<UnixStream> {
    let fd: i32 = std::env::var("PURVEYOR_ATTACH_FD").ok()?.parse().ok()?;
    // SAFETY: removing a variable while no other thread runs (the worker's threads start
    // after this).
    unsafe { std::env::remove_var("PURVEYOR_ATTACH_FD") };
    // SAFETY: the host put the socket on this descriptor for this process alone; the
    // worker takes it once, here. Close-on-exec keeps it from the providers' children.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return None;
        }
        Some(UnixStream::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests;
