//! Streams through the host's I/O procedures (`docs/io-procedures.md`): open a name
//! (`report.xor+`, `backup.tar+etc/hosts`, a plain path), then read, write, seek, send
//! custom messages and close, by handle. A plain local file opened for reading comes back
//! as a file descriptor when the daemon can pass one, and is then read directly.
//!
//! A stream that comes through the connection and was opened only for reading is read
//! ahead: up to [`READ_AHEAD`] reads are in flight at once, so the daemon reads the next
//! chunk while this process takes the last one (the host serves a stream's requests in
//! the order they were sent, and reads only what is asked: `docs/io-procedures.md`). A
//! seek accounts for what was read ahead.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use purveyor_protocol::{IoMode, IoProcedureInfo, IoWhence, Request, Response};

use crate::{Client, ClientError};

/// The default size of one read request.
pub const READ_CHUNK: u32 = 1 << 20;

/// Reads in flight at once on a stream read through the connection.
pub const READ_AHEAD: usize = 4;

/// An open stream.
#[derive(Debug)]
pub struct IoStream {
    /// The stream's handle on the host (0 for a passed descriptor).
    handle: u32,
    /// The element's size, when its procedure knows it.
    pub size: Option<u64>,
    /// A plain file the daemon passed: read directly.
    file: Option<File>,
    name: String,
    ahead: ReadAhead,
}

/// What a stream read through the connection has asked for and not handed out yet.
#[derive(Debug, Default)]
struct ReadAhead {
    /// Opened only for reading, through the connection: reads may go ahead.
    on: bool,
    /// The ids of the reads in flight, oldest first.
    sent: VecDeque<u32>,
    /// Data that arrived ahead of the caller, and how much of the first chunk is taken.
    held: VecDeque<Vec<u8>>,
    taken: usize,
    /// A read came back empty: the stream ended, and no more are sent.
    ended: bool,
    /// Where the requests left in flight go when the stream is dropped.
    orphans: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
}

impl ReadAhead {
    /// Bytes held and not handed out.
    fn held_bytes(&self) -> u64 {
        self.held.iter().map(|c| c.len() as u64).sum::<u64>() - self.taken as u64
    }

    /// Hands out up to `max` bytes of what is held, into `buf`.
    fn hand_out(&mut self, buf: &mut Vec<u8>, max: usize) -> usize {
        buf.clear();
        let Some(front) = self.held.front_mut() else {
            return 0;
        };
        if self.taken == 0 && front.len() <= max {
            // The whole chunk: no copy.
            *buf = self.held.pop_front().expect("front seen");
        } else {
            let end = front.len().min(self.taken + max);
            buf.extend_from_slice(&front[self.taken..end]);
            self.taken = end;
            if end == front.len() {
                self.held.pop_front();
                self.taken = 0;
            }
        }
        buf.len()
    }
}

impl Drop for IoStream {
    fn drop(&mut self) {
        if !self.ahead.sent.is_empty() {
            self.ahead
                .orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(self.ahead.sent.drain(..));
        }
    }
}

impl IoStream {
    /// Whether the daemon passed the file's descriptor (reads do not go through it).
    pub fn is_direct(&self) -> bool {
        self.file.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn unexpected(what: &str, response: Response) -> ClientError {
    ClientError::protocol(format!("unexpected answer to {what}: {response:?}"))
}

/// A name made absolute against this process's working directory: the host does not
/// share it. (The element after `+` stays as it is; the host checks it.)
pub fn absolute_name(name: &str) -> Result<String, ClientError> {
    if name.is_empty() {
        return Err(ClientError::InvalidRequest {
            message: "empty name".into(),
        });
    }
    if Path::new(name).is_absolute() {
        return Ok(name.to_owned());
    }
    let cwd = std::env::current_dir()?;
    Ok(format!("{}/{name}", cwd.display()))
}

impl Client {
    /// The I/O procedures the host serves, in lookup order.
    pub fn io_list(&mut self) -> Result<Vec<IoProcedureInfo>, ClientError> {
        match self.request(Request::IoList)? {
            Response::IoProcedures(list) => Ok(list),
            other => Err(unexpected("io_list", other)),
        }
    }

    /// Opens `name` (made absolute against the working directory first).
    pub fn io_open(&mut self, name: &str, mode: IoMode) -> Result<IoStream, ClientError> {
        let pass_fd = self.on_socket();
        self.io_open_with(name, mode, pass_fd)
    }

    /// Opens `name` to be read through the connection even where the daemon could pass
    /// the file's descriptor (a client that wants every byte to go through the host).
    pub fn io_open_streamed(&mut self, name: &str, mode: IoMode) -> Result<IoStream, ClientError> {
        self.io_open_with(name, mode, false)
    }

    fn io_open_with(
        &mut self,
        name: &str,
        mode: IoMode,
        pass_fd: bool,
    ) -> Result<IoStream, ClientError> {
        let name = absolute_name(name)?;
        let request = Request::IoOpen {
            name: name.clone(),
            mode,
            pass_fd,
        };
        match self.request(request)? {
            Response::IoOpened { handle, size, fd } => {
                let file = if fd {
                    let fd = self.take_fd().ok_or_else(|| {
                        ClientError::protocol(format!(
                            "the daemon said it passed the descriptor of {name}, but none arrived"
                        ))
                    })?;
                    Some(File::from(fd))
                } else {
                    None
                };
                let ahead = ReadAhead {
                    on: file.is_none() && mode == IoMode::Read && self.on_socket(),
                    orphans: self.orphans.clone(),
                    ..ReadAhead::default()
                };
                Ok(IoStream {
                    handle: if fd { 0 } else { handle },
                    size,
                    file,
                    name,
                    ahead,
                })
            }
            other => Err(unexpected("io_open", other)),
        }
    }

    /// Reads up to `max` bytes into `buf` (replacing its contents); 0 at the end.
    pub fn io_read(
        &mut self,
        stream: &mut IoStream,
        buf: &mut Vec<u8>,
        max: u32,
    ) -> Result<usize, ClientError> {
        if let Some(file) = &mut stream.file {
            // Into the buffer's spare capacity, without zero-filling it first.
            buf.clear();
            buf.reserve(max as usize);
            let n = Read::by_ref(file).take(u64::from(max)).read_to_end(buf)?;
            return Ok(n);
        }
        if stream.ahead.on {
            return self.read_ahead(stream, buf, max);
        }
        match self.request(Request::IoRead {
            handle: stream.handle,
            max,
        })? {
            Response::IoData(data) => {
                *buf = data;
                Ok(buf.len())
            }
            other => Err(unexpected("io_read", other)),
        }
    }

    /// Writes all of `data` (then flushes with `flush`).
    pub fn io_write(
        &mut self,
        stream: &IoStream,
        data: &[u8],
        flush: bool,
    ) -> Result<u64, ClientError> {
        self.io_value(
            "io_write",
            Request::IoWrite {
                handle: self.handle_of(stream, "write")?,
                data: data.to_vec(),
                flush,
            },
        )
        .map(|n| n as u64)
    }

    /// Reads through the connection with up to [`READ_AHEAD`] reads of `max` in flight.
    fn read_ahead(
        &mut self,
        stream: &mut IoStream,
        buf: &mut Vec<u8>,
        max: u32,
    ) -> Result<usize, ClientError> {
        let ahead = &mut stream.ahead;
        if ahead.held.is_empty() {
            while !ahead.ended && ahead.sent.len() < READ_AHEAD {
                let id = self.send(Request::IoRead {
                    handle: stream.handle,
                    max,
                })?;
                ahead.sent.push_back(id);
            }
            while ahead.held.is_empty() {
                let Some(id) = ahead.sent.pop_front() else {
                    break;
                };
                match self.recv_for(id)? {
                    Response::IoData(data) if data.is_empty() => {
                        // The end: the reads sent after this one find it too.
                        ahead.ended = true;
                        let rest: Vec<u32> = ahead.sent.drain(..).collect();
                        self.forget_replies(rest);
                    }
                    Response::IoData(data) => ahead.held.push_back(data),
                    other => return Err(unexpected("io_read", other)),
                }
            }
        }
        Ok(ahead.hand_out(buf, max as usize))
    }

    /// Collects the reads in flight, keeping their data for the caller.
    fn settle(&mut self, stream: &mut IoStream) -> Result<(), ClientError> {
        while let Some(id) = stream.ahead.sent.pop_front() {
            match self.recv_for(id)? {
                Response::IoData(data) if data.is_empty() => stream.ahead.ended = true,
                Response::IoData(data) => stream.ahead.held.push_back(data),
                other => return Err(unexpected("io_read", other)),
            }
        }
        Ok(())
    }

    pub fn io_seek(&mut self, stream: &mut IoStream, pos: SeekFrom) -> Result<u64, ClientError> {
        if let Some(file) = &mut stream.file {
            return Ok(file.seek(pos)?);
        }
        // The host's position is past what was read ahead: from the caller's position.
        self.settle(stream)?;
        let unread = stream.ahead.held_bytes() as i64;
        stream.ahead.held.clear();
        stream.ahead.taken = 0;
        stream.ahead.ended = false;
        let pos = match pos {
            SeekFrom::Current(d) => SeekFrom::Current(d - unread),
            other => other,
        };
        let (offset, whence) = match pos {
            SeekFrom::Start(n) => (n as i64, IoWhence::Start),
            SeekFrom::Current(d) => (d, IoWhence::Current),
            SeekFrom::End(d) => (d, IoWhence::End),
        };
        self.io_value(
            "io_seek",
            Request::IoSeek {
                handle: stream.handle,
                offset,
                whence,
            },
        )
        .map(|p| p as u64)
    }

    /// A custom message (0x4000 and up) to the stream's procedure.
    pub fn io_message(
        &mut self,
        stream: &IoStream,
        message: u32,
        input: &[u8],
    ) -> Result<i64, ClientError> {
        self.io_value(
            "io_message",
            Request::IoMessage {
                handle: self.handle_of(stream, "send a message to")?,
                message,
                input: input.to_vec(),
            },
        )
    }

    /// Closes the stream: its procedure finishes it (a compressor writes its trailer).
    pub fn io_close(&mut self, mut stream: IoStream) -> Result<(), ClientError> {
        if stream.file.is_some() {
            return Ok(());
        }
        let ahead: Vec<u32> = stream.ahead.sent.drain(..).collect();
        self.forget_replies(ahead);
        match self.request(Request::IoClose {
            handle: stream.handle,
        })? {
            Response::Done => Ok(()),
            other => Err(unexpected("io_close", other)),
        }
    }

    pub fn io_delete(&mut self, name: &str) -> Result<(), ClientError> {
        let name = absolute_name(name)?;
        match self.request(Request::IoDelete { name })? {
            Response::Done => Ok(()),
            other => Err(unexpected("io_delete", other)),
        }
    }

    pub fn io_rename(&mut self, from: &str, to: &str) -> Result<(), ClientError> {
        let (from, to) = (absolute_name(from)?, absolute_name(to)?);
        match self.request(Request::IoRename { from, to })? {
            Response::Done => Ok(()),
            other => Err(unexpected("io_rename", other)),
        }
    }

    fn handle_of(&self, stream: &IoStream, what: &str) -> Result<u32, ClientError> {
        if stream.file.is_some() {
            return Err(ClientError::Unsupported {
                message: format!("cannot {what} {}: it was opened for reading", stream.name),
            });
        }
        Ok(stream.handle)
    }

    fn io_value(&mut self, what: &str, request: Request) -> Result<i64, ClientError> {
        match self.request(request)? {
            Response::IoValue(v) => Ok(v),
            other => Err(unexpected(what, other)),
        }
    }

    /// A reader over a stream, for `std::io::copy` and friends.
    pub fn io_reader<'a>(&'a mut self, stream: &'a mut IoStream) -> IoReader<'a> {
        IoReader {
            client: self,
            stream,
            buf: Vec::new(),
            at: 0,
        }
    }
}

/// `Read` over a stream (see [`Client::io_reader`]).
pub struct IoReader<'a> {
    client: &'a mut Client,
    stream: &'a mut IoStream,
    buf: Vec<u8>,
    at: usize,
}

impl Read for IoReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(file) = &mut self.stream.file {
            return file.read(out);
        }
        if self.at == self.buf.len() {
            self.at = 0;
            self.client
                .io_read(self.stream, &mut self.buf, READ_CHUNK)
                .map_err(std::io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
