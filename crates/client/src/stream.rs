//! What a blocking client's connection runs on: the daemon's Unix socket, or TLS to a
//! remote daemon driven by the client's own thread (`docs/remote.md`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use purveyor_protocol::RemoteError;

use crate::ClientError;

pub(crate) enum Stream {
    Unix(UnixStream),
    Tls(Box<purveyor_remote::TlsClient>),
}

impl Stream {
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(bytes),
            Stream::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(timeout),
            Stream::Tls(s) => s.set_write_timeout(timeout),
        }
    }

    /// Reads what has arrived, keeping any descriptor the daemon passed (a local socket).
    pub fn recv(&mut self, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => purveyor_protocol::fds::recv(s.as_raw_fd(), buf, fds),
            Stream::Tls(s) => s.read(buf),
        }
    }

    /// Looks for input for a moment before a read blocks (`purveyor_protocol::poll`):
    /// the daemon answers most requests within microseconds.
    pub fn poll_briefly(&self) {
        let fd = match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) if s.has_plaintext() => return,
            Stream::Tls(s) => s.fd(),
        };
        purveyor_protocol::poll::readable_within(fd, purveyor_protocol::poll::poll_window());
    }

    /// A failed read or write as the client's error: on TLS, what the failure means (a
    /// refused certificate, a lost network) naming the daemon.
    pub fn error(&self, e: std::io::Error, before_welcome: bool) -> ClientError {
        match self {
            Stream::Unix(_) => e.into(),
            Stream::Tls(s) => {
                let (code, message) = s.explain(&e, before_welcome);
                RemoteError::new(code, message).into()
            }
        }
    }
}
