//! Purveyor's protocol over the network: TLS 1.3 (rustls, no OpenSSL) between a remote
//! client and the daemon, a client certificate as the remote user's identity
//! (`docs/remote.md`).
//!
//! **The shape.** The daemon's sessions and the client libraries speak the protocol on a
//! byte stream; this crate gives them one over TLS:
//! - in the daemon, [`listen`] accepts TCP, completes the handshake within a deadline,
//!   maps the certificate to a local user ([`Users`]), and hands the socket server the
//!   TLS stream with that user; the server reads and writes it on the connection's own
//!   task, as it does a local socket (except that it never passes descriptors on it);
//! - a blocking client drives a [`TlsClient`] on its own thread, an async client the
//!   stream of [`connect_tls`] on its tasks;
//! - anything that wants a Unix socket to speak on gets from [`connect`] one end of a
//!   socket pair whose bytes a thread of its own carries to and from the daemon
//!   (`bridge.rs`).
//!
//! **Invariants.**
//! - No identity, no connection: a client without a certificate the trusted CA issued is
//!   refused by the handshake; one whose name maps to no local user (or to root, unless
//!   the mapping names root) is told why in a goodbye and closed before any request.
//! - Everything a peer can make the daemon hold is bounded: handshakes in progress
//!   ([`MAX_HANDSHAKES`]), each within the handshake deadline; a connection after its
//!   handshake counts against the socket server's connection limits and buffers.
//! - A silent peer is found dead within `dead_after` (TCP keepalive and
//!   `TCP_USER_TIMEOUT`), and its session ends as if the client had left.

mod bridge;
mod config;
mod connect;
mod identity;
mod listen;
mod tcp;
mod tls;

pub use config::{ClientFlags, ClientSettings, DEAD_AFTER_DEFAULT, RemoteAddress, ServerSettings};
pub use connect::{TlsClient, connect, connect_tls, explain};
pub use identity::{RemoteUser, Users};
pub use listen::{Accepted, Listener, MAX_HANDSHAKES, listen};
/// The rustls these configurations are of.
pub use rustls;
pub use tcp::EagerTcp;
pub use tls::{client_config, https_config, server_config};

/// Why a remote connection could not be set up or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file or certificate could not be read or makes no sense; the
    /// message names the file.
    #[error("{0}")]
    Config(String),
    /// The network or the peer failed.
    #[error("{0}")]
    Connect(String),
}
