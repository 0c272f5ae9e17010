//! An isolated worker's share of dialogs' direct channels (`docs/dialogs.md`, "Direct
//! channels"): the host hands the worker a dialog's socket on the attach socket, then tells
//! the provider the dialog opened (`direct`, with the descriptor -1) on the provider
//! channel. The two arrive on different threads, so the socket waits here, by provider
//! and dialog number, until the news that names it goes to the library with the
//! descriptor filled in.
//!
//! Invariants: a socket is given to the library once, or closed (the dialog closed before
//! its news came, or more than [`MAX_WAITING`] wait); news that found no socket within
//! [`SOCKET_WAIT`] tells the library the dialog opened without one (it then goes through
//! the host).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use purveyor_protocol::{DialogEvent, ProviderCall, ProviderReply, ProviderRequest};

use super::Worker;
use crate::lock::Locked;

/// Sockets handed over and not yet given to a library; more are closed.
const MAX_WAITING: usize = 1024;
/// How long news of a direct dialog waits for its socket (sent before the news, so
/// normally already here).
const SOCKET_WAIT: Duration = Duration::from_secs(1);

/// Dialogs' sockets waiting for their news.
#[derive(Default)]
pub(super) struct Waiting {
    sockets: std::sync::Mutex<HashMap<(String, u32), OwnedFd>>,
    arrived: std::sync::Condvar,
}

impl Worker {
    /// The host handed over the socket of `provider`'s dialog number `dialog`.
    pub(super) fn dialog_socket(&self, provider: String, dialog: u32, fd: OwnedFd) {
        let mut sockets = self.dialog_sockets.sockets.locked();
        if sockets.len() >= MAX_WAITING {
            eprintln!(
                "purveyor worker: {MAX_WAITING} dialog channels wait for their news; one more for {provider} is closed (its dialog goes through the host)"
            );
            return;
        }
        sockets.insert((provider, dialog), fd);
        self.dialog_sockets.arrived.notify_all();
    }

    /// Gives a library dialog news. A library that refuses a direct dialog's news (an SDK
    /// from before direct channels cannot read it) is told the dialog opened, without the
    /// socket (closed here: it never took it), and the dialog goes through the host.
    pub(super) fn deliver_news(&self, request: ProviderRequest) {
        let request = self.with_dialog_socket(request);
        let direct = match &request.call {
            ProviderCall::Dialog {
                dialog,
                event: DialogEvent::Direct { handle, fd },
            } => Some((*dialog, *handle, *fd)),
            _ => None,
        };
        let provider = request.provider.clone();
        let reply = catch_unwind(AssertUnwindSafe(|| self.answer(request)));
        if let (Some((dialog, handle, fd)), Ok(ProviderReply::Error(_))) = (direct, reply) {
            if fd >= 0 {
                // SAFETY: the descriptor this worker gave a library that did not take it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let opened =
                ProviderRequest::dialog_news(&provider, dialog, DialogEvent::Opened { handle });
            let _ = catch_unwind(AssertUnwindSafe(|| self.answer(opened)));
        }
    }

    /// Dialog news as the library gets it: a direct dialog's socket filled in (or, with
    /// none, plain `opened`); a closed dialog's unused socket dropped.
    fn with_dialog_socket(&self, mut request: ProviderRequest) -> ProviderRequest {
        let ProviderCall::Dialog { dialog, event } = &mut request.call else {
            return request;
        };
        let key = (request.provider.clone(), *dialog);
        match event {
            DialogEvent::Direct { handle, .. } => {
                let handle = *handle;
                // The host's -1 (or anything it sent) is replaced: the library is given
                // only a descriptor this worker received for this dialog.
                *event = match self.wait_socket(&key) {
                    Some(socket) => DialogEvent::Direct {
                        handle,
                        fd: socket.into_raw_fd(),
                    },
                    None => DialogEvent::Opened { handle },
                };
            }
            DialogEvent::Closed { .. } => {
                self.dialog_sockets.sockets.locked().remove(&key);
            }
            _ => {}
        }
        request
    }

    fn wait_socket(&self, key: &(String, u32)) -> Option<OwnedFd> {
        let until = Instant::now() + SOCKET_WAIT;
        let mut sockets = self.dialog_sockets.sockets.locked();
        loop {
            if let Some(fd) = sockets.remove(key) {
                return Some(fd);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            sockets = self
                .dialog_sockets
                .arrived
                .wait_timeout(sockets, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
