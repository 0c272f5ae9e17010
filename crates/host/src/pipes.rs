//! Reads that cross the daemon without being copied (`docs/performance.md`, "I/O
//! procedures"): a plain file's bytes are spliced into a pipe on the blocking pool, and
//! the connection splices them from the pipe into its client's socket behind the reply's
//! head ([`purveyor_protocol::encode_io_data_head`]). The kernel moves page references;
//! the daemon never holds the bytes.
//!
//! **Invariants:** at most [`MAX_PIPES`] pipes exist daemon-wide (each holds at most
//! [`PIPE_BYTES`]); a read that finds none free is read into memory as before. A pipe
//! goes back to the pool only empty; one whose bytes could not all be sent (the client
//! left) is closed. Only a local client on the binary encoding gets spliced replies.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::local_io::LocalIo;
use purveyor_hosting::lock::Locked;

/// Pipes in use or kept for reuse, at most.
pub(crate) const MAX_PIPES: usize = 32;
/// The size each pipe asks for (`F_SETPIPE_SZ`); the kernel may give less.
pub(crate) const PIPE_BYTES: usize = 1 << 20;

/// A pipe whose read end feeds a socket.
pub(crate) struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// How much it holds.
    capacity: usize,
    pool: &'static Pipes,
}

/// The daemon's pipes ([`MAX_PIPES`] in the process).
pub(crate) static PIPES: Pipes = Pipes {
    state: Mutex::new((Vec::new(), 0)),
};

impl Drop for Pipe {
    /// A pipe closed (not kept for reuse) makes room for another.
    fn drop(&mut self) {
        self.pool.state.locked().1 -= 1;
    }
}

impl Pipe {
    fn new(pool: &'static Pipes) -> std::io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors this process owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on an open descriptor.
        let capacity = unsafe {
            libc::fcntl(
                wr.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            );
            libc::fcntl(wr.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        if capacity <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Pipe {
            rd,
            wr,
            capacity: capacity as usize,
            pool,
        })
    }

    /// The end a read splices into.
    pub(crate) fn input(&self) -> BorrowedFd<'_> {
        self.wr.as_fd()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The daemon's pipes: those free, and how many exist.
pub(crate) struct Pipes {
    state: Mutex<(Vec<Pipe>, usize)>,
}

impl Pipes {
    /// A free pipe, made if fewer than [`MAX_PIPES`] exist; `None` when all are in use.
    pub(crate) fn take(&'static self) -> Option<Pipe> {
        let mut state = self.state.locked();
        if let Some(pipe) = state.0.pop() {
            return Some(pipe);
        }
        if state.1 >= MAX_PIPES {
            return None;
        }
        state.1 += 1;
        drop(state);
        // Counted before it exists; a pipe that cannot be made uncounts itself.
        match Pipe::new(self) {
            Ok(pipe) => Some(pipe),
            Err(_) => {
                self.state.locked().1 -= 1;
                None
            }
        }
    }

    /// Gives back a pipe: kept when `empty`, else closed.
    pub(crate) fn give_back(&self, pipe: Pipe, empty: bool) {
        if empty {
            self.state.locked().0.push(pipe);
        }
    }

    /// Pipes that exist now (in use or free).
    pub(crate) fn made(&self) -> usize {
        self.state.locked().1
    }
}

/// The send buffer a connection gets with its first spliced reply (the kernel caps it at
/// `net.core.wmem_max`): with the default (about 200 kB), a 1 MiB reply fills it five
/// times, and each refill waits for the daemon's thread to wake, which on a machine whose
/// idle CPUs halt costs more than moving the bytes (`docs/performance.md`).
pub(crate) const SEND_BUFFER: libc::c_int = 4 << 20;

/// Raises `socket`'s send buffer to [`SEND_BUFFER`] (as far as the kernel allows).
pub(crate) fn widen(socket: &LocalIo) {
    // SAFETY: setsockopt with a pointer to a c_int of the size given.
    unsafe {
        libc::setsockopt(
            socket.fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A reply's bytes waiting in a pipe.
pub(crate) struct Spliced {
    pub(crate) pipe: Pipe,
    pub(crate) len: usize,
}

/// Sends a reply's bytes from their pipe into `socket` (after what was written before);
/// the pipe goes back to the pool if it emptied.
pub(crate) async fn send(socket: &LocalIo, spliced: Spliced) -> std::io::Result<()> {
    let sent = splice_out(socket, &spliced.pipe, spliced.len).await;
    PIPES.give_back(spliced.pipe, sent.is_ok());
    sent
}

/// Moves `len` bytes from `pipe` into `socket` (after what was written before), waiting
/// for room as a write would.
async fn splice_out(socket: &LocalIo, pipe: &Pipe, len: usize) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let moved = socket
            .write_with(|fd| {
                // SAFETY: both descriptors are open; no offsets.
                let n = unsafe {
                    libc::splice(
                        pipe.rd.as_raw_fd(),
                        std::ptr::null_mut(),
                        fd,
                        std::ptr::null_mut(),
                        left,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await?;
        if moved == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the pipe ran dry before the reply's bytes were sent",
            ));
        }
        left -= moved.min(left);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_makes_at_most_its_limit_and_closes_pipes_given_back_full() {
        let pipes: &'static Pipes = Box::leak(Box::new(Pipes {
            state: Mutex::new((Vec::new(), 0)),
        }));
        let taken: Vec<Pipe> = (0..MAX_PIPES).map(|_| pipes.take().unwrap()).collect();
        assert!(pipes.take().is_none(), "a pipe past the limit");
        assert_eq!(pipes.made(), MAX_PIPES);
        let mut taken = taken.into_iter();
        pipes.give_back(taken.next().unwrap(), true);
        pipes.give_back(taken.next().unwrap(), false);
        assert_eq!(pipes.made(), MAX_PIPES - 1);
        let kept = pipes.take().expect("the pipe kept");
        let new = pipes.take().expect("a new one in the closed one's place");
        assert!(pipes.take().is_none());
        assert!(kept.capacity() >= 4096 && new.capacity() >= 4096);
        // Pipes dropped (a reply that was never sent) make room again.
        drop((kept, new, taken));
        assert_eq!(pipes.made(), 0);
    }
}
