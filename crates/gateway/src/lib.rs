//! The Purveyor HTTP gateway (`purveyor serve --http ADDR`): what the daemon serves to
//! machines that are not local clients.
//!
//! - a JSON API mirroring the client operations ([`http`]), under the same access policy
//!   as the socket, anonymous requests being read-only ([`auth`]);
//! - `/metrics` for Prometheus, in OpenMetrics or the Prometheus text format
//!   ([`metrics`] decides what and how, [`exposition`] writes it);
//! - `/healthz` and `/readyz`;
//! - with the `otlp` cargo feature, a periodic push of the same metrics to an
//!   OpenTelemetry collector (`otlp`).
//!
//! The gateway runs in the daemon's process and runtime and calls the [`Host`] directly:
//! there is no extra hop through the socket.
//!
//! **Invariants:** the gateway never changes anything for an anonymous request; a scrape
//! never counts as use of a provider (idle providers still unload) and never loads a
//! provider that is not builtin unless the configuration names its namespace in
//! `metrics.load`.

pub mod auth;
mod calls;
pub mod config;
mod events;
pub mod exposition;
pub mod http;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
mod pending;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{ConfigError, GatewayConfig, OtlpConfig};
pub use http::Gateway;
use purveyor_host::Host;
pub use routes::router;

/// The address `--http ADDR` means: a bare port is on loopback (`9464` →
/// `127.0.0.1:9464`); any other interface must be named.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!("--http {text:?}: expected PORT (on loopback) or HOST:PORT, like 9464, 127.0.0.1:9464 or [::1]:9464")
    })
}

/// Serves the gateway on `listener` until `shutdown` completes; with `[otlp]` in the
/// configuration (and the `otlp` feature), pushes metrics to the collector meanwhile.
/// `config` may be replaced while it serves (a reload): tokens and `[metrics]` apply from
/// the next request; `[otlp]` is read once, at start.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Host,
    config: Arc<purveyor_host::Current<GatewayConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, None, host, config, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (HTTPS: the server's certificate, no client
/// certificate asked; identities are tokens as over plain HTTP).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    host: Host,
    config: Arc<purveyor_host::Current<GatewayConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    #[cfg(feature = "otlp")]
    if let Some(otlp) = config.get().otlp.clone() {
        let mut stopped = stopped.clone();
        tracing::info!(endpoint = %otlp.endpoint, interval = ?otlp.interval, "OTLP export on");
        tokio::spawn(otlp::run(
            host.clone(),
            config.get().metrics.clone(),
            otlp,
            async move {
                // Also ends when the sender goes (the server failed).
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }
    drop(stopped);
    let limits = host.config().limits;
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let gateway = Arc::new(Gateway {
        host,
        config,
        stopping,
        calls: Default::default(),
        _never_stops: None,
    });
    let router = routes::router(gateway.clone());
    let listening = Listening {
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        stopping: stopping_tx,
    };
    let result = accept_loop(listener, router, &gateway.host, limits, listening, shutdown).await;
    let _ = stop.send(true);
    result
}

/// How the accept loop serves its connections: over TLS or not, and whom to tell when
/// it stops (the gateway's long responses).
struct Listening {
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Accepts HTTP connections until `shutdown`: at most `http.connections` at once (more
/// are closed at once, and counted), each with `http.header_time` to send a request's
/// headers (a half-sent request, or a kept-alive connection that sends nothing more, is
/// closed). On shutdown, connections finish the request they are serving.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    host: &Host,
    limits: purveyor_host::Limits,
    listening: Listening,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        limits.http_connections as usize,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut failures_logged: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if failures_logged.is_none_or(|at| at.elapsed().as_secs() >= 10) {
                        tracing::warn!(error = %e, "HTTP accept failed (logged at most every 10 s)");
                        failures_logged = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            host.note_http_refused();
            drop(tcp);
            continue;
        };
        // Small responses and event-stream messages go out at once, not after the
        // peer's delayed acknowledgement (Nagle).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stopped = stopped.clone();
        let header_time = limits.http_header_time;
        let tls = listening.tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(tcp, service, header_time, stopped).await,
                Some(acceptor) => {
                    // The handshake has the headers' time too.
                    match tokio::time::timeout(header_time, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, service, header_time, stopped).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!("HTTPS handshake too slow; closed"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let _ = listening.stopping.send(true);
    // Connections finish their requests, within the host's grace period.
    let grace = host.config().shutdown_grace;
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Serves HTTP/1 on one connection (plain or TLS) until it ends, or finishes its request
/// when `stopped` says the gateway stops.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    header_time: std::time::Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_time);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(
            parse_addr("localhost")
                .unwrap_err()
                .contains("expected PORT")
        );
    }
}
