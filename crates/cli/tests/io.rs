//! I/O procedures through the daemon: the example `XOR ` library as a global procedure of
//! a provider (isolated and in-daemon), two clients at once, a client that disconnects
//! mid-stream, a procedure provider that crashes mid-stream, plain files passed as
//! descriptors, and the caller's own file permissions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{BIN, Daemon, wait_until, workspace_library};
use purveyor_client::io::{READ_AHEAD, READ_CHUNK};
use purveyor_client::{Client, ClientError, IoMode};

fn xor_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| workspace_library("libpurveyor_example_xor.so", "purveyor-example-xor"))
}

fn xor_manifest(hosting: &str) -> (&'static str, String) {
    (
        "xor",
        format!(
            "name = \"xor\"\ndescription = \"XOR cipher\"\nhosting = \"{hosting}\"\nlibrary = {:?}\nio = [\"XOR \"]\ncall_timeout = \"5s\"\n",
            xor_library().display().to_string()
        ),
    )
}

fn read_all(client: &mut Client, name: &str) -> Result<Vec<u8>, ClientError> {
    let mut stream = client.io_open(name, IoMode::Read)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while client.io_read(&mut stream, &mut buf, READ_CHUNK)? > 0 {
        out.extend_from_slice(&buf);
    }
    client.io_close(stream)?;
    Ok(out)
}

fn write_all(client: &mut Client, name: &str, data: &[u8]) -> Result<(), ClientError> {
    let stream = client.io_open(name, IoMode::Write)?;
    for chunk in data.chunks(100_000) {
        client.io_write(&stream, chunk, false)?;
    }
    client.io_close(stream)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_global_procedure_serves_two_clients_at_once_in_each_hosting() {
    for hosting in ["isolated", "in-daemon"] {
        let daemon = Daemon::start(&[xor_manifest(hosting)], &[], &[]);
        let dir = daemon.dir.path().to_path_buf();
        // `io ls` shows the provider's code first, then the built-ins.
        let list = daemon.client().io_list().unwrap();
        assert_eq!(list[0].code, "XOR ");
        assert_eq!(list[0].scope, "global");
        assert!(list[0].origin.starts_with("provider xor"), "{:?}", list[0]);
        assert!(
            list.iter()
                .any(|p| p.code == "TAR " && p.scope == "built-in")
        );

        let threads: Vec<_> = (0..2u8)
            .map(|n| {
                let socket = daemon.socket.clone();
                let name = format!("{}/report{n}.xor+", dir.display());
                std::thread::spawn(move || {
                    let mut client = Client::connect_socket(&socket, &Default::default()).unwrap();
                    let data = pattern(n, 3_000_000 + n as usize);
                    for _ in 0..3 {
                        write_all(&mut client, &name, &data).unwrap();
                        assert!(read_all(&mut client, &name).unwrap() == data);
                    }
                    data
                })
            })
            .collect();
        for (n, t) in threads.into_iter().enumerate() {
            let data = t.join().unwrap();
            // On disk, each file is its data XORed with the example's key.
            let raw = std::fs::read(dir.join(format!("report{n}.xor"))).unwrap();
            assert_eq!(raw.len(), data.len(), "{hosting}");
            assert!(
                raw.iter().zip(&data).all(|(r, d)| r ^ d == 0x5A),
                "{hosting}"
            );
        }
        // The custom message reaches the procedure through the daemon.
        let mut client = daemon.client();
        let name = format!("{}/report0.xor+", dir.display());
        let stream = client.io_open(&name, IoMode::Read).unwrap();
        assert_eq!(client.io_message(&stream, 0x4001, &[7]).unwrap(), 7);
        let err = client.io_message(&stream, 0x4099, &[]).unwrap_err();
        assert!(matches!(err, ClientError::Unsupported { .. }), "{err}");
        client.io_close(stream).unwrap();
        // Delete goes through the procedure too.
        client.io_delete(&name).unwrap();
        assert!(!dir.join("report0.xor").exists());
    }
}

/// Streams open on the built-in `GZ  ` procedure, as `io ls` reports them.
fn gz_streams(daemon: &Daemon) -> u32 {
    daemon
        .client()
        .io_list()
        .unwrap()
        .into_iter()
        .find(|p| p.code == "GZ  ")
        .unwrap()
        .open_streams
}

#[test]
fn a_client_that_disconnects_mid_stream_has_its_streams_closed() {
    let daemon = Daemon::start(&[xor_manifest("isolated")], &[], &[]);
    let dir = daemon.dir.path().to_path_buf();
    let gz = format!("{}/half.gz+", dir.display());
    {
        let mut client = daemon.client();
        let stream = client.io_open(&gz, IoMode::Write).unwrap();
        client
            .io_write(&stream, &pattern(1, 500_000), false)
            .unwrap();
        assert_eq!(gz_streams(&daemon), 1);
        drop(client); // no close: the connection just goes away
    }
    // The daemon closes (finishes) the stream: the count drops and the gzip file is whole.
    wait_until(
        "the abandoned stream to close",
        Duration::from_secs(10),
        || gz_streams(&daemon) == 0,
    );
    let status = Command::new("gzip")
        .arg("-t")
        .arg(dir.join("half.gz"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the abandoned gzip stream was not finished"
    );
    // A provider's stream too: what the vanished client wrote through it is there for
    // the next client.
    let xor = format!("{}/a.xor+", dir.display());
    {
        let mut client = daemon.client();
        let stream = client.io_open(&xor, IoMode::Write).unwrap();
        client.io_write(&stream, b"abc", false).unwrap();
    }
    let mut client = daemon.client();
    assert_eq!(read_all(&mut client, &xor).unwrap(), b"abc");
}

#[test]
fn a_procedure_provider_that_crashes_mid_stream_fails_its_streams_clearly() {
    let daemon = Daemon::start(&[xor_manifest("isolated")], &[], &[]);
    let dir = daemon.dir.path().to_path_buf();
    let name = format!("{}/big.xor+", dir.display());
    let mut client = daemon.client();
    write_all(&mut client, &name, &pattern(3, 5_000_000)).unwrap();
    let mut stream = client.io_open(&name, IoMode::Read).unwrap();
    let mut buf = Vec::new();
    assert!(client.io_read(&mut stream, &mut buf, 1 << 16).unwrap() > 0);
    let pid = daemon.status("xor").pid.expect("the worker runs");
    // SAFETY: kill sends a signal to the worker the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until("the worker to be gone", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // Reads answered before the crash (the client reads ahead) still hand out their bytes.
    let err = (0..=READ_AHEAD)
        .find_map(|_| client.io_read(&mut stream, &mut buf, 1 << 16).err())
        .expect("a read after the crash fails");
    assert!(
        matches!(err, ClientError::ProviderFailed { .. }) && err.to_string().contains("crashed"),
        "{err}"
    );
    assert!(err.to_string().contains("big.xor+"), "{err}");
    // The stream is gone for good; a new open restarts the provider.
    let _ = client.io_close(stream);
    assert_eq!(read_all(&mut client, &name).unwrap().len(), 5_000_000);
    // And the daemon served everyone else all along.
    client.ping().unwrap();
}

#[test]
fn plain_files_are_passed_as_descriptors_and_everything_else_streams() {
    let daemon = Daemon::start(&[], &[], &[]);
    let dir = daemon.dir.path().to_path_buf();
    let plain = dir.join("plain.bin");
    let data = pattern(9, 2_500_000);
    std::fs::write(&plain, &data).unwrap();
    let mut client = daemon.client();
    let stream = client
        .io_open(plain.to_str().unwrap(), IoMode::Read)
        .unwrap();
    assert!(
        stream.is_direct(),
        "a plain file should come back as a descriptor"
    );
    assert_eq!(stream.size, Some(data.len() as u64));
    client.io_close(stream).unwrap();
    assert!(read_all(&mut client, plain.to_str().unwrap()).unwrap() == data);
    // Through a procedure, the bytes stream (here: write a tar member, read it back).
    let member = format!("{}/a.tar+dir/plain.bin", dir.display());
    write_all(&mut client, &member, &data).unwrap();
    let stream = client.io_open(&member, IoMode::Read).unwrap();
    assert!(!stream.is_direct());
    client.io_close(stream).unwrap();
    assert!(read_all(&mut client, &member).unwrap() == data);
    // Hostile and unknown names get exact errors.
    let err = client
        .io_open(
            &format!("{}/a.tar+../../etc/shadow", dir.display()),
            IoMode::Read,
        )
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest { .. }), "{err}");
    assert!(err.to_string().contains("escapes its container"), "{err}");
    let err = client
        .io_open(&format!("{}/a.zzz+x", dir.display()), IoMode::Read)
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no I/O procedure is installed for \"ZZZ \""),
        "{err}"
    );
}

/// A stream read through the connection (descriptor declined) is read ahead, several
/// reads in flight: the bytes still come in order, whatever the read size, spliced from a
/// pipe for a binary client and encoded for a JSON one; a seek after reading ahead lands
/// where the caller is; a client that leaves with reads in flight costs no pipe.
#[test]
fn a_stream_read_ahead_comes_in_order_spliced_or_encoded_and_seeks_from_the_caller() {
    use purveyor_client::ConnectOptions;
    use purveyor_protocol::Encoding;
    use std::io::SeekFrom;
    let daemon = Daemon::start(&[], &[], &[]);
    let plain = daemon.dir.path().join("plain.bin");
    let data = pattern(7, 5_000_003);
    std::fs::write(&plain, &data).unwrap();
    let name = plain.to_str().unwrap();
    let read_streamed = |client: &mut Client, max: u32| {
        let mut stream = client.io_open_streamed(name, IoMode::Read).unwrap();
        assert!(!stream.is_direct());
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        while client.io_read(&mut stream, &mut buf, max).unwrap() > 0 {
            assert!(buf.len() <= max as usize, "a read longer than asked");
            out.extend_from_slice(&buf);
        }
        client.io_close(stream).unwrap();
        out
    };
    let pipes = || {
        let host = daemon
            .client()
            .get(
                &"purveyor.host".parse().unwrap(),
                &purveyor_model::InstanceKey::default(),
            )
            .unwrap();
        common::u64_of(&host, "io_pipes")
    };
    let mut binary = daemon.client();
    for max in [READ_CHUNK, 65_536, 5_000] {
        assert!(
            read_streamed(&mut binary, max) == data,
            "binary, reads of {max}"
        );
    }
    let made = pipes();
    assert!(
        (1..=32).contains(&made),
        "the binary client's reads went through {made} pipes"
    );
    let json_options = ConnectOptions::default().encoding(Encoding::Json);
    let mut json = Client::connect_socket(&daemon.socket, &json_options).unwrap();
    assert!(read_streamed(&mut json, 300_000) == data, "json");

    // Three reads taken, more in flight: the host's position is ahead of the caller's.
    let mut stream = binary.io_open_streamed(name, IoMode::Read).unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        binary.io_read(&mut stream, &mut buf, 65_536).unwrap();
    }
    assert_eq!(
        binary.io_seek(&mut stream, SeekFrom::Current(0)).unwrap(),
        196_608
    );
    binary.io_read(&mut stream, &mut buf, 1000).unwrap();
    assert!(buf == data[196_608..197_608]);
    assert_eq!(
        binary.io_seek(&mut stream, SeekFrom::Start(10)).unwrap(),
        10
    );
    binary.io_read(&mut stream, &mut buf, 1000).unwrap();
    assert!(buf == data[10..1010]);
    assert_eq!(
        binary.io_seek(&mut stream, SeekFrom::End(-3)).unwrap(),
        data.len() as u64 - 3
    );
    binary.io_read(&mut stream, &mut buf, 1000).unwrap();
    assert!(buf == data[data.len() - 3..]);
    assert_eq!(binary.io_read(&mut stream, &mut buf, 1000).unwrap(), 0);
    binary.io_close(stream).unwrap();

    // Clients that leave with reads in flight: their pipes are closed or reused.
    for _ in 0..40 {
        let mut leaving = daemon.client();
        let mut stream = leaving.io_open_streamed(name, IoMode::Read).unwrap();
        leaving.io_read(&mut stream, &mut buf, READ_CHUNK).unwrap();
    }
    assert!(
        read_streamed(&mut binary, READ_CHUNK) == data,
        "after the leavers"
    );
    assert!(pipes() <= 32, "{} pipes", pipes());
}

/// The CLI end to end: cp into a procedure and back, cat, io ls --json.
#[test]
fn the_cli_copies_and_cats_through_procedures() {
    let daemon = Daemon::start(&[xor_manifest("isolated")], &[], &[]);
    let dir = daemon.dir.path();
    std::fs::write(dir.join("notes.txt"), "line one\nline two\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["cp", "notes.txt", "notes.xor+"]).0, Some(0));
    assert_eq!(run(&["cp", "notes.xor+", "notes.gz+"]).0, Some(0));
    assert_eq!(
        run(&["cp", "notes.gz+", "pack.tar+docs/notes.txt"]).0,
        Some(0)
    );
    let (code, out, _) = run(&["cat", "pack.tar+docs/notes.txt", "notes.xor+"]);
    assert_eq!(code, Some(0));
    assert_eq!(out, "line one\nline two\nline one\nline two\n");
    let (code, out, _) = run(&["io", "ls", "--json"]);
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["code"], "XOR ");
    let (code, _, err) = run(&["cat", "missing.xor+"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("missing.xor"), "{err}");
}

/// Files are opened with the client's own permissions, whoever the daemon runs as.
/// Needs root (to run a client as another user).
#[test]
fn files_open_with_the_callers_permissions() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running clients as other users needs root");
        return;
    }
    let daemon = Daemon::start(&[], &[], &[]);
    let dir = daemon.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open = dir.join("open.txt");
    std::fs::write(&open, "for everyone\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(BIN)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["cat", open.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "for everyone\n",
        "{out:?}"
    );
    let out = as_nobody(&["cat", secret.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Writing where nobody may write is refused the same way, through a procedure too.
    let out = as_nobody(&[
        "cp",
        open.to_str().unwrap(),
        &format!("{}/x.gz+", dir.display()),
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(!dir.join("x.gz").exists());
    // Root itself still reads it (and the daemon thread's credentials came back).
    assert_eq!(
        read_all(&mut daemon.client(), secret.to_str().unwrap()).unwrap(),
        b"root only\n"
    );
}

/// An external executable (Python, standard library only) serves a global procedure over
/// the JSON provider channel.
#[test]
fn an_external_executable_serves_a_global_procedure() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/providers/python");
    let manifest = std::fs::read_to_string(dir.join("upper.toml"))
        .unwrap()
        .replace(
            "\"upper.py\"",
            &format!("{:?}", dir.join("upper.py").display().to_string()),
        );
    let daemon = Daemon::start(&[("upper", manifest)], &[], &[]);
    let notes = daemon.dir.path().join("notes.up");
    std::fs::write(&notes, "quiet words\n".repeat(20_000)).unwrap();
    let mut client = daemon.client();
    let name = format!("{}+", notes.display());
    let back = read_all(&mut client, &name).unwrap();
    assert!(back == "QUIET WORDS\n".repeat(20_000).as_bytes());
    let err = client.io_open(&name, IoMode::Write).unwrap_err();
    assert!(matches!(err, ClientError::Unsupported { .. }), "{err}");
    let err = client
        .io_open(
            &format!("{}/missing.up+", daemon.dir.path().display()),
            IoMode::Read,
        )
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
    assert!(
        client
            .io_list()
            .unwrap()
            .iter()
            .any(|p| p.code == "UP  " && p.origin.contains("external"))
    );
}
