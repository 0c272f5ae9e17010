use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use crate::{IoError, IoName, IoProcedure, IoStream, OpenMode};

/// `DOS `: plain files (regular files only: not FIFOs, devices or directories).
#[derive(Debug, Default)]
pub struct Dos;

impl IoProcedure for Dos {
    fn describe(&self) -> String {
        "plain files".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        super::whole_file_only(name, "DOS")?;
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::Write => options.write(true).create(true).truncate(true),
            OpenMode::ReadWrite => options.read(true).write(true),
        };
        let path = &name.path;
        let file = super::open_regular(path, &mut options, "open")?;
        Ok(Box::new(DosStream {
            file,
            what: path.display().to_string(),
        }))
    }

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        std::fs::rename(&from.path, &to.path).map_err(|e| {
            IoError::os(
                format!("rename {} to {}", from.path.display(), to.path.display()),
                e,
            )
        })
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        std::fs::remove_file(&name.path)
            .map_err(|e| IoError::os(format!("delete {}", name.path.display()), e))
    }
}

struct DosStream {
    file: File,
    /// Invariant: a regular file (`open_regular`), which may be handed over as is.
    what: String,
}

impl IoStream for DosStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        self.file
            .read(buf)
            .map_err(|e| IoError::os(format!("read {}", self.what), e))
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        self.file
            .write(buf)
            .map_err(|e| IoError::os(format!("write {}", self.what), e))
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        self.file
            .seek(pos)
            .map_err(|e| IoError::os(format!("seek {}", self.what), e))
    }

    fn size(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.len())
    }

    fn plain_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn close(self: Box<Self>) -> Result<(), IoError> {
        Ok(())
    }
}
