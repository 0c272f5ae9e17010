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
