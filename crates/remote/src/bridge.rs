//! Carrying bytes between a TLS stream and one end of a Unix socket pair, both ways, with
//! one buffer each way: the TLS side is read only when the Unix side has taken the last
//! buffer, so a slow reader holds nothing more here.
//!
//! On a client, a TLS failure (an alert, a lost network) is told to the client as a
//! protocol goodbye naming it, written between frames — the client library then fails
//! the requests in flight with that reason instead of "connection closed".

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use purveyor_protocol::{Encoding, ErrorCode, RemoteError, ServerMessage, encode_frame};

const BUF: usize = 16 * 1024;

/// Where the stream from the daemon stands, frame by frame (a 4-byte little-endian length,
/// then that many bytes).
#[derive(Default)]
struct Frames {
    header: [u8; 4],
    header_got: usize,
    remaining: u64,
    complete: u64,
}

impl Frames {
    fn saw(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(bytes.len());
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                if self.remaining == 0 {
                    self.complete += 1;
                }
                continue;
            }
            self.header[self.header_got] = bytes[0];
            self.header_got += 1;
            bytes = &bytes[1..];
            if self.header_got == 4 {
                self.header_got = 0;
                self.remaining = u64::from(u32::from_le_bytes(self.header));
                if self.remaining == 0 {
                    self.complete += 1;
                }
            }
        }
    }

    fn between(&self) -> bool {
        self.header_got == 0 && self.remaining == 0
    }
}

/// What a TLS failure means to the client: the error, and whether it came before the
/// welcome; answered with the goodbye's code and message.
pub(crate) type Describe = dyn Fn(&std::io::Error, bool) -> (ErrorCode, String) + Send + Sync;

/// How a client's bridge tells its client about a failure: the encoding agreed after the
/// handshake (the first frame, the welcome, is always JSON), and a message for an error.
pub(crate) struct Teller {
    pub encoding: Encoding,
    pub describe: Box<Describe>,
}

/// Carries bytes until either side is done; `teller` is for a client's bridge.
pub(crate) async fn carry<T>(tls: T, unix: UnixStream, teller: Option<Teller>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_tls, mut to_tls) = tokio::io::split(tls);
    let (mut from_unix, mut to_unix) = unix.into_split();
    let up = async {
        let mut buf = vec![0u8; BUF];
        loop {
            match from_unix.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_tls.write_all(&buf[..n]).await.is_err() || to_tls.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_tls.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; BUF];
        let mut frames = Frames::default();
        let failure = loop {
            match from_tls.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => {
                    frames.saw(&buf[..n]);
                    if to_unix.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let (Some(e), Some(teller)) = (failure, &teller)
            && frames.between()
        {
            let (code, message) = (teller.describe)(&e, frames.complete == 0);
            let encoding = if frames.complete == 0 {
                Encoding::Json
            } else {
                teller.encoding
            };
            let bye = ServerMessage::Goodbye {
                error: RemoteError::new(code, message),
            };
            let mut out = Vec::new();
            if encode_frame(encoding, &bye, u32::MAX, &mut out).is_ok() {
                let _ = to_unix.write_all(&out).await;
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    #[test]
    fn frames_are_followed_across_reads() {
        let mut f = Frames::default();
        f.saw(&[3, 0]);
        assert!(!f.between());
        f.saw(&[0, 0, b'a']);
        f.saw(&[b'b', b'c', 1]);
        assert_eq!(f.complete, 1);
        assert!(!f.between());
        f.saw(&[0, 0, 0, b'x']);
        assert!(f.between());
        assert_eq!(f.complete, 2);
    }
}
