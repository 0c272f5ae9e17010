//! `purveyor serve`: the daemon.

use std::os::unix::fs::MetadataExt;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use purveyor_host::{HostConfig, server, socket};
use purveyor_protocol::{ErrorCode, HostMode, ReloadReport, RemoteError};

use crate::Global;

/// `purveyor serve`'s options.
pub struct Options<'a> {
    pub group_access: bool,
    pub threads: Option<usize>,
    pub clear_after: &'a [String],
    pub access: Option<&'a std::path::Path>,
    pub quarantine_after: u32,
    pub event_queue: usize,
    pub limits: &'a [String],
    pub http: Option<&'a str>,
    pub http_config: Option<&'a std::path::Path>,
    pub listen: &'a [String],
    pub remote_config: Option<&'a std::path::Path>,
}

pub fn run(global: &Global, options: Options<'_>) -> Result<()> {
    let Options {
        group_access,
        threads,
        clear_after,
        access,
        quarantine_after,
        event_queue,
        limits,
        http,
        http_config,
        listen,
        remote_config,
    } = options;
    // The gateway's address and configuration are checked before anything is bound.
    let gateway = match http {
        None => None,
        Some(addr) => {
            // `https://ADDR` serves HTTPS with the certificate of the remote configuration.
            let (addr, tls) = match addr.strip_prefix("https://") {
                Some(rest) => (rest, Some(crate::remote::https(remote_config)?)),
                None => (addr.strip_prefix("http://").unwrap_or(addr), None),
            };
            let addr = purveyor_gateway::parse_addr(addr).map_err(anyhow::Error::msg)?;
            let config = http_file(http_config)
                .map(|file| purveyor_gateway::GatewayConfig::load(&file))
                .transpose()?
                .unwrap_or_default();
            let tcp = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            tcp.set_nonblocking(true)?;
            Some((tcp, config, tls))
        }
    };
    let mut config = if global.provider_dirs.is_empty() {
        HostConfig::from_env(HostMode::Daemon)
    } else {
        HostConfig::with_dirs(HostMode::Daemon, global.provider_dirs.clone())
    };
    config.quarantine_crashes = quarantine_after;
    config.event_queue = event_queue.max(1);
    for setting in limits {
        config
            .limits
            .apply(setting)
            .map_err(|e| anyhow::anyhow!("--limit {setting}: {e}"))?;
    }
    for setting in clear_after {
        config
            .clear_after
            .apply(setting)
            .map_err(|e| anyhow::anyhow!("--clear-after {setting}: {e}"))?;
    }
    if let Some(file) = policy_file(access) {
        let policy = purveyor_host::AccessPolicy::load(&file)?;
        config.access = std::sync::Arc::new(policy);
        tracing::info!(file = %file.display(), "access policy loaded");
    }
    // Certificates are read and addresses bound before anything is served.
    let remote = crate::remote::prepare(listen, remote_config, config.handshake_timeout)?;
    let path = global
        .socket
        .clone()
        .unwrap_or_else(socket::default_socket_path);
    let mode = if group_access { 0o660 } else { 0o600 };
    raise_descriptor_limit(&config);
    // Two malloc arenas, not eight per core: glibc gives each thread that allocates under
    // contention an arena of its own, and memory freed in one is not reused by another, so
    // a burst of large requests on many threads would leave the daemon's resident memory
    // several times what it needs (bench/attacks measures it).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt with a documented parameter, before the runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Large buffers (a request's frame, a reply) from the heap, reused, rather than
        // mapped and unmapped each time: an unmap interrupts the other CPUs (TLB
        // shootdown), which on a VM costs every other client tens of microseconds.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    // Under systemd's socket activation the socket is systemd's: adopted, never removed.
    let (listener, path, inode) = match crate::systemd::activated_socket()? {
        Some((listener, activated)) => {
            if global.socket.as_ref().is_some_and(|p| *p != activated) {
                tracing::warn!(socket = %activated.display(), "serving the socket systemd passed, not --socket");
            }
            (listener, activated, None)
        }
        None => {
            let listener = socket::bind(&path, mode)?;
            // Remember which file is ours, so shutdown never removes a successor's socket.
            let inode = std::fs::metadata(&path).map(|m| m.ino()).ok();
            (listener, path, inode)
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    let threads = threads.map_or_else(
        || {
            purveyor_host::server::default_runtime_threads(
                purveyor_host::server::hosts_libraries_in_daemon(&config.provider_dirs),
            )
        },
        |t| t.max(1),
    );
    tracing::info!(threads, "async runtime threads");
    runtime.worker_threads(threads);
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let host = purveyor_builtins::host_with(config);
        host.set_socket(Some(path.clone()));
        for warning in host.root_warnings() {
            tracing::warn!("{warning}");
        }
        tracing::info!("{}", purveyor_hosting::confine::limits_report());
        match purveyor_hosting::sandbox::landlock_abi() {
            0 => tracing::info!("sandbox: this kernel has no Landlock; a strict sandbox is its seccomp filter only"),
            abi => tracing::info!(landlock_abi = abi, "sandbox: Landlock and seccomp available"),
        }
        let gateway = gateway.map(|(tcp, config, tls)| {
            (tcp, Arc::new(purveyor_host::Current::new(Arc::new(config))), tls)
        });
        let http_cell = gateway.as_ref().map(|(_, cell, _)| cell.clone());
        let access = access.map(std::path::Path::to_path_buf);
        let http_config = http_config.map(std::path::Path::to_path_buf);
        host.set_reloader(Arc::new(move |host: &purveyor_host::Host| {
            reload(host, access.as_deref(), http_config.as_deref(), http_cell.as_deref())
        }));
        tokio::spawn(reload_on_hangup(host.clone(), path.clone()));
        // One signal stops both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http = match gateway {
            None => None,
            Some((tcp, config, tls)) => {
                let tcp = tokio::net::TcpListener::from_std(tcp)?;
                let addr = tcp.local_addr()?;
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "the HTTP gateway listens beyond loopback; anonymous requests can read what every local user can");
                }
                tracing::info!(%addr, https = tls.is_some(), "HTTP gateway listening");
                let mut stopped = stopped.clone();
                let served = purveyor_gateway::serve_tls(tcp, tls, host.clone(), config, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                });
                // A failure is logged when it happens, not at shutdown; the socket
                // server goes on.
                Some(tokio::spawn(async move {
                    if let Err(error) = served.await {
                        tracing::error!(%addr, %error, "HTTP gateway stopped");
                    }
                }))
            }
        };
        tracing::info!(
            socket = %path.display(),
            pid = std::process::id(),
            "purveyor daemon listening"
        );
        crate::systemd::ready(&path);
        crate::systemd::keep_watchdog();
        let signal = async move {
            shutdown_signal().await;
            crate::systemd::stopping();
            let _ = stop.send(true);
        };
        let carried = remote
            .map(|r| crate::remote::start(r, host.clone()))
            .transpose()?;
        let result = server::serve_carried(listener, carried, host, signal).await;
        if let Some(http) = http
            && tokio::time::timeout(std::time::Duration::from_secs(2), http)
                .await
                .is_err()
        {
            tracing::warn!("HTTP gateway did not stop within 2 s");
        }
        result
    });
    // A provider call stuck on a blocking thread must not keep the daemon alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if inode.is_some() && std::fs::metadata(&path).map(|m| m.ino()).ok() == inode {
        let _ = std::fs::remove_file(&path);
    }
    tracing::info!("purveyor daemon stopped");
    result.with_context(|| format!("daemon on {} failed", path.display()))
}

/// The access policy file: `--access`, else `/etc/purveyor/access.toml` if it exists.
fn policy_file(access: Option<&Path>) -> Option<PathBuf> {
    let default = Path::new("/etc/purveyor/access.toml");
    access
        .map(Path::to_path_buf)
        .or_else(|| default.exists().then(|| default.to_path_buf()))
}

/// The gateway's file: `--http-config`, else `/etc/purveyor/http.toml` if it exists.
fn http_file(http_config: Option<&Path>) -> Option<PathBuf> {
    let default = Path::new("/etc/purveyor/http.toml");
    http_config
        .map(Path::to_path_buf)
        .or_else(|| default.exists().then(|| default.to_path_buf()))
}

/// A reload (`docs/lifecycle.md`, "Reload"): every file is read and checked first — the
/// policy, then `http.toml` when the gateway runs — and only then are the manifests read
/// and everything put in force together; any error leaves the configuration in force
/// as it was.
fn reload(
    host: &purveyor_host::Host,
    access: Option<&Path>,
    http_config: Option<&Path>,
    http: Option<&purveyor_host::Current<purveyor_gateway::GatewayConfig>>,
) -> Result<ReloadReport, RemoteError> {
    let refused = |e: String| {
        RemoteError::new(
            ErrorCode::InvalidRequest,
            format!("reload refused, the configuration in force keeps serving: {e}"),
        )
    };
    let policy_path = policy_file(access);
    let policy = match &policy_path {
        Some(file) => {
            purveyor_host::AccessPolicy::load(file).map_err(|e| refused(e.to_string()))?
        }
        None => purveyor_host::AccessPolicy::defaults(),
    };
    let http_path = http.and(http_file(http_config));
    let gateway = match &http_path {
        Some(file) => {
            Some(purveyor_gateway::GatewayConfig::load(file).map_err(|e| refused(e.to_string()))?)
        }
        None => http.map(|_| purveyor_gateway::GatewayConfig::default()),
    };
    let mut report = host.reload(Some(policy))?;
    if let (Some(cell), Some(config)) = (http, gateway) {
        cell.set(Arc::new(config));
    }
    report.policy = policy_path.map(|p| p.display().to_string());
    report.http = http_path.map(|p| p.display().to_string());
    Ok(report)
}

/// Reloads on every SIGHUP (`systemctl reload`), telling systemd while it does.
async fn reload_on_hangup(host: purveyor_host::Host, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with `purveyor reload`");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        crate::systemd::reloading();
        let done = host.clone();
        match tokio::task::spawn_blocking(move || done.reload_all()).await {
            Ok(Ok(report)) => tracing::info!(?report, "reloaded"),
            Ok(Err(error)) => tracing::error!(error = %error.message, "reload refused"),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
        crate::systemd::ready(&path);
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit, so that
/// `conn.total` connections (and the owners' reserve), HTTP connections and the daemon's
/// own files fit; warns when even the hard limit is too low for them.
fn raise_descriptor_limit(config: &HostConfig) {
    let limits = &config.limits;
    let wanted = u64::from(limits.conn_total)
        + u64::from(purveyor_host::OWNER_RESERVE)
        + u64::from(limits.http_connections)
        + 256;
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    if rl.rlim_cur < wanted {
        tracing::warn!(
            descriptors = rl.rlim_cur,
            wanted,
            "the descriptor limit (RLIMIT_NOFILE) is below what conn.total and http.connections allow; lower them or raise the limit"
        );
    }
}
