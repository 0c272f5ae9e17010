//! Reading a small file the daemon trusts no more than its contents: a configuration
//! file, a certificate, a key.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads at most `max` bytes of the file at `path`: opened without blocking (a FIFO would
/// block the open until a writer came), read only if it is a regular file (not
/// `/dev/zero`, not a directory). `Err` says what is wrong, for a message naming the file.
pub fn read_small_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!(
            "it is not a regular file (a {})",
            crate::file_kind(&meta.file_type())
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "it is {} bytes, more than the limit of {max}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    // The size may have changed since: never read more than the limit.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("it is more than the limit of {max} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::read_small_file;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_small_file(&file, 5).unwrap(), b"12345");
        let err = read_small_file(&file, 4).unwrap_err();
        assert!(err.contains("more than the limit of 4"), "{err}");
        let err = read_small_file(dir.path(), 4).unwrap_err();
        assert!(err.contains("not a regular file (a directory)"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_small_file(&fifo, 4).unwrap_err();
        assert!(err.contains("a FIFO") || err.contains("fifo"), "{err}");
    }
}
