//! What a connection's bytes travel on: a local client's Unix socket — read with raw
//! `recv` (peeked, polled; see "Intake" and "Polling" in the parent), able to carry
//! descriptors — or a stream another transport carries (`purveyor-remote`'s TLS), read
//! and written through tokio's traits on the connection's own task, so a remote request
//! costs no hand-off between threads. A local socket is a [`LocalIo`] (registered with
//! the runtime only while its connection may wait on it).

use std::os::fd::RawFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use purveyor_protocol::FrameBuffer;

use crate::local_io::LocalIo;

/// A byte stream another transport hands the server (a TLS connection).
pub trait Carrier: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Carrier for T {}

/// A carried stream and its socket's descriptor (only ever shut down through it, by the
/// watchdog: bytes on it belong to the transport).
pub struct CarriedIo {
    pub io: Box<dyn Carrier>,
    pub fd: RawFd,
}

pub(crate) enum Reader<'s> {
    Unix(&'s LocalIo),
    Stream(tokio::io::ReadHalf<Box<dyn Carrier>>),
}

pub(crate) enum Writer<'s> {
    Unix(&'s LocalIo),
    Stream(tokio::io::WriteHalf<Box<dyn Carrier>>),
}

/// What waiting on a reader gave: a Unix socket became readable (the connection reads it
/// itself), or a stream's bytes were read into the frame buffer.
pub(crate) enum Arrived {
    Readable(std::io::Result<()>),
    Read(std::io::Result<usize>),
}

impl Reader<'_> {
    /// Waits for input: readiness on a Unix socket; on a stream, the read itself into
    /// `frames` (cancel-safe: a read that has not finished took nothing).
    pub async fn arrive(&mut self, frames: &mut FrameBuffer) -> Arrived {
        match self {
            Reader::Unix(io) => Arrived::Readable(io.readable().await),
            Reader::Stream(rd) => Arrived::Read(rd.read(frames.spare()).await),
        }
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Unix(io) => io.read(buf).await,
            Reader::Stream(rd) => rd.read(buf).await,
        }
    }

    pub fn unix(&self) -> Option<&LocalIo> {
        match self {
            Reader::Unix(io) => Some(io),
            Reader::Stream(_) => None,
        }
    }
}

impl Writer<'_> {
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Unix(io) => io.write_all(bytes).await,
            Writer::Stream(wr) => {
                wr.write_all(bytes).await?;
                wr.flush().await
            }
        }
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Unix(io) => io.shutdown(),
            Writer::Stream(wr) => wr.shutdown().await,
        }
    }

    /// The Unix socket, which alone can carry descriptors.
    pub fn unix(&self) -> Option<&LocalIo> {
        match self {
            Writer::Unix(io) => Some(io),
            Writer::Stream(_) => None,
        }
    }
}
