//! Replies whose bytes wait in a pipe ([`crate::pipes`]): the connection writes what is
//! ready, the reply's head, then moves the bytes from the pipe into the socket, so frames
//! stay in order.

use std::time::Instant;

use purveyor_protocol::{ErrorCode, Outcome, RemoteError, Response, encode_io_data_head};

use super::Connection;
use super::transport::Writer;

impl Connection<'_> {
    /// The bytes of request `rid`'s reply, when they wait in a pipe ([`crate::pipes`]).
    pub(super) fn take_spliced(
        &self,
        rid: u32,
        outcome: &Outcome,
    ) -> Option<crate::pipes::Spliced> {
        match outcome {
            Outcome::Ok(Response::IoData(data)) if data.is_empty() && self.site.raw => {
                self.session.streams().take_spliced(rid)
            }
            _ => None,
        }
    }

    /// Writes what is ready, then the head of request `rid`'s reply and its bytes from the
    /// pipe.
    pub(super) async fn send_spliced(
        &mut self,
        rid: u32,
        spliced: crate::pipes::Spliced,
        wr: &mut Writer<'_>,
    ) -> std::io::Result<()> {
        // Reads are smaller than any frame limit, and only local sockets splice.
        if wr.unix().is_none()
            || encode_io_data_head(rid, spliced.len, self.wire.max, &mut self.out).is_err()
        {
            let error = RemoteError::new(ErrorCode::Internal, "the read could not be sent");
            self.wire.reply(rid, Outcome::Err(error), &mut self.out);
            return Ok(());
        }
        self.send_fds(wr).await?;
        self.write_out(wr).await?;
        let unix = wr.unix().expect("a local socket, checked above");
        if !self.widened {
            crate::pipes::widen(unix);
            self.widened = true;
        }
        crate::pipes::send(unix, spliced).await?;
        self.last_reply = Some(Instant::now());
        Ok(())
    }
}
