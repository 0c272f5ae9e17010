use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{IoError, IoName, IoProcedure, IoStream, OpenMode};

/// `TAR `: the members of a (plain, uncompressed) tar archive: `backup.tar+etc/hosts`.
/// Reading finds the member and reads its bytes in place (seekable, no copy of the
/// archive). Writing appends a new member when the stream is closed, so a later read of
/// that name finds the newest member, as `tar` does. The archive is opened for writing
/// when the stream is opened (so a caller who may not write it is refused then, and the
/// close writes through that descriptor, never through the name again).
#[derive(Debug, Default)]
pub struct Tar;

/// Where a member's data lies in its archive.
struct Member {
    offset: u64,
    size: u64,
}

/// The archive's members in order, and where the next member would go.
fn scan(archive: &Path, what: &str) -> Result<(Vec<(String, Member)>, u64), IoError> {
    let file = super::open_regular(archive, OpenOptions::new().read(true), "open")?;
    scan_file(&file, what)
}

/// [`scan`] of an open archive, from its start.
fn scan_file(file: &File, what: &str) -> Result<(Vec<(String, Member)>, u64), IoError> {
    let mut file = file;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| IoError::os(format!("seek {what}"), e))?;
    let mut tar = tar::Archive::new(file);
    let bad =
        |e: std::io::Error| IoError::Invalid(format!("{what} is not a readable tar archive: {e}"));
    let mut members = Vec::new();
    let mut end = 0;
    for entry in tar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?;
        let name = normalize(&path.to_string_lossy());
        let member = Member {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        end = member.offset + member.size.div_ceil(512) * 512;
        members.push((name, member));
    }
    Ok((members, end))
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_start_matches("./").trim_end_matches('/');
    trimmed
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl IoProcedure for Tar {
    fn describe(&self) -> String {
        "tar archive members (read, seek; write appends)".into()
    }

    fn open(&self, name: &IoName, mode: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        let what = name.path.display().to_string();
        let element = normalize(&name.element);
        if element.is_empty() {
            return Err(IoError::Invalid(format!(
                "{name}: name a member of the archive ({what}+dir/file)"
            )));
        }
        match mode {
            OpenMode::Read => {
                let (members, _) = scan(&name.path, &what)?;
                let Some((_, member)) = members.into_iter().rev().find(|(n, _)| *n == element)
                else {
                    return Err(IoError::NotFound(format!("member {element} of {what}")));
                };
                let mut file =
                    super::open_regular(&name.path, OpenOptions::new().read(true), "open")?;
                file.seek(SeekFrom::Start(member.offset))
                    .map_err(|e| IoError::os(format!("seek {what}"), e))?;
                Ok(Box::new(MemberRead {
                    file,
                    member,
                    position: 0,
                    what: format!("{what}+{element}"),
                }))
            }
            OpenMode::Write => {
                writable_member(&element, &what)?;
                let file = super::open_regular(
                    &name.path,
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false),
                    "open for writing",
                )?;
                Ok(Box::new(MemberWrite {
                    archive: file,
                    what,
                    element,
                    data: Vec::new(),
                }))
            }
            OpenMode::ReadWrite => Err(IoError::unsupported(format!(
                "opening {name} for reading and writing (tar members are read, or written whole)"
            ))),
        }
    }
}

struct MemberRead {
    file: File,
    member: Member,
    position: u64,
    what: String,
}

impl IoStream for MemberRead {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let left = self.member.size - self.position;
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read(&mut buf[..want])
            .map_err(|e| IoError::os(format!("read {}", self.what), e))?;
        self.position += n as u64;
        Ok(n)
    }

    fn seek(&mut self, pos: SeekFrom) -> Result<u64, IoError> {
        let size = self.member.size as i64;
        let target = match pos {
            SeekFrom::Start(n) => i64::try_from(n).unwrap_or(i64::MAX),
            SeekFrom::Current(d) => (self.position as i64).saturating_add(d),
            SeekFrom::End(d) => size.saturating_add(d),
        };
        if !(0..=size).contains(&target) {
            return Err(IoError::Invalid(format!(
                "seek to {target} in {}: outside the member's {size} bytes",
                self.what
            )));
        }
        self.file
            .seek(SeekFrom::Start(self.member.offset + target as u64))
            .map_err(|e| IoError::os(format!("seek {}", self.what), e))?;
        self.position = target as u64;
        Ok(self.position)
    }

    fn size(&self) -> Option<u64> {
        Some(self.member.size)
    }
}

/// A member name may be written when it is plain text (no control characters: a newline
/// in a name would forge lines in listings) and stays inside the archive (no `..`).
fn writable_member(element: &str, what: &str) -> Result<(), IoError> {
    if element.chars().any(char::is_control) {
        return Err(IoError::Invalid(format!(
            "{what}: a member name may not contain control characters (newlines, tabs, NUL)"
        )));
    }
    if element.split('/').any(|part| part == "..") {
        return Err(IoError::Invalid(format!(
            "{what}: a member name may not contain `..`"
        )));
    }
    Ok(())
}

struct MemberWrite {
    /// Opened read-write when the stream was opened, as the caller.
    archive: File,
    what: String,
    element: String,
    data: Vec<u8>,
}

impl IoStream for MemberWrite {
    fn read(&mut self, _: &mut [u8]) -> Result<usize, IoError> {
        Err(IoError::unsupported(format!(
            "reading {}+{}, opened for writing",
            self.what, self.element
        )))
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, IoError> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// Appends the member after the archive's last one (creating the archive if needed)
    /// and ends the archive again.
    fn close(self: Box<Self>) -> Result<(), IoError> {
        let what = &self.what;
        let end = scan_file(&self.archive, what)?.1;
        let mut file = self.archive;
        file.seek(SeekFrom::Start(end))
            .map_err(|e| IoError::os(format!("seek {what}"), e))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(self.data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        let mut builder = tar::Builder::new(file);
        builder
            .append_data(&mut header, &self.element, self.data.as_slice())
            .map_err(|e| IoError::os(format!("append {} to {what}", self.element), e))?;
        let mut file = builder
            .into_inner()
            .map_err(|e| IoError::os(format!("end {what}"), e))?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|e| IoError::os(format!("sync {what}"), e))
    }
}
