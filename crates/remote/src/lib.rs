//! Purveyor's protocol over the network: TLS 1.3 (rustls, no OpenSSL) between a remote
//! client and the daemon, a client certificate as the remote user's identity, and the
//! bridges that let both sides keep their Unix-socket code (`docs/remote.md`).
//!
//! **The shape.** Neither the daemon's session code nor the client libraries learn TLS.
//! Each side puts a *bridge* between the TLS stream and one end of a Unix socket pair:
//! - in the daemon, [`listen`] accepts TCP, completes the handshake within a deadline,
//!   maps the certificate to a local user ([`Users`]), and hands the other end of the
//!   pair — with that user — to the socket server, which serves it like a local
//!   connection except that it never passes descriptors;
//! - in a client, [`connect`] dials, completes the handshake, and returns the other end
//!   of a pair whose bytes a thread of its own carries to and from the daemon.
//!
//! **Invariants.**
//! - No identity, no connection: a client without a certificate the trusted CA issued is
//!   refused by the handshake; one whose name maps to no local user (or to root, unless
//!   the mapping names root) is told why in a goodbye and closed before any request.
//! - Everything a peer can make the daemon hold is bounded: handshakes in progress
//!   ([`MAX_HANDSHAKES`]), each within the handshake deadline; a connection after its
//!   handshake counts against the socket server's connection limits; the bridge holds
//!   one buffer each way and reads the TLS side only when the session end has room.
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
pub use connect::{TlsClient, connect};
pub use identity::{RemoteUser, Users};
pub use listen::{Accepted, Listener, MAX_HANDSHAKES, listen};
/// The rustls these configurations are of.
pub use rustls;
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
