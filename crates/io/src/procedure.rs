//! What an I/O procedure is: the messages it handles, as a Rust trait per procedure
//! ([`IoProcedure`]: open, rename, delete) and per open stream ([`IoStream`]: read, write,
//! write-flush, seek, close and custom messages).

use std::io::SeekFrom;

use crate::{FourCC, IoName, NameError, Requester};

/// The message numbers of the C ABI (`include/purveyor/io.h`) and of custom messages.
pub mod message {
    pub const OPEN: u32 = 1;
    pub const CLOSE: u32 = 2;
    pub const READ: u32 = 3;
    pub const WRITE: u32 = 4;
    /// Write, then flush what the procedure buffers (`len` may be 0: flush only).
    pub const WRITE_FLUSH: u32 = 5;
    pub const SEEK: u32 = 6;
    pub const RENAME: u32 = 7;
    pub const DELETE: u32 = 8;
    /// The first custom message. Every number from here up is the procedure's own; a
    /// procedure answers any message it does not know with "unsupported".
    pub const USER: u32 = 0x4000;
}

/// How a stream is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read an existing element.
    Read,
    /// Create the element, or truncate it if it exists, and write.
    Write,
    /// Read and write an existing element.
    ReadWrite,
}

impl OpenMode {
    /// The ABI's number: 1 read, 2 write, 3 read-write.
    pub fn to_raw(self) -> u32 {
        match self {
            OpenMode::Read => 1,
            OpenMode::Write => 2,
            OpenMode::ReadWrite => 3,
        }
    }

    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(OpenMode::Read),
            2 => Some(OpenMode::Write),
            3 => Some(OpenMode::ReadWrite),
            _ => None,
        }
    }

    pub fn reads(self) -> bool {
        matches!(self, OpenMode::Read | OpenMode::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, OpenMode::Write | OpenMode::ReadWrite)
    }
}

/// An I/O failure. Every message names the thing that failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The procedure does not handle this message (the defined answer to an unknown one).
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("no I/O procedure is installed for {0}")]
    NoProcedure(FourCC),
    #[error("I/O procedure {code} has {open} open stream(s); close them before removing it")]
    Busy { code: FourCC, open: usize },
    #[error("I/O procedure {0} is built in and cannot be removed")]
    BuiltIn(FourCC),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl IoError {
    pub fn unsupported(what: impl Into<String>) -> Self {
        IoError::Unsupported(what.into())
    }

    /// An OS error about `what` (`open backup.tar`).
    pub fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        let what = what.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return IoError::NotFound(what);
        }
        IoError::Os { what, source }
    }

    /// The negative errno the C ABI and the wire carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Unsupported(_) => libc::ENOSYS,
            IoError::NoProcedure(_) => libc::ENOENT,
            IoError::Busy { .. } => libc::EBUSY,
            IoError::BuiltIn(_) => libc::EPERM,
            IoError::Name(_) | IoError::Invalid(_) => libc::EINVAL,
            IoError::NotFound(_) => libc::ENOENT,
            IoError::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            IoError::Failed(_) => libc::EIO,
        }
    }

    /// The error a negative errno from a procedure library stands for, about `what`.
    pub fn from_errno(errno: i32, what: impl Into<String>) -> Self {
        let what = what.into();
        match errno {
            libc::ENOSYS => IoError::Unsupported(what),
            libc::ENOENT => IoError::NotFound(what),
            libc::EINVAL => IoError::Invalid(format!("{what}: invalid argument")),
            _ => IoError::Os {
                what,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }
}

impl From<IoError> for std::io::Error {
    fn from(error: IoError) -> Self {
        let kind = match &error {
            IoError::Unsupported(_) => std::io::ErrorKind::Unsupported,
            IoError::NotFound(_) | IoError::NoProcedure(_) => std::io::ErrorKind::NotFound,
            IoError::Name(_) | IoError::Invalid(_) => std::io::ErrorKind::InvalidInput,
            IoError::Os { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, error)
    }
}

/// An I/O procedure: opens streams on names routed to its code, and renames and deletes
/// what it stores. Procedures are shared by every thread; each stream has its own state.
pub trait IoProcedure: Send + Sync {
    /// A line for `purveyor io ls`.
    fn describe(&self) -> String {
        String::new()
    }

    /// Opens `name` (its `path` is the container, its `element` what to open in it).
    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError>;

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        let _ = (from, to);
        Err(IoError::unsupported("rename"))
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        let _ = name;
        Err(IoError::unsupported("delete"))
    }

    /// [`IoProcedure::open`] for `who`. A host calls this one, with its thread's
    /// file-system credentials already switched to `who`'s; a procedure that keeps state of
    /// its own (not in files) uses `who` to keep each user's apart (`MEM `).
    fn open_for(
        &self,
        who: &Requester,
        name: &IoName,
        mode: OpenMode,
    ) -> Result<Box<dyn IoStream>, IoError> {
        let _ = who;
        self.open(name, mode)
    }

    /// [`IoProcedure::rename`] for `who` (see [`IoProcedure::open_for`]).
    fn rename_for(&self, who: &Requester, from: &IoName, to: &IoName) -> Result<(), IoError> {
        let _ = who;
        self.rename(from, to)
    }

    /// [`IoProcedure::delete`] for `who` (see [`IoProcedure::open_for`]).
    fn delete_for(&self, who: &Requester, name: &IoName) -> Result<(), IoError> {
        let _ = who;
        self.delete(name)
    }
}

/// One open stream: the procedure's position and state for it.
pub trait IoStream: Send {
    /// Reads up to `buf.len()` bytes; 0 at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError>;

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let _ = buf;
        Err(IoError::unsupported("write"))
    }

    /// Write-flush: pushes out whatever the procedure buffers.
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        let _ = pos;
        Err(IoError::unsupported("seek"))
    }

    /// A custom message (`message::USER` and up) with its input; the answer is the
    /// procedure's. Unknown messages are "unsupported".
    fn message(&mut self, message: u32, input: &[u8]) -> Result<i64, IoError> {
        let _ = input;
        Err(IoError::unsupported(format!("message {message:#x}")))
    }

    /// The size of the element, when the procedure knows it (for progress).
    fn size(&self) -> Option<u64> {
        None
    }

    /// A plain file behind the stream, read from its start with nothing transformed: the
    /// host may hand its descriptor to a local client instead of streaming the bytes.
    fn plain_file(&self) -> Option<&std::fs::File> {
        None
    }

    /// Finishes the stream (a compressor writes its trailer here). Dropping a stream
    /// without closing it discards what close would have written.
    fn close(self: Box<Self>) -> Result<(), IoError> {
        Ok(())
    }
}
