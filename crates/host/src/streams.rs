//! A session's streams: where each lives, the descriptors waiting to be passed to its
//! client, and the slots that bound the built-in procedures' blocking calls.
//!
//! **Invariants:** a stream whose client has gone is closed by its procedure, as the
//! client that opened it, without the host waiting for it. A stream's requests run one at
//! a time in the order they arrived, however many its client sent ahead: each takes its
//! [`Turns`] ticket synchronously, on its future's first poll, and the connection polls
//! new requests first in arrival order (`FuturesUnordered` runs newly pushed futures
//! first-in first-out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use purveyor_hosting::ProcedureServer;
use purveyor_hosting::lock::Locked;
use purveyor_hosting::procedures::close_off_thread;
use purveyor_protocol::{ErrorCode, RemoteError};

/// Where a session's stream lives.
pub(crate) enum StreamTarget {
    /// The host's built-ins.
    Builtin(Arc<ProcedureServer>),
    /// A provider's procedure (in the daemon or in its process), loaded as `loaded`.
    Provider {
        slot: Arc<crate::slot::Slot>,
        loaded: Arc<crate::slot::Loaded>,
        _pin: crate::slot::SlotPin,
    },
}

/// One stream a session opened.
pub(crate) struct SessionStream {
    /// The name it was opened by, for messages (empty for a delete or rename).
    pub(crate) name: String,
    pub(crate) target: StreamTarget,
    /// The stream's id in its procedure server.
    pub(crate) id: u32,
    /// Whose turn it is: requests sent ahead wait for the ones before them.
    pub(crate) turns: Turns,
}

impl SessionStream {
    pub(crate) fn new(name: String, target: StreamTarget) -> Self {
        SessionStream {
            name,
            target,
            id: 0,
            turns: Turns::default(),
        }
    }
}

/// Tickets that order a stream's requests: a request takes one when it arrives
/// ([`Turns::take`]) and runs when every earlier ticket has been served or dropped.
#[derive(Default)]
pub(crate) struct Turns {
    state: Mutex<TurnState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct TurnState {
    next: u64,
    serving: u64,
    /// Tickets dropped before their turn (their requests were abandoned).
    skipped: std::collections::BTreeSet<u64>,
}

/// One request's place in its stream's line; dropping it lets the next one go.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    ticket: u64,
}

impl Turns {
    /// A ticket behind every one taken before it.
    pub(crate) fn take(&self) -> Turn<'_> {
        let mut state = self.state.locked();
        let ticket = state.next;
        state.next += 1;
        Turn {
            turns: self,
            ticket,
        }
    }
}

impl Turn<'_> {
    /// Waits until every earlier ticket has been served or dropped.
    pub(crate) async fn wait(&self) {
        loop {
            let changed = self.turns.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.turns.state.locked().serving == self.ticket {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.turns.state.locked();
        if state.serving != self.ticket {
            state.skipped.insert(self.ticket);
            return;
        }
        let mut serving = self.ticket + 1;
        while state.skipped.remove(&serving) {
            serving += 1;
        }
        state.serving = serving;
        drop(state);
        self.turns.changed.notify_waiters();
    }
}

/// A session's streams and the descriptors waiting to be passed to its client.
#[derive(Default)]
pub struct SessionIo {
    streams: Mutex<HashMap<u32, Arc<SessionStream>>>,
    next: AtomicU32,
    fds: Mutex<HashMap<u32, std::os::fd::OwnedFd>>,
    /// Whether this session's connection can carry descriptors (a Unix socket).
    pass_fds: std::sync::atomic::AtomicBool,
    /// Replies whose bytes wait in a pipe, by request id ([`crate::pipes`]).
    spliced: Mutex<HashMap<u32, crate::pipes::Spliced>>,
}

impl SessionIo {
    fn handle(&self, taken: impl Fn(u32) -> bool) -> u32 {
        loop {
            let h = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if h != 0 && !taken(h) {
                return h;
            }
        }
    }

    pub(crate) fn insert(&self, stream: SessionStream) -> u32 {
        let mut streams = self.streams.locked();
        let h = self.handle(|h| streams.contains_key(&h));
        streams.insert(h, Arc::new(stream));
        h
    }

    pub(crate) fn get(&self, handle: u32) -> Option<Arc<SessionStream>> {
        self.streams.locked().get(&handle).cloned()
    }

    pub(crate) fn remove(&self, handle: u32) -> Option<Arc<SessionStream>> {
        self.streams.locked().remove(&handle)
    }

    pub fn open_streams(&self) -> usize {
        self.streams.locked().len()
    }

    /// Lets the host hand this session's client file descriptors.
    pub fn allow_fds(&self) {
        self.pass_fds.store(true, Ordering::Relaxed);
    }

    pub(crate) fn fds_allowed(&self) -> bool {
        self.pass_fds.load(Ordering::Relaxed)
    }

    /// Keeps a descriptor until the server sends it with the reply naming `token`.
    pub(crate) fn stash_fd(&self, fd: std::os::fd::OwnedFd) -> u32 {
        let mut fds = self.fds.locked();
        let token = self.handle(|h| fds.contains_key(&h));
        fds.insert(token, fd);
        token
    }

    /// Keeps the bytes of request `rid`'s reply, in a pipe, until the server sends them.
    pub(crate) fn stash_spliced(&self, rid: u32, spliced: crate::pipes::Spliced) {
        self.spliced.locked().insert(rid, spliced);
    }

    /// The bytes of request `rid`'s reply, if they wait in a pipe.
    pub(crate) fn take_spliced(&self, rid: u32) -> Option<crate::pipes::Spliced> {
        let mut spliced = self.spliced.locked();
        if spliced.is_empty() {
            return None;
        }
        spliced.remove(&rid)
    }

    /// The descriptor for the reply with `token` (the server sends it along).
    pub fn take_fd(&self, token: u32) -> Option<std::os::fd::OwnedFd> {
        self.fds.locked().remove(&token)
    }
}

impl Drop for SessionIo {
    /// The client went away: its streams are closed (finished) by their procedures.
    fn drop(&mut self) {
        let streams = std::mem::take(&mut *self.streams.locked());
        for (_, stream) in streams {
            close_abandoned(stream);
        }
    }
}

/// Closes a stream whose client is gone, without waiting for it.
fn close_abandoned(stream: Arc<SessionStream>) {
    let id = stream.id;
    match &stream.target {
        StreamTarget::Builtin(server) => close_off_thread(server.clone(), id),
        StreamTarget::Provider { loaded, slot, .. } => {
            let timeout = slot.manifest().call_timeout;
            loaded.hosted().close_abandoned(id, timeout, stream.clone());
        }
    }
}

/// The built-in procedures' calls running at once: at most `io.ops_per_user` per user and
/// `io.ops_total` in all, so that a user whose calls are stuck (a file on a hung NFS
/// server) holds only their own slots, never every blocking thread.
pub(crate) struct IoSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_user: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
}

/// A call's slots: its user's and one of the total.
pub(crate) struct IoPermits {
    _user: tokio::sync::OwnedSemaphorePermit,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl IoSlots {
    pub(crate) fn new(limits: &crate::config::Limits) -> Self {
        IoSlots {
            total: Arc::new(tokio::sync::Semaphore::new(limits.io_ops_total as usize)),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// Waits (at most `io.op_time`) for a slot of `uid`'s and one of the total.
    pub(crate) async fn acquire(
        &self,
        uid: u32,
        limits: &crate::config::Limits,
    ) -> Result<IoPermits, RemoteError> {
        let mine = self
            .per_user
            .locked()
            .entry(uid)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(limits.io_ops_per_user as usize))
            })
            .clone();
        let wait = async {
            let user = mine.acquire_owned().await.ok()?;
            let total = self.total.clone().acquire_owned().await.ok()?;
            Some(IoPermits {
                _user: user,
                _total: total,
            })
        };
        match tokio::time::timeout(limits.io_op_time, wait).await {
            Ok(Some(permits)) => Ok(permits),
            _ => Err(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "no I/O slot came free within {}: uid {uid} may run {} I/O calls at once (io.ops_per_user), everyone {} (io.ops_total)",
                    humantime::format_duration(limits.io_op_time),
                    limits.io_ops_per_user,
                    limits.io_ops_total
                ),
            )),
        }
    }
}
