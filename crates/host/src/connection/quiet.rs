//! A connection's requests in flight, polled without `FuturesUnordered`'s self-wake.
//!
//! `FuturesUnordered::poll_next` wakes its own task whenever it has polled every future it
//! holds and none was ready ("to avoid starving other tasks"). A connection with one
//! request waiting on a provider hits that on the request's first poll, every request:
//! the woken connection task is put back on the runtime's queue as a yield, and the
//! multi-threaded runtime wakes another worker thread to steal it. On a machine whose idle
//! CPUs halt, that wake-up alone costs more than the request, and the reply is then
//! handled on the other thread (`docs/performance.md`, "Placement").
//!
//! [`Quiet`] polls the set with a waker of its own that, while the set is being polled,
//! only notes a wake. A wake noted that way means some future may be ready to run (or the
//! set yielded): the set is polled again, up to [`ROUNDS`] times, and only then is the
//! task woken as the set asked. A wake outside a poll goes straight to the task.
//!
//! Invariant: a wake is never lost. Either it comes while the gate is holding and the set
//! is polled again (or the task woken when the rounds run out or the set answered), or it
//! passes through to the task's waker registered on this poll.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;

/// Polls of the set in one poll of the task before a noted wake is passed on.
const ROUNDS: usize = 4;

const OPEN: u8 = 0;
const HOLDING: u8 = 1;
const HELD: u8 = 2;

struct Gate {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(HOLDING, HELD, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(HELD) => {}
            Err(_) => self.task.wake(),
        }
    }
}

/// The gate between a set of futures and the task that polls it.
pub(crate) struct Quiet {
    gate: Arc<Gate>,
    waker: Waker,
}

impl Quiet {
    pub(crate) fn new() -> Quiet {
        let gate = Arc::new(Gate {
            state: AtomicU8::new(OPEN),
            task: AtomicWaker::new(),
        });
        Quiet {
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// The set's next output, as `FuturesUnordered::poll_next`, without its self-wake.
    pub(crate) fn poll_next<F: Future + Unpin>(
        &self,
        set: &mut FuturesUnordered<F>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        self.gate.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            self.gate.state.store(HOLDING, Ordering::Release);
            let polled = set.poll_next_unpin(&mut inner);
            let held = self.gate.state.swap(OPEN, Ordering::AcqRel) == HELD;
            if !held {
                return polled;
            }
            if polled.is_ready() {
                // Another future may be ready too: the task looks again.
                cx.waker().wake_by_ref();
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The set's next output, as `FuturesUnordered::next`, without its self-wake.
    pub(crate) async fn next<F: Future + Unpin>(
        &self,
        set: &mut FuturesUnordered<F>,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| self.poll_next(set, cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes it gets.
    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_lone_pending_future_does_not_wake_its_task() {
        let (woken, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut set = FuturesUnordered::new();
        set.push(std::future::pending::<()>());
        // FuturesUnordered alone wakes its task here.
        assert!(set.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        let quiet = Quiet::new();
        assert!(quiet.poll_next(&mut set, &mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "no wake of its own");
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task_and_the_output_comes() {
        let (woken, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = futures_channel_like();
        let mut set = FuturesUnordered::new();
        set.push(rx);
        let quiet = Quiet::new();
        assert!(quiet.poll_next(&mut set, &mut cx).is_pending());
        let before = woken.0.load(Ordering::SeqCst);
        std::thread::spawn(move || tx.send(7))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(woken.0.load(Ordering::SeqCst), before + 1);
        assert_eq!(quiet.poll_next(&mut set, &mut cx), Poll::Ready(Some(7)));
    }

    #[test]
    fn a_future_that_always_yields_still_lets_the_task_go() {
        let (woken, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut set = FuturesUnordered::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        set.push(std::future::poll_fn(move |cx| {
            p.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        let quiet = Quiet::new();
        assert!(quiet.poll_next(&mut set, &mut cx).is_pending());
        // Polled a bounded number of times, then the task is woken to come back.
        assert!(polls.load(Ordering::SeqCst) <= ROUNDS * 2);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    /// A one-value channel whose receiver is a future (tokio's oneshot).
    fn futures_channel_like() -> (
        tokio::sync::oneshot::Sender<u32>,
        impl Future<Output = u32> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, Box::pin(async move { rx.await.unwrap() }))
    }
}
