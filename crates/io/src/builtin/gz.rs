use std::fs::File;
use std::io::{BufReader, Read, Write};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::{IoError, IoName, IoProcedure, IoStream, OpenMode};

/// `GZ  `: a gzip-compressed file as a stream of its uncompressed bytes (`log.gz+`).
/// Reads decompress (several members in a row, as `gzip` writes them); writes compress,
/// and `close` writes the trailer.
#[derive(Debug, Default)]
pub struct Gzip;

impl IoProcedure for Gzip {
    fn describe(&self) -> String {
        "gzip streams (read, write)".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        super::whole_file_only(name, "GZ")?;
        let what = name.path.display().to_string();
        match mode {
            OpenMode::Read => {
                let file = super::open_regular(
                    &name.path,
                    std::fs::OpenOptions::new().read(true),
                    "open",
                )?;
                Ok(Box::new(GzRead {
                    decoder: MultiGzDecoder::new(BufReader::with_capacity(64 << 10, file)),
                    what,
                }))
            }
            OpenMode::Write => {
                let file = super::open_regular(
                    &name.path,
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true),
                    "create",
                )?;
                Ok(Box::new(GzWrite {
                    encoder: GzEncoder::new(file, Compression::default()),
                    what,
                }))
            }
            OpenMode::ReadWrite => Err(IoError::unsupported(format!(
                "opening {what} for reading and writing (a gzip stream is read or written)"
            ))),
        }
    }

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        super::Dos.rename(from, to)
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        super::Dos.delete(name)
    }
}

struct GzRead {
    decoder: MultiGzDecoder<BufReader<File>>,
    what: String,
}

impl IoStream for GzRead {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        self.decoder
            .read(buf)
            .map_err(|e| IoError::os(format!("decompress {}", self.what), e))
    }
}

struct GzWrite {
    encoder: GzEncoder<File>,
    what: String,
}

impl IoStream for GzWrite {
    fn read(&mut self, _: &mut [u8]) -> Result<usize, IoError> {
        Err(IoError::unsupported(format!(
            "reading {}, opened for writing",
            self.what
        )))
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        self.encoder
            .write(buf)
            .map_err(|e| IoError::os(format!("compress into {}", self.what), e))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.encoder
            .flush()
            .map_err(|e| IoError::os(format!("flush {}", self.what), e))
    }

    fn close(self: Box<Self>) -> Result<(), IoError> {
        let file = self
            .encoder
            .finish()
            .map_err(|e| IoError::os(format!("finish {}", self.what), e))?;
        file.sync_all()
            .map_err(|e| IoError::os(format!("sync {}", self.what), e))
    }
}
