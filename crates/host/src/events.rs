//! Events: subscriptions and their fan-out into each session's [`PushSink`].
//!
//! A provider raises events in the reply to a put, delete or call ([`RaisedEvent`]); the
//! host checks them against the class's schema (`outcomes::deliver`) and hands them to the [`EventBus`], which
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

use purveyor_hosting::lock::RwLocked;
use purveyor_model::{ClassPath, Condition, Identifier, matches_all};
use purveyor_protocol::{Push, RaisedEvent};

use crate::push::PushSink;

/// Every subscription in a host.
#[derive(Default)]
pub(crate) struct EventBus {
    next_handle: AtomicU32,
    subs: RwLock<Subs>,
    /// Events queued for a subscriber, and events dropped for a full queue.
    delivered: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Subs {
    by_class: HashMap<ClassPath, Vec<Arc<Subscription>>>,
    by_handle: HashMap<u32, ClassPath>,
    /// Change subscriptions, by what their poll is ([`WatchKey`]), and by handle.
    watches: HashMap<WatchKey, Arc<Watch>>,
    watched: HashMap<u32, WatchKey>,
}

impl Subs {
    /// A handle no subscription of either kind has (never 0).
    fn new_handle(&self, next: &AtomicU32) -> u32 {
        loop {
            let h = next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if h != 0 && !self.by_handle.contains_key(&h) && !self.watched.contains_key(&h) {
                return h;
            }
        }
    }
}

/// Removes from `list` the subscription `handle` if `sink` owns it; whether it did.
fn remove_owned<T>(
    list: &mut Vec<Arc<T>>,
    owner: impl Fn(&T) -> (u32, &Arc<PushSink>),
    handle: u32,
    sink: &Arc<PushSink>,
) -> bool {
    let Some(at) = list.iter().position(|s| {
        let (h, owner) = owner(s);
        h == handle && Arc::ptr_eq(owner, sink)
    }) else {
        return false;
    };
    list.swap_remove(at);
    true
}

/// What a class is polled as, and how often: change subscriptions with the same key share
/// one poll. The caller is part of it (uid, gid and groups), because a provider may show
/// different callers different instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct WatchKey {
    pub class: ClassPath,
    pub interval_ms: u64,
    pub caller: String,
}

/// The change subscriptions of one [`WatchKey`], shared with its poller.
#[derive(Default)]
pub(crate) struct Watch {
    subs: RwLock<Vec<Arc<ChangeSub>>>,
}

/// One change subscription (`docs/query.md`, "Change events").
pub(crate) struct ChangeSub {
    pub handle: u32,
    pub filter: Vec<Condition>,
    pub counters: bool,
    pub sink: Arc<PushSink>,
    /// Dropped with the subscription (its hold on the provider: a `SlotPin`).
    _hold: Box<dyn Send + Sync>,
}

impl Watch {
    pub fn subscribers(&self) -> Vec<Arc<ChangeSub>> {
        self.subs.read_locked().clone()
    }

    /// No subscriber is left: its poller stops.
    pub fn ended(&self) -> bool {
        self.subs.read_locked().is_empty()
    }
}

struct Subscription {
    handle: u32,
    event: Option<Identifier>,
    filter: Vec<Condition>,
    sink: Arc<PushSink>,
    /// Dropped with the subscription (its hold on the provider: a `SlotPin`).
    _hold: Box<dyn Send + Sync>,
}

impl EventBus {
    /// Adds a subscription for `sink`; returns its handle (never 0).
    pub fn subscribe(
        &self,
        class: ClassPath,
        event: Option<Identifier>,
        filter: Vec<Condition>,
        sink: &Arc<PushSink>,
        hold: Box<dyn Send + Sync>,
    ) -> u32 {
        let mut subs = self.subs.write_locked();
        let handle = subs.new_handle(&self.next_handle);
        subs.by_handle.insert(handle, class.clone());
        sink.count_subscriptions(1);
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

    /// Adds a change subscription to the poll `key`; returns its handle, and the poll's
    /// [`Watch`] when it is new (the caller starts its poller).
    pub fn watch_changes(
        &self,
        key: WatchKey,
        filter: Vec<Condition>,
        counters: bool,
        sink: &Arc<PushSink>,
        hold: Box<dyn Send + Sync>,
    ) -> (u32, Option<Arc<Watch>>) {
        let mut subs = self.subs.write_locked();
        let handle = subs.new_handle(&self.next_handle);
        let mut new = None;
        let watch = subs
            .watches
            .entry(key.clone())
            .or_insert_with(|| {
                let watch = Arc::new(Watch::default());
                new = Some(watch.clone());
                watch
            })
            .clone();
        watch.subs.write_locked().push(Arc::new(ChangeSub {
            handle,
            filter,
            counters,
            sink: sink.clone(),
            _hold: hold,
        }));
        subs.watched.insert(handle, key);
        sink.count_subscriptions(1);
        (handle, new)
    }

    /// Queues a change for its subscriber, counted as an event delivered or dropped.
    pub fn offer_change(&self, sub: &ChangeSub, push: Push) {
        if sub.sink.offer(sub.handle, push) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends change subscription `handle` if `sink` owns it; whether it did. A watch left
    /// with no subscriber is removed, and its poller stops.
    fn unwatch(subs: &mut Subs, handle: u32, sink: &Arc<PushSink>) -> bool {
        let Some(key) = subs.watched.get(&handle).cloned() else {
            return false;
        };
        let Some(watch) = subs.watches.get(&key).cloned() else {
            return false;
        };
        let mut list = watch.subs.write_locked();
        if !remove_owned(&mut list, |s| (s.handle, &s.sink), handle, sink) {
            return false;
        }
        if list.is_empty() {
            subs.watches.remove(&key);
        }
        subs.watched.remove(&handle);
        sink.count_subscriptions(-1);
        true
    }

    /// Ends subscription `handle` if `sink` owns it; whether it did.
    pub fn unsubscribe(&self, handle: u32, sink: &Arc<PushSink>) -> bool {
        let mut subs = self.subs.write_locked();
        if subs.watched.contains_key(&handle) {
            return Self::unwatch(&mut subs, handle, sink);
        }
        let Some(class) = subs.by_handle.get(&handle).cloned() else {
            return false;
        };
        let Some(list) = subs.by_class.get_mut(&class) else {
            return false;
        };
        if !remove_owned(list, |s| (s.handle, &s.sink), handle, sink) {
            return false;
        }
        if list.is_empty() {
            subs.by_class.remove(&class);
        }
        subs.by_handle.remove(&handle);
        sink.count_subscriptions(-1);
        true
    }

    /// Ends every subscription of `sink`.
    pub(crate) fn unsubscribe_all(&self, sink: &Arc<PushSink>) {
        let mut subs = self.subs.write_locked();
        let mine: Vec<u32> = subs
            .watches
            .values()
            .flat_map(|w| {
                w.subs
                    .read_locked()
                    .iter()
                    .filter(|s| Arc::ptr_eq(&s.sink, sink))
                    .map(|s| s.handle)
                    .collect::<Vec<_>>()
            })
            .collect();
        for handle in mine {
            Self::unwatch(&mut subs, handle, sink);
        }
        let Subs {
            by_class,
            by_handle,
            ..
        } = &mut *subs;
        let mut ended = 0;
        by_class.retain(|_, list| {
            list.retain(|s| {
                let mine = Arc::ptr_eq(&s.sink, sink);
                if mine {
                    by_handle.remove(&s.handle);
                    ended += 1;
                }
                !mine
            });
            !list.is_empty()
        });
        sink.count_subscriptions(-ended);
    }

    /// Whether anyone subscribes to `class` (so a provider's events are worth checking).
    pub fn has_subscribers(&self, class: &ClassPath) -> bool {
        self.subs.read_locked().by_class.contains_key(class)
    }

    /// Offers `event` to every matching subscription.
    pub fn publish(&self, event: &RaisedEvent) {
        let subs = self.subs.read_locked();
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

    /// Events queued for a subscriber since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Events dropped for a full queue since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn subscriptions(&self) -> usize {
        let subs = self.subs.read_locked();
        subs.by_handle.len() + subs.watched.len()
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
        let bus = EventBus::default();
        let slow = Arc::new(PushSink::new(3));
        let picky = Arc::new(PushSink::new(100));
        let class = ClassPath::new("config.setting").unwrap();
        let h1 = bus.subscribe(class.clone(), None, vec![], &slow, Box::new(()));
        let even = Condition {
            property: Identifier::new("n").unwrap(),
            op: CompareOp::Ge,
            value: Value::U64(8),
        };
        bus.subscribe(class.clone(), None, vec![even], &picky, Box::new(()));
        for n in 0..10 {
            bus.publish(&raised(n));
        }
        assert_eq!(numbers(&slow.take()), ["0", "1", "2", "lost 7"]);
        assert_eq!(numbers(&picky.take()), ["8", "9"]);
        assert_eq!(bus.dropped(), 7);
        bus.publish(&raised(10));
        assert_eq!(numbers(&slow.take()), ["10"]);
        // Only the owner can end a subscription.
        assert!(!bus.unsubscribe(h1, &picky));
        assert!(bus.unsubscribe(h1, &slow));
        assert_eq!((bus.subscriptions(), slow.subscriptions()), (1, 0));
        bus.unsubscribe_all(&picky);
        assert_eq!((bus.subscriptions(), picky.subscriptions()), (0, 0));
        assert!(!bus.has_subscribers(&class));
    }
}
