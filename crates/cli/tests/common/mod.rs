//! What the end-to-end tests share: a real daemon (`purveyor serve`) on a temp socket,
//! restartable, always killed when the test ends (and with it, by PDEATHSIG, every
//! provider process it started).

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use purveyor_client::{Client, ConnectOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_purveyor");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// A command the daemon runs under (`ip netns exec NS`), or none.
    prefix: Vec<OsString>,
}

impl Daemon {
    /// Writes `manifests` into a fresh providers directory and starts a daemon on it, with
    /// `args` after `serve` and `env` added. Provider state goes to its `state` directory.
    pub fn start(
        manifests: &[(&str, String)],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        Self::start_under(&[], manifests, args, env)
    }

    /// [`Daemon::start`] with the daemon run by `prefix` (which must exec it, so that its
    /// pid is the daemon's): `["ip", "netns", "exec", NS]`.
    pub fn start_under(
        prefix: &[&str],
        manifests: &[(&str, String)],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let providers = dir.path().join("providers");
        std::fs::create_dir(&providers).unwrap();
        for (name, text) in manifests {
            std::fs::write(providers.join(format!("{name}.toml")), text).unwrap();
        }
        let socket = dir.path().join("d.sock");
        let mut daemon = Daemon {
            socket,
            child: None,
            args: args.iter().map(Into::into).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.into(), v.to_os_string()))
                .collect(),
            prefix: prefix.iter().map(Into::into).collect(),
            dir,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the daemon again (after [`Daemon::kill`]) on the same socket and directory.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["serve", "-v", "--socket"])
            .arg(&self.socket)
            .arg("--providers")
            .arg(self.dir.path().join("providers"))
            .args(&self.args)
            .env("PURVEYOR_WORKER", BIN)
            .env("PURVEYOR_STATE_DIR", self.dir.path().join("state"))
            // Where the C demo provider records its release hook.
            .env(
                "PURVEYOR_DEMO_RELEASED",
                self.dir.path().join("released.log"),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Serving, not just listening: the socket is bound before the host is built (its
        // registry read from the providers directory, its start-up logged), and a bound
        // socket already takes connections into its backlog.
        let deadline = Instant::now() + Duration::from_secs(10);
        let answers = |socket: &Path| {
            Client::connect_socket(socket, &ConnectOptions::default()).and_then(|mut c| c.ping())
        };
        while answers(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `purveyor ARGS` against this daemon, as this process's user.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn client(&self) -> Client {
        Client::connect_socket(&self.socket, &ConnectOptions::default()).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// A provider's status, as `purveyor providers` shows it.
    pub fn status(&self, provider: &str) -> purveyor_protocol::ProviderStatus {
        self.client()
            .providers()
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_str() == provider)
            .unwrap()
    }

    /// Signals the daemon and waits (bounded) for it to exit.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill sends a signal to our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_child(&mut child, Duration::from_secs(20))
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) for a child to exit; kills it and panics after `limit`.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every few milliseconds until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A library built by the workspace next to the `purveyor` binary (built here if not yet,
/// when only this crate's tests were asked for).
pub fn workspace_library(file: &str, package: &str) -> PathBuf {
    let path = Path::new(BIN).with_file_name(file);
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package])
            .status()
            .unwrap();
        assert!(status.success(), "building {package} failed");
    }
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

pub const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const INCLUDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../include");

/// Compiles `source` with `cc` and `flags` (headers from `include/`) into this test
/// process's temp directory.
pub fn compile(out: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = Path::new(TMP).join(format!("cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(out);
    let status = Command::new("cc")
        .args(flags)
        .arg("-I")
        .arg(INCLUDE)
        .arg("-o")
        .arg(&path)
        .arg(source)
        .status()
        .expect("a C compiler (cc) is needed for these tests");
    assert!(status.success(), "cc {flags:?} {source} failed");
    path
}

pub fn class(s: &str) -> purveyor_model::ClassPath {
    purveyor_model::ClassPath::new(s).unwrap()
}

/// The key `PROPERTY=NAME` (a string key).
pub fn keyed(property: &str, name: &str) -> purveyor_model::InstanceKey {
    let mut k = purveyor_model::InstanceKey::new();
    k.insert(
        purveyor_model::Identifier::new(property).unwrap(),
        purveyor_model::Value::String(name.into()),
    );
    k
}

/// The key `name=NAME`.
pub fn named(name: &str) -> purveyor_model::InstanceKey {
    keyed("name", name)
}

pub fn u64_of(i: &purveyor_model::Instance, prop: &str) -> u64 {
    match i.get(prop) {
        Some(purveyor_model::Value::U64(v)) => *v,
        other => panic!("{prop}: {other:?}"),
    }
}

/// One HTTP answer: the status, the headers (names lowercased) and the body.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// An HTTP/1.0 request (so that no server answers in chunks) on loopback, bounded by a
/// 30 s read timeout.
pub fn http(
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The address a daemon started with `--http 127.0.0.1:0` listens on, from its log.
pub fn http_addr(daemon: &Daemon) -> std::net::SocketAddr {
    let mut found = None;
    wait_until(
        "the HTTP gateway to listen",
        Duration::from_secs(10),
        || {
            let log = daemon.log();
            found = log
                .lines()
                .find(|l| l.contains("HTTP gateway listening"))
                .and_then(|l| l.split("127.0.0.1:").nth(1))
                .map(|rest| {
                    rest.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .and_then(|port| port.parse::<u16>().ok());
            found.is_some()
        },
    );
    std::net::SocketAddr::from(([127, 0, 0, 1], found.unwrap()))
}

/// A daemon with both dialog examples (`examples/providers/dialogs`), isolated, with
/// `extra` manifest lines (`call_timeout = "2s"`).
pub fn dialog_daemon(extra: &str) -> Daemon {
    let lib = workspace_library("libpurveyor_dialogs.so", "purveyor-example-dialogs");
    let manifest = |name: &str, classes: &str| {
        format!(
            "name = \"{name}\"\nhosting = \"isolated\"\nlibrary = {lib:?}\nclasses = [{classes}]\ncapabilities = [\"enumerate\", \"get\", \"call\"]\n{extra}\n"
        )
    };
    Daemon::start(
        &[
            ("phone", manifest("phone", "\"phone.line\"")),
            (
                "confirm",
                manifest("confirm", "\"demo.vault\", \"demo.dialog_probe\""),
            ),
        ],
        &[],
        &[],
    )
}

/// `purveyor ARGS` as nobody, with no supplementary groups.
pub fn as_nobody(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--socket",
        ])
        .arg(&daemon.socket)
        .args(args)
        .output()
        .expect("setpriv (util-linux) is needed")
}

/// A tmux session on a private server socket, killed when the test ends.
pub struct Tmux {
    socket: PathBuf,
    name: String,
}

impl Tmux {
    /// Answers the example vault's in-call dialogs for `demo.vault.destroy name=photos`
    /// (yes, the passphrase `purveyor`, Destroy) and returns the screen once the command
    /// printed `EXIT=0`.
    pub fn destroy_photos(&self) -> String {
        self.wait_for("Really destroy photos? [y/N]:");
        self.keys(&["y", "Enter"]);
        self.wait_for("The vault's passphrase (hidden):");
        self.keys(&["purveyor", "Enter"]);
        self.wait_for("[1] Destroy  [2] Cancel:");
        self.keys(&["1", "Enter"]);
        let screen = self.wait_for("EXIT=0");
        assert!(screen.contains("destroyed photos (812 files)"), "{screen}");
        screen
    }

    pub fn start(dir: &std::path::Path, name: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: dir.join(format!("tmux-{name}")),
            name: name.to_string(),
        };
        let status = tmux
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "50",
                "-s",
                name,
                command,
            ])
            .status()
            .expect("tmux is needed for this test (.ci/run installs it)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    pub fn keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.name, "-S", "-100"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded) until the screen shows `text`; panics with the screen if not.
    pub fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

const DEMO_C: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/providers/c/demo.c"
);

/// The C demo provider as `name` (class `demo.counter`, `hosting`, `extra` manifest
/// lines) and the Rust greeting as an in-daemon neighbour (`demo.greeting`).
pub fn demo_and_neighbour(
    name: &'static str,
    hosting: &str,
    extra: &str,
) -> Vec<(&'static str, String)> {
    // Compiled once per test process: tests run on threads of one process, and one
    // compiling over the file while another loads it would fail.
    static DEMO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let demo = DEMO.get_or_init(|| {
        let demo = compile("libdemo_cost.so", DEMO_C, &["-shared", "-fPIC", "-O2"]);
        // Readable by a provider that runs as another user.
        std::fs::set_permissions(
            demo.parent().unwrap(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        demo
    });
    let greeting = workspace_library("libpurveyor_example.so", "purveyor-example-provider");
    vec![
        (
            name,
            format!(
                "name = \"{name}\"\nhosting = \"{hosting}\"\nlibrary = {:?}\nclasses = [\"demo.counter\"]\ncapabilities = [\"enumerate\", \"get\"]\n{extra}",
                demo.display().to_string()
            ),
        ),
        (
            "greeting",
            format!(
                "name = \"greeting\"\nhosting = \"in-daemon\"\nlibrary = {:?}\nclasses = [\"demo.greeting\"]\ncapabilities = [\"enumerate\", \"get\"]\n",
                greeting.display().to_string()
            ),
        ),
    ]
}

/// A provider's row of `purveyor.provider`, as JSON.
pub fn provider_row(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.cli(&["get", "purveyor.provider", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no row for {name}: {all}"))
}

/// Whether the tests run as root (some act as other users, or mount).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// [`is_root`], saying why the test is skipped when not.
pub fn root_or_skip(why: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: {why}");
    }
    root
}

/// A test CA (rcgen) and what it issues: a daemon's certificate for an address, client
/// certificates by common name, written as PEM files into a directory.
pub struct Pki {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Pki {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Writes `FILE.crt` and `FILE.key` into `dir`: a certificate named `cn`, for the
    /// daemon when `sans` names its address, else for a client.
    pub fn issue(&self, dir: &Path, file: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if sans.is_empty() {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let paths = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        paths
    }

    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }
}
