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
}

impl FrameBuffer {
    /// A buffer that refuses payloads longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        FrameBuffer {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            max,
        }
    }

    /// Space to read into: at least 4 KiB, more when a large frame is partly received.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = self
            .pending_frame_len()
            .map_or(0, |n| FRAME_HEADER_LEN + n as usize);
        let need = wanted.max(self.end + 4096);
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
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
        self.start += total;
        if self.start == self.end {
            // Everything is consumed: the next read starts at the front. The payload's
            // bytes stay in place until then.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[payload]))
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

    fn feed(fb: &mut FrameBuffer, bytes: &[u8]) {
        let spare = fb.spare();
        spare[..bytes.len()].copy_from_slice(bytes);
        fb.filled(bytes.len());
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
