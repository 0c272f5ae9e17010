//! A request's place on its connection ([`CallSite`]): what lets the watchdog answer a
//! call whose thread is stuck in an in-daemon provider, and close that connection.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use purveyor_protocol::{ErrorCode, Outcome, RemoteError, ServerMessage, encode_frame};

use super::Wire;
use crate::cx::CallSite;

/// A request on a connection ([`CallSite`]): lets the watchdog answer a call whose thread
/// is stuck in an in-daemon provider.
pub(super) struct Site {
    pub(super) conn: Arc<ConnectionSite>,
    pub(super) id: u32,
}

pub(super) struct ConnectionSite {
    /// The socket, open for as long as the connection task runs, which is at least as
    /// long as any call on it.
    pub(super) fd: RawFd,
    /// Whether the socket carries our frames as they are (a local Unix socket), so the
    /// watchdog may write a reply to it; a carried stream's bytes are its transport's
    /// (TLS records), so the watchdog only shuts it.
    pub(super) raw: bool,
    pub(super) wire: Wire,
    /// Set when the watchdog answered for a stuck call: the connection task must not
    /// write again and ends as soon as the call returns.
    pub(super) abandoned: AtomicBool,
}

impl CallSite for Site {
    fn request(&self) -> u32 {
        self.id
    }

    fn splices(&self) -> bool {
        self.conn.raw && self.conn.wire.encoding == purveyor_protocol::Encoding::Binary
    }

    /// Answers this request with `error`, says goodbye and shuts the socket, from the
    /// watchdog's thread while the connection's own thread is stuck in `provider`. Safe
    /// because that thread is inside the call, not writing: replies are only written
    /// between calls.
    fn abandon(&self, error: RemoteError, provider: &str) {
        let conn = &self.conn;
        if conn.abandoned.swap(true, Ordering::AcqRel) {
            return;
        }
        if !conn.raw {
            // SAFETY: the descriptor is open (see `ConnectionSite::fd`).
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
            return;
        }
        let mut out = Vec::new();
        conn.wire.reply(self.id, Outcome::Err(error), &mut out);
        let bye = ServerMessage::Goodbye {
            error: RemoteError::new(
                ErrorCode::ProviderFailed,
                format!(
                    "closing this connection: its thread is stuck in in-daemon provider {provider}, which missed its deadline; connect again"
                ),
            ),
        };
        let _ = encode_frame(conn.wire.encoding, &bye, conn.wire.max, &mut out);
        send_all(conn.fd, &out, Duration::from_millis(500));
        // SAFETY: the descriptor is open (see `ConnectionSite::fd`).
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
    }
}

/// Writes `bytes` to a non-blocking socket, waiting for room at most `patience` overall.
fn send_all(fd: RawFd, mut bytes: &[u8], patience: Duration) {
    let give_up = Instant::now() + patience;
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for its length; the descriptor is open.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        let left = give_up.saturating_duration_since(Instant::now());
        if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock && !left.is_zero() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            continue;
        }
        return;
    }
}
