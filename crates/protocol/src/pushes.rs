//! A bounded queue of pushes, with counted loss: what the server keeps per connection and
//! the async client per connection.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::Push;

/// At most `capacity` pushes; a push offered to a full queue is dropped and counted for
/// its handle, and [`PushQueue::take`] reports the count as [`Push::Lost`] after every
/// push queued before the loss.
pub struct PushQueue {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u32, Push)>,
    /// Drops not yet reported, by handle, in the order they first happened.
    lost: Vec<(u32, u64)>,
}

impl PushQueue {
    pub fn new(capacity: usize) -> Self {
        PushQueue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
        }
    }

    /// Queues a push; `false` (and the drop counted for `handle`) when the queue is full.
    pub fn offer(&self, handle: u32, push: Push) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.queue.len() < self.capacity {
            state.queue.push_back((handle, push));
            return true;
        }
        match state.lost.iter_mut().find(|(h, _)| *h == handle) {
            Some((_, n)) => *n += 1,
            None => state.lost.push((handle, 1)),
        }
        false
    }

    /// Takes every queued push, followed by the loss reports.
    pub fn take(&self) -> Vec<(u32, Push)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u32, Push)> = state.queue.drain(..).collect();
        out.extend(
            state
                .lost
                .drain(..)
                .map(|(handle, dropped)| (handle, Push::Lost { dropped })),
        );
        out
    }
}
