//! Where the daemon's socket lives, and binding it safely: a stale socket left by a crashed
//! daemon is replaced, a live one is never stolen.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the daemon could not take its socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("a daemon is already listening on {path} (stop it first, or pass another --socket)")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub use purveyor_protocol::default_socket_path;

/// Binds the daemon's socket at `path` with permission bits `mode` (0o600 by default;
/// 0o660 to let the socket's group in). Creates the parent directory (mode 0o700, or
/// 0o750 when the socket is group-accessible) if it is missing.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let io = |action, source| BindError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let dir_mode = if mode & 0o070 != 0 { 0o750 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)
            .map_err(|e| BindError::Io {
                action: "create the socket directory",
                path: parent.to_owned(),
                source: e,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(|e| io("remove the stale socket", e))?;
            }
            Err(e) => return Err(io("probe the existing socket", e)),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("set permissions on", e))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p.sock");
        let first = bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, 0o600).unwrap_err();
        assert!(matches!(err, BindError::AlreadyRunning { .. }), "{err}");
        drop(first); // the file stays: now it is stale
        assert!(path.exists());
        let _second = bind(&path, 0o600).unwrap();
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = bind(&path, 0o600).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}

/// The credentials of the process at the other end of a connected Unix socket, as the
/// kernel recorded them when it connected: uid, gid and pid (`SO_PEERCRED`) and its
/// supplementary groups (`SO_PEERGROUPS`). Read once, when the connection is accepted:
/// nothing about the client is ever read again from `/proc`, where its pid may by then
/// belong to another user's process.
pub fn peer_credentials(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<crate::Caller> {
    let fd = socket.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut caller = crate::Caller::new(cred.uid, cred.gid, cred.pid.max(0) as u32);
    caller.groups = peer_groups(fd)?.into();
    Ok(caller)
}

/// `SO_PEERGROUPS`: the peer's supplementary groups, as of its connect.
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    // Most users are in few groups; the kernel says how much room it needs otherwise.
    let mut groups = vec![0 as libc::gid_t; 32];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, which is that large.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // NGROUPS_MAX is 65536: the kernel never asks for more.
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() || needed > 65536 {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod peer_tests {
    /// Both ends of a socket pair are this process: its own uid, gid, pid and groups.
    #[test]
    fn peer_credentials_are_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = super::peer_credentials(&a).unwrap();
        let me = crate::Caller::current_process();
        assert_eq!((peer.uid, peer.gid, peer.pid), (me.uid, me.gid, me.pid));
        let (mut got, mut want) = (peer.groups.to_vec(), me.groups.to_vec());
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
