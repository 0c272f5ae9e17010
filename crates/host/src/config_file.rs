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
            line: span.map(|s| text[..s.start.min(text.len())].matches('\n').count() as u32 + 1),
            message,
        }
    }
}

/// The file's text, or an error naming it.
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| FileError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read it: {e}"),
    })
}
