//! The `purveyor` binary as a user runs it.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_purveyor");

/// Runs purveyor with no daemon reachable and no user manifests.
fn purveyor(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PURVEYOR_SOCKET", dir.join("absent.sock"))
        .env("PURVEYOR_PROVIDERS", dir.join("no-providers"))
        .env_remove("PURVEYOR_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A daemon process, killed when dropped (even if the test fails).
struct DaemonProcess(Child);

impl DaemonProcess {
    fn start(dir: &Path, socket: &Path) -> DaemonProcess {
        let child = Command::new(BIN)
            .args(["serve", "--socket"])
            .arg(socket)
            .env("PURVEYOR_PROVIDERS", dir.join("no-providers"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        DaemonProcess(child)
    }

    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill only sends a signal to our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status, log)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn get_works_embedded_with_nothing_started() {
    let dir = tempfile::tempdir().unwrap();
    let o = purveyor(dir.path(), &["get", "system.load", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["class"], "system.load");
    assert!(v["instances"][0]["load1"].as_f64().unwrap() >= 0.0);

    let o = purveyor(dir.path(), &["get", "system.load"]);
    assert!(stdout(&o).contains("load1"), "{}", stdout(&o));

    let o = purveyor(dir.path(), &["status"]);
    assert!(
        stdout(&o).starts_with("host:        embedded"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn errors_have_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let o = purveyor(dir.path(), &["get", "system.nothing"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o),
        "purveyor: no provider serves class system.nothing\n"
    );

    let o = purveyor(dir.path(), &["get", "system.process", "pid=4294967299"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o),
        "purveyor: no instance of system.process with pid=4294967299\n"
    );

    let o = purveyor(dir.path(), &["get", "System.load"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must start with a lowercase ASCII letter"));

    let o = purveyor(
        dir.path(),
        &[
            "--socket",
            dir.path().join("none.sock").to_str().unwrap(),
            "status",
        ],
    );
    assert_eq!(o.status.code(), Some(6));
    assert!(
        stderr(&o).starts_with("purveyor: cannot connect to the daemon at "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_reports_each_broken_manifest_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir(&providers).unwrap();
    std::fs::write(
        providers.join("good.toml"),
        "name = \"good\"\nhosting = \"builtin\"\nbuiltin = \"system\"\nclasses = [\"good.thing\"]\n",
    )
    .unwrap();
    std::fs::write(
        providers.join("bad.toml"),
        "name = \"bad\"\nhosting = \"isolated\"\nclasses = [\"bad.thing\"]\nclear_after = \"often\"\n",
    )
    .unwrap();
    let o = purveyor(dir.path(), &["check", providers.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let bad = providers.join("bad.toml").display().to_string();
    let good = providers.join("good.toml").display().to_string();
    assert_eq!(
        stdout(&o),
        format!(
            "ok     {good} (good, builtin)\n\
             error  {bad}:2:11: field `library`: hosting = \"isolated\" needs a `library` field\n\
             error  {bad}:4:15: field `clear_after`: \"often\" is not a duration (expected number at 0); write it like \"30s\", \"5m\" or \"1h 30m\"\n\
             1 valid, 2 errors\n"
        )
    );
    let o = purveyor(
        dir.path(),
        &["check", providers.to_str().unwrap(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["errors"][1]["line"], 4);
    assert_eq!(v["errors"][1]["field"], "clear_after");
}

#[test]
fn a_bad_manifest_does_not_stop_the_host_serving_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir(&providers).unwrap();
    std::fs::write(providers.join("bad.toml"), "name = \"bad\"\n").unwrap();
    let o = Command::new(BIN)
        .args(["--providers", providers.to_str().unwrap(), "status"])
        .env("PURVEYOR_SOCKET", dir.path().join("absent.sock"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        stdout(&o).contains(&format!(
            "refused:     {}:1:1: field `hosting`: missing field `hosting`",
            providers.join("bad.toml").display()
        )),
        "{}",
        stdout(&o)
    );
    let o = Command::new(BIN)
        .args([
            "--providers",
            providers.to_str().unwrap(),
            "get",
            "system.host",
        ])
        .env("PURVEYOR_SOCKET", dir.path().join("absent.sock"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn daemon_serves_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/p.sock");
    let daemon = DaemonProcess::start(dir.path(), &socket);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let o = Command::new(BIN)
        .args(["status"])
        .env("PURVEYOR_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(
        stdout(&o).starts_with(&format!("host:        daemon on {}", socket.display())),
        "{}",
        stdout(&o)
    );
    let o = Command::new(BIN)
        .args(["get", "system.memory", "--json"])
        .env("PURVEYOR_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(o.status.success());

    // A second daemon must not steal a live socket.
    let o = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("a daemon is already listening on"),
        "{}",
        stderr(&o)
    );

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[test]
fn stale_socket_from_a_crashed_daemon_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let crashed = DaemonProcess::start(dir.path(), &socket);
    drop(crashed); // SIGKILL: the socket file stays behind
    assert!(socket.exists());
    let daemon = DaemonProcess::start(dir.path(), &socket);
    let o = Command::new(BIN)
        .args(["get", "system.load"])
        .env("PURVEYOR_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

#[test]
fn a_closed_pipe_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["get", "system.process"])
        .env("PURVEYOR_SOCKET", dir.path().join("absent.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the output is written
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(err, "");
}

#[test]
fn watch_shows_counters_as_rates() {
    let dir = tempfile::tempdir().unwrap();
    let o = purveyor(
        dir.path(),
        &[
            "watch",
            "system.cpu",
            "cpu=total",
            "--interval",
            "200ms",
            "--count",
            "2",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let rates = &v["instances"][0]["rates"];
        // Over 200 ms, all CPU states together advance by about the number of CPUs.
        let total: f64 = [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ]
        .iter()
        .filter_map(|s| rates[s].as_f64())
        .sum();
        let cpus = std::thread::available_parallelism().unwrap().get() as f64;
        assert!(
            total > 0.3 * cpus && total < 2.0 * cpus,
            "sum of rates {total} for {cpus} cpus"
        );
    }
}

/// Shell completions for bash, zsh and fish name the subcommands; `purveyor man DIR`
/// writes purveyor(1) and a page per subcommand, each a roff page of its own.
#[test]
fn completions_and_manual_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("query") && script.contains("providers"),
            "{shell}"
        );
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let main = std::fs::read_to_string(dir.path().join("purveyor.1")).unwrap();
    assert!(main.contains(".TH purveyor 1"), "{main}");
    let query = std::fs::read_to_string(dir.path().join("purveyor-query.1")).unwrap();
    assert!(
        query.contains(".TH purveyor-query 1") && query.contains("SELECT"),
        "{query}"
    );
    assert!(
        !dir.path().join("purveyor-worker.1").exists(),
        "a hidden command has no page"
    );
}
