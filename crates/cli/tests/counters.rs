//! Application counters end to end: publishers (Rust in this process, C built by the
//! tests, 32- and 64-bit), a real daemon that finds their files, and clients.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, Daemon, TMP, class, keyed, u64_of, wait_until};
use purveyor_client::{Client, ClientError};
use purveyor_counters::{CounterSet, CounterType, Unit};
use purveyor_model::{Instance, InstanceKey, Value};

const PUBLISH_C: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/counters/c/publish.c"
);
const READ_C: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/counters/c/read.c"
);

/// Compiles a C example with every warning an error.
fn compile(out: &str, source: &str, flags: &[&str]) -> PathBuf {
    let strict = [
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
    ];
    let all: Vec<&str> = strict.iter().chain(flags).copied().collect();
    common::compile(out, source, &all)
}

/// A daemon whose counters directory is `counters`; killed when dropped.
fn daemon(counters: &Path, grace: &str) -> Daemon {
    Daemon::start(
        &[],
        &[],
        &[
            ("PURVEYOR_COUNTERS", counters.as_os_str()),
            ("PURVEYOR_COUNTERS_GRACE", grace.as_ref()),
        ],
    )
}

/// A C publisher, stopped (and its file removed) when its stdin closes, or killed.
struct CPublisher {
    child: Child,
    stdin: Option<ChildStdin>,
    path: PathBuf,
}

impl CPublisher {
    fn start(exe: &Path, dir: &Path, name: &str) -> CPublisher {
        let mut child = Command::new(exe)
            .arg(dir)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let path = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("publisher said {line:?}"))
            .trim()
            .into();
        CPublisher { child, stdin, path }
    }
}

impl Drop for CPublisher {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instance_key(name: &str) -> InstanceKey {
    keyed("instance", name)
}

fn f64_of(i: &Instance, name: &str) -> f64 {
    match i.get(name) {
        Some(Value::F64(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// Every counter type from a Rust publisher through the daemon, with its formula; sets
/// and instances that appear and go while the daemon runs.
#[test]
fn rust_publisher_through_the_daemon_with_every_counter_type() {
    let counters = tempfile::tempdir().unwrap();
    let d = daemon(counters.path(), "60s");
    let mut c = d.client();
    assert!(matches!(
        c.get(&class("app.shop"), &instance_key("till1")),
        Err(ClientError::NotFound { .. })
    ));

    // Created after the daemon started: found through inotify.
    let set = CounterSet::builder("shop")
        .help("A shop")
        .counter("queue", CounterType::Raw, Unit::Count, "waiting")
        .counter("sales", CounterType::Counter, Unit::Count, "sales")
        .counter("refunds", CounterType::Delta, Unit::Count, "refunds")
        .counter(
            "latency",
            CounterType::Average,
            Unit::Microseconds,
            "per sale",
        )
        .counter("hits", CounterType::Fraction, Unit::Percent, "cache hits")
        .counter("open", CounterType::Elapsed, Unit::Seconds, "since opening")
        .instances(4)
        .create_in(counters.path())
        .unwrap();
    let till = set.instance("till1").unwrap();
    till.counter("queue").unwrap().set(3);
    till.counter("sales").unwrap().add(41);
    till.counter("refunds").unwrap().add(2);
    till.average("latency").unwrap().observe(100);
    till.average("latency").unwrap().observe(300);
    till.fraction("hits").unwrap().set(1, 4);
    let ten_s_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        - 10_000_000_000;
    till.elapsed("open").unwrap().set(ten_s_ago);

    let got = c.get(&class("app.shop"), &instance_key("till1")).unwrap();
    assert_eq!(u64_of(&got, "queue"), 3);
    assert_eq!(u64_of(&got, "sales"), 41);
    assert_eq!(u64_of(&got, "refunds"), 2);
    assert_eq!(f64_of(&got, "latency"), 200.0, "sum / count");
    assert_eq!(u64_of(&got, "latency_sum"), 400);
    assert_eq!(u64_of(&got, "latency_count"), 2);
    assert_eq!(f64_of(&got, "hits"), 25.0, "100 x value / base");
    let open = f64_of(&got, "open");
    assert!((10.0..20.0).contains(&open), "elapsed {open}");
    assert_eq!(got.get("stale"), Some(&Value::Bool(false)));

    let schema = c.describe(&class("app.shop")).unwrap();
    assert_eq!(schema.description(), "A shop");
    let sem = |p: &str| schema.property(p).unwrap().semantic;
    use purveyor_model::Semantic;
    assert_eq!(sem("sales"), Semantic::Counter);
    assert_eq!(sem("refunds"), Semantic::Delta);
    assert_eq!(sem("queue"), Semantic::Gauge);
    assert_eq!(sem("instance"), Semantic::Key);
    let listed = c
        .list_classes(Some(&purveyor_model::NamespacePath::new("app").unwrap()))
        .unwrap();
    assert!(
        listed
            .classes
            .iter()
            .any(|s| s.path().as_str() == "app.shop")
    );

    // An instance added and one removed while the daemon serves.
    let till2 = set.instance("till2").unwrap();
    till2.counter("sales").unwrap().add(9);
    let all = c
        .enumerate(&class("app.shop"), &InstanceKey::new())
        .unwrap();
    assert_eq!(all.len(), 2);
    drop(till);
    let all = c
        .enumerate(&class("app.shop"), &InstanceKey::new())
        .unwrap();
    let names: Vec<_> = all.iter().map(|i| i.get("instance").cloned()).collect();
    assert_eq!(names, [Some(Value::String("till2".into()))]);

    // The set goes with its publisher's handles.
    drop(till2);
    drop(set);
    assert!(matches!(
        c.enumerate(&class("app.shop"), &InstanceKey::new()),
        Err(ClientError::NotFound { .. })
    ));
}

/// A publisher that dies without cleaning up: its set is shown stale, then its file is
/// removed after the grace period.
#[test]
fn a_killed_publisher_leaves_a_stale_file_that_is_removed_after_the_grace() {
    let counters = tempfile::tempdir().unwrap();
    let publish = compile("publish64", PUBLISH_C, &[]);
    let d = daemon(counters.path(), "500ms");
    let mut c = d.client();
    let mut p = CPublisher::start(&publish, counters.path(), "victim");
    let a = c.get(&class("app.victim"), &instance_key("a")).unwrap();
    assert_eq!(u64_of(&a, "requests"), 42);
    assert_eq!(a.get("stale"), Some(&Value::Bool(false)));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    assert!(p.path.exists(), "a killed publisher leaves its file");
    wait_until("the set to show as stale", Duration::from_secs(10), || {
        c.get(&class("app.victim"), &instance_key("a"))
            .is_ok_and(|i| i.get("stale") == Some(&Value::Bool(true)))
    });
    wait_until(
        "the stale file to be removed",
        Duration::from_secs(10),
        || {
            let _ = c.enumerate(&class("app.victim"), &InstanceKey::new());
            !p.path.exists()
        },
    );
    assert!(matches!(
        c.enumerate(&class("app.victim"), &InstanceKey::new()),
        Err(ClientError::NotFound { .. })
    ));
}

/// A broken file is skipped with its reason in the log, and the others are served.
#[test]
fn a_corrupt_file_does_not_stop_the_others() {
    let counters = tempfile::tempdir().unwrap();
    std::fs::write(counters.path().join("junk.counters"), b"not a counter file at all, but long enough to have a header............................................................................................................").unwrap();
    let set = CounterSet::builder("good")
        .counter("n", CounterType::Counter, Unit::Count, "")
        .create_in(counters.path())
        .unwrap();
    set.counter("n").unwrap().add(5);
    let d = daemon(counters.path(), "60s");
    let mut c = d.client();
    let good = c.get(&class("app.good"), &InstanceKey::new()).unwrap();
    assert_eq!(u64_of(&good, "n"), 5);
    assert!(matches!(
        c.get(&class("app.junk"), &InstanceKey::new()),
        Err(ClientError::NotFound { .. })
    ));
    let log = d.log();
    assert!(
        log.contains("junk.counters: not a counter file (its first 8 bytes"),
        "the log names the file and the problem:\n{log}"
    );
}

/// File permissions decide who is served: a 0600 file of root is refused to another user,
/// naming the file, its mode and the caller; 0644 is served.
#[test]
fn file_permissions_are_respected() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let counters = tempfile::tempdir().unwrap();
    std::fs::set_permissions(counters.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let set = CounterSet::builder("private")
        .counter("n", CounterType::Counter, Unit::Count, "")
        .mode(0o600)
        .create_in(counters.path())
        .unwrap();
    set.counter("n").unwrap().add(1);
    // The daemon (root) can read every file; the check is that it serves only what the
    // caller could read. Let another user reach the daemon's socket for this test.
    let d = daemon(counters.path(), "60s");
    for dir in d.socket.ancestors().skip(1).take(1) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .arg("--socket")
            .arg(&d.socket)
            .args(["get", "app.private", "--json"])
            .output()
            .expect("setpriv (util-linux) is needed")
    };
    let out = as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "counter file {} (owner uid 0, gid 0, mode 0600) is not readable by uid 65534",
            set.path().display()
        )),
        "{err}"
    );
    std::fs::set_permissions(set.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 32/64-bit proof: a 32-bit C publisher's file is read by the 64-bit daemon and the
/// 64-bit C reader, and a Rust publisher's file by the 32-bit C reader.
#[test]
#[ignore = "needs gcc-multilib (gcc -m32); .ci/run installs it and runs ignored tests"]
fn files_cross_between_32_and_64_bit_processes() {
    let counters = tempfile::tempdir().unwrap();
    let publish32 = compile("publish32", PUBLISH_C, &["-m32"]);
    let read32 = compile("read32", READ_C, &["-m32"]);
    let read64 = compile("read64", READ_C, &["-m64"]);
    let expected = "a/requests=42\na/queue=7\na/latency=400,2\na/hits=3,4\na/big=4886718345\n\
                    b/requests=5\nb/queue=0\nb/latency=0,0\nb/hits=0,0\nb/big=0\n";

    let p = CPublisher::start(&publish32, counters.path(), "from32");
    let read = |reader: &Path, file: &Path| {
        let out = Command::new(reader).arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(read(&read64, &p.path), expected, "64-bit C reader");
    assert_eq!(read(&read32, &p.path), expected, "32-bit C reader");
    let d = daemon(counters.path(), "60s");
    let mut c = d.client();
    let a = c.get(&class("app.from32"), &instance_key("a")).unwrap();
    assert_eq!(u64_of(&a, "big"), 0x1_2345_6789, "no 32-bit truncation");
    assert_eq!(f64_of(&a, "latency"), 200.0);
    assert_eq!(f64_of(&a, "hits"), 75.0);

    let set = CounterSet::builder("fromrust")
        .counter("requests", CounterType::Counter, Unit::Count, "")
        .counter("latency", CounterType::Average, Unit::Microseconds, "")
        .instances(2)
        .create_in(counters.path())
        .unwrap();
    let i = set.instance("x").unwrap();
    i.counter("requests").unwrap().add(0x2_0000_0001);
    i.average("latency").unwrap().observe(9);
    assert_eq!(
        read(&read32, set.path()),
        "x/requests=8589934593\nx/latency=9,1\n",
        "a Rust publisher's file read by a 32-bit C reader"
    );
    drop(p);
    let mut stdin_closed = CPublisher::start(&publish32, counters.path(), "tidy");
    let path = stdin_closed.path.clone();
    stdin_closed.stdin.take().unwrap().flush().unwrap();
    stdin_closed.child.wait().unwrap();
    assert!(
        !path.exists(),
        "a publisher that exits normally removes its file"
    );
}

const MMV_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mmv");
const MMV_WRITER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/counters/pcp/mmv_writer.c"
);

/// A daemon whose PCP MMV directory is `mmv` (and whose counters directory is empty).
fn daemon_with_mmv(mmv: &Path) -> (Daemon, tempfile::TempDir) {
    let counters = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &[],
        &[],
        &[
            ("PURVEYOR_COUNTERS", counters.path().as_os_str()),
            ("PURVEYOR_MMV", mmv.as_os_str()),
        ],
    );
    (d, counters)
}

/// What the MMV writer (`examples/counters/pcp/mmv_writer.c`) publishes, as served.
fn check_mmv(c: &mut Client, name: &str, big: &str) {
    let one = c
        .get(&class(&format!("app.{name}")), &InstanceKey::new())
        .unwrap();
    assert_eq!(u64_of(&one, "requests"), 42);
    assert_eq!(f64_of(&one, "temperature"), 21.5);
    assert_eq!(one.get("version"), Some(&Value::String("1.2.3".into())));
    assert_eq!(u64_of(&one, big), 0x1_2345_6789);
    let schema = c.describe(&class(&format!("app.{name}"))).unwrap();
    use purveyor_model::Semantic;
    assert_eq!(
        schema.property("requests").unwrap().semantic,
        Semantic::Counter
    );
    assert_eq!(
        schema.property("version").unwrap().semantic,
        Semantic::Discrete
    );
    assert_eq!(
        schema.property(big).unwrap().unit,
        purveyor_model::Unit::Bytes
    );
    let queues = c
        .enumerate(&class(&format!("app.{name}.indom1")), &InstanceKey::new())
        .unwrap();
    let depth: Vec<_> = queues
        .iter()
        .map(|i| (i.get("instance").cloned(), i.get("queue_depth").cloned()))
        .collect();
    assert_eq!(
        depth,
        [
            (Some(Value::String("fast".into())), Some(Value::I64(3))),
            (Some(Value::String("slow".into())), Some(Value::I64(-2))),
        ]
    );
}

const LONG_NAME: &str = "a_metric_with_a_name_that_is_longer_than_sixty_three_bytes_for_v";

/// Checked-in files written by PCP's libpcp_mmv (format versions 1 and 2) are served; a
/// truncated one is refused with its reason and does not stop the others.
#[test]
fn pcp_mmv_files_are_served_read_only() {
    let mmv = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(MMV_FIXTURES).join("pcp-v1"),
        mmv.path().join("pvone"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(MMV_FIXTURES).join("pcp-v2"),
        mmv.path().join("pvtwo"),
    )
    .unwrap();
    let v1 = std::fs::read(Path::new(MMV_FIXTURES).join("pcp-v1")).unwrap();
    std::fs::write(mmv.path().join("broken"), &v1[..v1.len() / 2]).unwrap();
    let (d, _counters) = daemon_with_mmv(mmv.path());
    let mut c = d.client();
    check_mmv(&mut c, "pvone", "big");
    check_mmv(&mut c, "pvtwo", LONG_NAME);
    assert!(matches!(
        c.get(&class("app.broken"), &InstanceKey::new()),
        Err(ClientError::NotFound { .. })
    ));
    let log = d.log();
    assert!(
        log.contains("broken: section") && log.contains("lies outside the file's"),
        "the log names the file and the problem:\n{log}"
    );
}

/// A file written now by PCP's own library, built by this test against libpcp-mmv1-dev.
#[test]
#[ignore = "needs libpcp-mmv1-dev and libpcp3-dev; .ci/run installs them and runs ignored tests"]
fn a_file_written_by_pcps_library_is_served() {
    let writer = {
        let dir = Path::new(TMP).join(format!("counters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("mmv_writer");
        let status = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&out)
            .arg(MMV_WRITER)
            .args(["-lpcp_mmv", "-lpcp"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building the MMV writer against libpcp_mmv failed"
        );
        out
    };
    let tmp = tempfile::tempdir().unwrap();
    let mmv = tmp.path().join("mmv");
    std::fs::create_dir(&mmv).unwrap();
    let (d, _counters) = daemon_with_mmv(&mmv);
    let mut c = d.client();
    for (name, args, big) in [
        ("live1", &[][..], "big"),
        ("live2", &["long"][..], LONG_NAME),
    ] {
        let mut w = Command::new(&writer)
            .arg(name)
            .args(args)
            .env("PCP_TMP_DIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(w.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        check_mmv(&mut c, name, big);
        drop(w.stdin.take());
        w.wait().unwrap();
    }
    let version = |name: &str| {
        let b = std::fs::read(mmv.join(name)).unwrap();
        u32::from_le_bytes(b[4..8].try_into().unwrap())
    };
    assert_eq!((version("live1"), version("live2")), (1, 2));
}
