//! The registry's documented semantics, and each built-in's round trip.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use purveyor_io::{
    FourCC, GlobalProcedures, IoError, IoName, IoProcedure, IoStream, Memory, OpenMode, Registry,
    Scope,
};

/// A procedure whose streams read back its own tag, so a test can see which one answered.
struct Tagged(&'static str);

impl IoProcedure for Tagged {
    fn open(&self, _: &IoName, _: OpenMode) -> Result<Box<dyn IoStream>, IoError> {
        Ok(Box::new(TagStream(self.0.as_bytes(), 0)))
    }
}

struct TagStream(&'static [u8], usize);

impl IoStream for TagStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IoError> {
        let n = buf.len().min(self.0.len() - self.1);
        buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 += n;
        Ok(n)
    }
}

struct Global(Arc<dyn IoProcedure>, FourCC);

impl GlobalProcedures for Global {
    fn find(&self, code: FourCC) -> Option<Arc<dyn IoProcedure>> {
        (code == self.1).then(|| self.0.clone())
    }
    fn list(&self) -> Vec<(FourCC, String)> {
        vec![(self.1, "host".into())]
    }
}

fn code(s: &str) -> FourCC {
    FourCC::new(s).unwrap()
}

fn who(registry: &Registry, name: &str) -> String {
    match registry.open(name, OpenMode::Read) {
        Ok(mut s) => {
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
        Err(e) => format!("error: {e}"),
    }
}

enum Step {
    Install(&'static str, &'static str),
    InstallGlobal(&'static str, &'static str),
    HostGlobal(&'static str, &'static str),
    Remove(&'static str, &'static str),
    Expect(&'static str, &'static str),
}

#[test]
fn install_find_remove_follow_the_documented_order() {
    use Step::*;
    let registry = Registry::new();
    let steps = [
        // A code nobody installed.
        Expect(
            "a.abc+x",
            "error: no I/O procedure is installed for \"ABC \"",
        ),
        Remove("ABC ", "no I/O procedure is installed for \"ABC \""),
        // The most recent install wins, even over a built-in.
        Install("TAR ", "first"),
        Expect("a.tar+x", "first"),
        Install("TAR ", "second"),
        Expect("a.tar+x", "second"),
        // Process installs come before global ones, whatever the order of install.
        InstallGlobal("TAR ", "global"),
        Expect("a.tar+x", "second"),
        // N installs need N removes, most recent first.
        Remove("TAR ", "ok"),
        Expect("a.tar+x", "first"),
        Remove("TAR ", "ok"),
        Expect("a.tar+x", "global"),
        Remove("TAR ", "ok"),
        // Back to the built-in, which is never removed.
        Expect("a.tar+x", "error: open a.tar was not found"),
        Remove("TAR ", "is built in and cannot be removed"),
        // The host's global procedures come after this process's and before built-ins.
        HostGlobal("GZ  ", "host"),
        Expect("a.gz+", "host"),
        Install("GZ  ", "mine"),
        Expect("a.gz+", "mine"),
        Remove("GZ  ", "ok"),
        Expect("a.gz+", "host"),
        // Plain names go to DOS, which can be replaced too.
        Install("DOS ", "my-dos"),
        Expect("/no/such/file", "my-dos"),
        Remove("DOS ", "ok"),
        Expect("/no/such/file", "error: open /no/such/file was not found"),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Install(c, tag) => registry.install(code(c), Arc::new(Tagged(tag))),
            InstallGlobal(c, tag) => {
                registry.install_in(code(c), Arc::new(Tagged(tag)), Scope::Global, "test")
            }
            HostGlobal(c, tag) => {
                registry.set_global(Some(Arc::new(Global(Arc::new(Tagged(tag)), code(c)))))
            }
            Remove(c, want) => {
                let got = registry.remove(code(c));
                match (got, want) {
                    (Ok(()), "ok") => {}
                    (Err(e), want) if want != "ok" => {
                        assert!(e.to_string().contains(want), "step {i}: {e}")
                    }
                    (got, want) => panic!("step {i}: remove {c}: got {got:?}, want {want}"),
                }
            }
            Expect(name, want) => assert_eq!(who(&registry, name), want, "step {i}: {name}"),
        }
    }
}

#[test]
fn listing_shows_scope_origin_and_shadowing() {
    let registry = Registry::new();
    registry.install(code("TAR "), Arc::new(Tagged("mine")));
    let list = registry.list();
    let tar: Vec<_> = list.iter().filter(|l| l.code == code("TAR ")).collect();
    assert_eq!(tar.len(), 2);
    assert_eq!((tar[0].scope, tar[0].shadowed), (Scope::Process, false));
    assert_eq!((tar[1].scope, tar[1].shadowed), (Scope::Builtin, true));
    assert_eq!(tar[1].origin, "built-in");
    let builtins: Vec<_> = list
        .iter()
        .filter(|l| l.scope == Scope::Builtin)
        .map(|l| l.code.as_str().to_owned())
        .collect();
    for c in ["DOS ", "MEM ", "GZ  ", "TAR "] {
        assert!(
            builtins.iter().any(|b| b == c),
            "{c} missing from {builtins:?}"
        );
    }
}

#[test]
fn removing_a_procedure_with_open_streams_is_refused_with_their_count() {
    let registry = Registry::new();
    registry.install(code("MEM "), Arc::new(Memory::default()));
    let mut a = registry.open("x.mem+a", OpenMode::Write).unwrap();
    let b = registry.open("x.mem+b", OpenMode::Write).unwrap();
    a.write_all(b"hello").unwrap();
    let err = registry.remove(code("MEM ")).unwrap_err();
    assert!(matches!(err, IoError::Busy { open: 2, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "I/O procedure \"MEM \" has 2 open stream(s); close them before removing it"
    );
    a.close().unwrap();
    let err = registry.remove(code("MEM ")).unwrap_err();
    assert!(matches!(err, IoError::Busy { open: 1, .. }), "{err}");
    // A stream handed to the host's table still counts.
    let (_inner, guard) = b.into_parts();
    assert!(registry.remove(code("MEM ")).is_err());
    drop(guard);
    registry.remove(code("MEM ")).unwrap();
    // A failed open does not leave a count behind.
    registry.install(code("MEM "), Arc::new(Memory::default()));
    assert!(registry.open("x.mem+missing", OpenMode::Read).is_err());
    registry.remove(code("MEM ")).unwrap();
}

/// Data with structure and noise, so compression and offsets are exercised.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            if i % 7 == 0 {
                (x >> 16) as u8
            } else {
                (i % 251) as u8
            }
        })
        .collect()
}

fn write_then_read(registry: &Registry, name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = registry.open(name, OpenMode::Write).unwrap();
    for chunk in data.chunks(10_000) {
        w.write_all(chunk).unwrap();
    }
    w.close().unwrap();
    let mut r = registry.open(name, OpenMode::Read).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    r.close().unwrap();
    back
}

#[test]
fn every_builtin_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let data = sample(300_000);
    let d = dir.path().display();
    for name in [
        format!("{d}/plain.bin"),
        format!("{d}/scratch.mem+buf"),
        format!("{d}/data.gz+"),
        format!("{d}/backup.tar+etc/hosts"),
    ] {
        let back = write_then_read(&registry, &name, &data);
        assert!(
            back == data,
            "{name}: {} bytes back, {} written",
            back.len(),
            data.len()
        );
    }
    // The gzip file is real gzip: smaller, with the magic, readable by flate2 directly.
    let raw = std::fs::read(dir.path().join("data.gz")).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b]);
    assert!(raw.len() < data.len());
    // The tar file is a real archive: a second member appends; both read back; the
    // newest member of a name wins; a missing one is named.
    let other = sample(1000);
    assert_eq!(
        write_then_read(&registry, &format!("{d}/backup.tar+b.txt"), &other),
        other
    );
    let mut hosts = Vec::new();
    let mut r = registry
        .open(&format!("{d}/backup.tar+etc/hosts"), OpenMode::Read)
        .unwrap();
    r.read_to_end(&mut hosts).unwrap();
    assert!(hosts == data);
    let err = registry
        .open(&format!("{d}/backup.tar+nope"), OpenMode::Read)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("member nope of {d}/backup.tar was not found")
    );
    let listing = std::process::Command::new("tar")
        .args(["tf", &format!("{d}/backup.tar")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "etc/hosts\nb.txt\n"
    );
}

#[test]
fn tar_members_seek_within_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let name = format!("{}/a.tar+m", dir.path().display());
    let data = sample(5000);
    write_then_read(&registry, &name, &data);
    let mut r = registry.open(&name, OpenMode::Read).unwrap();
    assert_eq!(r.size(), Some(5000));
    r.seek(SeekFrom::Start(4000)).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &data[4000..]);
    assert!(r.seek(SeekFrom::End(1)).is_err());
}

/// A tar member written to an archive goes to the file opened when the stream was opened,
/// even if the name is swapped for a symlink before the close (which writes).
#[test]
fn tar_writes_through_the_archive_opened_at_open() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let archive = dir.path().join("a.tar");
    let other = dir.path().join("other");
    std::fs::write(&other, "untouched").unwrap();
    let mut w = registry
        .open(&format!("{}+m", archive.display()), OpenMode::Write)
        .unwrap();
    w.write_all(b"member").unwrap();
    let moved = dir.path().join("moved.tar");
    std::fs::rename(&archive, &moved).unwrap();
    std::os::unix::fs::symlink(&other, &archive).unwrap();
    w.close().unwrap();
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "untouched");
    let name = format!("{}+m", moved.display());
    assert_eq!(who(&registry, &name), "member");
    // Names that would forge listing lines are refused before anything is opened.
    let err = registry
        .open(
            &format!("{}/b.tar+a\nb", dir.path().display()),
            OpenMode::Write,
        )
        .unwrap_err();
    assert!(err.to_string().contains("control characters"), "{err}");
    assert!(!dir.path().join("b.tar").exists());
}

#[test]
fn gzip_reads_what_gzip_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-gzip.txt");
    std::fs::write(&path, "made by the gzip program\n").unwrap();
    let status = std::process::Command::new("gzip")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let registry = Registry::new();
    let name = format!("{}.gz+", path.display());
    assert_eq!(who(&registry, &name), "made by the gzip program\n");
    // Not gzip: a named error, not garbage.
    std::fs::write(dir.path().join("bad.gz"), "plain text").unwrap();
    let mut s = registry
        .open(&format!("{}/bad.gz+", dir.path().display()), OpenMode::Read)
        .unwrap();
    let err = s.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("bad.gz"), "{err}");
}

#[test]
fn unknown_and_custom_messages_are_unsupported_by_default() {
    let registry = Registry::new();
    let mut s = registry.open("x.mem+a", OpenMode::Write).unwrap();
    let err = s.message(purveyor_io::message::USER + 7, b"").unwrap_err();
    assert!(matches!(err, IoError::Unsupported(_)), "{err}");
    assert_eq!(err.to_string(), "message 0x4007 is not supported");
}
