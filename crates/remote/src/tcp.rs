//! TCP options both sides set: no Nagle delay, and a peer that goes silent (a cable
//! pulled, a machine gone) found dead within `dead_after`.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// `TCP_NODELAY`, keepalive probes from `dead_after / 2` of silence every
/// `dead_after / 6` (three unanswered probes drop it), and `TCP_USER_TIMEOUT` of
/// `dead_after` for data sent and never acknowledged.
pub(crate) fn configure(socket: &impl AsRawFd, dead_after: Duration) -> std::io::Result<()> {
    let fd = socket.as_raw_fd();
    let secs = dead_after.as_secs().max(2);
    let idle = (secs / 2).max(1) as libc::c_int;
    let interval = (secs / 6).max(1) as libc::c_int;
    let ms = dead_after.as_millis().min(i32::MAX as u128) as libc::c_int;
    set(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

fn set(fd: i32, level: i32, name: i32, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `value` is a c_int that lives across the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
