//! Events: subscriptions, fan-out, and the bounded queue of each session.
//!
//! A provider raises events in the reply to a put, delete or call ([`RaisedEvent`]); the
//! engine checks them against the class's schema and hands them to the [`EventBus`], which
//! offers each to every subscription of that class whose event name and filter match.
//!
//! **Invariant:** publishing never blocks and never grows memory without bound. Each
//! session (a connection, or an embedded client) has one queue of at most
//! `HostConfig::event_queue` events; an event offered to a full queue is dropped and
//! counted for its subscription, and the session is sent [`Push::Lost`] with the count
//! before any later event, so a slow subscriber learns exactly how many it missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use purveyor_model::{ClassPath, Condition, Identifier, matches_all};
use purveyor_protocol::{Push, PushQueue, RaisedEvent};
use purveyor_provider::Caller;

/// Every subscription in a host.
#[derive(Default)]
pub(crate) struct EventBus {
    next_handle: AtomicU32,
    subs: RwLock<Subs>,
    /// Events queued for a subscriber, and events dropped for a full queue.
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Subs {
    by_class: HashMap<ClassPath, Vec<Arc<Subscription>>>,
    by_handle: HashMap<u32, ClassPath>,
}

struct Subscription {
    handle: u32,
    event: Option<Identifier>,
    filter: Vec<Condition>,
    sink: Arc<EventSink>,
    /// Dropped with the subscription (the engine's hold on the provider).
    _hold: Box<dyn Send + Sync>,
}

/// One session's queues of pushes, and their wake-up: events (bounded, with counted
/// loss) and dialog messages (never dropped; bounded by refusing new dialogs).
pub struct EventSink {
    queue: PushQueue,
    reliable: std::sync::Mutex<std::collections::VecDeque<(u32, Push)>>,
    /// Set by every offer, cleared by `take`: a reply checks it before taking the locks.
    pending: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    /// The subscriptions this session holds (`conn.subscriptions` bounds them).
    subscriptions: std::sync::atomic::AtomicUsize,
}

/// Dialog messages queued for a session that does not read; more refuse or close dialogs.
const RELIABLE_MAX: usize = 65_536;

/// A client's session with the host: who it is, and the queue its subscriptions and
/// dialogs fill. Dropping it ends its subscriptions, its dialogs and its agent.
pub struct Session {
    pub caller: Caller,
    /// The streams this session opened (closed when it ends).
    pub io: crate::io::SessionIo,
    /// Its dialogs' side.
    pub ui: crate::dialogs::SessionUi,
    sink: Arc<EventSink>,
    bus: Arc<EventBus>,
    dialogs: Arc<crate::dialogs::DialogHub>,
}

impl EventBus {
    /// Adds a subscription for `sink`; returns its handle (never 0).
    pub fn subscribe(
        &self,
        class: ClassPath,
        event: Option<Identifier>,
        filter: Vec<Condition>,
        sink: &Arc<EventSink>,
        hold: Box<dyn Send + Sync>,
    ) -> u32 {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        let handle = loop {
            let h = self
                .next_handle
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if h != 0 && !subs.by_handle.contains_key(&h) {
                break h;
            }
        };
        subs.by_handle.insert(handle, class.clone());
        sink.subscriptions.fetch_add(1, Ordering::Relaxed);
        subs.by_class
            .entry(class)
            .or_default()
            .push(Arc::new(Subscription {
                handle,
                event,
                filter,
                sink: sink.clone(),
                _hold: hold,
            }));
        handle
    }

    /// Ends subscription `handle` if `sink` owns it; whether it did.
    pub fn unsubscribe(&self, handle: u32, sink: &Arc<EventSink>) -> bool {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        let Some(class) = subs.by_handle.get(&handle).cloned() else {
            return false;
        };
        let Some(list) = subs.by_class.get_mut(&class) else {
            return false;
        };
        let Some(at) = list
            .iter()
            .position(|s| s.handle == handle && Arc::ptr_eq(&s.sink, sink))
        else {
            return false;
        };
        list.swap_remove(at);
        if list.is_empty() {
            subs.by_class.remove(&class);
        }
        subs.by_handle.remove(&handle);
        sink.subscriptions.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Ends every subscription of `sink`.
    fn unsubscribe_all(&self, sink: &Arc<EventSink>) {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        let Subs {
            by_class,
            by_handle,
        } = &mut *subs;
        by_class.retain(|_, list| {
            list.retain(|s| {
                let mine = Arc::ptr_eq(&s.sink, sink);
                if mine {
                    by_handle.remove(&s.handle);
                }
                !mine
            });
            !list.is_empty()
        });
        sink.subscriptions.store(0, Ordering::Relaxed);
    }

    /// Whether anyone subscribes to `class` (so a provider's events are worth checking).
    pub fn has_subscribers(&self, class: &ClassPath) -> bool {
        self.subs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_class
            .contains_key(class)
    }

    /// Offers `event` to every matching subscription.
    pub fn publish(&self, event: &RaisedEvent) {
        let subs = self.subs.read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = subs.by_class.get(&event.class) else {
            return;
        };
        for sub in list {
            if sub.event.as_ref().is_some_and(|e| *e != event.event)
                || !matches_all(&sub.filter, &event.data)
            {
                continue;
            }
            let push = Push::Event {
                class: event.class.clone(),
                event: event.event.clone(),
                data: event.data.clone(),
            };
            if sub.sink.offer(sub.handle, push) {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn subscriptions(&self) -> usize {
        self.subs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_handle
            .len()
    }
}

impl EventSink {
    pub(crate) fn new(capacity: usize) -> Self {
        EventSink {
            queue: PushQueue::new(capacity),
            reliable: Default::default(),
            pending: Default::default(),
            notify: tokio::sync::Notify::new(),
            subscriptions: Default::default(),
        }
    }

    /// Queues a push; `false` (and the drop counted) when the queue is full.
    fn offer(&self, handle: u32, push: Push) -> bool {
        let queued = self.queue.offer(handle, push);
        // Set even for a drop: the loss report is pending.
        self.pending.store(true, Ordering::Release);
        self.notify.notify_one();
        queued
    }

    /// Queues a dialog message, which is never dropped; `false` when the session has
    /// [`RELIABLE_MAX`] waiting (it is not reading).
    pub(crate) fn offer_reliable(&self, handle: u32, push: Push) -> bool {
        let mut reliable = self.reliable.lock().unwrap_or_else(|p| p.into_inner());
        if reliable.len() >= RELIABLE_MAX {
            return false;
        }
        reliable.push_back((handle, push));
        drop(reliable);
        self.pending.store(true, Ordering::Release);
        self.notify.notify_one();
        true
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
        let mut out: Vec<(u32, Push)> = self
            .reliable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
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

impl Session {
    pub(crate) fn new(
        caller: Caller,
        bus: Arc<EventBus>,
        capacity: usize,
        dialogs: Arc<crate::dialogs::DialogHub>,
    ) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let sink = Arc::new(EventSink::new(capacity));
        Session {
            caller: caller.clone(),
            io: Default::default(),
            ui: crate::dialogs::SessionUi::new(
                NEXT.fetch_add(1, Ordering::Relaxed),
                caller,
                sink.clone(),
            ),
            sink,
            bus,
            dialogs,
        }
    }

    /// The client has gone (its connection closed): its dialogs close now, with the
    /// providers told, even while its calls are still finishing.
    pub fn client_gone(&self) {
        self.dialogs.session_gone(&self.ui);
    }

    /// The queue this session's subscriptions fill.
    pub fn sink(&self) -> &Arc<EventSink> {
        &self.sink
    }

    /// Whether the session holds something that lives between requests (a subscription,
    /// an open stream, a UI agent's registration): then its connection is never idle.
    pub fn holds_state(&self) -> bool {
        self.sink.subscriptions() > 0 || self.io.open_streams() > 0 || self.ui.is_agent()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.bus.unsubscribe_all(&self.sink);
        self.dialogs.session_gone(&self.ui);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::{CompareOp, Instance, Value};

    fn raised(n: u64) -> RaisedEvent {
        RaisedEvent {
            class: ClassPath::new("config.setting").unwrap(),
            event: Identifier::new("changed").unwrap(),
            data: Instance::from_pairs([("n", Value::U64(n))]),
        }
    }

    fn numbers(pushes: &[(u32, Push)]) -> Vec<String> {
        pushes
            .iter()
            .map(|(_, p)| match p {
                Push::Event { data, .. } => data.get("n").unwrap().to_string(),
                Push::Lost { dropped } => format!("lost {dropped}"),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn filters_select_and_a_full_queue_counts_what_it_drops() {
        let bus = Arc::new(EventBus::default());
        let caller = Caller::current_process();
        let hub = Arc::new(crate::dialogs::DialogHub::new(Arc::new(
            crate::access::AccessPolicy::defaults(),
        )));
        let slow = Session::new(caller.clone(), bus.clone(), 3, hub.clone());
        let picky = Session::new(caller, bus.clone(), 100, hub);
        let class = ClassPath::new("config.setting").unwrap();
        let h1 = bus.subscribe(class.clone(), None, vec![], slow.sink(), Box::new(()));
        let even = Condition {
            property: Identifier::new("n").unwrap(),
            op: CompareOp::Ge,
            value: Value::U64(8),
        };
        bus.subscribe(class.clone(), None, vec![even], picky.sink(), Box::new(()));
        for n in 0..10 {
            bus.publish(&raised(n));
        }
        assert_eq!(numbers(&slow.sink().take()), ["0", "1", "2", "lost 7"]);
        assert_eq!(numbers(&picky.sink().take()), ["8", "9"]);
        assert_eq!(bus.dropped.load(Ordering::Relaxed), 7);
        bus.publish(&raised(10));
        assert_eq!(numbers(&slow.sink().take()), ["10"]);
        // Only the owner can end a subscription; a dropped session ends its own.
        assert!(!bus.unsubscribe(h1, picky.sink()));
        assert!(bus.unsubscribe(h1, slow.sink()));
        assert_eq!(bus.subscriptions(), 1);
        drop(picky);
        assert_eq!(bus.subscriptions(), 0);
        assert!(!bus.has_subscribers(&class));
    }
}
