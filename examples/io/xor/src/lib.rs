//! `XOR `: an example I/O procedure shared through a library. `report.xor+` is the file
//! `report.xor` seen through a XOR cipher: what is written is stored XORed with the key,
//! what is read is XORed back. The key is 0x5A unless the custom message
//! [`SET_KEY`] changes it for one stream.
//!
//! The whole library is the procedure, its install function and one export line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use purveyor_io::abi::Installer;
use purveyor_io::{FourCC, IoError, IoName, IoProcedure, IoStream, OpenMode, message};

/// The default key.
pub const DEFAULT_KEY: u8 = 0x5A;
/// Custom message: the input's first byte becomes this stream's key.
pub const SET_KEY: u32 = message::USER + 1;

pub struct Xor;

impl IoProcedure for Xor {
    fn describe(&self) -> String {
        "XOR cipher over a file (example library)".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        if !name.element.is_empty() {
            return Err(IoError::Invalid(format!(
                "{name}: XOR has no elements; name the whole file (\"{}+\")",
                name.path.display()
            )));
        }
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::Write => options.write(true).create(true).truncate(true),
            OpenMode::ReadWrite => options.read(true).write(true),
        };
        let what = name.path.display().to_string();
        let file = options
            .open(&name.path)
            .map_err(|e| IoError::os(format!("open {what}"), e))?;
        Ok(Box::new(XorStream {
            file,
            key: DEFAULT_KEY,
            scratch: Vec::new(),
            what,
        }))
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        std::fs::remove_file(&name.path)
            .map_err(|e| IoError::os(format!("delete {}", name.path.display()), e))
    }
}

struct XorStream {
    file: File,
    key: u8,
    scratch: Vec<u8>,
    what: String,
}

impl IoStream for XorStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let n = self
            .file
            .read(buf)
            .map_err(|e| IoError::os(format!("read {}", self.what), e))?;
        buf[..n].iter_mut().for_each(|b| *b ^= self.key);
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        self.scratch.clear();
        self.scratch.extend(buf.iter().map(|b| b ^ self.key));
        self.file
            .write_all(&self.scratch)
            .map_err(|e| IoError::os(format!("write {}", self.what), e))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.file
            .sync_data()
            .map_err(|e| IoError::os(format!("sync {}", self.what), e))
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        self.file
            .seek(pos)
            .map_err(|e| IoError::os(format!("seek {}", self.what), e))
    }

    fn message(&mut self, message: u32, input: &[u8]) -> Result<i64, IoError> {
        match (message, input.first()) {
            (SET_KEY, Some(&key)) => {
                self.key = key;
                Ok(i64::from(key))
            }
            (SET_KEY, None) => Err(IoError::Invalid("SET_KEY needs one byte".into())),
            (other, _) => Err(IoError::unsupported(format!("message {other:#x}"))),
        }
    }

    fn size(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.len())
    }
}

fn install(registry: &mut Installer) -> Result<(), IoError> {
    registry.install(FourCC::new("XOR ").expect("valid code"), Xor)
}

purveyor_io::export_io_procedures!(install);
