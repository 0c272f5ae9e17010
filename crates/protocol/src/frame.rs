//! Length-prefixed frames and an incremental frame reader.

/// Bytes in a frame header: the payload length as a little-endian `u32`.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest payload accepted unless configured otherwise (16 MiB).
pub const MAX_FRAME_DEFAULT: u32 = 16 << 20;

/// A frame header that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame (a payload length of 0 is not allowed)")]
    Empty,
}

/// Accumulates bytes read from a stream and cuts them into frames.
///
/// Reading is split in two so that one buffer serves blocking and async readers: fill
/// [`FrameBuffer::spare`], report the count with [`FrameBuffer::filled`], then take frames
/// with [`FrameBuffer::next_frame`] until it returns `None`.
#[derive(Debug)]
pub struct FrameBuffer {
    // Invariant: start <= end <= buf.len(); bytes start..end are received and not yet
    // returned as a frame.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: u32,
    /// The length of the last frame taken.
    last: usize,
}

/// A new buffer's size, and the least room [`FrameBuffer::spare`] gives.
const INITIAL: usize = 4 * 1024;
const MIN_SPARE: usize = 4096;
/// A buffer grown past this for a large frame shrinks back to [`INITIAL`] once empty.
const KEEP: usize = 64 * 1024;

impl FrameBuffer {
    /// A buffer that refuses payloads longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        FrameBuffer {
            buf: vec![0; INITIAL],
            start: 0,
            end: 0,
            max,
            last: 0,
        }
    }

    /// Space to read into: at least 4 KiB. While a large frame arrives the buffer grows
    /// toward its length, at most doubling what has arrived each time: memory follows the
    /// bytes received, not the length a header announced (5 bytes announcing 16 MiB cost
    /// 8 KiB). Once every frame is taken, a buffer grown past 64 KiB shrinks back.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Shrink once empty, unless the last frame was large too: a client sending large
        // frames one after another keeps its buffer (at most the frame limit) instead of
        // growing it again for each.
        if self.end == 0 && self.buf.len() > KEEP && self.last < KEEP / 2 {
            self.buf = vec![0; INITIAL];
        }
        if self.buf.len() - self.end < MIN_SPARE {
            // Full: double, but not past the frame being received (nor its limit).
            let wanted = self
                .pending_frame_len()
                .map_or(0, |n| FRAME_HEADER_LEN + (n.min(self.max) as usize));
            let need = wanted.min(2 * self.buf.len()).max(self.end + MIN_SPARE);
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// The head of the frame arriving, when it is an `io_data` reply of at least `least`
    /// bytes within the limit ([`crate::decode_io_data_head`]): its id, the head's length
    /// and the bytes' length. A reader may then take the frame itself: what has arrived
    /// with [`FrameBuffer::unparsed`] and [`FrameBuffer::discard`], the rest straight from
    /// its socket.
    pub fn io_data_head(&self, least: usize) -> Option<(u32, usize, usize)> {
        let len = self.pending_frame_len()?;
        if len > self.max || (len as usize) < least || self.frame_ready() {
            return None;
        }
        crate::decode_io_data_head(&self.buf[self.start..self.end])
    }

    /// The bytes received and not yet taken as a frame.
    pub fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` unparsed bytes, which the caller took itself.
    pub fn discard(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The bytes this buffer holds (what it costs its connection).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Records that `n` bytes were read into the slice [`FrameBuffer::spare`] returned.
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame's payload, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let Some(len) = self.pending_frame_len() else {
            return Ok(None);
        };
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if self.end - self.start < total {
            return Ok(None);
        }
        let payload = self.start + FRAME_HEADER_LEN..self.start + total;
        self.last = total;
        self.start += total;
        if self.start == self.end {
            // Everything is consumed: the next read starts at the front. The payload's
            // bytes stay in place until then.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[payload]))
    }

    /// Whether a whole frame (or a header that [`FrameBuffer::next_frame`] refuses) is
    /// buffered, so that `next_frame` would return something without another read.
    pub fn frame_ready(&self) -> bool {
        match self.pending_frame_len() {
            None => false,
            Some(len) if len == 0 || len > self.max => true,
            Some(len) => self.end - self.start >= FRAME_HEADER_LEN + len as usize,
        }
    }

    /// Bytes received that do not yet make a whole frame. Non-zero at end of stream means
    /// the peer sent a truncated frame.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn pending_frame_len(&self) -> Option<u32> {
        if self.end - self.start < FRAME_HEADER_LEN {
            return None;
        }
        let header = self.buf.get(self.start..self.start + FRAME_HEADER_LEN)?;
        Some(u32::from_le_bytes(header.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(fb: &mut FrameBuffer, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let spare = fb.spare();
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            fb.filled(n);
            bytes = &bytes[n..];
        }
    }

    /// Five bytes announcing 16 MiB used to cost 16 MiB of zeroed buffer per connection;
    /// now the buffer grows with what arrives, and shrinks back when the frame is taken.
    #[test]
    fn an_announced_length_was_allocated_before_the_bytes_came() {
        let mut fb = FrameBuffer::new(16 << 20);
        feed(&mut fb, &[0, 0, 0, 1, 0]);
        fb.spare();
        assert!(fb.capacity() <= 32 * 1024, "{}", fb.capacity());
        // The whole frame arrives in pieces: the buffer grows geometrically to hold it.
        let mut fb = FrameBuffer::new(16 << 20);
        let payload = vec![9u8; 1 << 20];
        let mut wire = (payload.len() as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let mut resizes = 0;
        let mut last = fb.capacity();
        for chunk in wire.chunks(3000) {
            feed(&mut fb, chunk);
            if fb.capacity() != last {
                resizes += 1;
                last = fb.capacity();
            }
            assert!(fb.capacity() <= 2 * (fb.buffered() + INITIAL) + MIN_SPARE);
        }
        assert!(resizes < 20, "{resizes} resizes");
        assert_eq!(fb.next_frame().unwrap().map(<[u8]>::len), Some(1 << 20));
        // Kept while large frames follow each other; shrunk after a small one.
        fb.spare();
        assert!(fb.capacity() > KEEP);
        feed(&mut fb, &[1, 0, 0, 0, b'x']);
        assert_eq!(fb.next_frame().unwrap(), Some(&b"x"[..]));
        fb.spare();
        assert_eq!(fb.capacity(), INITIAL);
    }

    #[test]
    fn cuts_frames_across_reads() {
        let mut fb = FrameBuffer::new(100);
        feed(&mut fb, &[3, 0, 0]);
        assert_eq!(fb.next_frame().unwrap(), None);
        feed(&mut fb, &[0, b'a', b'b']);
        assert_eq!(fb.next_frame().unwrap(), None);
        feed(&mut fb, &[b'c', 1, 0, 0, 0, b'z']);
        assert_eq!(fb.next_frame().unwrap(), Some(&b"abc"[..]));
        assert_eq!(fb.next_frame().unwrap(), Some(&b"z"[..]));
        assert_eq!(fb.next_frame().unwrap(), None);
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn refuses_oversized_and_empty() {
        let mut fb = FrameBuffer::new(10);
        feed(&mut fb, &11u32.to_le_bytes());
        assert_eq!(
            fb.next_frame().unwrap_err().to_string(),
            "frame of 11 bytes exceeds the limit of 10 bytes"
        );
        let mut fb = FrameBuffer::new(10);
        feed(&mut fb, &0u32.to_le_bytes());
        assert_eq!(fb.next_frame().unwrap_err(), FrameError::Empty);
    }

    #[test]
    fn grows_for_large_frames() {
        let mut fb = FrameBuffer::new(1 << 20);
        let payload = vec![7u8; 200_000];
        let mut wire = (payload.len() as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let mut sent = 0;
        while sent < wire.len() {
            let spare = fb.spare();
            let n = spare.len().min(wire.len() - sent).min(5000);
            spare[..n].copy_from_slice(&wire[sent..sent + n]);
            fb.filled(n);
            sent += n;
        }
        assert_eq!(fb.next_frame().unwrap().map(|p| p.len()), Some(200_000));
    }
}
