//! The example library installed from its path into a registry, through the C ABI.

use std::io::{Read, Write};
use std::path::PathBuf;

use purveyor_io::{FourCC, IoError, OpenMode, Registry, Scope};

/// The cdylib cargo built next to this test's dependencies.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("libpurveyor_example_xor.so");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

#[test]
fn installed_from_its_path_it_ciphers_round_trips_and_answers_custom_messages() {
    let registry = Registry::new();
    let codes = registry.install_from_library(&library()).unwrap();
    assert_eq!(codes, vec![FourCC::new("XOR ").unwrap()]);
    let listed = registry.list();
    let xor = listed.iter().find(|l| l.code.as_str() == "XOR ").unwrap();
    assert_eq!(xor.scope, Scope::Process);
    assert!(xor.origin.starts_with("library ") && xor.origin.ends_with(".so"));
    assert_eq!(xor.description, "XOR cipher over a file (example library)");

    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}/report.xor+", dir.path().display());
    let text = b"quarterly report: all good\n".repeat(1000);
    let mut w = registry.open(&name, OpenMode::Write).unwrap();
    w.write_all(&text).unwrap();
    w.write_flush(b"").unwrap();
    w.close().unwrap();
    // On disk it is ciphered, byte by byte with the default key.
    let raw = std::fs::read(dir.path().join("report.xor")).unwrap();
    assert_eq!(raw.len(), text.len());
    assert!(raw.iter().zip(&text).all(|(r, t)| r ^ t == 0x5A));
    // Through the procedure it reads back as written.
    let mut back = Vec::new();
    registry
        .open(&name, OpenMode::Read)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == text);

    // A custom message changes this stream's key; an unknown one is unsupported.
    let mut s = registry.open(&name, OpenMode::Read).unwrap();
    assert_eq!(s.message(purveyor_example_xor::SET_KEY, &[0]).unwrap(), 0);
    let mut first = [0u8; 4];
    s.read_exact(&mut first).unwrap();
    assert_eq!(first, raw[..4]);
    let err = s.message(purveyor_io::message::USER + 99, b"").unwrap_err();
    assert!(matches!(err, IoError::Unsupported(_)), "{err}");
    s.close().unwrap();

    // Errors cross the boundary as errno and come back naming the file.
    let err = registry
        .open(
            &format!("{}/missing.xor+", dir.path().display()),
            OpenMode::Read,
        )
        .unwrap_err();
    assert!(err.to_string().contains("missing.xor"), "{err}");
    let err = registry
        .open(
            &format!("{}/r.xor+elem", dir.path().display()),
            OpenMode::Read,
        )
        .unwrap_err();
    assert!(matches!(err, IoError::Invalid(_)), "{err}");
    registry.delete(&name).unwrap();
    assert!(!dir.path().join("report.xor").exists());
    registry.remove(FourCC::new("XOR ").unwrap()).unwrap();
}

#[test]
fn a_file_that_is_not_a_procedure_library_is_named() {
    let registry = Registry::new();
    let err = registry
        .install_from_library(std::path::Path::new("/no/such/lib.so"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot load I/O procedure library /no/such/lib.so"),
        "{err}"
    );
    // libc is a library, but not a procedure library.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap();
    let err = registry
        .install_from_library(std::path::Path::new(libc))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not export purveyor_io_install"),
        "{err}"
    );
}
