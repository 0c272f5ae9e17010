//! The daemon's side: accept TCP, complete the TLS handshake within a deadline, find the
//! certificate's local user, and hand the socket server a Unix stream carrying the
//! connection, with that user.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use purveyor_protocol::{Encoding, ErrorCode, RemoteError, ServerMessage, encode_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerSettings;
use crate::identity::{RemoteUser, Users, certificate_name};
use crate::{Error, tcp};

/// The most TLS handshakes in progress at once (`docs/security.md`, "Limits"): a TCP
/// connection beyond them is closed at once, and counted.
pub const MAX_HANDSHAKES: usize = 64;

/// A remote connection after its handshake, for the socket server: the TLS stream it
/// reads and writes itself (no bridge: a request crosses no thread), and its socket's
/// descriptor (for shutting it).
pub struct Accepted {
    pub stream: tokio_rustls::server::TlsStream<tcp::EagerTcp>,
    pub fd: std::os::fd::RawFd,
    pub user: RemoteUser,
    pub peer: SocketAddr,
}

/// What every remote connection of one daemon shares.
pub struct Listener {
    acceptor: TlsAcceptor,
    users: Users,
    dead_after: Duration,
    handshake_timeout: Duration,
    handshakes: Arc<Semaphore>,
    /// Connections refused: no or a bad certificate, no user, too many handshakes, or
    /// a handshake past its deadline.
    refused: AtomicU64,
    /// Told of each refusal (the daemon counts them in `purveyor.host`).
    on_refused: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Listener {
    /// Reads the certificates `settings` names; errors name the file.
    pub fn new(settings: &ServerSettings, handshake_timeout: Duration) -> Result<Listener, Error> {
        Ok(Listener {
            acceptor: TlsAcceptor::from(crate::tls::server_config(settings)?),
            users: settings.users.clone(),
            dead_after: settings.dead_after,
            handshake_timeout,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            refused: AtomicU64::new(0),
            on_refused: None,
        })
    }

    /// Calls `f` for each connection refused, besides counting it here.
    pub fn on_refused(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Box::new(f));
        self
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.on_refused {
            f();
        }
    }

    /// Remote connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Accepts remote connections on `tcp` and sends each, after its handshake, to `server`,
/// until the server's receiver is gone.
pub async fn listen(tcp: TcpListener, listener: Arc<Listener>, server: mpsc::Sender<Accepted>) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = server.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "remote accept failed (logged at most every 10 s)");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = listener.handshakes.clone().try_acquire_owned() else {
            listener.refuse();
            tracing::debug!(%peer, limit = MAX_HANDSHAKES, "too many TLS handshakes in progress; closed");
            continue;
        };
        let (listener, server) = (listener.clone(), server.clone());
        tokio::spawn(async move {
            let result = handshake(stream, peer, &listener).await;
            drop(permit);
            match result {
                Ok(accepted) => {
                    let _ = server.send(accepted).await;
                }
                Err(message) => {
                    listener.refuse();
                    tracing::info!(%peer, %message, "remote connection refused");
                }
            }
        });
    }
}

/// The TLS handshake and the certificate's user; `Err` says why the connection was
/// refused (the client was told, when it had finished its handshake).
async fn handshake(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &Listener,
) -> Result<Accepted, String> {
    tcp::configure(&stream, listener.dead_after).map_err(|e| format!("TCP options: {e}"))?;
    let stream = tcp::EagerTcp::new(stream);
    let tls = tokio::time::timeout(listener.handshake_timeout, listener.acceptor.accept(stream))
        .await
        .map_err(|_| {
            format!(
                "no TLS handshake within {}",
                humantime::format_duration(listener.handshake_timeout)
            )
        })?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| "no client certificate".to_owned())
        .and_then(|cert| certificate_name(cert));
    let user = match name.and_then(|name| listener.users.resolve(&name)) {
        Ok(user) => user,
        Err(message) => {
            refuse(tls, &message).await;
            return Err(message);
        }
    };
    tracing::debug!(%peer, certificate = %user.certificate, user = %user.user, "remote connection");
    let fd = std::os::fd::AsRawFd::as_raw_fd(tls.get_ref().0.get_ref());
    Ok(Accepted {
        stream: tls,
        fd,
        user,
        peer,
    })
}

/// Tells a client whose certificate maps to no user why, as the answer to its hello.
async fn refuse<T: tokio::io::AsyncWrite + Unpin>(mut tls: T, message: &str) {
    let bye = ServerMessage::Goodbye {
        error: RemoteError::new(
            ErrorCode::AccessDenied,
            format!("the daemon refused this connection: {message}"),
        ),
    };
    let mut out = Vec::new();
    if encode_frame(Encoding::Json, &bye, u32::MAX, &mut out).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = tls.write_all(&out).await;
            let _ = tls.shutdown().await;
        })
        .await;
    }
}
