//! Dialogs: the host routes a provider's forms to the application and the answers back
//! (`docs/dialogs.md`).
//!
//! Two sides meet here. A provider side is an [`Origin`] (one per loaded provider that
//! can open dialogs: a library in the daemon, or a provider in a worker or external
//! process), which the hub tells news through its `notify`. A client side is a session's
//! [`SessionUi`]: its pushes go into the session's sink, on the queue that never drops.
//!
//! **Invariants.**
//! - A dialog reaches only the client whose call opened it (in-call) or a UI agent of the
//!   user it is for, or of a user the access policy's `[dialogs]` table allows.
//! - Every dialog ends exactly once, and both sides are told why (the side that closed it
//!   already knows): closed by either side, its deadline, the client's session ending,
//!   the provider's process ending or the provider being released.
//! - Updates sent before the client says the dialog is shown are held (at most
//!   [`MAX_HELD`]) and delivered after the ready signal, in order.
//! - Nothing here logs an input's values.
//! - `notify` is never called with the hub's lock held (it may call into provider code,
//!   which may call back).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use purveyor_hosting::hosted::DialogChannels;
use purveyor_hosting::lock::{Current, Locked};
use purveyor_protocol::{DialogEvent, DialogInput, DialogOp, Form, Push, RemoteError};
use purveyor_provider::Caller;

use crate::access::AccessPolicy;

mod deadlines;
mod table;
#[cfg(test)]
mod tests;
use crate::push::PushSink;
use table::{close, direct_channel, in_call, owned, run};

/// Updates held for a dialog not yet shown; one more closes it.
pub(crate) const MAX_HELD: usize = 256;
/// How long a dialog may stay open when the provider names no deadline.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// How the hub tells a provider about its dialog number `dialog`.
pub(crate) type Notify = Box<dyn Fn(u32, DialogEvent) + Send + Sync>;

/// A provider that can open dialogs.
pub(crate) struct Origin {
    id: u64,
    provider: String,
    notify: Notify,
    /// Hands the provider's worker a dialog's direct channel (a provider in an isolated
    /// worker; `docs/dialogs.md`, "Direct channels").
    channels: Option<DialogChannels>,
    /// Keeps the provider loaded while one of its dialogs is open.
    pin: Box<dyn Fn() -> Box<dyn Send + Sync> + Send + Sync>,
}

/// A session's side: who it is, whether it shows in-call dialogs, and where its pushes go.
pub struct SessionUi {
    id: u64,
    caller: Caller,
    shows: AtomicBool,
    /// Set once the session registered as its user's UI agent.
    agent: AtomicBool,
    /// Its hello asked for direct dialog channels, over a socket that can carry them.
    direct: AtomicBool,
    sink: Arc<PushSink>,
}

impl SessionUi {
    pub(crate) fn new(id: u64, caller: Caller, sink: Arc<PushSink>) -> Self {
        SessionUi {
            id,
            caller,
            shows: AtomicBool::new(false),
            agent: AtomicBool::new(false),
            direct: AtomicBool::new(false),
            sink,
        }
    }

    /// Whether this session takes its agent dialogs on direct channels (its hello asked
    /// for `direct_dialogs` on a local socket).
    pub fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::Relaxed);
    }

    /// Whether this session shows in-call dialogs (its hello said `ui`).
    pub fn set_shows(&self, shows: bool) {
        self.shows.store(shows, Ordering::Relaxed);
    }

    pub fn shows(&self) -> bool {
        self.shows.load(Ordering::Relaxed)
    }

    /// Whether this session registered as a UI agent.
    pub fn is_agent(&self) -> bool {
        self.agent.load(Ordering::Relaxed)
    }
}

/// Every dialog, agent and dialog-capable call of one host.
pub(crate) struct DialogHub {
    next_handle: AtomicU32,
    next_token: AtomicU32,
    next_origin: AtomicU64,
    state: Mutex<State>,
    /// Wakes the deadline thread when an earlier deadline appears.
    wake: Condvar,
    deadline_thread: std::sync::OnceLock<()>,
    /// The policy in force (replaced by a reload), for its `[dialogs]` table.
    access: Arc<Current<AccessPolicy>>,
    /// Dialogs opened, and refused, since start (`purveyor.dialogs`).
    opened: AtomicU64,
    refused: AtomicU64,
    /// Dialogs whose worker took their direct channel (`purveyor.dialogs.direct`).
    direct: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    /// In registration order: the last one of a user wins.
    agents: Vec<Agent>,
    calls: HashMap<u32, CallUi>,
    dialogs: HashMap<u32, Open>,
    by_local: HashMap<(u64, u32), u32>,
    stop: bool,
}

struct Agent {
    handle: u32,
    session: u64,
    uid: u32,
    pid: u32,
    direct: bool,
    sink: Arc<PushSink>,
}

struct CallUi {
    session: u64,
    pid: u32,
    shows: bool,
    request: Option<u32>,
    sink: Arc<PushSink>,
    /// In-call dialogs open now, and when the last one closed: the call's deadline is
    /// suspended while one is open and counts again from its end.
    open: u32,
    last_end: Option<Instant>,
}

struct Open {
    origin: Arc<Origin>,
    local: u32,
    session: u64,
    sink: Arc<PushSink>,
    ready: bool,
    held: Vec<Push>,
    deadline: Instant,
    /// How long it may stay open (for the message when it may not any more).
    span: Duration,
    call: u32,
    _pin: Box<dyn Send + Sync>,
}

/// A provider's request to open a dialog ([`DialogOp::Open`]).
struct Opening {
    form: Form,
    /// The call's dialog token (in-call), or 0 (spontaneous).
    call: u32,
    user: Option<u32>,
    agent: Option<u32>,
    deadline_ms: u64,
}

/// Something to do once the lock is released.
enum After {
    Provider(Arc<Origin>, u32, DialogEvent),
    Client(Arc<PushSink>, u32, Push),
    /// Hand the provider's worker its end of dialog `.2`'s direct channel, then tell the
    /// provider the dialog opened (`direct`, or plain `opened` if the hand-over failed:
    /// the application then finds its end closed and goes through the host).
    Direct(Arc<Origin>, u32, u32, OwnedFd, Arc<AtomicU64>),
}

/// Unregisters a dialog-capable call when it ends.
pub(crate) struct CallToken {
    hub: Arc<DialogHub>,
    pub token: u32,
}

impl Drop for CallToken {
    fn drop(&mut self) {
        self.hub.lock().calls.remove(&self.token);
    }
}

/// Closes an origin's dialogs when the provider is released (the loaded provider holds it).
pub(crate) struct OriginGuard {
    hub: Weak<DialogHub>,
    origin: Arc<Origin>,
}

impl Drop for OriginGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.origin_gone(
                self.origin.id,
                &format!("provider {} was released", self.origin.provider),
            );
        }
    }
}

impl Origin {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }
}

impl DialogHub {
    pub fn new(access: Arc<Current<AccessPolicy>>) -> Self {
        DialogHub {
            next_handle: AtomicU32::new(1),
            next_token: AtomicU32::new(1),
            next_origin: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            deadline_thread: std::sync::OnceLock::new(),
            access,
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            direct: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// A provider side. `pin` keeps the provider loaded (called once per open dialog).
    pub fn origin(
        &self,
        provider: String,
        notify: Notify,
        channels: Option<DialogChannels>,
        pin: Box<dyn Fn() -> Box<dyn Send + Sync> + Send + Sync>,
    ) -> Arc<Origin> {
        Arc::new(Origin {
            id: self.next_origin.fetch_add(1, Ordering::Relaxed),
            provider,
            notify,
            channels,
            pin,
        })
    }

    /// A guard that closes `origin`'s dialogs when dropped.
    pub fn guard(self: &Arc<Self>, origin: Arc<Origin>) -> OriginGuard {
        OriginGuard {
            hub: Arc::downgrade(self),
            origin,
        }
    }

    /// Registers a call from `session` (the client's request `request`) that may open
    /// an in-call dialog; the token goes to the provider with the call.
    pub fn begin_call(self: &Arc<Self>, session: &SessionUi, request: Option<u32>) -> CallToken {
        let mut state = self.lock();
        let token = loop {
            let t = self.next_token.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !state.calls.contains_key(&t) {
                break t;
            }
        };
        state.calls.insert(
            token,
            CallUi {
                session: session.id,
                pid: session.caller.pid,
                shows: session.shows(),
                request,
                sink: session.sink.clone(),
                open: 0,
                last_end: None,
            },
        );
        CallToken {
            hub: self.clone(),
            token,
        }
    }

    /// How long a call may still run: `None` when its deadline stands, else the new one
    /// (a dialog is open: one more `timeout`; one closed: `timeout` from its end).
    pub fn extended_deadline(&self, token: u32, timeout: Duration) -> Option<Instant> {
        let state = self.lock();
        let call = state.calls.get(&token)?;
        crate::policy::extended_deadline(call.open > 0, call.last_end, timeout, Instant::now())
    }

    /// Makes `session` its user's UI agent; returns the agent's handle.
    pub fn register_agent(&self, session: &SessionUi) -> u32 {
        session.agent.store(true, Ordering::Relaxed);
        let handle = self.next_handle();
        let mut state = self.lock();
        state.agents.push(Agent {
            handle,
            session: session.id,
            uid: session.caller.uid,
            pid: session.caller.pid,
            direct: session.direct.load(Ordering::Relaxed),
            sink: session.sink.clone(),
        });
        tracing::info!(
            agent = handle,
            uid = session.caller.uid,
            pid = session.caller.pid,
            "UI agent registered"
        );
        handle
    }

    fn next_handle(&self) -> u32 {
        loop {
            let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
            if h != 0 {
                return h;
            }
        }
    }

    /// What a provider does with its dialog number `local`.
    pub fn provider_op(self: &Arc<Self>, origin: &Arc<Origin>, local: u32, op: DialogOp) {
        let mut after = Vec::new();
        {
            let mut state = self.lock();
            match op {
                DialogOp::Open {
                    form,
                    call,
                    user,
                    agent,
                    deadline_ms,
                } => match self.open(
                    &mut state,
                    origin,
                    local,
                    Opening {
                        form,
                        call,
                        user,
                        agent,
                        deadline_ms,
                    },
                ) {
                    Ok((handle, None)) => {
                        self.opened.fetch_add(1, Ordering::Relaxed);
                        after.push(After::Provider(
                            origin.clone(),
                            local,
                            DialogEvent::Opened { handle },
                        ));
                    }
                    Ok((handle, Some(theirs))) => {
                        self.opened.fetch_add(1, Ordering::Relaxed);
                        let direct = self.direct.clone();
                        after.push(After::Direct(origin.clone(), local, handle, theirs, direct));
                    }
                    Err(message) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(provider = %origin.provider, %message, "dialog refused");
                        after.push(After::Provider(
                            origin.clone(),
                            local,
                            DialogEvent::Refused { message },
                        ));
                    }
                },
                DialogOp::Update(update) => {
                    if let Some(&handle) = state.by_local.get(&(origin.id, local)) {
                        let open = state.dialogs.get_mut(&handle).expect("indexed dialog");
                        let push = Push::DialogUpdate { update };
                        if open.ready {
                            after.push(After::Client(open.sink.clone(), handle, push));
                        } else if open.held.len() < MAX_HELD {
                            open.held.push(push);
                        } else {
                            let reason = format!(
                                "provider {} sent more than {MAX_HELD} updates before the application showed the dialog",
                                origin.provider
                            );
                            close(&mut state, handle, &reason, true, true, &mut after);
                        }
                    }
                    // An update for a dialog already closed: the provider has been told.
                }
                DialogOp::Close { reason } => {
                    if let Some(&handle) = state.by_local.get(&(origin.id, local)) {
                        close(&mut state, handle, &reason, false, true, &mut after);
                    }
                }
            }
        }
        run(after);
    }

    fn open(
        self: &Arc<Self>,
        state: &mut State,
        origin: &Arc<Origin>,
        local: u32,
        opening: Opening,
    ) -> Result<(u32, Option<OwnedFd>), String> {
        let Opening {
            form,
            call,
            user,
            agent,
            deadline_ms,
        } = opening;
        if state.stop {
            return Err("the host is shutting down".into());
        }
        if state.by_local.contains_key(&(origin.id, local)) {
            return Err(format!(
                "dialog number {local} of provider {} is already open",
                origin.provider
            ));
        }
        let (session, sink, request, direct) = if call != 0 {
            let (session, sink, request) = in_call(state, call)?;
            (session, sink, request, false)
        } else {
            self.spontaneous(state, user, agent)?
        };
        let handle = loop {
            let h = self.next_handle();
            if !state.dialogs.contains_key(&h) {
                break h;
            }
        };
        let span = if deadline_ms == 0 {
            DEFAULT_DEADLINE
        } else {
            Duration::from_millis(deadline_ms)
        };
        let deadline = Instant::now() + span;
        let push = Push::DialogOpen {
            provider: origin.provider.clone(),
            request,
            deadline_ms: span.as_millis() as u64,
            form,
        };
        // A direct channel for an agent that takes them, from a provider in a worker: its
        // end rides on a push before the open (`docs/dialogs.md`, "Direct channels").
        let theirs = match (direct, &origin.channels) {
            (true, Some(_)) => direct_channel(&sink, handle),
            _ => None,
        };
        tracing::info!(dialog = handle, provider = %origin.provider, in_call = call != 0, direct = theirs.is_some(), "dialog opened");
        if !sink.offer_reliable(handle, push) {
            if let Some(c) = state.calls.get_mut(&call) {
                c.open -= 1;
            }
            // Its channel's push, if queued, goes without a socket: the client skips it.
            sink.take_channel(handle);
            return Err("the application is not reading its dialogs (its queue is full)".into());
        }
        state.by_local.insert((origin.id, local), handle);
        state.dialogs.insert(
            handle,
            Open {
                origin: origin.clone(),
                local,
                session,
                sink,
                ready: false,
                held: Vec::new(),
                deadline,
                span,
                call,
                _pin: (origin.pin)(),
            },
        );
        self.start_deadlines();
        self.wake.notify_one();
        Ok((handle, theirs))
    }

    /// Where a spontaneous dialog for `user` goes: the UI agent `agent` if named (and
    /// allowed to show it), else the user's latest agent (or one the access policy lets
    /// show that user's dialogs).
    fn spontaneous(
        &self,
        state: &State,
        user: Option<u32>,
        agent: Option<u32>,
    ) -> Result<(u64, Arc<PushSink>, Option<u32>, bool), String> {
        let Some(user) = user else {
            return Err("a spontaneous dialog must name its user".into());
        };
        let chosen = match agent {
            Some(handle) => {
                let Some(a) = state.agents.iter().find(|a| a.handle == handle) else {
                    return Err(format!(
                        "no agent: agent {handle} is not registered (it may have gone away)"
                    ));
                };
                if !self.access.get().may_show_dialogs(a.uid, user) {
                    return Err(format!(
                        "agent {handle} belongs to uid {}, not to uid {user}: dialogs only reach the same user (or one the access policy's [dialogs] table allows)",
                        a.uid
                    ));
                }
                a
            }
            None => match state
                .agents
                .iter()
                .rev()
                .find(|a| self.access.get().may_show_dialogs(a.uid, user))
            {
                Some(a) => a,
                None => {
                    return Err(format!(
                        "no agent: no UI agent is registered for uid {user} (run `purveyor agent`)"
                    ));
                }
            },
        };
        tracing::debug!(
            agent = chosen.handle,
            pid = chosen.pid,
            "spontaneous dialog routed"
        );
        Ok((chosen.session, chosen.sink.clone(), None, chosen.direct))
    }

    /// The client shows the dialog: deliver what was held.
    pub fn ready(&self, session: &SessionUi, handle: u32) -> Result<(), RemoteError> {
        let mut state = self.lock();
        let open = owned(&mut state, session, handle)?;
        open.ready = true;
        for push in std::mem::take(&mut open.held) {
            open.sink.offer_reliable(handle, push);
        }
        Ok(())
    }

    /// Input from the client for the provider.
    pub fn send(
        &self,
        session: &SessionUi,
        handle: u32,
        input: DialogInput,
    ) -> Result<(), RemoteError> {
        let origin = {
            let mut state = self.lock();
            let open = owned(&mut state, session, handle)?;
            (open.origin.clone(), open.local)
        };
        (origin.0.notify)(origin.1, DialogEvent::Input(input));
        Ok(())
    }

    /// The client closes the dialog.
    pub fn client_close(&self, session: &SessionUi, handle: u32) -> Result<(), RemoteError> {
        let mut after = Vec::new();
        {
            let mut state = self.lock();
            owned(&mut state, session, handle)?;
            close(
                &mut state,
                handle,
                "the user closed the dialog",
                true,
                false,
                &mut after,
            );
        }
        run(after);
        Ok(())
    }

    /// A session ended: its agents go, and its dialogs close (providers told why).
    pub fn session_gone(&self, session: &SessionUi) {
        let mut after = Vec::new();
        {
            let mut state = self.lock();
            state.agents.retain(|a| a.session != session.id);
            let mine: Vec<u32> = state
                .dialogs
                .iter()
                .filter(|(_, d)| d.session == session.id)
                .map(|(h, _)| *h)
                .collect();
            let reason = match session.caller.pid {
                // A remote client (or one in another PID namespace) has no pid here.
                0 => format!("the application (uid {}) disconnected", session.caller.uid),
                pid => format!("the application (pid {pid}) disconnected"),
            };
            for handle in mine {
                close(&mut state, handle, &reason, true, false, &mut after);
            }
        }
        run(after);
    }

    /// A provider went away (its process ended, or it was released): its dialogs close
    /// and their applications are told `reason`.
    pub fn origin_gone(&self, origin: u64, reason: &str) {
        let mut after = Vec::new();
        {
            let mut state = self.lock();
            let theirs: Vec<u32> = state
                .dialogs
                .iter()
                .filter(|(_, d)| d.origin.id == origin)
                .map(|(h, _)| *h)
                .collect();
            for handle in theirs {
                close(&mut state, handle, reason, false, true, &mut after);
            }
        }
        run(after);
    }

    /// Closes every dialog (the host is shutting down) and refuses new ones.
    pub fn shutdown(&self) {
        let mut after = Vec::new();
        {
            let mut state = self.lock();
            state.stop = true;
            let all: Vec<u32> = state.dialogs.keys().copied().collect();
            for handle in all {
                close(
                    &mut state,
                    handle,
                    "the host is shutting down",
                    true,
                    true,
                    &mut after,
                );
            }
        }
        self.wake.notify_one();
        run(after);
    }

    /// Dialogs opened since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Dialogs refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Dialogs opened on a direct channel since start.
    pub fn direct(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    pub fn open_dialogs(&self) -> usize {
        self.lock().dialogs.len()
    }

    pub fn agents(&self) -> usize {
        self.lock().agents.len()
    }
}
