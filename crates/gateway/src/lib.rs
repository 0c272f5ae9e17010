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
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Host,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    #[cfg(feature = "otlp")]
    if let Some(otlp) = config.otlp.clone() {
        let mut stopped = stopped.clone();
        tracing::info!(endpoint = %otlp.endpoint, interval = ?otlp.interval, "OTLP export on");
        tokio::spawn(otlp::run(
            host.clone(),
            config.metrics.clone(),
            otlp,
            async move {
                // Also ends when the sender goes (the server failed).
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }
    drop(stopped);
    let gateway = Arc::new(Gateway { host, config });
    axum::serve(listener, http::router(gateway))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
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
