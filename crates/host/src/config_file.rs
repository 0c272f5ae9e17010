//! What the host's TOML configuration files share (the access policy here, the HTTP
//! gateway's `http.toml`): reading one, and errors that name the file, the line and the
//! entry at fault.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A refused configuration file: `FILE:LINE: message`, or `FILE: message` when the
/// problem has no place (the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<u32>,
    pub message: String,
}

impl FileError {
    /// An error at byte range `span` of `text` (the file's contents), if it has one.
    pub fn at(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        FileError {
            path: path.to_owned(),
            // By bytes: the parser's offset may fall inside a character.
            line: span.map(|s| {
                let before = &text.as_bytes()[..s.start.min(text.len())];
                before.iter().filter(|&&b| b == b'\n').count() as u32 + 1
            }),
            message,
        }
    }
}

/// The file's text, or an error naming it.
pub fn read(path: &Path) -> Result<String, FileError> {
    read_text(path).map_err(|message| FileError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read it: {message}"),
    })
}

/// The largest configuration file (a manifest, the access policy, `http.toml`) read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a configuration file as text: opened without blocking (a FIFO would block the
/// open until a writer came), read only if it is a regular file (not `/dev/zero`, not a
/// directory), and at most [`MAX_CONFIG_FILE`] bytes. `Err` says what is wrong.
pub fn read_text(path: &Path) -> Result<String, String> {
    let bytes = purveyor_io::read_small_file(path, MAX_CONFIG_FILE)?;
    String::from_utf8(bytes).map_err(|e| format!("it is not UTF-8 text ({e})"))
}

/// `4096`, `64KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`… as binary multiples).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with KiB, MiB or GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("{other:?} is not a size unit (KiB, MiB, GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `configuration_files` fuzz target: the parser's error offset fell
    /// inside a two-byte character, and counting the lines before it sliced the text there.
    #[test]
    fn an_error_inside_a_character_names_its_line() {
        let text = "a = 1\n\"\\\u{80}";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let error = FileError::at(Path::new("x.toml"), text, e.span(), e.message().into());
        assert_eq!(error.line, Some(2));
    }

    /// A FIFO or `/dev/zero` as a configuration file hung start-up and `purveyor check`,
    /// or read until memory ran out; an oversized file is refused by its size.
    #[test]
    fn a_fifo_or_dev_zero_as_a_manifest_hung_or_ballooned() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = read_text(&fifo).unwrap_err();
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read_text(&zero).unwrap_err();
        assert!(err.contains("character device"), "{err}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_FILE as usize + 1]).unwrap();
        assert!(read_text(&big).unwrap_err().contains("limit"));
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "name = \"x\"\n").unwrap();
        assert_eq!(read_text(&ok).unwrap(), "name = \"x\"\n");
    }
}
