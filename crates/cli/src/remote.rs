//! `purveyor serve --listen tls://…`: the daemon's remote listeners (`docs/remote.md`),
//! set up before anything is served, then bridged into the socket server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use purveyor_host::server::Carried;
use purveyor_remote::rustls as tls;
use purveyor_remote::{Listener, ServerSettings};

/// The remote listeners, bound, with their certificates read.
pub struct Remote {
    tcp: Vec<std::net::TcpListener>,
    listener: Listener,
}

/// The daemon's remote configuration: `--remote-config`, else `/etc/purveyor/remote.toml`.
pub fn config_file(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/etc/purveyor/remote.toml"))
}

/// Reads the certificates and binds every `--listen` address; `None` without any.
pub fn prepare(
    listen: &[String],
    config: Option<&Path>,
    handshake_timeout: Duration,
) -> Result<Option<Remote>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let file = config_file(config);
    let settings = ServerSettings::load(&file).with_context(|| {
        format!(
            "--listen needs the remote configuration {} (docs/remote.md)",
            file.display()
        )
    })?;
    let listener = Listener::new(&settings, handshake_timeout)?;
    let mut tcp = Vec::new();
    for address in listen {
        let Some(rest) = address
            .strip_prefix("tls://")
            .or_else(|| (!address.contains("://")).then_some(address.as_str()))
        else {
            anyhow::bail!("--listen {address}: only tls://ADDR:PORT is offered");
        };
        let addr = purveyor_gateway::parse_addr(rest)
            .map_err(|e| anyhow::anyhow!("--listen {address}: {e}"))?;
        let bound = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for remote clients on {addr}"))?;
        bound.set_nonblocking(true)?;
        tcp.push(bound);
    }
    Ok(Some(Remote { tcp, listener }))
}

/// The HTTP gateway's TLS (`--http https://…`), from the same certificate as `--listen`.
pub fn https(config: Option<&Path>) -> Result<Arc<tls::ServerConfig>> {
    let file = config_file(config);
    let settings = ServerSettings::load(&file).with_context(|| {
        format!(
            "--http https://… needs the certificate in {} (docs/remote.md)",
            file.display()
        )
    })?;
    Ok(purveyor_remote::https_config(&settings)?)
}

/// Starts accepting on the runtime: each connection, after its handshake, comes out of
/// the receiver as a [`Carried`] connection of its certificate's user.
pub fn start(
    remote: Remote,
    host: purveyor_host::Host,
) -> std::io::Result<tokio::sync::mpsc::Receiver<Carried>> {
    // Refusals are counted in `purveyor.host` (`remote_refused`).
    let listener = Arc::new(
        remote
            .listener
            .on_refused(move || host.note_remote_refused()),
    );
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(purveyor_remote::MAX_HANDSHAKES);
    for tcp in remote.tcp {
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        tracing::info!(addr = %tcp.local_addr()?, "listening for remote clients over TLS");
        tokio::spawn(purveyor_remote::listen(
            tcp,
            listener.clone(),
            accepted_tx.clone(),
        ));
    }
    let (carried_tx, carried) = tokio::sync::mpsc::channel(purveyor_remote::MAX_HANDSHAKES);
    tokio::spawn(async move {
        while let Some(a) = accepted.recv().await {
            let mut caller = purveyor_host::Caller::new(a.user.uid, a.user.gid, 0);
            caller.groups = a.user.groups.into();
            caller.remote = true;
            tracing::info!(peer = %a.peer, certificate = %a.user.certificate, user = %a.user.user, "remote client");
            let carried = Carried {
                io: purveyor_host::server::CarriedIo {
                    io: Box::new(a.stream),
                    fd: a.fd,
                },
                caller,
            };
            if carried_tx.send(carried).await.is_err() {
                return;
            }
        }
    });
    Ok(carried)
}
