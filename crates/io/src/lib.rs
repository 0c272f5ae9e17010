//! Installable I/O procedures (`docs/io-procedures.md`).
//!
//! An I/O procedure handles the messages of one kind of storage — open, close, read,
//! write, write-flush, seek, rename, delete and custom messages — and is installed in a
//! [`Registry`] under a four-character code ([`FourCC`]). A name like
//! `backup.tar+etc/hosts` routes to the procedure for `TAR `; a plain name is a plain file
//! (`DOS `). Procedures are shared between applications through a library that exports an
//! install function ([`abi`]), and between every client of a host as global procedures.
//!
//! ```no_run
//! use std::io::Read;
//! use purveyor_io::{OpenMode, Registry};
//! let registry = Registry::new();
//! let mut hosts = String::new();
//! registry.open("backup.tar+etc/hosts", OpenMode::Read)?.read_to_string(&mut hosts)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod abi;
mod builtin;
mod fourcc;
mod name;
mod procedure;
mod registry;
mod requester;
mod small_file;
pub mod users;

pub use builtin::{Dos, Gzip, Memory, MemoryLimits, Tar, file_kind};
pub use fourcc::{FourCC, FourCCError};
pub use name::{IoName, NameError};
pub use procedure::{IoError, IoProcedure, IoStream, OpenMode, message};
pub use registry::{GlobalProcedures, Listing, Registry, Scope, Stream, StreamGuard};
pub use requester::Requester;
pub use small_file::read_small_file;
