use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{IoError, IoName, IoProcedure, IoStream, OpenMode};

type Buffer = Arc<Mutex<Vec<u8>>>;

/// `MEM `: named memory buffers that live as long as the procedure. `scratch.mem+a` is
/// buffer `a` of `scratch.mem`; writing creates it, reading it back gives the same bytes.
#[derive(Debug, Default)]
pub struct Memory {
    buffers: Mutex<HashMap<String, Buffer>>,
}

impl Memory {
    fn key(name: &IoName) -> String {
        format!("{}+{}", name.path.display(), name.element)
    }
}

impl IoProcedure for Memory {
    fn describe(&self) -> String {
        "memory buffers".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        let key = Self::key(name);
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let buffer = match mode {
            OpenMode::Write => {
                let buffer = Buffer::default();
                buffers.insert(key.clone(), buffer.clone());
                buffer
            }
            OpenMode::Read | OpenMode::ReadWrite => buffers
                .get(&key)
                .cloned()
                .ok_or_else(|| IoError::NotFound(format!("memory buffer {key}")))?,
        };
        Ok(Box::new(MemStream {
            buffer,
            position: 0,
        }))
    }

    fn rename(&self, from: &IoName, to: &IoName) -> Result<(), IoError> {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let buffer = buffers
            .remove(&Self::key(from))
            .ok_or_else(|| IoError::NotFound(format!("memory buffer {}", Self::key(from))))?;
        buffers.insert(Self::key(to), buffer);
        Ok(())
    }

    fn delete(&self, name: &IoName) -> Result<(), IoError> {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        buffers
            .remove(&Self::key(name))
            .map(drop)
            .ok_or_else(|| IoError::NotFound(format!("memory buffer {}", Self::key(name))))
    }
}

struct MemStream {
    buffer: Buffer,
    position: u64,
}

impl IoStream for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let data = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let start = (self.position as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        self.position += n as u64;
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        let mut data = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let start = self.position as usize;
        if data.len() < start + buf.len() {
            data.resize(start + buf.len(), 0);
        }
        data[start..start + buf.len()].copy_from_slice(buf);
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        let len = self
            .buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as i64;
        let target = match pos {
            SeekFrom::Start(n) => i64::try_from(n).unwrap_or(i64::MAX),
            SeekFrom::Current(d) => (self.position as i64).saturating_add(d),
            SeekFrom::End(d) => len.saturating_add(d),
        };
        if target < 0 {
            return Err(IoError::Invalid(format!(
                "seek to {target}: before the start of the buffer"
            )));
        }
        self.position = target as u64;
        Ok(self.position)
    }

    fn size(&self) -> Option<u64> {
        Some(
            self.buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64,
        )
    }
}
