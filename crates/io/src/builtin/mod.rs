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

use crate::{IoError, IoName};

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
