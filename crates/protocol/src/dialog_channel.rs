//! One end of a dialog's direct channel (`docs/dialogs.md`, "Direct channels"): the
//! socket between a provider in an isolated worker and the application showing its dialog,
//! carrying [`DialogMessage`] frames so an update and its answer skip the daemon.
//!
//! Both ends use this: the provider SDK (updates out, inputs in) and the client library
//! (the other way). Nothing here blocks longer than [`STUCK_WRITE`]: reads take what has
//! arrived, and a write that finds the socket full says so rather than wait for a reader
//! that may be a person looking at a modal prompt.
//!
//! **Invariants.** What the peer sends is bounded before it is decoded: a frame's length
//! is checked against [`DIALOG_FRAME_MAX`] before its bytes are read, and a frame that
//! does not decode ends the channel's reading (its messages then come, if at all, through
//! the host). A frame is written whole or the channel's writing ends: the peer never sees
//! half a frame followed by another.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::{DIALOG_FRAME_MAX, DialogMessage, Encoding, FrameBuffer, decode, encode_frame, poll};

/// How long a write that filled the socket halfway through a frame waits for room for the
/// rest before the channel's writing ends.
pub const STUCK_WRITE: Duration = Duration::from_secs(1);

/// One end of a dialog's direct channel.
#[derive(Debug)]
pub struct DialogChannel {
    socket: UnixStream,
    frames: FrameBuffer,
    reading: bool,
    writing: bool,
}

/// What a read found.
#[derive(Debug, PartialEq)]
pub enum Received {
    Message(DialogMessage),
    /// Nothing more has arrived yet.
    Nothing,
    /// The peer shut its writing half (or went), or sent what does not decode: nothing more
    /// will be read.
    Ended,
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Sent,
    /// The socket holds as much as it can: the peer is not reading.
    Full,
    /// The peer is gone or shut its reading half (or this end's writing ended).
    Gone,
    /// The message is larger than [`DIALOG_FRAME_MAX`].
    TooLarge,
}

impl DialogChannel {
    /// Takes `fd`, which must be a stream socket (checked), and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat on a descriptor we own, into a buffer of the right size.
        if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so it filled `stat`.
        let mode = unsafe { stat.assume_init() }.st_mode;
        if mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "a dialog channel must be a socket",
            ));
        }
        let socket = UnixStream::from(fd);
        socket.set_nonblocking(true)?;
        Ok(DialogChannel {
            socket,
            frames: FrameBuffer::new(DIALOG_FRAME_MAX),
            reading: true,
            writing: true,
        })
    }

    /// A connected pair (for hosts handing one end to each side, and for tests).
    pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
        let (a, b) = UnixStream::pair()?;
        Ok((a.into(), b.into()))
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether messages may still arrive.
    pub fn is_reading(&self) -> bool {
        self.reading
    }

    /// Whether this end may still write.
    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// The next message that has arrived, without waiting.
    pub fn read(&mut self) -> Received {
        while self.reading {
            // A frame that is too long or does not decode ends the reading.
            let framed = match self.frames.next_frame() {
                Ok(Some(payload)) => Some(decode::<DialogMessage>(Encoding::Binary, payload).ok()),
                Ok(None) => None,
                Err(_) => Some(None),
            };
            match framed {
                Some(Some(message)) => return Received::Message(message),
                Some(None) => return self.end_reading(),
                None => {}
            }
            match (&self.socket).read(self.frames.spare()) {
                Ok(0) => return self.end_reading(),
                Ok(n) => self.frames.filled(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Received::Nothing,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.end_reading(),
            }
        }
        Received::Ended
    }

    fn end_reading(&mut self) -> Received {
        self.reading = false;
        Received::Ended
    }

    /// Writes `message` as one frame, without waiting unless the socket filled halfway
    /// through it (then up to [`STUCK_WRITE`]; past it, writing ends).
    pub fn write(&mut self, message: &DialogMessage) -> Sent {
        if !self.writing {
            return Sent::Gone;
        }
        let mut frame = Vec::new();
        if encode_frame(Encoding::Binary, message, DIALOG_FRAME_MAX, &mut frame).is_err() {
            return Sent::TooLarge;
        }
        let mut at = 0;
        let mut stuck_since: Option<Instant> = None;
        while at < frame.len() {
            // SAFETY: send from a live buffer on a socket we own; MSG_NOSIGNAL turns a gone
            // peer into EPIPE instead of a signal.
            let n = unsafe {
                libc::send(
                    self.fd(),
                    frame[at..].as_ptr().cast(),
                    frame.len() - at,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                at += n as usize;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => {}
                ErrorKind::WouldBlock if at == 0 => return Sent::Full,
                ErrorKind::WouldBlock => {
                    let since = *stuck_since.get_or_insert_with(Instant::now);
                    let left = STUCK_WRITE.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        self.writing = false;
                        return Sent::Full;
                    }
                    wait_writable(self.fd(), left);
                }
                _ => {
                    self.writing = false;
                    return Sent::Gone;
                }
            }
        }
        Sent::Sent
    }

    /// Ends this end's writing: the peer reads what was written, then the end.
    pub fn shut_writing(&mut self) {
        self.writing = false;
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
    }
}

/// Waits up to `left` for room on `fd`.
fn wait_writable(fd: RawFd, left: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Waits until one of `fds` is readable (or ended), up to `timeout`; polls them for the
/// process's polling window first (`crate::poll`), so an answer due within microseconds
/// does not wait on a halted CPU.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|&fd| poll::pollfd(fd)).collect();
    let started = Instant::now();
    if poll::any_readable_within(&mut pfds, poll::poll_window().min(timeout)) {
        return;
    }
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
        return;
    }
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of its length (poll with none only sleeps).
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DialogInput, FormUpdate};
    use std::io::Write;

    fn update(text: &str) -> DialogMessage {
        DialogMessage::Update(FormUpdate {
            text: Some(text.into()),
            ..FormUpdate::default()
        })
    }

    #[test]
    fn messages_cross_in_order_and_a_shut_end_is_seen_after_them() {
        let (a, b) = DialogChannel::pair().unwrap();
        let (mut a, mut b) = (
            DialogChannel::new(a).unwrap(),
            DialogChannel::new(b).unwrap(),
        );
        assert_eq!(b.read(), Received::Nothing);
        for i in 0..3 {
            assert_eq!(a.write(&update(&i.to_string())), Sent::Sent);
        }
        a.shut_writing();
        for i in 0..3 {
            assert_eq!(b.read(), Received::Message(update(&i.to_string())));
        }
        assert_eq!(b.read(), Received::Ended);
        assert!(!b.is_reading());
        let input = DialogMessage::Input(DialogInput::button("ok").unwrap());
        assert_eq!(b.write(&input), Sent::Sent);
        assert_eq!(a.read(), Received::Message(input));
        assert_eq!(a.write(&update("late")), Sent::Gone);
    }

    #[test]
    fn a_peer_that_does_not_read_fills_the_channel_and_the_writer_is_told() {
        let (a, _b) = DialogChannel::pair().unwrap();
        let mut a = DialogChannel::new(a).unwrap();
        let full = (0..100_000).find(|i| a.write(&update(&format!("update {i}"))) == Sent::Full);
        assert!(full.is_some(), "the socket never filled");
        let (c, d) = DialogChannel::pair().unwrap();
        drop(d);
        let mut c = DialogChannel::new(c).unwrap();
        assert_eq!(c.write(&update("x")), Sent::Gone);
    }

    #[test]
    fn hostile_bytes_end_the_reading_without_a_panic() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = DialogChannel::new(b.into()).unwrap();
        // A length beyond the limit: refused before its bytes are read.
        (&a).write_all(&(DIALOG_FRAME_MAX + 1).to_le_bytes())
            .unwrap();
        assert_eq!(b.read(), Received::Ended);
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = DialogChannel::new(b.into()).unwrap();
        (&a).write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(b.read(), Received::Ended);
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(DialogChannel::new(file.into()).is_err(), "not a socket");
    }
}
