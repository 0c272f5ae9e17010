//! Where clients find the daemon.

use std::path::PathBuf;

/// The socket path: `$PURVEYOR_SOCKET`, else `$XDG_RUNTIME_DIR/purveyor/purveyor.sock`, else
/// `/run/purveyor/purveyor.sock` for root, else `/tmp/purveyor-UID/purveyor.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("PURVEYOR_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir.join("purveyor/purveyor.sock");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/purveyor/purveyor.sock")
    } else {
        PathBuf::from(format!("/tmp/purveyor-{uid}/purveyor.sock"))
    }
}
