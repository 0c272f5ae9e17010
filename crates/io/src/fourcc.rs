//! Four-character codes: the keys of the I/O procedure registry.

use std::fmt;

/// A four-character code: four printable ASCII characters, no lowercase letters, padded
/// on the right with spaces (`"TAR "`, `"GZ  "`). Always valid once built.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourCC([u8; 4]);

/// Why a text is not a four-character code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FourCCError {
    #[error(
        "four-character code {0:?} has {1} bytes; it needs exactly 4 (pad with spaces: \"GZ  \")"
    )]
    Length(String, usize),
    #[error(
        "four-character code {code:?} has {what} at position {at}; only printable ASCII is allowed"
    )]
    NotPrintable {
        code: String,
        what: String,
        at: usize,
    },
    #[error("four-character code {0:?} has a lowercase letter; codes are uppercase ({1:?})")]
    Lowercase(String, String),
    #[error("four-character code {0:?} starts with a space; the padding goes on the right")]
    LeadingSpace(String),
    #[error(
        "four-character code {0:?} has a space before a character; the padding goes on the right"
    )]
    InnerSpace(String),
    #[error(
        "file extension {0:?} cannot name an I/O procedure: it needs 1 to 4 ASCII letters or digits"
    )]
    Extension(String),
}

impl FourCC {
    /// Parses an exact code: `FourCC::new("TAR ")`.
    pub fn new(code: &str) -> Result<Self, FourCCError> {
        let bytes = code.as_bytes();
        if bytes.len() != 4 {
            return Err(FourCCError::Length(code.to_owned(), bytes.len()));
        }
        for (at, &b) in bytes.iter().enumerate() {
            if !(0x20..0x7f).contains(&b) {
                return Err(FourCCError::NotPrintable {
                    code: code.escape_debug().to_string(),
                    what: format!("byte 0x{b:02x}"),
                    at,
                });
            }
        }
        if bytes.iter().any(u8::is_ascii_lowercase) {
            return Err(FourCCError::Lowercase(
                code.to_owned(),
                code.to_ascii_uppercase(),
            ));
        }
        if bytes[0] == b' ' {
            return Err(FourCCError::LeadingSpace(code.to_owned()));
        }
        let first_space = bytes.iter().position(|&b| b == b' ').unwrap_or(4);
        if bytes[first_space..].iter().any(|&b| b != b' ') {
            return Err(FourCCError::InnerSpace(code.to_owned()));
        }
        Ok(FourCC([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The code a file extension routes to: `tar` → `"TAR "`, `gz` → `"GZ  "`.
    pub fn from_extension(ext: &str) -> Result<Self, FourCCError> {
        if ext.is_empty() || ext.len() > 4 || !ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FourCCError::Extension(ext.to_owned()));
        }
        let mut code = [b' '; 4];
        for (slot, b) in code.iter_mut().zip(ext.bytes()) {
            *slot = b.to_ascii_uppercase();
        }
        Ok(FourCC(code))
    }

    /// From the four bytes a C caller passed (validated the same way).
    pub fn from_bytes(bytes: [u8; 4]) -> Result<Self, FourCCError> {
        match std::str::from_utf8(&bytes) {
            Ok(text) => Self::new(text),
            Err(_) => Err(FourCCError::NotPrintable {
                code: String::from_utf8_lossy(&bytes).into_owned(),
                what: "a non-ASCII byte".into(),
                at: bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0),
            }),
        }
    }

    pub fn as_bytes(&self) -> [u8; 4] {
        self.0
    }

    /// The code with its padding: `"GZ  "`.
    pub fn as_str(&self) -> &str {
        // Validated as printable ASCII on construction.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    /// The code without its padding: `"GZ"`.
    pub fn trimmed(&self) -> &str {
        self.as_str().trim_end()
    }
}

impl fmt::Display for FourCC {
    /// Quoted, so the padding shows: `"GZ  "`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_str())
    }
}

impl fmt::Debug for FourCC {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCC(\"{}\")", self.as_str())
    }
}

impl std::str::FromStr for FourCC {
    type Err = FourCCError;

    /// Accepts the exact code, or a short one that is padded: `"GZ"` → `"GZ  "`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 4 && !s.is_empty() {
            Self::new(&format!("{s:<4}"))
        } else {
            Self::new(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes() {
        let table: &[(&str, Result<&str, &str>)] = &[
            ("TAR ", Ok("TAR ")),
            ("GZ  ", Ok("GZ  ")),
            ("XOR1", Ok("XOR1")),
            ("A-B ", Ok("A-B ")),
            (
                "tar ",
                Err("has a lowercase letter; codes are uppercase (\"TAR \")"),
            ),
            ("TAR", Err("has 3 bytes")),
            ("TARGZ", Err("has 5 bytes")),
            (" TAR", Err("starts with a space")),
            ("G Z ", Err("has a space before a character")),
            ("GZ\t ", Err("has byte 0x09 at position 2")),
            ("É  ", Err("only printable ASCII")),
        ];
        for (input, expected) in table {
            match (FourCC::new(input), expected) {
                (Ok(code), Ok(want)) => assert_eq!(code.as_str(), *want, "{input:?}"),
                (Err(e), Err(want)) => {
                    assert!(e.to_string().contains(want), "{input:?}: {e}")
                }
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn extensions_and_short_forms() {
        assert_eq!(FourCC::from_extension("tar").unwrap().as_str(), "TAR ");
        assert_eq!(FourCC::from_extension("gz").unwrap().as_str(), "GZ  ");
        assert_eq!(FourCC::from_extension("Xor").unwrap().as_str(), "XOR ");
        assert!(FourCC::from_extension("tar.gz").is_err());
        assert!(FourCC::from_extension("").is_err());
        assert!(FourCC::from_extension("jpeg2").is_err());
        assert_eq!("GZ".parse::<FourCC>().unwrap().as_str(), "GZ  ");
        assert_eq!("GZ".parse::<FourCC>().unwrap().to_string(), "\"GZ  \"");
        assert_eq!("GZ".parse::<FourCC>().unwrap().trimmed(), "GZ");
    }
}
