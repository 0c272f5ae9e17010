//! The systemd service protocol (`dist/systemd/`, `docs/lifecycle.md`, "Under systemd"),
//! through the `sd-notify` crate (small, no dependencies): socket activation — a listening
//! socket passed in `LISTEN_FDS` is adopted instead of binding one — and readiness:
//! `READY=1` once the socket serves, `STOPPING=1` when a stop begins, `WATCHDOG=1` at half
//! the interval when `WatchdogSec=` is set. Outside systemd (no `LISTEN_PID` for this
//! process, no `NOTIFY_SOCKET`) each of these does nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sd_notify::NotifyState;

/// The socket systemd passed, with its path, if it passed one.
pub fn activated_socket() -> Result<Option<(UnixListener, PathBuf)>> {
    let mut fds = sd_notify::listen_fds().context("cannot read LISTEN_FDS")?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            extra = fds.len(),
            "systemd passed more than one socket; only the first is served"
        );
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours), and
    // nothing else here owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a descriptor we own, with a buffer of the size given.
    let listening = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0
        && accepting != 0;
    if !listening {
        bail!("the descriptor systemd passed (fd 3) is not a listening socket");
    }
    let listener = UnixListener::from(fd);
    let address = listener
        .local_addr()
        .context("the socket systemd passed is not a Unix socket")?;
    let Some(path) = address.as_pathname() else {
        bail!("the socket systemd passed has no path (ListenStream= must name a file)");
    };
    Ok(Some((listener, path.to_owned())))
}

/// Whether stderr is systemd's journal stream: `JOURNAL_STREAM` (`DEV:INO`, set by
/// systemd for a service whose output goes to the journal) names stderr's device and
/// inode. A stderr redirected elsewhere by hand keeps plain text.
pub fn under_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// Tells systemd the daemon serves on `path`.
pub fn ready(path: &std::path::Path) {
    let status = format!("serving on {}", path.display());
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!(error = %e, "cannot tell systemd the daemon is ready");
    }
}

/// Tells systemd a reload has begun (with the monotonic time, as `Type=notify-reload`
/// needs); [`ready`] ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// Tells systemd a stop has begun.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// With `WatchdogSec=` set, pings systemd at half the interval while the runtime runs.
pub fn keep_watchdog() {
    if let Some(every) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every / 2);
            loop {
                ticks.tick().await;
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        });
    }
}
