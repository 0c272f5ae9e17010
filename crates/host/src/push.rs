//! A session's pushes: the one place a session's events and dialog messages wait for its
//! client, and the wake-up that tells the connection (or the embedded client) to look.
//!
//! A leaf: events and dialogs each put into a sink, neither knows the other.
//!
//! **Invariants.** Events go on a bounded queue: offered to a full queue, one is dropped
//! and counted, and the client is told how many it lost before any later event. Dialog
//! messages are never dropped; at most [`RELIABLE_MAX`] wait, and a dialog that would add
//! one more is refused or closed instead. At most [`CHANNELS_MAX`] direct dialog channels
//! wait for their pushes to be written; a dialog past it goes through the daemon.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use purveyor_hosting::lock::Locked;
use purveyor_protocol::{Push, PushQueue};

/// One session's queues of pushes, and their wake-up: events (bounded, with counted
/// loss) and dialog messages (never dropped; bounded by refusing new dialogs).
pub struct PushSink {
    queue: PushQueue,
    reliable: std::sync::Mutex<std::collections::VecDeque<(u32, Push)>>,
    /// Set by every offer, cleared by `take`: a reply checks it before taking the locks.
    pending: AtomicBool,
    notify: tokio::sync::Notify,
    /// The subscriptions this session holds (`conn.subscriptions` bounds them).
    subscriptions: AtomicUsize,
    /// Dialogs' direct channels (the application's ends), each until its
    /// `dialog_channel` push is written: the descriptor rides on it.
    channels: std::sync::Mutex<std::collections::HashMap<u32, std::os::fd::OwnedFd>>,
}

/// Dialog messages queued for a session that does not read; more refuse or close dialogs.
const RELIABLE_MAX: usize = 65_536;
/// Direct dialog channels (descriptors) waiting for a session to read their pushes; more
/// dialogs go through the daemon (`docs/dialogs.md`, "Direct channels").
pub(crate) const CHANNELS_MAX: usize = 64;

impl PushSink {
    pub(crate) fn new(capacity: usize) -> Self {
        PushSink {
            queue: PushQueue::new(capacity),
            reliable: Default::default(),
            pending: Default::default(),
            notify: tokio::sync::Notify::new(),
            subscriptions: Default::default(),
            channels: Default::default(),
        }
    }

    /// Queues dialog `handle`'s `dialog_channel` push with `channel`, the descriptor the
    /// connection sends with it; `false` when the session is not reading.
    pub(crate) fn offer_channel(&self, handle: u32, channel: std::os::fd::OwnedFd) -> bool {
        let mut channels = self.channels.locked();
        // A session that does not read would otherwise make the daemon hold a descriptor
        // per dialog: past the bound its dialogs go through the daemon.
        if channels.len() >= CHANNELS_MAX {
            return false;
        }
        channels.insert(handle, channel);
        drop(channels);
        if self.offer_reliable(handle, Push::DialogChannel) {
            return true;
        }
        self.channels.locked().remove(&handle);
        false
    }

    /// The descriptor of dialog `handle`'s `dialog_channel` push, once.
    pub fn take_channel(&self, handle: u32) -> Option<std::os::fd::OwnedFd> {
        self.channels.locked().remove(&handle)
    }

    /// Queues a push; `false` (and the drop counted) when the queue is full.
    pub(crate) fn offer(&self, handle: u32, push: Push) -> bool {
        let queued = self.queue.offer(handle, push);
        // Set even for a drop: the loss report is pending.
        self.pending.store(true, Ordering::Release);
        self.notify.notify_one();
        queued
    }

    /// Queues a dialog message, which is never dropped; `false` when the session has
    /// [`RELIABLE_MAX`] waiting (it is not reading).
    pub(crate) fn offer_reliable(&self, handle: u32, push: Push) -> bool {
        let mut reliable = self.reliable.locked();
        if reliable.len() >= RELIABLE_MAX {
            return false;
        }
        reliable.push_back((handle, push));
        drop(reliable);
        self.pending.store(true, Ordering::Release);
        self.notify.notify_one();
        true
    }

    /// Counts a subscription added (`1`) or ended (`-1`) for this session.
    pub(crate) fn count_subscriptions(&self, change: isize) {
        if change >= 0 {
            self.subscriptions
                .fetch_add(change as usize, Ordering::Relaxed);
        } else {
            self.subscriptions
                .fetch_sub(change.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// The subscriptions this session holds.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Takes every queued push: dialog messages, then events, followed by the loss
    /// reports (each loss happened after every event queued before it).
    pub fn take(&self) -> Vec<(u32, Push)> {
        // Cleared before draining: an offer racing with this take sets it again.
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut out: Vec<(u32, Push)> = self.reliable.locked().drain(..).collect();
        if out.is_empty() {
            return self.queue.take();
        }
        out.extend(self.queue.take());
        out
    }

    /// Waits until something may be queued (a wake-up may find nothing).
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}
