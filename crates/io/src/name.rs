//! Names: `file.EXT+element` routes to the procedure registered for `EXT `; a plain name
//! is a plain file (the `DOS ` procedure).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::FourCC;

/// A parsed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoName {
    /// The procedure the name routes to; `None` for a plain name (`DOS `).
    pub code: Option<FourCC>,
    /// The file: the container (`backup.tar`) or the plain file.
    pub path: PathBuf,
    /// The element inside the container (`etc/hosts`); empty for the whole container and
    /// for a plain name. Always relative, with no `..` component.
    pub element: String,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name {0:?} contains a NUL byte")]
    Nul(String),
    #[error(
        "name {name:?}: element {element:?} is absolute; elements are relative to their container"
    )]
    Absolute { name: String, element: String },
    #[error("name {name:?}: element {element:?} escapes its container with \"..\"")]
    Escapes { name: String, element: String },
}

impl IoName {
    /// Parses a name. The first `+` that follows `.EXT` (1 to 4 ASCII letters or digits,
    /// after a non-empty file stem) splits it; a name with no such `+` is a plain file,
    /// whatever else it contains (`c++/notes.txt`).
    pub fn parse(name: &str) -> Result<IoName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.contains('\0') {
            return Err(NameError::Nul(name.escape_debug().to_string()));
        }
        for (at, _) in name.match_indices('+') {
            let head = &name[..at];
            let file = head.rsplit('/').next().unwrap_or(head);
            let Some(dot) = file.rfind('.') else { continue };
            if dot == 0 {
                continue; // ".tar" is a hidden file with no extension
            }
            let Ok(code) = FourCC::from_extension(&file[dot + 1..]) else {
                continue;
            };
            let element = &name[at + 1..];
            check_element(name, element)?;
            return Ok(IoName {
                code: Some(code),
                path: PathBuf::from(head),
                element: element.to_owned(),
            });
        }
        Ok(IoName {
            code: None,
            path: PathBuf::from(name),
            element: String::new(),
        })
    }

    /// The container (or plain file) path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name made absolute against `dir` (the container path only; the element stays
    /// relative to its container).
    pub fn absolute_in(&self, dir: &Path) -> IoName {
        IoName {
            code: self.code,
            path: dir.join(&self.path),
            element: self.element.clone(),
        }
    }
}

fn check_element(name: &str, element: &str) -> Result<(), NameError> {
    if element.starts_with('/') {
        return Err(NameError::Absolute {
            name: name.to_owned(),
            element: element.to_owned(),
        });
    }
    if element.split('/').any(|part| part == "..") {
        return Err(NameError::Escapes {
            name: name.to_owned(),
            element: element.to_owned(),
        });
    }
    Ok(())
}

impl fmt::Display for IoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(_) => write!(f, "{}+{}", self.path.display(), self.element),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expected = Result<(Option<&'static str>, &'static str, &'static str), &'static str>;

    #[test]
    fn valid_and_hostile_names() {
        // (name, Ok((code, path, element)) or Err(fragment of the message))
        let table: &[(&str, Expected)] = &[
            ("notes.txt", Ok((None, "notes.txt", ""))),
            ("/var/log/syslog", Ok((None, "/var/log/syslog", ""))),
            (
                "backup.tar+etc/hosts",
                Ok((Some("TAR "), "backup.tar", "etc/hosts")),
            ),
            (
                "/srv/b.TAR+etc/hosts",
                Ok((Some("TAR "), "/srv/b.TAR", "etc/hosts")),
            ),
            ("log.gz+", Ok((Some("GZ  "), "log.gz", ""))),
            ("report.xor+", Ok((Some("XOR "), "report.xor", ""))),
            ("a.tar+b.tar+c", Ok((Some("TAR "), "a.tar", "b.tar+c"))),
            ("c++/notes.txt", Ok((None, "c++/notes.txt", ""))),
            ("dir.v2/c++.txt", Ok((None, "dir.v2/c++.txt", ""))),
            ("file.jpeg2+x", Ok((None, "file.jpeg2+x", ""))),
            (".tar+x", Ok((None, ".tar+x", ""))),
            (
                "scratch.mem+a/./b",
                Ok((Some("MEM "), "scratch.mem", "a/./b")),
            ),
            ("", Err("empty name")),
            ("a\0b", Err("NUL byte")),
            ("backup.tar+/etc/shadow", Err("is absolute")),
            ("backup.tar+../../etc/shadow", Err("escapes its container")),
            ("backup.tar+etc/../../x", Err("escapes its container")),
            ("backup.tar+..", Err("escapes its container")),
        ];
        for (input, expected) in table {
            match (IoName::parse(input), expected) {
                (Ok(name), Ok((code, path, element))) => {
                    assert_eq!(name.code.as_ref().map(FourCC::as_str), *code, "{input:?}");
                    assert_eq!(name.path, PathBuf::from(path), "{input:?}");
                    assert_eq!(name.element, *element, "{input:?}");
                }
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn display_gives_the_name_back() {
        for name in ["backup.tar+etc/hosts", "notes.txt", "log.gz+"] {
            assert_eq!(IoName::parse(name).unwrap().to_string(), name);
        }
    }
}
