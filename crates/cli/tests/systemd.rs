//! Under systemd: socket activation with systemd's own `systemd-socket-activate` (which
//! passes a listening socket the way systemd does), and readiness notification read from a
//! `NOTIFY_SOCKET` the test binds. `.ci/run` installs systemd for the first.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, wait_until};
use purveyor_client::{Client, ConnectOptions};

/// Stops the child by its pid when the test ends, however it ends.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child this test started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = common::wait_child(&mut self.0, Duration::from_secs(5));
    }
}

/// The daemon adopts the socket systemd passes (LISTEN_FDS), serves on it, and leaves
/// the file alone when it stops: the socket is systemd's.
#[test]
fn the_daemon_adopts_a_socket_passed_by_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .args([BIN, "serve", "--providers"])
        .arg(dir.path().join("none"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd; .ci/run installs it)");
    let mut child = Stopped(child);
    wait_until("the activation socket", Duration::from_secs(10), || {
        socket.exists()
    });
    // The first connection makes systemd-socket-activate exec the daemon on it.
    let mut client = Client::connect_socket(&socket, &ConnectOptions::default()).unwrap();
    let status = client.status().unwrap();
    assert_eq!(
        status.pid,
        child.0.id(),
        "the daemon is the activated process"
    );
    drop(client);
    // SAFETY: kill with the pid of the child started above.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let exit = common::wait_child(&mut child.0, Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(socket.exists(), "the daemon removed systemd's socket");
}

/// `READY=1` (with a status naming the socket) once the daemon serves, `STOPPING=1` when
/// it begins to stop.
#[test]
fn the_daemon_tells_systemd_it_is_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("d.sock");
    let child = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--providers")
        .arg(dir.path().join("none"))
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Stopped(child);
    let mut buf = [0u8; 512];
    let n = listener.recv(&mut buf).expect("no READY=1 within 10 s");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    assert!(
        message.contains(&format!("STATUS=serving on {}", socket.display())),
        "{message}"
    );
    // Ready means serving.
    Client::connect_socket(&socket, &ConnectOptions::default())
        .unwrap()
        .ping()
        .unwrap();
    // SAFETY: kill with the pid of the child started above.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let n = listener.recv(&mut buf).expect("no STOPPING=1 within 10 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let exit = common::wait_child(&mut child.0, Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
}

/// The units under `dist/systemd/` pass `systemd-analyze verify` without a warning (with
/// this build's binary in `ExecStart=`).
#[test]
fn the_units_verify() {
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["purveyor.service", "purveyor.socket"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        let text = text.replace("/usr/bin/purveyor", BIN);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("purveyor.socket"))
        .arg(dir.path().join("purveyor.service"))
        .output()
        .expect("systemd-analyze (package systemd; .ci/run installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`) the daemon logs
/// to the journal's socket with structured fields; checked in a mount namespace of its
/// own whose `/run/systemd/journal/socket` is a listener this test starts. Needs root.
#[test]
fn under_systemd_the_daemon_logs_structured_fields_to_the_journal() {
    if !common::root_or_skip("a mount namespace needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    let script = r#"
set -eu
trap 'kill $DAEMON $LISTENER 2>/dev/null || true' EXIT
DAEMON=; LISTENER=
mkdir -p /run/systemd/journal
mount -t tmpfs tmpfs /run/systemd/journal
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
open(sys.argv[1] + ".ready", "w").close()
def fields(d):
    # The native protocol: KEY=VALUE\n, or KEY\n, a 64-bit LE length, VALUE, \n.
    out, i = [], 0
    while i < len(d):
        nl = d.index(b"\n", i)
        line = d[i:nl]
        if b"=" in line:
            out.append(line)
            i = nl + 1
        else:
            n = int.from_bytes(d[nl + 1:nl + 9], "little")
            out.append(line + b"=" + d[nl + 9:nl + 9 + n].replace(b"\n", b" "))
            i = nl + 9 + n + 1
    return b"\n".join(out)
with open(sys.argv[1], "ab") as f:
    while True:
        f.write(fields(s.recv(65536)) + b"\n--\n")
        f.flush()
' "$DIR/journal" &
LISTENER=$!
for _ in $(seq 250); do [ -e "$DIR/journal.ready" ] && break; sleep 0.02; done
: >"$DIR/stderr"
JOURNAL_STREAM=$(stat -c '%d:%i' "$DIR/stderr") "$BIN" serve --socket "$DIR/s.sock" \
    --providers "$DIR/p" 2>>"$DIR/stderr" &
DAEMON=$!
for _ in $(seq 250); do [ -S "$DIR/s.sock" ] && break; sleep 0.02; done
"$BIN" --socket "$DIR/s.sock" get purveyor.host >/dev/null
kill "$DAEMON"; wait "$DAEMON" || true
"#;
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("DIR", dir.path())
        .env("BIN", BIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut child = Stopped(child);
    let status = common::wait_child(&mut child.0, Duration::from_secs(30));
    assert!(status.success(), "the script failed: {status:?}");
    let journal = std::fs::read_to_string(dir.path().join("journal")).unwrap_or_default();
    assert!(
        journal.contains("MESSAGE=purveyor daemon listening"),
        "{journal}"
    );
    assert!(journal.contains("SYSLOG_IDENTIFIER=purveyor"), "{journal}");
    assert!(journal.contains("PRIORITY=5"), "{journal}");
    let socket = format!("F_SOCKET={}", dir.path().join("s.sock").display());
    assert!(journal.contains(&socket), "structured fields: {journal}");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!stderr.contains("purveyor daemon listening"), "{stderr}");
}
