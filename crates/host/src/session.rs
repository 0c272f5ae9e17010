//! A client's session: everything a connection (or an embedded client) holds in the host
//! between requests — its push sink, its side of dialogs, its streams, its subscriptions —
//! owned here and ended here.
//!
//! **Invariant:** dropping a session ends everything it holds: its subscriptions leave the
//! bus, its dialogs close (providers told why), its agent registration goes, and its
//! streams are closed by their procedures as the client that opened them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use purveyor_provider::Caller;

use crate::dialogs::{DialogHub, SessionUi};
use crate::events::EventBus;
use crate::push::PushSink;
use crate::streams::SessionIo;

/// A client's session with the host. Dropping it ends its subscriptions, its dialogs,
/// its agent and its streams.
pub struct Session {
    caller: Caller,
    sink: Arc<PushSink>,
    ui: SessionUi,
    io: SessionIo,
    bus: Arc<EventBus>,
    dialogs: Arc<DialogHub>,
}

impl Session {
    /// A session for `caller` whose event queue holds `capacity` events.
    pub(crate) fn new(
        caller: Caller,
        capacity: usize,
        bus: Arc<EventBus>,
        dialogs: Arc<DialogHub>,
    ) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let sink = Arc::new(PushSink::new(capacity));
        let ui = SessionUi::new(
            NEXT.fetch_add(1, Ordering::Relaxed),
            caller.clone(),
            sink.clone(),
        );
        Session {
            caller,
            sink,
            ui,
            io: SessionIo::default(),
            bus,
            dialogs,
        }
    }

    /// Who the client is.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The queue its subscriptions and dialogs fill.
    pub fn sink(&self) -> &Arc<PushSink> {
        &self.sink
    }

    /// Whether this session shows in-call dialogs (its hello said `ui`).
    pub fn set_shows(&self, shows: bool) {
        self.ui.set_shows(shows);
    }

    /// Whether its client takes its agent dialogs on direct channels (`docs/dialogs.md`,
    /// "Direct channels"; a local socket's hello asked for them).
    pub fn set_direct_dialogs(&self, direct: bool) {
        self.ui.set_direct(direct);
    }

    /// Whether its client shows in-call dialogs.
    pub fn shows(&self) -> bool {
        self.ui.shows()
    }

    /// Lets the host hand this session's client file descriptors (a local Unix socket).
    pub fn allow_fds(&self) {
        self.io.allow_fds();
    }

    /// The descriptor a reply with `token` promises (the server sends it along).
    pub fn take_fd(&self, token: u32) -> Option<std::os::fd::OwnedFd> {
        self.io.take_fd(token)
    }

    pub(crate) fn ui(&self) -> &SessionUi {
        &self.ui
    }

    pub(crate) fn streams(&self) -> &SessionIo {
        &self.io
    }

    /// The client has gone (its connection closed): its dialogs close now, with the
    /// providers told, even while its calls are still finishing.
    pub fn client_gone(&self) {
        self.dialogs.session_gone(&self.ui);
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
        // `io` drops after this: its streams are closed by their procedures.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use purveyor_model::ClassPath;

    #[test]
    fn a_dropped_session_ends_its_subscriptions_and_its_agent() {
        let bus = Arc::new(EventBus::default());
        let hub = Arc::new(DialogHub::new(Arc::new(
            purveyor_hosting::lock::Current::new(Arc::new(crate::access::AccessPolicy::defaults())),
        )));
        let session = Session::new(Caller::current_process(), 8, bus.clone(), hub.clone());
        let other = Session::new(Caller::current_process(), 8, bus.clone(), hub.clone());
        let class = ClassPath::new("config.setting").unwrap();
        bus.subscribe(class.clone(), None, vec![], session.sink(), Box::new(()));
        bus.subscribe(class.clone(), None, vec![], other.sink(), Box::new(()));
        hub.register_agent(session.ui());
        assert!(session.holds_state());
        assert_eq!((bus.subscriptions(), hub.agents()), (2, 1));
        drop(session);
        assert_eq!((bus.subscriptions(), hub.agents()), (1, 0));
        assert!(bus.has_subscribers(&class));
        drop(other);
        assert!(!bus.has_subscribers(&class));
    }
}
