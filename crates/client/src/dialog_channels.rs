//! The application's ends of its dialogs' direct channels (`docs/dialogs.md`, "Direct
//! channels"): an agent that connected with [`crate::ConnectOptions::direct_dialogs`] is
//! handed, for each dialog from a provider in an isolated worker, a socket to the worker.
//! The provider's updates arrive on it and the UI's inputs go out on it, so a round trip
//! skips the daemon; the dialog's open and close still come through the daemon.
//!
//! Invariants: the descriptor a `dialog_channel` push names is taken from the connection's
//! queue of passed descriptors as that push is parsed, after those of replies parsed
//! before it (`SocketConn::claim_fds`); whatever a channel has delivered is shown before
//! the dialog's close; an input the channel cannot take goes through the daemon instead.

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};

use purveyor_protocol::dialog_channel::{DialogChannel, Received, Sent};
use purveyor_protocol::{DialogInput, DialogMessage, FormUpdate};

/// This connection's open direct channels, by dialog handle.
#[derive(Debug, Default)]
pub(crate) struct DialogChannels {
    open: HashMap<u32, Channel>,
}

#[derive(Debug)]
struct Channel {
    channel: DialogChannel,
    /// The UI has shown the dialog (its open was driven): only then are its updates read,
    /// so none reaches the UI before the dialog does.
    shown: bool,
}

impl DialogChannels {
    /// Dialog `handle`'s channel arrived (a socket the daemon passed; checked).
    pub fn add(&mut self, handle: u32, fd: OwnedFd) {
        if let Ok(channel) = DialogChannel::new(fd) {
            let shown = false;
            self.open.insert(handle, Channel { channel, shown });
        }
    }

    /// The UI has shown dialog `handle`: its channel's updates may be read.
    pub fn shown(&mut self, handle: u32) {
        if let Some(c) = self.open.get_mut(&handle) {
            c.shown = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The descriptors to wait on: the channels that may still deliver.
    pub fn fds(&self) -> Vec<RawFd> {
        self.open
            .values()
            .filter(|c| c.shown && c.channel.is_reading())
            .map(|c| c.channel.fd())
            .collect()
    }

    /// Every update that has arrived, with its dialog, in order per dialog.
    pub fn arrived(&mut self) -> Vec<(u32, FormUpdate)> {
        let mut out = Vec::new();
        for (&handle, c) in self.open.iter_mut().filter(|(_, c)| c.shown) {
            out.extend(updates(&mut c.channel).into_iter().map(|u| (handle, u)));
        }
        out
    }

    /// Sends `input` on dialog `handle`'s channel; gives it back when the dialog has no
    /// usable channel (it then goes through the daemon).
    pub fn send(&mut self, handle: u32, input: DialogInput) -> Option<DialogInput> {
        let Some(c) = self.open.get_mut(&handle) else {
            return Some(input);
        };
        let message = DialogMessage::Input(input);
        match c.channel.write(&message) {
            Sent::Sent => None,
            Sent::Full | Sent::Gone | Sent::TooLarge => match message {
                DialogMessage::Input(input) => Some(input),
                DialogMessage::Update(_) => unreachable!("an input was written"),
            },
        }
    }

    /// The updates dialog `handle`'s channel holds now (shown before an update that came
    /// through the daemon: a provider whose channel was full sends the rest that way).
    pub fn pending(&mut self, handle: u32) -> Vec<FormUpdate> {
        match self.open.get_mut(&handle) {
            Some(c) => updates(&mut c.channel),
            None => Vec::new(),
        }
    }

    /// The dialog ends: what its channel delivered before the end (to show first), and the
    /// channel is closed. The inputs written on it stay readable by the provider.
    pub fn close(&mut self, handle: u32) -> Vec<FormUpdate> {
        match self.open.remove(&handle) {
            Some(mut c) => updates(&mut c.channel),
            None => Vec::new(),
        }
    }
}

/// The updates `channel` holds now (an application's end reads only updates).
fn updates(channel: &mut DialogChannel) -> Vec<FormUpdate> {
    let mut out = Vec::new();
    loop {
        match channel.read() {
            Received::Message(DialogMessage::Update(update)) => out.push(update),
            // Inputs are the application's to send: one from the provider is ignored.
            Received::Message(DialogMessage::Input(_)) => {}
            Received::Nothing | Received::Ended => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_arrive_by_dialog_inputs_go_out_and_a_close_hands_over_the_rest() {
        let (ours, theirs) = DialogChannel::pair().unwrap();
        let mut provider = DialogChannel::new(theirs).unwrap();
        let mut channels = DialogChannels::default();
        channels.add(5, ours);
        let update = |t: &str| FormUpdate {
            text: Some(t.into()),
            ..FormUpdate::default()
        };
        provider.write(&DialogMessage::Update(update("a")));
        // Not read before the UI has shown the dialog.
        assert!(channels.fds().is_empty());
        assert!(channels.arrived().is_empty());
        channels.shown(5);
        assert_eq!(channels.fds().len(), 1);
        assert_eq!(channels.arrived(), vec![(5, update("a"))]);
        assert!(channels.arrived().is_empty());
        let input = DialogInput::button("ok").unwrap();
        assert_eq!(channels.send(5, input.clone()), None);
        assert_eq!(
            provider.read(),
            Received::Message(DialogMessage::Input(input.clone()))
        );
        // No channel for another dialog: the input comes back, for the daemon.
        assert_eq!(channels.send(6, input.clone()), Some(input));
        provider.write(&DialogMessage::Update(update("b")));
        provider.shut_writing();
        assert_eq!(channels.close(5), vec![update("b")]);
        assert!(channels.is_empty());
    }
}
