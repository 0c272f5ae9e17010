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
pub mod config;
pub mod exposition;
pub mod http;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{ConfigError, GatewayConfig, OtlpConfig};
pub use http::Gateway;
use purveyor_host::Host;

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
    let gateway = Arc::new(Gateway { host, config });
    let router = http::router(gateway.clone());
    let result = accept_loop(listener, router, &gateway.host, limits, shutdown).await;
    let _ = stop.send(true);
    result
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
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
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
        let service = TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        let header_time = limits.http_header_time;
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_time);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Connections finish their requests, within the host's grace period.
    let grace = host.config().shutdown_grace;
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
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
