//! Providers under control (`docs/lifecycle.md`, "Identity and limits"): a worker runs
//! as the user its manifest names, a leaking provider is stopped at its memory limit and
//! one past its CPU limit is ended, each with a reason naming the limit, while the
//! others carry on. They need root (to run a root daemon that switches users); CI runs as
//! root, elsewhere each says it was skipped.

mod common;

use std::time::Duration;

use common::{Daemon, demo_and_neighbour, is_root, provider_row, root_or_skip, wait_until};

/// `/proc/PID/status`'s line starting with `field`.
fn status_line(pid: u64, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_worker_with_a_user_runs_as_that_user() {
    if !root_or_skip("needs root (a root daemon that switches users)") {
        return;
    }
    let d = Daemon::start(
        &demo_and_neighbour("demo", "isolated", "user = \"nobody\"\n"),
        &[],
        &[],
    );
    let out = d.cli(&["get", "demo.counter", "name=a"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let pid = provider_row(&d, "demo")["pid"].as_u64().expect("a worker");
    assert_eq!(status_line(pid, "Uid:"), "Uid:\t65534\t65534\t65534\t65534");
    assert_eq!(status_line(pid, "Gid:"), "Gid:\t65534\t65534\t65534\t65534");
    assert_eq!(status_line(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
    // Its state directory is its own.
    use std::os::unix::fs::MetadataExt;
    let state = d.dir.path().join("state/demo");
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 65534);
}

#[test]
fn a_leaking_provider_is_stopped_at_its_memory_limit_and_others_carry_on() {
    if !root_or_skip("needs root (a root daemon that switches users)") {
        return;
    }
    let d = Daemon::start(
        &demo_and_neighbour("demo", "isolated", "[limits]\nmemory = \"48MiB\"\n"),
        &[],
        &[],
    );
    assert!(d.cli(&["get", "demo.greeting", "name=x"]).status.success());
    let mut stopped = false;
    for _ in 0..20 {
        let _ = d.cli(&["get", "demo.counter", "name=leak16"]);
        std::thread::sleep(Duration::from_millis(250));
        if provider_row(&d, "demo")["limit_kills"].as_u64() == Some(1) {
            stopped = true;
            break;
        }
    }
    assert!(
        stopped,
        "never stopped: {}\n{}",
        provider_row(&d, "demo"),
        d.log()
    );
    let said = String::from_utf8_lossy(&d.cli(&["providers"]).stdout).into_owned();
    assert!(said.contains("memory limit 48 MiB exceeded"), "{said}");
    // The neighbour was never touched; the provider itself loads again on demand.
    assert!(d.cli(&["get", "demo.greeting", "name=y"]).status.success());
    assert!(d.cli(&["get", "demo.counter", "name=a"]).status.success());
}

#[test]
fn a_provider_past_its_cpu_limit_is_ended_with_the_reason() {
    if !root_or_skip("needs root (a root daemon that switches users)") {
        return;
    }
    let d = Daemon::start(
        &demo_and_neighbour("demo", "isolated", "[limits]\ncpu = \"1s\"\n"),
        &[],
        &[],
    );
    let out = d.cli(&["get", "demo.counter", "name=burn3000"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SIGXCPU"), "{err}");
    wait_until(
        "the limit kill to be counted",
        Duration::from_secs(10),
        || provider_row(&d, "demo")["limit_kills"].as_u64() == Some(1),
    );
    let said = String::from_utf8_lossy(&d.cli(&["providers"]).stdout).into_owned();
    assert!(said.contains("CPU time limit 1s exceeded"), "{said}");
}

#[test]
fn check_says_which_providers_would_run_as_root_and_refuses_misplaced_limits() {
    if !root_or_skip("needs root (a root daemon that switches users)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in demo_and_neighbour("demo", "isolated", "[limits]\nmemory = \"64MiB\"\n") {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("provider demo (isolated) would run as root"),
        "{said}"
    );
    assert!(
        !said.contains("provider greeting"),
        "in-daemon: no process of its own: {said}"
    );
    // Which mechanisms enforce limits here, and why not cgroup v2.
    assert!(
        said.contains("note   limits: rlimits (cpu, open_files, processes) and the host's resident-memory watch (memory); cgroup v2"),
        "{said}"
    );
    // user on an in-daemon provider is refused, naming why.
    let bad = demo_and_neighbour("demo", "isolated", "")[1].1.clone() + "user = \"nobody\"\n";
    std::fs::write(dir.path().join("greeting.toml"), bad).unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("user and limits apply to a provider in a process of its own"),
        "{said}"
    );
}

/// `hits` of `demo.counter name=NAME`: the errno the demo's probe got (0: allowed).
fn probe(d: &Daemon, name: &str) -> u64 {
    let out = d.cli(&["get", "demo.counter", &format!("name={name}"), "--json"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    got["instances"][0]["hits"].as_u64().unwrap()
}

/// A strict sandbox: files outside what the manifest names are refused (EACCES, by
/// Landlock), as are system calls no provider needs (EPERM, by seccomp); the same
/// provider without it opens and calls them. Landlock is checked only where the kernel
/// has it (the worker says which in the daemon's log).
#[test]
fn a_strict_sandbox_refuses_files_outside_its_allowance_and_forbidden_calls() {
    let strict = Daemon::start(
        &demo_and_neighbour(
            "demo",
            "isolated",
            "sandbox = \"strict\"\nsandbox_read = [\"/proc\"]\n",
        ),
        &[],
        &[],
    );
    assert_eq!(probe(&strict, "a"), 1, "it still serves");
    let log = strict.log();
    let landlock = !log.contains("Landlock NOT enforced");
    assert!(log.contains("seccomp filter on"), "{log}");
    if landlock {
        assert_eq!(probe(&strict, "open:/etc/hostname"), libc::EACCES as u64);
        assert_eq!(probe(&strict, "open:/proc/self/status"), 0, "sandbox_read");
    } else {
        eprintln!("this kernel has no Landlock: only the seccomp part is checked");
    }
    assert_eq!(probe(&strict, "unshare"), libc::EPERM as u64);

    let open = Daemon::start(&demo_and_neighbour("demo", "isolated", ""), &[], &[]);
    assert_eq!(probe(&open, "open:/etc/hostname"), 0);
    if is_root() {
        assert_eq!(
            probe(&open, "unshare"),
            0,
            "root may unshare without the sandbox"
        );
    }
}

/// `limits.calls`: past that many calls running at once, a call is refused at once with
/// `limit_exceeded` naming the limit; the one running finishes.
#[test]
fn calls_past_the_concurrency_limit_are_refused() {
    let d = Daemon::start(
        &demo_and_neighbour("demo", "isolated", "[limits]\ncalls = 1\n"),
        &[],
        &[],
    );
    assert_eq!(probe(&d, "a"), 1);
    let socket = d.socket.clone();
    let slow = std::thread::spawn(move || {
        std::process::Command::new(common::BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["get", "demo.counter", "name=burn1500"])
            .output()
            .unwrap()
    });
    wait_until(
        "the slow call to be running",
        Duration::from_secs(10),
        || provider_row(&d, "demo")["in_flight"].as_u64() == Some(1),
    );
    let out = d.cli(&["get", "demo.counter", "name=a"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provider demo has 1 calls running, its limit (limits.calls = 1)"),
        "{err}"
    );
    assert!(slow.join().unwrap().status.success());
    assert_eq!(probe(&d, "a"), 2, "served again once the slow call ended");
}

/// `user = "requestor"`: each caller's requests go to a worker running as that caller,
/// so the provider reaches exactly the files the caller could; users never share a
/// worker.
#[test]
fn a_requestor_provider_runs_as_each_caller_in_a_worker_of_their_own() {
    use std::os::unix::fs::PermissionsExt;
    if !root_or_skip("needs root (a root daemon that switches users)") {
        return;
    }
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), "[namespace.demo]\nread = [\"@local\"]\n").unwrap();
    let d = Daemon::start(
        &demo_and_neighbour("demo", "isolated", "user = \"requestor\"\n"),
        &["--access", policy.path().to_str().unwrap()],
        &[],
    );
    // Let nobody reach the socket; the secret stays root's alone.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let secret = d.dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = format!("name=open:{}", secret.display());
    let errno = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}\n{}", d.log());
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        got["instances"][0]["hits"].as_u64().unwrap()
    };
    assert_eq!(
        errno(d.cli(&["get", "demo.counter", &key, "--json"])),
        0,
        "root opens it"
    );
    let as_nobody = common::as_nobody(&d, &["get", "demo.counter", &key, "--json"]);
    assert_eq!(errno(as_nobody), libc::EACCES as u64, "nobody may not");
    // Two workers, one per user, each running as its user.
    let out = d.cli(&["get", "purveyor.provider", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut uids: Vec<String> = rows["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "demo")
        .filter_map(|r| r["pid"].as_u64())
        .map(|pid| status_line(pid, "Uid:"))
        .collect();
    uids.sort();
    assert_eq!(
        uids,
        ["Uid:\t0\t0\t0\t0", "Uid:\t65534\t65534\t65534\t65534"],
        "{rows}"
    );
    // The daemon does not warn that a requestor provider would run as root.
    assert!(
        !d.log()
            .contains("provider demo (isolated) would run as root"),
        "{}",
        d.log()
    );
}

/// `sandbox = "strict"` on an external provider: the daemon starts it through its
/// trampoline (`purveyor sandbox-exec`), which confines itself and execs the program, so
/// the program reads only what its manifest names. The example Python provider reads
/// `/proc/uptime` on each get: refused without `/proc` in `sandbox_read`, served with it.
#[test]
fn an_external_provider_in_a_strict_sandbox_reads_only_what_its_manifest_names() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/providers/python")
        .canonicalize()
        .unwrap();
    let manifest = |read: &str| {
        (
            "uptime",
            format!(
                "name = \"uptime\"\nhosting = \"external\"\ncommand = [\"python3\", \"{}/uptime.py\"]\nclasses = [\"demo.uptime\"]\ncapabilities = [\"enumerate\", \"get\"]\nsandbox = \"strict\"\nsandbox_read = [\"/usr/bin\", \"/usr/local\", \"{}\"{read}]\n",
                script.display(),
                script.display()
            ),
        )
    };
    let closed = Daemon::start(&[manifest("")], &[], &[]);
    let out = closed.cli(&["get", "demo.uptime"]);
    let log = closed.log();
    assert!(log.contains("seccomp filter on"), "{log}");
    if log.contains("Landlock NOT enforced") {
        eprintln!("this kernel lacks Landlock: only the seccomp part was checked");
        return;
    }
    assert!(!out.status.success(), "read /proc/uptime unsandboxed");
    assert!(
        log.contains("Permission denied: '/proc/uptime'"),
        "the provider should have been refused /proc/uptime:\n{log}"
    );
    let open = Daemon::start(&[manifest(", \"/proc\"")], &[], &[]);
    let out = open.cli(&["get", "demo.uptime", "--json"]);
    assert!(out.status.success(), "{out:?}\n{}", open.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("uptime"));
}
