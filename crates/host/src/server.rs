//! The daemon's socket server: accepts connections, admits them against the connection
//! limits, says hello, and hands each to [`crate::connection`]; at shutdown, drains them
//! within the grace period and releases the providers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use purveyor_protocol::{
    BINARY_INSTANCES_SINCE, Encoding, ErrorCode, FrameBuffer, Hello, PROTOCOL_MINOR,
    PROTOCOL_VERSION, RemoteError, ServerMessage, Welcome, encode_frame,
};
use purveyor_provider::Caller;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Host;
use crate::connection::{self, Reader, Socket, Wire, Writer};
use crate::local_io::LocalIo;
use crate::state::SERVER_NAME;

pub use crate::connection::{CarriedIo, Carrier, OUT_CAP};

/// A connection another transport carries to the server (`purveyor-remote`'s TLS): the
/// stream the connection reads and writes on its own task, and who the peer is — which
/// the transport established (there are no peer credentials to read).
pub struct Carried {
    pub io: crate::connection::CarriedIo,
    pub caller: Caller,
}

/// The async runtime's worker threads a daemon starts with when not told: one per two
/// CPUs this process may run on — at least one, and at least two when a provider library
/// is hosted in the daemon (`in_daemon_libraries`).
///
/// Why half: a connection's requests and its providers' replies then mostly meet on one
/// thread, and the other CPUs are left to the clients and the provider processes they talk
/// to. On a machine whose idle CPUs halt, a runtime of a thread per CPU spreads one
/// client's request over two threads, waking a halted CPU on the way (on 2 vCPUs: `get
/// purveyor.host` 0.83× its floor with one thread, 2.0× with two; `docs/performance.md`,
/// "Placement"). Blocking work (file I/O, queries, large decodes) runs on the blocking
/// pool either way.
///
/// Why two with in-daemon libraries: a library that hangs holds the thread its call runs
/// on for good (it cannot be stopped, only marked failed); the other thread keeps serving.
pub fn default_runtime_threads(in_daemon_libraries: bool) -> usize {
    let half = std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2));
    if in_daemon_libraries {
        half.max(2)
    } else {
        half.max(1)
    }
}

/// Whether any manifest in `dirs` hosts a library in the daemon (unreadable or broken
/// manifests count as not; the host reports them when it reads them).
pub fn hosts_libraries_in_daemon(dirs: &[std::path::PathBuf]) -> bool {
    dirs.iter().any(|dir| {
        crate::manifest::load_dir(dir)
            .0
            .iter()
            .any(|m| m.hosting == purveyor_model::Hosting::InDaemon)
    })
}

/// Serves `host` on `listener` until `shutdown` completes. Then it stops accepting, lets
/// in-flight requests finish within the configured grace period, tells every client
/// goodbye, and releases the providers. The caller owns the socket file.
pub async fn serve(
    listener: tokio::net::UnixListener,
    host: Host,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_carried(listener, None, host, shutdown).await
}

/// [`serve`], and also the connections `carried` brings (remote ones), under the same
/// limits, except that descriptors are never passed on them.
pub async fn serve_carried(
    listener: tokio::net::UnixListener,
    mut carried: Option<tokio::sync::mpsc::Receiver<Carried>>,
    host: Host,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id: u32 = 0;
    let admission = Arc::new(crate::admission::Admission::default());
    // Accept failures (out of descriptors) are logged once per ten seconds, with a count.
    let mut accept_failures: u64 = 0;
    let mut failure_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    // Idle `MEM ` buffers are freed within a quarter of their idle time (at most a minute).
    let idle = host.config().limits.io_mem.idle;
    let mut sweep = tokio::time::interval((idle / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    ));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                let freed = host.shared().memory().sweep(std::time::Instant::now());
                if freed > 0 {
                    tracing::debug!(freed, "idle MEM buffers freed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id = next_id.wrapping_add(1);
                    connections.spawn(connection(Peer::Local(stream), host.clone(), next_id, stop_rx.clone(), admission.clone()));
                }
                Err(e) => {
                    // Out of descriptors or a peer that vanished: keep serving the others.
                    accept_failures += 1;
                    if failure_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failures = accept_failures, "accept failed (logged at most every 10 s)");
                        failure_logged = Some(Instant::now());
                        accept_failures = 0;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(remote) = async { carried.as_mut()?.recv().await }, if carried.is_some() => {
                next_id = next_id.wrapping_add(1);
                connections.spawn(connection(Peer::Carried(remote), host.clone(), next_id, stop_rx.clone(), admission.clone()));
            }
        }
    }
    tracing::info!(connections = connections.len(), "shutting down");
    drop(listener);
    drop(carried);
    let _ = stop_tx.send(true);
    let grace = host.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections still busy after the grace period; cutting them off"
        );
        connections.abort_all();
        // A connection whose thread is stuck in an in-daemon provider never ends: give the
        // others a moment to unwind, then leave it behind.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.detach_all();
    }
    host.shutdown().await;
    Ok(())
}

/// Where a connection comes from.
enum Peer {
    /// A local client on the daemon's socket: its credentials are the socket's.
    Local(UnixStream),
    Carried(Carried),
}

async fn connection(
    peer: Peer,
    host: Host,
    id: u32,
    stop: watch::Receiver<bool>,
    admission: Arc<crate::admission::Admission>,
) {
    let caller = match &peer {
        Peer::Local(stream) => match crate::socket::peer_credentials(stream) {
            Ok(caller) => caller,
            Err(e) => {
                tracing::warn!(connection = id, error = %e, "cannot read peer credentials; closing");
                return;
            }
        },
        Peer::Carried(carried) => carried.caller.clone(),
    };
    let shared = host.shared();
    let config = shared.config();
    let privileged = caller.uid == 0 || caller.uid == config.access.owner();
    let _ticket = match admission.admit(caller.uid, privileged, &config.limits) {
        Ok(ticket) => ticket,
        Err(message) => {
            shared.counters().connection_refused();
            tracing::debug!(connection = id, uid = caller.uid, %message, "connection refused");
            // Said before the hello is read: the client reads it as the answer to its hello.
            let bye = ServerMessage::Goodbye {
                error: RemoteError::new(ErrorCode::LimitExceeded, message),
            };
            let mut out = Vec::new();
            if encode_frame(Encoding::Json, &bye, u32::MAX, &mut out).is_ok() {
                match peer {
                    Peer::Local(stream) => {
                        let _ = stream.try_write(&out);
                    }
                    Peer::Carried(mut carried) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = carried.io.io.write_all(&out).await;
                            let _ = carried.io.io.shutdown().await;
                        })
                        .await;
                    }
                }
            }
            return;
        }
    };
    shared.counters().connection_opened();
    let local = matches!(peer, Peer::Local(_));
    let span = tracing::debug_span!("connection", id, uid = caller.uid, pid = caller.pid, local);
    let result = run(peer, &host, id, caller, stop).instrument(span).await;
    if let Err(e) = result {
        tracing::debug!(connection = id, error = %e, "connection ended with an I/O error");
    }
    shared.counters().connection_closed();
}

/// Serves one connection: its handshake, then its requests ([`crate::connection`]).
async fn run(
    peer: Peer,
    host: &Host,
    id: u32,
    caller: Caller,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    match peer {
        Peer::Local(stream) => {
            let io = LocalIo::new(stream)?;
            let socket = Socket {
                rd: Reader::Unix(&io),
                wr: Writer::Unix(&io),
                fd: io.fd(),
                local: true,
            };
            serve_socket(socket, host, id, caller, stop).await
        }
        Peer::Carried(Carried { io, .. }) => {
            let (rd, wr) = tokio::io::split(io.io);
            let socket = Socket {
                rd: Reader::Stream(rd),
                wr: Writer::Stream(wr),
                fd: io.fd,
                local: false,
            };
            serve_socket(socket, host, id, caller, stop).await
        }
    }
}

async fn serve_socket(
    mut socket: Socket<'_>,
    host: &Host,
    id: u32,
    caller: Caller,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let config = host.config();
    let max = config.max_frame;
    // What the client may send: `conn.request_max`, at most the frame limit.
    let request_max = config.limits.conn_request_max.min(max);
    let mut frames = FrameBuffer::new(request_max);
    let (rd, wr) = (&mut socket.rd, &mut socket.wr);
    let Some(hello) = handshake(rd, wr, &mut frames, host, id).await? else {
        return Ok(());
    };
    let wire = Wire {
        encoding: hello.encoding,
        max,
        minor: hello.minor,
    };
    let session = host.session(caller);
    session.set_shows(hello.ui);
    // A local Unix socket can carry file descriptors (plain files opened for reading, the
    // ends of direct dialog channels); a carried stream cannot reach its client's process.
    if socket.local {
        session.allow_fds();
        session.set_direct_dialogs(hello.direct_dialogs);
    }
    connection::serve(socket, frames, wire, host.shared(), &session, id, stop).await
}

/// Reads the client's hello and answers it. `None` when the connection should close (the
/// client was told why, or it left).
async fn handshake(
    rd: &mut Reader<'_>,
    wr: &mut Writer<'_>,
    frames: &mut FrameBuffer,
    host: &Host,
    id: u32,
) -> std::io::Result<Option<Hello>> {
    let config = host.config();
    let first = tokio::time::timeout(config.handshake_timeout, async {
        loop {
            match frames.next_frame() {
                Ok(Some(payload)) => {
                    return Ok(serde_json::from_slice::<Hello>(payload).map_err(|e| {
                        format!(
                            "malformed hello ({e}); expected {{\"protocol\":{PROTOCOL_VERSION},\"encoding\":\"binary\" or \"json\"}}"
                        )
                    }));
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e.to_string())),
            }
            let n = rd.read(frames.spare()).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            frames.filled(n);
        }
    })
    .await;
    let hello = match first {
        Ok(Ok(Ok(hello))) => hello,
        Ok(Ok(Err(message))) => {
            refuse(wr, message).await;
            return Ok(None);
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A peer that half-closed inside its hello is told so (it may still read).
            if frames.buffered() > 0 {
                let message = format!(
                    "truncated hello: the connection closed after {} bytes of a frame",
                    frames.buffered()
                );
                refuse(wr, message).await;
            }
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let message = format!(
                "no hello within {}",
                humantime::format_duration(config.handshake_timeout)
            );
            refuse(wr, message).await;
            return Ok(None);
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}",
            hello.protocol
        );
        refuse(wr, message).await;
        return Ok(None);
    }
    if hello.encoding == Encoding::Binary && hello.minor < BINARY_INSTANCES_SINCE {
        let message = format!(
            "this client speaks minor version {} of protocol {PROTOCOL_VERSION}, whose binary instances this server no longer reads (minor {BINARY_INSTANCES_SINCE} changed them); upgrade the client or use the JSON encoding",
            hello.minor
        );
        refuse(wr, message).await;
        return Ok(None);
    }
    tracing::debug!(connection = id, client = %hello.client, encoding = %hello.encoding, "hello");
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        minor: PROTOCOL_MINOR,
        encoding: hello.encoding,
        server: SERVER_NAME.into(),
        max_frame: config.limits.conn_request_max.min(config.max_frame),
        connection: id,
    };
    let mut out = Vec::new();
    if encode_frame(Encoding::Json, &welcome, u32::MAX, &mut out).is_err() {
        return Ok(None);
    }
    wr.write_all(&out).await?;
    Ok(Some(hello))
}

/// Says goodbye in JSON (no encoding was agreed) and gives up on the connection.
async fn refuse(wr: &mut Writer<'_>, message: String) {
    tracing::warn!(%message, "handshake refused");
    let msg = ServerMessage::Goodbye {
        error: RemoteError::new(ErrorCode::Protocol, message),
    };
    let mut out = Vec::new();
    if encode_frame(Encoding::Json, &msg, u32::MAX, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &std::path::Path, name: &str, hosting: &str) {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nhosting = \"{hosting}\"\nlibrary = \"lib{name}.so\"\nclasses = [\"{name}.thing\"]\ncapabilities = [\"get\"]\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn an_in_daemon_library_asks_for_a_second_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        manifest(dir.path(), "iso", "isolated");
        assert!(!hosts_libraries_in_daemon(&dirs));
        manifest(dir.path(), "ind", "in-daemon");
        assert!(hosts_libraries_in_daemon(&dirs));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_runtime_threads(false), cpus.div_ceil(2).max(1));
        assert_eq!(default_runtime_threads(true), cpus.div_ceil(2).max(2));
    }
}
