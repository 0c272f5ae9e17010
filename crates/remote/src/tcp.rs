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

/// A TCP stream read eagerly: a read first asks the socket itself, and only when it has
/// nothing goes through tokio's readiness. The daemon's connection loop polls a busy
/// client's socket before blocking (`purveyor_protocol::poll`); tokio would not read a
/// socket its driver has not reported readable since the last empty read, so without
/// this the bytes polling found would still wait for the driver's next turn.
pub struct EagerTcp(tokio::net::TcpStream);

impl EagerTcp {
    pub fn new(stream: tokio::net::TcpStream) -> Self {
        EagerTcp(stream)
    }

    pub fn get_ref(&self) -> &tokio::net::TcpStream {
        &self.0
    }
}

impl tokio::io::AsyncRead for EagerTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let fd = self.0.as_raw_fd();
        let unfilled = buf.initialize_unfilled();
        // SAFETY: `unfilled` is valid for writes of its length; the descriptor is open
        // for as long as `self` is.
        let n = unsafe {
            libc::recv(
                fd,
                unfilled.as_mut_ptr().cast(),
                unfilled.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            buf.advance(n as usize);
            return std::task::Poll::Ready(Ok(()));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for EagerTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
