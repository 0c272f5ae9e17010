//! A hostile local user against a root daemon whose socket every user may connect to
//! (`docs/security.md`, "Threat model"). Each test runs the attacker as `nobody`
//! (`setpriv --reuid=65534 --regid=65534 --clear-groups`) and is named after what broke
//! before. They need root (to be root's daemon and to become `nobody`); CI runs as root,
//! and elsewhere each says it was skipped.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{BIN, Daemon, as_nobody, class, wait_until};

const NOBODY: u32 = 65534;

/// The system's Python, which `nobody` can run (a user's pyenv under /root is not).
const PYTHON: &str = "/usr/bin/python3";

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "skipped: a hostile-user test needs root (to run a root daemon and become nobody)"
        );
    }
    root
}

/// A root daemon whose socket `nobody` can reach (directory 0755, socket 0666), as
/// `docs/security.md` describes a system daemon.
fn world_daemon(
    manifests: &[(&str, String)],
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Daemon {
    let daemon = Daemon::start(manifests, args, env);
    chmod(daemon.dir.path(), 0o755);
    chmod(&daemon.socket, 0o666);
    daemon
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// `purveyor ARGS` as root.
fn as_root(daemon: &Daemon, args: &[&str]) -> Output {
    daemon.cli(args)
}

fn refused(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what}: was allowed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Permission denied") || stderr.contains("access denied"),
        "{what}: refused, but not for permissions: {stderr}"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Directories for one attack: `root_only` (root, 0700), `shared` (root, 0755, holding a
/// world-readable payload) and `mine` (nobody's own).
struct Ground {
    root_only: PathBuf,
    shared: PathBuf,
    mine: PathBuf,
    payload: String,
}

fn ground(daemon: &Daemon) -> Ground {
    let base = daemon.dir.path();
    let root_only = base.join("root-only");
    let shared = base.join("shared");
    let mine = base.join("mine");
    for (dir, mode) in [(&root_only, 0o700), (&shared, 0o755), (&mine, 0o755)] {
        std::fs::create_dir(dir).unwrap();
        chmod(dir, mode);
    }
    chown(&mine, NOBODY, NOBODY);
    let payload = shared.join("payload");
    std::fs::write(&payload, "attacker's bytes\n").unwrap();
    chmod(&payload, 0o644);
    Ground {
        root_only,
        shared,
        mine,
        payload: payload.to_str().unwrap().to_string(),
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Finding 1: `TAR ` wrote its archive when the stream was closed, and the close ran as
/// root: nobody created root-owned archives in root-only directories, appended to a
/// root-only archive, and wrote through symlinks it planted. Every file-system effect of
/// a procedure (open, write-at-close, delete, rename; built-in or a library's, in the
/// daemon or in a worker) now runs as the caller.
#[test]
fn tar_writes_at_close_ran_as_root() {
    if !root() {
        return;
    }
    let xor = common::workspace_library("libpurveyor_example_xor.so", "purveyor-example-xor");
    let manifest = format!(
        "name = \"xor\"\nhosting = \"isolated\"\nlibrary = {:?}\nio = [\"XOR \"]\n",
        xor.display()
    );
    let daemon = world_daemon(&[("xor", manifest)], &[], &[]);
    let g = ground(&daemon);

    // A new archive in a root-only directory.
    let new = g.root_only.join("new.tar");
    let out = as_nobody(&daemon, &["cp", &g.payload, &format!("{}+member", s(&new))]);
    refused(&out, "create an archive in a root-only directory");
    assert!(!new.exists(), "the archive was created");

    // A member appended to root's 0600 archive.
    let vault = g.shared.join("vault.tar");
    let out = as_root(&daemon, &["cp", &g.payload, &format!("{}+a", s(&vault))]);
    assert!(out.status.success(), "{out:?}");
    chmod(&vault, 0o600);
    let before = std::fs::read(&vault).unwrap();
    let out = as_nobody(&daemon, &["cp", &g.payload, &format!("{}+b", s(&vault))]);
    refused(&out, "append to root's 0600 archive");
    assert_eq!(
        std::fs::read(&vault).unwrap(),
        before,
        "root's archive changed"
    );

    // Through symlinks nobody planted in its own directory: to a new root-only name and
    // to an existing root-only file.
    let planted = g.root_only.join("planted");
    let victim = g.root_only.join("victim");
    std::fs::write(&victim, "root's\n").unwrap();
    chmod(&victim, 0o600);
    for (link, target) in [("new.tar", &planted), ("old.tar", &victim)] {
        let link = g.mine.join(link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        chown(&link, NOBODY, NOBODY);
        let out = as_nobody(&daemon, &["cp", &g.payload, &format!("{}+x", s(&link))]);
        refused(&out, "write an archive through a planted symlink");
    }
    assert!(
        !planted.exists(),
        "a root-only file was created through a symlink"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");

    // Member names that would forge lines in a listing, or climb out of the archive.
    for member in ["a\nb", "../../etc/x"] {
        let out = as_nobody(
            &daemon,
            &[
                "cp",
                &g.payload,
                &format!("{}/own.tar+{member}", s(&g.mine)),
            ],
        );
        assert!(
            !out.status.success(),
            "member {member:?} was written: {out:?}"
        );
        let said = text(&out);
        assert!(
            said.contains("member name") || said.contains("escapes its container"),
            "{said}"
        );
    }
    // In its own directory, nobody writes archives as itself.
    let own = g.mine.join("own.tar");
    let out = as_nobody(&daemon, &["cp", &g.payload, &format!("{}+ok", s(&own))]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&own).unwrap().uid(), NOBODY);

    // A library's procedure in an isolated worker (root), writing at open and close.
    let out = as_nobody(
        &daemon,
        &["cp", &g.payload, &format!("{}/x.xor+", s(&g.root_only))],
    );
    refused(&out, "write through a library procedure in a worker");
    assert!(!g.root_only.join("x.xor").exists());

    // Delete and rename of root's files, through the client library as nobody's
    // connection would do them: refused for nobody (checked by the CLI-less path below).
    let victim_name = s(&victim).to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c"])
        .arg(PY_CLIENT.to_string() + &format!(
            "c = connect({sock:?})\nprint(ask(c, {{'io_delete': {{'name': {victim:?}}}}}))\nprint(ask(c, {{'io_rename': {{'from': {victim:?}, 'to': {to:?}}}}}))\n",
            sock = s(&daemon.socket),
            victim = victim_name,
            to = s(&g.mine.join("stolen")),
        ))
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(said.matches("access_denied").count(), 2, "{said}");
    assert!(victim.exists());
}

/// Finding 2: `MEM ` buffers were one table for every user, never freed: nobody read and
/// overwrote root's buffers and parked hundreds of MiB in the daemon. Now each user has
/// their own buffers, a quota, and idle buffers are freed.
#[test]
fn mem_buffers_were_shared_by_every_user_and_never_freed() {
    if !root() {
        return;
    }
    let daemon = world_daemon(&[], &["--limit", "io.mem_per_user=1MiB"], &[]);
    let g = ground(&daemon);
    let secret = g.root_only.join("secret");
    std::fs::write(&secret, "root's token\n").unwrap();
    let vault = "/vault.mem+token";
    assert!(
        as_root(&daemon, &["cp", s(&secret), vault])
            .status
            .success()
    );

    let out = as_nobody(&daemon, &["cat", vault]);
    assert!(!out.status.success(), "nobody read root's buffer: {out:?}");
    assert!(text(&out).contains("memory buffer"), "{}", text(&out));
    let out = as_nobody(&daemon, &["cp", &g.payload, vault]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        as_nobody(&daemon, &["cat", vault]).stdout,
        b"attacker's bytes\n"
    );
    assert_eq!(as_root(&daemon, &["cat", vault]).stdout, b"root's token\n");

    // Over the quota: refused, naming it; nothing kept for it.
    let big = g.shared.join("big");
    std::fs::write(&big, vec![7u8; 2 << 20]).unwrap();
    chmod(&big, 0o644);
    let out = as_nobody(&daemon, &["cp", s(&big), "/park.mem+1"]);
    assert!(!out.status.success(), "{out:?}");
    let said = text(&out);
    assert!(
        said.contains("uid 65534's quota (io.mem_per_user)") && said.contains("1 MiB"),
        "{said}"
    );
    let held = u64_of_host(&daemon, "io_mem_bytes");
    assert!(
        held < 1 << 20,
        "the daemon holds {held} bytes of MEM buffers"
    );

    // Idle buffers go: a daemon whose buffers idle out after a second.
    let quick = world_daemon(&[], &["--limit", "io.mem_idle=1s"], &[]);
    let out = as_nobody(&quick, &["cp", &g.payload, "/left.mem+behind"]);
    assert!(out.status.success(), "{out:?}");
    assert!(u64_of_host(&quick, "io_mem_buffers") >= 1);
    wait_until(
        "the idle buffer to be freed",
        Duration::from_secs(10),
        || u64_of_host(&quick, "io_mem_buffers") == 0 && u64_of_host(&quick, "io_mem_bytes") == 0,
    );
}

fn u64_of_host(daemon: &Daemon, property: &str) -> u64 {
    let host = daemon
        .client()
        .get(
            &class("purveyor.host"),
            &purveyor_model::InstanceKey::default(),
        )
        .unwrap();
    common::u64_of(&host, property)
}

/// Finding 3: supplementary groups were read from `/proc/PID/status` at request time, so a
/// connection was granted the groups of whatever process held its pid then. A client
/// that connects with no groups and then gains group 42 (standing for another process
/// taking its pid) must keep the groups it connected with: no access to a root:42 0640
/// file, nor to a namespace only group 42 may read.
#[test]
fn groups_were_read_from_proc_at_request_time() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("access.toml");
    std::fs::write(&policy, "[namespace.system]\nread = [\"gid:42\"]\n").unwrap();
    let daemon = world_daemon(&[], &["--access", s(&policy)], &[]);
    let file = daemon.dir.path().join("group42.txt");
    std::fs::write(&file, "for group 42\n").unwrap();
    chown(&file, 0, 42);
    chmod(&file, 0o640);
    // The client: connects as nobody with no groups (keeping root as its saved uid), then
    // takes group 42 and asks.
    let script = PY_CLIENT.to_string()
        + &format!(
            r#"
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 0)
c = connect({sock:?})
os.seteuid(0)
os.setgroups([42])
os.seteuid(65534)
assert os.getgroups() == [42] and os.geteuid() == 65534
print(ask(c, {{"io_open": {{"name": {file:?}, "mode": "read", "pass_fd": False}}}}))
print(ask(c, {{"get": {{"class": "system.load", "key": {{}}}}}}))
"#,
            sock = s(&daemon.socket),
            file = s(&file),
        );
    let out = Command::new(PYTHON).arg("-c").arg(script).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("access_denied").count(), 2, "{said}");
    // The same request from a process that had group 42 when it connected is granted,
    // so the refusals above are about when the groups were read.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--groups=42", PYTHON, "-c"])
        .arg(PY_CLIENT.to_string() + &format!(
            "c = connect({sock:?})\nprint(ask(c, {{'get': {{'class': 'system.load', 'key': {{}}}}}}))\n",
            sock = s(&daemon.socket)
        ))
        .output()
        .unwrap();
    let said = text(&out);
    assert!(said.contains("load1"), "{said}");
}

/// A minimal client of the JSON protocol (docs/protocol.md), for the tests that need one
/// process to change its credentials between connecting and asking.
const PY_CLIENT: &str = r#"
import json, os, socket, struct
def send(c, obj):
    data = json.dumps(obj).encode()
    try:
        c.sendall(struct.pack("<I", len(data)) + data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # a refused connection: its goodbye is still there to read
def recv(c):
    header = b""
    while len(header) < 4:
        more = c.recv(4 - len(header))
        if not more:
            raise SystemExit("closed")
        header += more
    (n,) = struct.unpack("<I", header)
    data = b""
    while len(data) < n:
        data += c.recv(n - len(data))
    return json.loads(data)
def connect(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    c.connect(path)
    send(c, {"protocol": 1, "minor": 4, "encoding": "json", "client": "hostile-test"})
    recv(c)
    return c
ids = [0]
def ask(c, request):
    ids[0] += 1
    send(c, {"request": {"id": ids[0], "request": request}})
    return json.dumps(recv(c))
"#;

/// The processes a provider started, each with its start time when the test first saw
/// it (`None`: already gone), so a reused pid is not taken for it. Killed when dropped,
/// so a failing test leaves nothing behind.
struct Started(Vec<(u32, Option<u64>)>);

impl Started {
    /// The pids the forker fixture recorded, from line `line` of its file.
    fn read(file: &Path, line: usize) -> Started {
        let text = std::fs::read_to_string(file).unwrap();
        let line = text
            .lines()
            .nth(line)
            .expect("the provider recorded its processes");
        Started(
            line.split_whitespace()
                .map(|p| {
                    let pid = p.parse().unwrap();
                    (pid, start_time(pid))
                })
                .collect(),
        )
    }

    fn running(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(pid, start)| start.is_some() && start_time(*pid) == *start)
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn assert_all_stopped(&self, after: &str) {
        let mut left = Vec::new();
        let stopped = (0..200).any(|_| {
            left = self.running();
            left.is_empty() || {
                std::thread::sleep(Duration::from_millis(50));
                false
            }
        });
        assert!(
            stopped,
            "after {after}, still running: {left:?} (provider, child, grandchild: {:?})",
            self.0
        );
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for pid in self.running() {
            // SAFETY: kill sends a signal to a process this test's provider started
            // (checked by its start time just above).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A live process's start time (field 22 of /proc/PID/stat); `None` when it is gone or a
/// zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn forker_daemon(pids: &Path) -> Daemon {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let manifest = format!(
        "name = \"forker\"\nhosting = \"external\"\ncommand = [\"python3\", {:?}]\nclasses = [\"test.forker\"]\nclear_after = \"1s\"\ncall_timeout = \"1s\"\n",
        dir.join("forker.py").display()
    );
    Daemon::start(
        &[("forker", manifest)],
        &[],
        &[("FORKER_PIDS", pids.as_os_str())],
    )
}

fn mode(m: &str) -> purveyor_model::InstanceKey {
    common::keyed("mode", m)
}

/// Finding 4: a provider's children (and a grandchild in a session of its own) outlived
/// the provider's release, its crash, its kill at a missed deadline, and the daemon's
/// SIGTERM and SIGKILL. Now each provider process runs under a guard that stops
/// everything it started.
#[test]
fn a_providers_children_outlived_it() {
    // This one needs no root: the guard works for any user.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut daemon = forker_daemon(&pids);
    let forker = class("test.forker");
    let mut line = 0;

    // Release (clear_after 1s).
    daemon.client().get(&forker, &mode("plain")).unwrap();
    let started = Started::read(&pids, line);
    line += 1;
    assert_eq!(started.running().len(), 3);
    started.assert_all_stopped("the provider's release");

    // A crash (the provider kills itself with SIGKILL mid-call).
    assert!(daemon.client().get(&forker, &mode("crash")).is_err());
    let started = Started::read(&pids, line);
    line += 1;
    started.assert_all_stopped("the provider's crash");

    // A missed deadline: the host kills the provider.
    let err = daemon.client().get(&forker, &mode("hang")).unwrap_err();
    assert!(err.to_string().contains("1s"), "{err}");
    let started = Started::read(&pids, line);
    line += 1;
    started.assert_all_stopped("the provider's kill at its deadline");

    // The daemon stopped with SIGTERM.
    daemon.client().get(&forker, &mode("plain")).unwrap();
    let started = Started::read(&pids, line);
    line += 1;
    assert_eq!(started.running().len(), 3);
    assert!(daemon.stop(libc::SIGTERM).success());
    started.assert_all_stopped("the daemon's SIGTERM");

    // The daemon killed with SIGKILL.
    daemon.spawn();
    daemon.client().get(&forker, &mode("plain")).unwrap();
    let started = Started::read(&pids, line);
    assert_eq!(started.running().len(), 3);
    daemon.kill();
    started.assert_all_stopped("the daemon's SIGKILL");
}

/// About a thousand idle connections from one user (at `RLIMIT_NOFILE` 1024) locked every
/// other client out. One user may hold `conn.per_user`, everyone `conn.total`; past that
/// a connection is told why and closed, and root still gets in.
#[test]
fn one_users_idle_connections_locked_everyone_out() {
    if !root() {
        return;
    }
    let daemon = world_daemon(
        &[],
        &["--limit", "conn.per_user=5", "--limit", "conn.total=8"],
        &[],
    );
    // nobody opens 7 connections and holds them until its stdin closes.
    let hold = PY_CLIENT.to_string()
        + &format!(
            r#"
import sys
held = []
for i in range(7):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    c.connect({sock:?})
    send(c, {{"protocol": 1, "minor": 8, "encoding": "json", "client": "hold"}})
    answer = recv(c)
    print("goodbye" if "goodbye" in answer else "welcome", json.dumps(answer), flush=True)
    held.append(c)
sys.stdin.read()
"#,
            sock = s(&daemon.socket)
        );
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
        ])
        .arg(hold)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
    let answers: Vec<String> = (0..7).map(|_| lines.next().unwrap().unwrap()).collect();
    let welcomed = answers.iter().filter(|a| a.starts_with("welcome")).count();
    assert_eq!(welcomed, 5, "{answers:#?}");
    let refused = answers.iter().find(|a| a.starts_with("goodbye")).unwrap();
    assert!(
        refused.contains("limit_exceeded") && refused.contains("conn.per_user = 5"),
        "{refused}"
    );
    // Root is still served, and the refusals show in purveyor.host.
    assert_eq!(u64_of_host(&daemon, "connections_refused"), 2);
    // So is another user: nobody's connections did not lock them out.
    let out = as_nobody_uid(&daemon, 1234, &["status"]);
    assert!(out.status.success(), "{out:?}");
    drop(holder.stdin.take());
    let _ = holder.wait();
}

/// `purveyor ARGS` as `uid` (its own group, no supplementary groups).
fn as_nobody_uid(daemon: &Daemon, uid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(BIN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap()
}
