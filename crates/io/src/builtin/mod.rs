//! The built-in procedures: `DOS ` (plain files), `MEM ` (memory buffers), `GZ  ` (a gzip
//! stream, read and write) and `TAR ` (tar members: read, seek, and write by appending).

mod dos;
mod gz;
mod mem;
mod tar;

pub use dos::Dos;
pub use gz::Gzip;
pub use mem::{Memory, MemoryLimits};
pub use tar::Tar;

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::{IoError, IoName};

/// Opens a file for a built-in procedure: without blocking (a FIFO would block the open
/// until a peer came, pinning a thread), without becoming a controlling terminal, and only
/// if it is a regular file. `verb` says what for, in errors (`open`, `create`).
pub(crate) fn open_regular(
    path: &Path,
    options: &mut OpenOptions,
    verb: &str,
) -> Result<File, IoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("{verb} {}", path.display());
    let file = options
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // Opening a FIFO for writing with nobody reading it.
            Some(libc::ENXIO) => IoError::Invalid(format!(
                "{}: not a regular file (a FIFO or a device)",
                what()
            )),
            _ => IoError::os(what(), e),
        })?;
    let kind = file
        .metadata()
        .map_err(|e| IoError::os(format!("stat {}", path.display()), e))?
        .file_type();
    if !kind.is_file() {
        return Err(IoError::Invalid(format!(
            "{}: not a regular file (a {}); I/O procedures read and write regular files",
            what(),
            file_kind(&kind)
        )));
    }
    Ok(file)
}

/// What kind of file this is, for an error message: `FIFO`, `directory`, `character
/// device`…
pub fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        "regular file"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// A procedure that has no elements refuses `file.EXT+element` with a non-empty element.
fn whole_file_only(name: &IoName, procedure: &str) -> Result<(), IoError> {
    if name.element.is_empty() {
        Ok(())
    } else {
        Err(IoError::Invalid(format!(
            "{name}: the {procedure} procedure has no elements; name the whole file (\"{}+\")",
            name.path.display()
        )))
    }
}
