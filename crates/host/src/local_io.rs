//! A local client's Unix socket, and its registration with the runtime's I/O driver.
//!
//! The registration is dropped while the socket's connection answers requests back to
//! back by polling, on a runtime of more than one thread (`connection::serve`): a runtime
//! thread with nothing to do waits in `epoll_wait` on the I/O driver, and every request
//! arriving on a registered socket would wake it — on a VM, onto the client's CPU, ahead
//! of the client — only to find the request already taken by the polling thread
//! (`docs/performance.md`, "Placement"). The socket is registered again before anything
//! waits on it: a wait for input, or a write that finds the socket full. Reads and writes
//! go to the socket first and wait only when it has nothing or no room.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A local client's socket, and its registration with the runtime while its connection
/// may wait on it (see the module's documentation).
pub(crate) struct LocalIo {
    /// Declared before `stream`, so it is deregistered before the descriptor closes (a
    /// descriptor number reused by then would lose its own registration).
    registration: Mutex<Option<Arc<AsyncFd<Fd>>>>,
    stream: std::os::unix::net::UnixStream,
}

/// The socket's descriptor, as a registration borrows it (the stream owns it).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl LocalIo {
    /// Takes `stream` off the runtime's own registration and registers it as this.
    pub fn new(stream: tokio::net::UnixStream) -> std::io::Result<LocalIo> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        let io = LocalIo {
            registration: Mutex::new(None),
            stream,
        };
        io.registered()?;
        Ok(io)
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The registration, made again if it was dropped.
    fn registered(&self) -> std::io::Result<Arc<AsyncFd<Fd>>> {
        let mut slot = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(registration) = &*slot {
            return Ok(registration.clone());
        }
        // SAFETY: the descriptor is the stream's, open for as long as `self` lives; every
        // registration lives in `self.registration` (dropped before the stream) or in a
        // clone held only while one of `self`'s methods runs.
        let registration = unsafe {
            AsyncFd::register_with_interest(Fd(self.fd()), Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let registration = Arc::new(registration);
        *slot = Some(registration.clone());
        Ok(registration)
    }

    /// Drops the registration while the connection polls (see the module's
    /// documentation); the next wait makes it again.
    pub fn rest(&self) {
        let taken = self
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(taken);
    }

    /// Whether the socket is registered (for tests).
    #[cfg(test)]
    pub fn is_registered(&self) -> bool {
        self.registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Waits until the socket has input (or its end); takes nothing.
    pub async fn readable(&self) -> std::io::Result<()> {
        let registration = self.registered()?;
        registration.readable().await?.retain_ready();
        Ok(())
    }

    /// Runs `read` (a read of the socket) once, through the registration's readiness when
    /// there is one, so that a read that finds nothing makes the next wait wait.
    pub fn try_read<R>(&self, read: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        let slot = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(registration) => registration.try_io(Interest::READABLE, |_| read()),
            None => read(),
        }
    }

    /// Reads into `buf`, waiting for input.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match (&self.stream).read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let registration = self.registered()?;
            let mut ready = registration.readable().await?;
            if let Ok(done) = ready.try_io(|_| (&self.stream).read(buf)) {
                return done;
            }
        }
    }

    /// Runs `write` (a write to the socket) until it does not find the socket full,
    /// waiting for room between tries: at once when there is room, registering the socket
    /// only when there is not.
    pub async fn write_with<R>(
        &self,
        mut write: impl FnMut(RawFd) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        let fd = self.fd();
        loop {
            match write(fd) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let registration = self.registered()?;
            let mut ready = registration.writable().await?;
            if let Ok(done) = ready.try_io(|_| write(fd)) {
                return done;
            }
        }
    }

    /// Ends the daemon's side of the stream (the client reads its end).
    pub fn shutdown(&self) -> std::io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    pub async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = self.write_with(|_| (&self.stream).write(bytes)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn input_that_came_while_resting_is_heard_when_waited_on() {
        runtime().block_on(async {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let io = LocalIo::new(ours).unwrap();
            assert!(io.is_registered());
            io.rest();
            assert!(!io.is_registered());
            let mut theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            theirs.write_all(b"hello").unwrap();
            // Registered again by the wait, which sees what came before it.
            tokio::time::timeout(Duration::from_secs(5), io.readable())
                .await
                .expect("the input is heard")
                .unwrap();
            assert!(io.is_registered());
            let mut buf = [0u8; 16];
            let n = io.try_read(|| (&io.stream).read(&mut buf)).unwrap();
            assert_eq!(&buf[..n], b"hello");
            // Nothing more: a read finds nothing, and the next wait waits.
            let empty = io.try_read(|| (&io.stream).read(&mut buf));
            assert_eq!(empty.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
            let waited = tokio::time::timeout(Duration::from_millis(50), io.readable()).await;
            assert!(waited.is_err(), "a wait with nothing to read ended");
            // The end of the stream is input too.
            drop(theirs);
            tokio::time::timeout(Duration::from_secs(5), io.readable())
                .await
                .expect("the end is heard")
                .unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        });
    }

    #[test]
    fn a_write_to_a_full_socket_waits_for_room_while_resting() {
        runtime().block_on(async {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let io = LocalIo::new(ours).unwrap();
            io.rest();
            let mut theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            // Far more than a socket buffer holds: the write must wait for the reader.
            let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).unwrap();
                got
            });
            tokio::time::timeout(Duration::from_secs(30), io.write_all(&sent))
                .await
                .expect("the write finishes as the reader reads")
                .unwrap();
            assert!(
                io.is_registered(),
                "the wait for room registered the socket"
            );
            io.shutdown().unwrap();
            let got = reader.join().unwrap();
            assert!(
                got == sent,
                "the reader got {} bytes of {}",
                got.len(),
                sent.len()
            );
        });
    }
}
