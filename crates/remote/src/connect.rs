//! A client's side: dial the daemon, complete the TLS handshake, and give the client a
//! Unix stream whose bytes a thread of this connection carries to and from the daemon.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use purveyor_protocol::{Encoding, ErrorCode};
use rustls::AlertDescription;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::bridge::{self, Teller};
use crate::config::ClientSettings;
use crate::{Error, tcp};

/// Connects to the daemon `settings` name, as a client speaking `encoding` after its
/// hello. Errors before the handshake is done (no route, a certificate the CA did not
/// issue) are returned; the daemon's refusal of this client's certificate reaches the
/// client as a goodbye naming it, the answer to its hello.
pub fn connect(settings: &ClientSettings, encoding: Encoding) -> Result<UnixStream, Error> {
    let config = crate::tls::client_config(settings)?;
    let address = settings.address.clone();
    let server_name = ServerName::try_from(address.host.clone()).map_err(|_| {
        Error::Config(format!(
            "{:?} is neither a DNS name nor an IP address",
            address.host
        ))
    })?;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::Connect(format!("socket pair: {e}")))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("purveyor-tls".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = done_tx.send(Err(Error::Connect(format!("runtime: {e}"))));
                    return;
                }
            };
            runtime.block_on(async move {
                let tls = match dial(&settings, config, server_name).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = done_tx.send(Err(e));
                        return;
                    }
                };
                let unix = match ours
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::UnixStream::from_std(ours))
                {
                    Ok(unix) => unix,
                    Err(e) => {
                        let _ = done_tx.send(Err(Error::Connect(format!("socket pair: {e}"))));
                        return;
                    }
                };
                let _ = done_tx.send(Ok(()));
                let shown = settings.address.to_string();
                let teller = Teller {
                    encoding,
                    describe: Box::new(move |e, before_welcome| {
                        describe(&shown, e, before_welcome)
                    }),
                };
                bridge::carry(tls, unix, Some(teller)).await;
            });
        })
        .map_err(|e| Error::Connect(format!("cannot start the TLS thread: {e}")))?;
    match done_rx.recv() {
        Ok(Ok(())) => Ok(theirs),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Connect(
            "the TLS thread ended before connecting".into(),
        )),
    }
}

/// Dials the daemon `settings` name and completes the TLS handshake, for an async client
/// that reads and writes the stream on its own tasks (no bridge).
pub async fn connect_tls(
    settings: &ClientSettings,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Error> {
    let config = crate::tls::client_config(settings)?;
    let server_name = ServerName::try_from(settings.address.host.clone()).map_err(|_| {
        Error::Config(format!(
            "{:?} is neither a DNS name nor an IP address",
            settings.address.host
        ))
    })?;
    dial(settings, config, server_name).await
}

/// What a failure of a connection to `address` means to its client: a code and a message
/// naming the daemon (`before_welcome`: the handshake was not done).
pub fn explain(address: &str, e: &std::io::Error, before_welcome: bool) -> (ErrorCode, String) {
    describe(address, e, before_welcome)
}

async fn dial(
    settings: &ClientSettings,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Error> {
    let address = &settings.address;
    let timeout = settings.connect_timeout;
    let limit = |what: &str| {
        Error::Connect(format!(
            "{what} did not finish within {}",
            humantime::format_duration(timeout)
        ))
    };
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((address.host.as_str(), address.port)),
    )
    .await
    .map_err(|_| limit("the TCP connection"))?
    .map_err(|e| Error::Connect(e.to_string()))?;
    tcp::configure(&tcp, settings.dead_after).map_err(|e| Error::Connect(e.to_string()))?;
    tokio::time::timeout(
        timeout,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| limit("the TLS handshake"))?
    .map_err(|e| Error::Connect(format!("the TLS handshake failed: {e}")))
}

/// What a client is told when its TLS connection fails.
fn describe(address: &str, e: &std::io::Error, before_welcome: bool) -> (ErrorCode, String) {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        Some(AlertDescription::CertificateRequired) => (
            ErrorCode::AccessDenied,
            format!(
                "the daemon at {address} requires a client certificate: pass --tls-cert and --tls-key (or set PURVEYOR_TLS_CERT and PURVEYOR_TLS_KEY)"
            ),
        ),
        Some(alert) => (
            ErrorCode::AccessDenied,
            format!(
                "the daemon at {address} refused this client's certificate (TLS alert {alert:?})"
            ),
        ),
        None if before_welcome => (
            ErrorCode::Protocol,
            format!("the TLS connection to {address} failed: {e}"),
        ),
        None => (
            ErrorCode::Protocol,
            format!("the connection to {address} was lost: {e}"),
        ),
    }
}

/// A client's TLS connection driven by the calling thread itself — no bridge, no thread
/// hand-off per request (on a VM whose idle CPUs halt, each hand-off can cost a cross-CPU
/// wake-up of tens of microseconds). For blocking clients.
pub struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    address: String,
}

impl TlsClient {
    /// Dials the daemon `settings` name and completes the TLS handshake within
    /// `settings.connect_timeout`.
    pub fn connect(settings: &ClientSettings) -> Result<TlsClient, Error> {
        use std::net::ToSocketAddrs;
        let config = crate::tls::client_config(settings)?;
        let address = &settings.address;
        let server_name = ServerName::try_from(address.host.clone()).map_err(|_| {
            Error::Config(format!(
                "{:?} is neither a DNS name nor an IP address",
                address.host
            ))
        })?;
        let timeout = settings.connect_timeout;
        let addrs = (address.host.as_str(), address.port)
            .to_socket_addrs()
            .map_err(|e| Error::Connect(format!("cannot resolve {}: {e}", address.host)))?;
        let mut last = None;
        let tcp = addrs
            .into_iter()
            .find_map(|addr| {
                std::net::TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|e| last = Some(e))
                    .ok()
            })
            .ok_or_else(|| {
                Error::Connect(last.map_or_else(|| "no address".into(), |e| e.to_string()))
            })?;
        tcp::configure(&tcp, settings.dead_after).map_err(|e| Error::Connect(e.to_string()))?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .map_err(|e| Error::Connect(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config, server_name)
            .map_err(|e| Error::Connect(format!("TLS: {e}")))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| Error::Connect(format!("the TLS handshake failed: {e}")))?;
        }
        stream
            .sock
            .set_write_timeout(None)
            .map_err(|e| Error::Connect(e.to_string()))?;
        Ok(TlsClient {
            stream,
            address: address.to_string(),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.sock.set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.sock.set_write_timeout(timeout)
    }

    /// Whether decrypted bytes wait to be read (then the socket need not be polled).
    pub fn has_plaintext(&self) -> bool {
        !self.stream.conn.wants_read()
    }

    /// The TCP socket, for polling.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.stream.sock.as_raw_fd()
    }

    /// What a failure of this connection means to its client: a code and a message
    /// naming the daemon (`before_welcome`: the handshake was not done).
    pub fn explain(&self, e: &std::io::Error, before_welcome: bool) -> (ErrorCode, String) {
        describe(&self.address, e, before_welcome)
    }
}

impl std::io::Read for TlsClient {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl std::io::Write for TlsClient {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
