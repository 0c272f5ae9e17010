//! Dialogs, from the provider's side (`docs/dialogs.md`).
//!
//! A provider cannot show anything itself: it may run in a worker, or on another machine.
//! It describes a [`Form`] and the host routes it to the application — the client whose
//! call is in progress ([`crate::CallContext::dialog`]) or the user's UI agent
//! ([`HostHandle::open_dialog`], from any thread, with no call pending).
//!
//! Everything here blocks the calling thread; a dialog waits for a person, so open one
//! from a call or a thread of your own, never while holding a lock others need.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use purveyor_protocol::dialog_channel::{DialogChannel, Received, Sent, wait_readable};
use purveyor_protocol::{DialogEvent, DialogInput, DialogMessage, DialogOp, Form, FormUpdate};

use crate::ProviderError;

/// How long `open` waits for the host to say whether the dialog opened (the host answers
/// at once; this only bounds a host that is gone).
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// Why a dialog could not be opened or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    /// The host would not open it: no UI available, no agent, another user's agent...
    #[error("{0}")]
    Refused(String),
    /// It is closed, by the application, its deadline or a side going away.
    #[error("the dialog was closed: {0}")]
    Closed(String),
}

impl From<DialogError> for ProviderError {
    fn from(e: DialogError) -> Self {
        ProviderError::Failed(e.to_string())
    }
}

/// Where a spontaneous dialog goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogTarget {
    /// The most recently registered UI agent of this user.
    User(u32),
    /// This agent (a handle a client gave the provider), which must belong to `user`.
    Agent { agent: u32, user: u32 },
}

/// The provider's line to its host, for dialogs. Cheap to clone; given to
/// [`crate::Provider::attach`] and carried by every call's context.
#[derive(Clone)]
pub struct HostHandle {
    link: Arc<Link>,
}

type Send = Box<dyn Fn(u32, DialogOp) + std::marker::Send + Sync>;

struct Link {
    send: Send,
    next: AtomicU32,
    dialogs: Mutex<HashMap<u32, Arc<Mailbox>>>,
}

#[derive(Default)]
struct Mailbox {
    events: Mutex<VecDeque<DialogEvent>>,
    arrived: Condvar,
    /// A direct dialog's wake-up (an eventfd), written as each event arrives, so a wait
    /// that polls the channel hears the host too.
    wake: OnceLock<OwnedFd>,
}

impl std::fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostHandle")
    }
}

impl HostHandle {
    /// A handle whose operations go through `send` (for hosts: the SDK's users are given
    /// one).
    pub fn new(send: impl Fn(u32, DialogOp) + std::marker::Send + Sync + 'static) -> Self {
        HostHandle {
            link: Arc::new(Link {
                send: Box::new(send),
                next: AtomicU32::new(1),
                dialogs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Hands the provider's dialog number `dialog` news from the host. Never blocks.
    pub fn deliver(&self, dialog: u32, event: DialogEvent) {
        let mailbox = self.link.lock().get(&dialog).cloned();
        match mailbox {
            Some(mailbox) => {
                mailbox.lock().push_back(event);
                mailbox.arrived.notify_all();
                if let Some(wake) = mailbox.wake.get() {
                    let one = 1u64.to_ne_bytes();
                    // SAFETY: an 8-byte write to an eventfd this mailbox owns.
                    unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), 8) };
                }
            }
            // A channel for a dialog nobody waits for any more: closed, not leaked.
            None => {
                if let DialogEvent::Direct { fd, .. } = event {
                    drop(owned(fd));
                }
            }
        }
    }

    /// Opens a spontaneous dialog on `to`'s UI agent. With no agent registered, fails at
    /// once with [`DialogError::Refused`] ("no agent …").
    pub fn open_dialog(&self, form: Form, to: DialogTarget) -> Result<Dialog, DialogError> {
        let (user, agent) = match to {
            DialogTarget::User(user) => (user, None),
            DialogTarget::Agent { agent, user } => (user, Some(agent)),
        };
        self.open(form, 0, Some(user), agent, None)
    }

    /// Like [`HostHandle::open_dialog`], closed by the host after `deadline`.
    pub fn open_dialog_until(
        &self,
        form: Form,
        to: DialogTarget,
        deadline: Duration,
    ) -> Result<Dialog, DialogError> {
        let (user, agent) = match to {
            DialogTarget::User(user) => (user, None),
            DialogTarget::Agent { agent, user } => (user, Some(agent)),
        };
        self.open(form, 0, Some(user), agent, Some(deadline))
    }

    pub(crate) fn open(
        &self,
        form: Form,
        call: u32,
        user: Option<u32>,
        agent: Option<u32>,
        deadline: Option<Duration>,
    ) -> Result<Dialog, DialogError> {
        let id = self.link.next.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        self.link.lock().insert(id, mailbox.clone());
        let mut dialog = Dialog {
            link: self.link.clone(),
            id,
            handle: 0,
            mailbox,
            closed: AtomicBool::new(false),
            channel: None,
        };
        (self.link.send)(
            id,
            DialogOp::Open {
                form,
                call,
                user,
                agent,
                deadline_ms: deadline.map_or(0, |d| d.as_millis().max(1) as u64),
            },
        );
        let until = Instant::now() + OPEN_WAIT;
        let first = dialog.mailbox.wait(until);
        match first {
            Some(DialogEvent::Opened { handle }) => {
                dialog.handle = handle;
                Ok(dialog)
            }
            Some(DialogEvent::Direct { handle, fd }) => {
                dialog.handle = handle;
                dialog.channel = direct(&dialog.mailbox, fd);
                Ok(dialog)
            }
            Some(DialogEvent::Refused { message }) => {
                dialog.closed.store(true, Ordering::Relaxed);
                Err(DialogError::Refused(message))
            }
            Some(other) => {
                dialog.closed.store(true, Ordering::Relaxed);
                Err(DialogError::Refused(format!(
                    "the host answered {other:?} to opening a dialog"
                )))
            }
            None => Err(DialogError::Refused(format!(
                "the host did not answer within {} s",
                OPEN_WAIT.as_secs()
            ))),
        }
    }
}

/// The descriptor `fd` the host handed over, owned; `None` for none (-1).
fn owned(fd: i32) -> Option<OwnedFd> {
    // SAFETY: the host hands the provider this descriptor with a `direct` event and keeps
    // no copy (`docs/provider-abi.md`): it is this process's and nobody else's.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The channel of a direct dialog, and the mailbox's wake-up for waits on it; `None` (the
/// dialog then goes through the host) when either cannot be made.
fn direct(mailbox: &Mailbox, fd: i32) -> Option<Mutex<DialogChannel>> {
    let channel = DialogChannel::new(owned(fd)?).ok()?;
    // SAFETY: eventfd has no preconditions; the result is checked.
    let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if wake < 0 {
        return None;
    }
    // SAFETY: a descriptor eventfd just made.
    let _ = mailbox.wake.set(unsafe { OwnedFd::from_raw_fd(wake) });
    Some(Mutex::new(channel))
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Mailbox>>> {
        self.dialogs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DialogEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next event if one has arrived; empties the wake-up first, so an event that
    /// arrives after this look is heard by the next wait.
    fn try_take(&self) -> Option<DialogEvent> {
        if let Some(wake) = self.wake.get() {
            let mut count = [0u8; 8];
            // SAFETY: an 8-byte read from a non-blocking eventfd this mailbox owns.
            unsafe { libc::read(wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
        self.lock().pop_front()
    }

    /// The next event, waiting until `until`.
    fn wait(&self, until: Instant) -> Option<DialogEvent> {
        let mut events = self.lock();
        loop {
            if let Some(event) = events.pop_front() {
                return Some(event);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            events = self
                .arrived
                .wait_timeout(events, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// An open dialog. Dropping it closes it (the application is told the provider finished).
pub struct Dialog {
    link: Arc<Link>,
    id: u32,
    handle: u32,
    mailbox: Arc<Mailbox>,
    /// Closed by either side: nothing more is sent.
    closed: AtomicBool,
    /// Its direct channel to the application, when the host gave it one: updates go out
    /// and inputs come in on it, not through the host.
    channel: Option<Mutex<DialogChannel>>,
}

impl std::fmt::Debug for Dialog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialog")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Dialog {
    /// The dialog's 32-bit handle, as the application and the host's logs know it.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Changes what the dialog shows (progress, text, buttons). The host holds updates
    /// until the application says the dialog is shown, so none is lost.
    pub fn update(&self, update: FormUpdate) -> Result<(), DialogError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DialogError::Closed("it is already closed".into()));
        }
        let update = match &self.channel {
            Some(channel) => {
                let message = DialogMessage::Update(update);
                // The lock ends here: closing below takes it again.
                let sent = lock(channel).write(&message);
                match sent {
                    Sent::Sent => return Ok(()),
                    // The application is not reading the channel now: this update and
                    // every later one go through the host, which holds or queues them as
                    // for any dialog (the application shows what the channel holds first).
                    Sent::Full => {
                        lock(channel).shut_writing();
                        match message {
                            DialogMessage::Update(update) => update,
                            DialogMessage::Input(_) => unreachable!("an update was written"),
                        }
                    }
                    Sent::TooLarge => {
                        return Err(DialogError::Refused(format!(
                            "the update is larger than {} bytes",
                            purveyor_protocol::DIALOG_FRAME_MAX
                        )));
                    }
                    // The application no longer reads the channel: through the host.
                    Sent::Gone => match message {
                        DialogMessage::Update(update) => update,
                        DialogMessage::Input(_) => unreachable!("an update was written"),
                    },
                }
            }
            None => update,
        };
        (self.link.send)(self.id, DialogOp::Update(update));
        Ok(())
    }

    /// The next input from the application, waiting up to `timeout`; `Ok(None)` when none
    /// came in time, [`DialogError::Closed`] once the dialog is closed.
    pub fn next(&self, timeout: Duration) -> Result<Option<DialogInput>, DialogError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DialogError::Closed("it is already closed".into()));
        }
        let until = Instant::now() + timeout;
        let event = match &self.channel {
            Some(channel) => match next_direct(channel, &self.mailbox, until) {
                Ok(input) => return Ok(Some(input)),
                Err(event) => event,
            },
            None => self.mailbox.wait(until),
        };
        match event {
            None => Ok(None),
            Some(DialogEvent::Input(input)) => Ok(Some(input)),
            Some(DialogEvent::Closed { reason }) => {
                self.closed.store(true, Ordering::Relaxed);
                Err(DialogError::Closed(reason))
            }
            Some(other) => Err(DialogError::Closed(format!(
                "the host sent {other:?} for an open dialog"
            ))),
        }
    }

    /// Waits up to `timeout` for an input that presses a button; returns the input.
    /// Inputs without a button (intermediate data) are skipped.
    pub fn wait_button(&self, timeout: Duration) -> Result<Option<DialogInput>, DialogError> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next(left)? {
                Some(input) if input.button.is_some() => return Ok(Some(input)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Closes the dialog; the application is told `reason`.
    pub fn close(self, reason: &str) {
        self.finish(reason);
    }

    fn finish(&self, reason: &str) {
        if !self.closed.swap(true, Ordering::Relaxed) && self.handle != 0 {
            // Everything written on the channel reaches the application before the close.
            if let Some(channel) = &self.channel {
                lock(channel).shut_writing();
            }
            (self.link.send)(
                self.id,
                DialogOp::Close {
                    reason: reason.to_string(),
                },
            );
        }
    }
}

fn lock(channel: &Mutex<DialogChannel>) -> std::sync::MutexGuard<'_, DialogChannel> {
    channel.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next input that has arrived on `channel`, if any.
fn next_input(channel: &mut DialogChannel) -> Option<DialogInput> {
    loop {
        match channel.read() {
            Received::Message(DialogMessage::Input(input)) => return Some(input),
            // Updates are the provider's to send: one from the application is ignored.
            Received::Message(DialogMessage::Update(_)) => {}
            Received::Nothing | Received::Ended => return None,
        }
    }
}

/// The next input of a direct dialog, from its channel (first: what the application wrote
/// before it closed comes before the close) or the host; else the host's event, or `None`
/// at `until`.
fn next_direct(
    channel: &Mutex<DialogChannel>,
    mailbox: &Mailbox,
    until: Instant,
) -> Result<DialogInput, Option<DialogEvent>> {
    loop {
        let mut fds = Vec::with_capacity(2);
        {
            let mut channel = lock(channel);
            if let Some(input) = next_input(&mut channel) {
                return Ok(input);
            }
            if channel.is_reading() {
                fds.push(channel.fd());
            }
        }
        match mailbox.try_take() {
            Some(DialogEvent::Input(input)) => return Ok(input),
            Some(event) => {
                // The application wrote its last inputs before it said close: any that
                // came after the look above come first.
                if let Some(input) = next_input(&mut lock(channel)) {
                    mailbox.lock().push_front(event);
                    return Ok(input);
                }
                return Err(Some(event));
            }
            None => {}
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        if let Some(wake) = mailbox.wake.get() {
            fds.push(wake.as_raw_fd());
        }
        wait_readable(&fds, left);
    }
}

impl Drop for Dialog {
    fn drop(&mut self) {
        if self.handle != 0 {
            self.finish("the provider finished with the dialog");
        }
        self.link.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answers every open at once (here, on another thread) with `answer`.
    fn host(answer: DialogEvent) -> (HostHandle, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cell: Arc<Mutex<Option<HostHandle>>> = Arc::new(Mutex::new(None));
        let (log, me) = (seen.clone(), cell.clone());
        let handle = HostHandle::new(move |id, op| {
            let kind = match &op {
                DialogOp::Open { .. } => "open",
                DialogOp::Update(_) => "update",
                DialogOp::Close { .. } => "close",
            };
            log.lock().unwrap().push(format!("{kind} {id}"));
            if matches!(op, DialogOp::Open { .. }) {
                let me = me.lock().unwrap().clone().unwrap();
                let answer = answer.clone();
                std::thread::spawn(move || me.deliver(id, answer));
            }
        });
        *cell.lock().unwrap() = Some(handle.clone());
        (handle, seen)
    }

    /// A dialog opened on a direct channel with `handle`: the host, what it was told, the
    /// application's end of the channel, and the dialog.
    fn direct_dialog(handle: u32) -> (HostHandle, Arc<Mutex<Vec<String>>>, DialogChannel, Dialog) {
        use std::os::fd::IntoRawFd;
        let (ours, theirs) = DialogChannel::pair().unwrap();
        let (host, seen) = host(DialogEvent::Direct {
            handle,
            fd: ours.into_raw_fd(),
        });
        let app = DialogChannel::new(theirs).unwrap();
        let dialog = host
            .open_dialog(Form::default(), DialogTarget::User(0))
            .unwrap();
        (host, seen, app, dialog)
    }

    #[test]
    fn a_refused_open_is_an_error_with_the_hosts_reason_and_sends_no_close() {
        let (host, seen) = host(DialogEvent::Refused {
            message: "no agent for uid 1000".into(),
        });
        let err = host
            .open_dialog(Form::default(), DialogTarget::User(1000))
            .unwrap_err();
        assert_eq!(err, DialogError::Refused("no agent for uid 1000".into()));
        assert_eq!(*seen.lock().unwrap(), ["open 1"]);
    }

    #[test]
    fn inputs_arrive_in_order_and_a_close_ends_the_dialog() {
        let (host, seen) = host(DialogEvent::Opened { handle: 42 });
        let dialog = host
            .open_dialog(Form::default(), DialogTarget::User(0))
            .unwrap();
        assert_eq!(dialog.handle(), 42);
        dialog.update(FormUpdate::default()).unwrap();
        host.deliver(1, DialogEvent::Input(DialogInput::default()));
        host.deliver(1, DialogEvent::Input(DialogInput::button("talk").unwrap()));
        host.deliver(
            1,
            DialogEvent::Closed {
                reason: "bye".into(),
            },
        );
        let pressed = dialog.wait_button(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(pressed.button.unwrap().as_str(), "talk");
        assert_eq!(
            dialog.next(Duration::from_secs(5)).unwrap_err(),
            DialogError::Closed("bye".into())
        );
        assert!(dialog.update(FormUpdate::default()).is_err());
        drop(dialog);
        // Closed by the host: dropping it sends nothing more.
        assert_eq!(*seen.lock().unwrap(), ["open 1", "update 1"]);
    }

    #[test]
    fn dropping_an_open_dialog_closes_it() {
        let (host, seen) = host(DialogEvent::Opened { handle: 7 });
        let dialog = host
            .open_dialog(Form::default(), DialogTarget::User(0))
            .unwrap();
        assert_eq!(dialog.next(Duration::from_millis(20)).unwrap(), None);
        drop(dialog);
        assert_eq!(*seen.lock().unwrap(), ["open 1", "close 1"]);
    }

    #[test]
    fn a_direct_dialog_talks_on_its_channel_and_its_close_comes_after_what_was_written() {
        let (host, seen, mut app, dialog) = direct_dialog(9);
        assert_eq!(dialog.handle(), 9);
        let update = FormUpdate {
            text: Some("ringing".into()),
            ..FormUpdate::default()
        };
        dialog.update(update.clone()).unwrap();
        assert_eq!(app.read(), Received::Message(DialogMessage::Update(update)));
        // Nothing yet: the wait ends at its timeout.
        assert_eq!(dialog.next(Duration::from_millis(20)).unwrap(), None);
        // Two inputs, then the application closes: its end first, then the host's word.
        for name in ["one", "two"] {
            let input = DialogInput::button(name).unwrap();
            assert_eq!(app.write(&DialogMessage::Input(input)), Sent::Sent);
        }
        app.shut_writing();
        host.deliver(
            1,
            DialogEvent::Closed {
                reason: "the user closed the dialog".into(),
            },
        );
        for name in ["one", "two"] {
            let got = dialog.next(Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(got.button.unwrap().as_str(), name);
        }
        assert_eq!(
            dialog.next(Duration::from_secs(5)).unwrap_err(),
            DialogError::Closed("the user closed the dialog".into())
        );
        // Updates never went through the host.
        assert_eq!(*seen.lock().unwrap(), ["open 1"]);
    }

    #[test]
    fn a_direct_dialog_hears_the_host_while_it_waits_on_its_channel() {
        let (host, seen, mut app, dialog) = direct_dialog(3);
        let h = host.clone();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            h.deliver(
                1,
                DialogEvent::Closed {
                    reason: "its deadline passed".into(),
                },
            );
        });
        let started = Instant::now();
        assert_eq!(
            dialog.next(Duration::from_secs(30)).unwrap_err(),
            DialogError::Closed("its deadline passed".into())
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        closer.join().unwrap();
        drop(dialog);
        // Closed by the host: nothing more sent, and the channel is gone with the dialog.
        assert_eq!(*seen.lock().unwrap(), ["open 1"]);
        assert_eq!(app.read(), Received::Ended);
    }

    #[test]
    fn a_provider_closing_a_direct_dialog_ends_its_channel_before_telling_the_host() {
        let (_host, seen, mut app, dialog) = direct_dialog(4);
        dialog.update(FormUpdate::default()).unwrap();
        dialog.close("done");
        assert!(matches!(
            app.read(),
            Received::Message(DialogMessage::Update(_))
        ));
        assert_eq!(app.read(), Received::Ended);
        assert_eq!(*seen.lock().unwrap(), ["open 1", "close 1"]);
    }

    #[test]
    fn a_direct_dialog_whose_application_does_not_read_goes_on_through_the_host() {
        let (_host, seen, mut app, dialog) = direct_dialog(5);
        let text = |i: usize| FormUpdate {
            text: Some(format!("update {i}")),
            ..FormUpdate::default()
        };
        // Until the channel is full, nothing goes through the host; then everything does.
        let mut i = 0;
        while seen.lock().unwrap().len() == 1 {
            dialog.update(text(i)).unwrap();
            i += 1;
            assert!(i < 100_000, "the channel never filled");
        }
        dialog.update(text(i)).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["open 1", "update 1", "update 1"]);
        // The channel holds the updates before them, in order, then its end.
        let mut on_channel = 0;
        while let Received::Message(DialogMessage::Update(u)) = app.read() {
            assert_eq!(u, text(on_channel));
            on_channel += 1;
        }
        assert_eq!(on_channel, i - 1);
        assert_eq!(app.read(), Received::Ended);
    }
}
