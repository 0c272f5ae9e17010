//! Provider hosting and lifecycle, end to end: a real daemon (`purveyor serve`), real
//! provider libraries built by the tests (`cc`) and by the workspace (the Rust example),
//! real worker and external processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;

use common::{BIN, Daemon, class, compile, named, u64_of, wait_until, workspace_library};
use purveyor_client::ClientError;
use purveyor_model::{InstanceKey, ProviderState, Value};

const DEMO_C: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/providers/c/demo.c"
);

/// Compiles `source` with `cc` (once per test process) into the target's temp directory.
fn c_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| compile("libdemo_c.so", DEMO_C, &["-shared", "-fPIC", "-O2"]))
}

fn c_external() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("demo-external", DEMO_C, &["-DPURVEYOR_EXTERNAL", "-O2"]))
}

/// The Rust example provider library, built by the workspace (or built here if not yet).
fn rust_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| workspace_library("libpurveyor_example.so", "purveyor-example-provider"))
}

/// A daemon serving `manifests` (see `common::Daemon`).
fn start(manifests: &[(&str, String)]) -> Daemon {
    Daemon::start(manifests, &[], &[])
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only a process that still runs counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

fn manifest(name: &str, hosting: &str, entry: &str, class: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nhosting = \"{hosting}\"\n{entry}\nclasses = [\"{class}\"]\ncapabilities = [\"enumerate\", \"get\"]\n{extra}\n"
    )
}

/// `result` is a timeout that names `provider` and says `message`.
fn assert_timeout<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    provider: &str,
    message: &str,
) {
    match result {
        Err(ClientError::Timeout {
            provider: named,
            message: said,
        }) => {
            assert_eq!(named.as_deref(), Some(provider));
            assert_eq!(said, message);
        }
        other => panic!("{other:?}"),
    }
}

fn c_manifest(name: &str, hosting: &str, extra: &str) -> String {
    let entry = if hosting == "external" {
        format!("command = [{:?}]", c_external().display().to_string())
    } else {
        format!("library = {:?}", c_library().display().to_string())
    };
    manifest(name, hosting, &entry, "demo.counter", extra)
}

/// The same provider (one C source) through every hosting model answers the same way;
/// only the serving process differs.
#[test]
fn conformance_in_all_three_hosting_models() {
    for hosting in ["in-daemon", "isolated", "external"] {
        let d = start(&[("demo", c_manifest("demo", hosting, ""))]);
        let mut c = d.client();
        let all = c
            .enumerate(&class("demo.counter"), &InstanceKey::new())
            .unwrap();
        let names: Vec<_> = all.iter().map(|i| i.get("name").cloned()).collect();
        assert_eq!(
            names,
            vec![
                Some(Value::String("a".into())),
                Some(Value::String("b".into()))
            ],
            "{hosting}"
        );
        let a = c.get(&class("demo.counter"), &named("a")).unwrap();
        let a2 = c.get(&class("demo.counter"), &named("a")).unwrap();
        assert!(
            u64_of(&a2, "hits") > u64_of(&a, "hits"),
            "{hosting}: hits count"
        );
        match c.get(&class("demo.counter"), &named("nobody")) {
            Err(ClientError::NotFound { .. }) => {}
            other => panic!("{hosting}: {other:?}"),
        }
        let pid = u64_of(&a, "pid") as u32;
        let status = d.status("demo");
        assert_eq!(status.state, ProviderState::Loaded, "{hosting}");
        assert_eq!(status.loads, 1, "{hosting}");
        if hosting == "in-daemon" {
            assert_eq!(pid, d.pid(), "in-daemon runs in the daemon");
            assert_eq!(status.pid, None);
        } else {
            assert_ne!(pid, d.pid(), "{hosting} runs in a process of its own");
            assert_eq!(status.pid, Some(pid), "{hosting}: status shows its pid");
            assert!(alive(pid));
        }
        // JSON and binary encodings of the channel agree with the schema the host checks.
        let schema = c.describe(&class("demo.counter")).unwrap();
        assert_eq!(schema.keys().count(), 1);
    }
}

/// The Rust example library runs unchanged in the daemon and in a worker; a panic in it
/// fails that request only.
#[test]
fn rust_library_in_daemon_and_isolated_and_a_panic_is_an_error() {
    let lib = rust_library().display().to_string();
    for hosting in ["in-daemon", "isolated"] {
        let m = manifest(
            "greeting",
            hosting,
            &format!("library = {lib:?}"),
            "demo.greeting",
            "",
        );
        let d = start(&[("greeting", m)]);
        let mut c = d.client();
        let bob = c.get(&class("demo.greeting"), &named("bob")).unwrap();
        assert_eq!(
            bob.get("message"),
            Some(&Value::String("hello, bob".into()))
        );
        match c.get(&class("demo.greeting"), &named("panic")) {
            Err(ClientError::ProviderFailed { provider, message }) => {
                assert_eq!(provider.as_deref(), Some("greeting"));
                assert!(message.contains("panicked: asked to panic"), "{message}");
            }
            other => panic!("{hosting}: {other:?}"),
        }
        let again = c.get(&class("demo.greeting"), &named("bob")).unwrap();
        assert_eq!(
            u64_of(&again, "greeted"),
            2,
            "{hosting}: same instance after the panic"
        );
        assert_eq!(u64_of(&again, "pid"), u64_of(&bob, "pid"));
    }
}

#[test]
fn abi_mismatch_and_missing_symbol_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.c");
    std::fs::write(
        &wrong,
        "#include \"purveyor/provider.h\"\nint32_t purveyor_provider_install(uint32_t h, const char *n, pv_provider *o) { (void)h; (void)n; o->abi_version = 99; return PV_ERR_ABI; }\n",
    )
    .unwrap();
    let none = dir.path().join("none.c");
    std::fs::write(&none, "int not_a_provider(void) { return 1; }\n").unwrap();
    let wrong_so = compile(
        "libwrong.so",
        wrong.to_str().unwrap(),
        &["-shared", "-fPIC"],
    );
    let none_so = compile("libnone.so", none.to_str().unwrap(), &["-shared", "-fPIC"]);
    let d = start(&[
        (
            "wrong",
            manifest(
                "wrong",
                "in-daemon",
                &format!("library = {:?}", wrong_so.display().to_string()),
                "demo.wrong",
                "",
            ),
        ),
        (
            "none",
            manifest(
                "none",
                "isolated",
                &format!("library = {:?}", none_so.display().to_string()),
                "demo.none",
                "",
            ),
        ),
        (
            "missing",
            manifest(
                "missing",
                "in-daemon",
                "library = \"/nonexistent/libx.so\"",
                "demo.missing",
                "",
            ),
        ),
    ]);
    let mut c = d.client();
    let err = c
        .enumerate(&class("demo.wrong"), &InstanceKey::new())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "library {} speaks provider ABI version 99; this host speaks version 1",
            wrong_so.display()
        )),
        "{text}"
    );
    let text = c
        .enumerate(&class("demo.none"), &InstanceKey::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&format!(
            "library {} does not export purveyor_provider_install",
            none_so.display()
        )),
        "{text}"
    );
    let text = c
        .enumerate(&class("demo.missing"), &InstanceKey::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("provider missing failed to load: cannot load library /nonexistent/libx.so"),
        "{text}"
    );
    // The daemon serves everyone else.
    c.ping().unwrap();
    c.get(&class("system.load"), &InstanceKey::new()).unwrap();
}

/// A provider process that dies mid-call: the waiting client is told which signal or exit
/// status, other providers carry on, and the next request starts a new process.
#[test]
fn crash_mid_call_is_isolated_and_restarts() {
    let d = start(&[("iso", c_manifest("iso", "isolated", ""))]);
    let mut c = d.client();
    let before = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    for (key, expect) in [
        ("crash", "killed by signal 11 (SIGSEGV)"),
        ("abort", "killed by signal 6 (SIGABRT)"),
    ] {
        match c.get(&class("demo.counter"), &named(key)) {
            Err(ClientError::ProviderFailed { provider, message }) => {
                assert_eq!(provider.as_deref(), Some("iso"));
                assert!(
                    message.starts_with("provider iso crashed: worker for provider iso (pid ")
                        && message.contains(expect),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        c.get(&class("system.load"), &InstanceKey::new()).unwrap();
    }
    assert!(!alive(before), "the crashed worker is gone");
    let after = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    assert_ne!(after, before, "a new worker serves the next request");
    let status = d.status("iso");
    assert_eq!(status.crashes, 2);
    assert_eq!(status.loads, 3);
}

#[test]
fn external_exit_status_is_reported() {
    let d = start(&[("ext", c_manifest("ext", "external", ""))]);
    let mut c = d.client();
    match c.get(&class("demo.counter"), &named("exit")) {
        Err(ClientError::ProviderFailed { message, .. }) => {
            assert!(
                message.starts_with("provider ext crashed: external provider ext (pid ")
                    && message.ends_with("exit status 3"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    c.get(&class("demo.counter"), &named("a")).unwrap();
}

#[test]
fn crash_loop_is_quarantined_until_enabled() {
    let d = start(&[("iso", c_manifest("iso", "isolated", ""))]);
    let mut c = d.client();
    for _ in 0..3 {
        assert!(matches!(
            c.get(&class("demo.counter"), &named("crash")),
            Err(ClientError::ProviderFailed { .. })
        ));
    }
    assert_eq!(d.status("iso").state, ProviderState::Quarantined);
    match c.get(&class("demo.counter"), &named("a")) {
        Err(ClientError::ProviderFailed { message, .. }) => assert!(
            message.starts_with("provider iso is quarantined: it crashed 3 times within 1m")
                && message.ends_with("run `purveyor providers enable iso`"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    let out = Command::new(BIN)
        .args(["--socket"])
        .arg(&d.socket)
        .args(["providers", "enable", "iso"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    c.get(&class("demo.counter"), &named("a")).unwrap();
}

/// A call past its deadline: a timeout naming the provider; the worker is killed and a
/// new one serves the next request. An in-daemon provider is marked failed instead.
#[test]
fn deadline_kills_a_hung_worker_and_fails_an_in_daemon_provider() {
    let d = start(&[(
        "iso",
        c_manifest("iso", "isolated", "call_timeout = \"300ms\""),
    )]);
    let mut c = d.client();
    let before = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    assert_timeout(
        c.get(&class("demo.counter"), &named("hang")),
        "iso",
        "provider iso did not answer within 300ms; its process was killed and restarts on next use",
    );
    wait_until("the hung worker to die", Duration::from_secs(5), || {
        !alive(before)
    });
    let after = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    assert_ne!(before, after);
    drop(d);

    let d = start(&[(
        "ind",
        c_manifest("ind", "in-daemon", "call_timeout = \"300ms\""),
    )]);
    let mut c = d.client();
    let asked = Instant::now();
    assert_timeout(
        c.get(&class("demo.counter"), &named("hang")),
        "ind",
        "provider ind did not answer within 300ms; marked failed, since an in-daemon provider cannot be stopped",
    );
    // Answered by the watchdog at the deadline, although the call is still running.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // That connection's thread is stuck in the provider, so the daemon closed it ...
    assert!(c.get(&class("purveyor.host"), &InstanceKey::new()).is_err());
    // ... while a new one is served, and the provider refuses further calls at once.
    let mut fresh = d.client();
    fresh
        .get(&class("purveyor.host"), &InstanceKey::new())
        .unwrap();
    assert!(matches!(
        fresh.get(&class("demo.counter"), &named("a")),
        Err(ClientError::Timeout { .. } | ClientError::ProviderFailed { .. })
    ));
    let status = d.status("ind");
    assert_eq!(status.state, ProviderState::Failed);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("marked failed, since an in-daemon provider cannot be stopped"),
        "{status:?}"
    );
    // Shutdown does not wait for the stuck thread.
    let mut d = d;
    let stopped = Instant::now();
    assert!(d.stop(libc::SIGTERM).success());
    assert!(stopped.elapsed() < Duration::from_secs(15));
}

/// `clear_after = 300ms`: released no earlier than 300 ms after the last request, and
/// soon after; a request inside the window keeps it loaded; the worker really exits and
/// the cleanup entry point ran.
#[test]
fn idle_unload_happens_inside_the_documented_window() {
    let d = start(&[(
        "iso",
        c_manifest("iso", "isolated", "clear_after = \"300ms\""),
    )]);
    let mut c = d.client();
    let pid = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    // Keep it busy for longer than clear_after: it must stay loaded.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        c.get(&class("demo.counter"), &named("a")).unwrap();
    }
    let last = Instant::now();
    // The later reads went on a direct channel to the worker: the host heard of them.
    assert_eq!(c.direct_channels().len(), 1, "{:?}", c.direct_channels());
    assert_eq!(d.status("iso").loads, 1);
    assert_eq!(d.status("iso").unloads, 0);
    wait_until("the idle unload", Duration::from_secs(5), || {
        d.status("iso").state == ProviderState::Registered
    });
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(300),
        "released after {idle:?}, before clear_after"
    );
    assert!(
        idle < Duration::from_millis(600),
        "released after {idle:?}, later than 2 x clear_after"
    );
    wait_until("the worker to exit", Duration::from_secs(5), || !alive(pid));
    let released = std::fs::read_to_string(d.dir.path().join("released.log")).unwrap();
    assert_eq!(released.trim(), format!("released {pid}"));
    assert_eq!(d.status("iso").unloads, 1);
}

/// The live `purveyor worker` processes started under `daemon` (its children's children:
/// each worker runs under a guard).
fn workers_under(daemon: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    let mut found: Vec<u32> = parent
        .iter()
        .filter(|&(&pid, &ppid)| {
            parent.get(&ppid) == Some(&daemon)
                && alive(pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"worker"))
        })
        .map(|(&pid, _)| pid)
        .collect();
    found.sort();
    found
}

/// A daemon starts an isolated worker ahead of need after its first isolated load: the
/// next load (here after the idle unload) runs in that process. With
/// `PURVEYOR_SPARE_WORKER=0` no worker runs while no isolated provider is loaded.
#[test]
fn an_isolated_load_takes_the_spare_worker_started_ahead() {
    for spare in [true, false] {
        let off = [("PURVEYOR_SPARE_WORKER", std::ffi::OsStr::new("0"))];
        let d = Daemon::start(
            &[(
                "iso",
                c_manifest("iso", "isolated", "clear_after = \"300ms\""),
            )],
            &[],
            if spare { &[] } else { &off },
        );
        let pid_of_a = || {
            let mut c = d.client();
            u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32
        };
        let first = pid_of_a();
        wait_until("the idle unload", Duration::from_secs(5), || {
            d.status("iso").state == ProviderState::Registered
        });
        wait_until("the worker to exit", Duration::from_secs(5), || {
            !alive(first)
        });
        if spare {
            wait_until("a spare worker", Duration::from_secs(5), || {
                workers_under(d.pid()).len() == 1
            });
        }
        let waiting = workers_under(d.pid());
        let second = pid_of_a();
        if spare {
            assert_eq!(waiting, [second], "the load did not take the spare");
            assert_ne!(second, first);
        } else {
            assert_eq!(
                waiting,
                Vec::<u32>::new(),
                "a worker ran with the spare turned off"
            );
        }
    }
}

/// User and system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime 14 and stime 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A worker answering a client that reads back to back on a direct channel looks for the
/// next read before blocking (`purveyor_protocol::poll`), for at most the window: once the
/// client stops, the worker uses no CPU, even with the longest window (1 ms).
#[test]
fn a_worker_rests_once_its_direct_client_stops() {
    let d = Daemon::start(
        &[("iso", c_manifest("iso", "isolated", ""))],
        &[],
        &[("PURVEYOR_POLL_US", std::ffi::OsStr::new("1000"))],
    );
    let mut c = d.client();
    let counter = class("demo.counter");
    for _ in 0..2 {
        c.get(&counter, &named("a")).unwrap();
    }
    assert_eq!(c.direct_channels().len(), 1);
    let mut pid = 0;
    for _ in 0..2000 {
        pid = u64_of(&c.get(&counter, &named("a")).unwrap(), "pid");
    }
    std::thread::sleep(Duration::from_millis(50));
    let resting = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    // A worker still polling would use a whole CPU: about 50 ticks. A few are the
    // accounting's noise on a loaded machine (its other threads, ticks landing on it).
    assert!(
        cpu_ticks(pid) <= resting + 5,
        "the worker kept using CPU after its client stopped: {} ticks in 0.5 s",
        cpu_ticks(pid) - resting
    );
}

/// The voluntary context switches of daemon `pid`'s runtime threads so far: how often
/// they went to sleep (each sleep ended by a wake-up).
fn runtime_sleeps(pid: u32) -> u64 {
    let mut sleeps = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "tokio-rt-worker" {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sleeps
}

/// A daemon with `threads` runtime threads whose connections poll for up to 1 ms.
fn polling_daemon(threads: &str) -> Daemon {
    Daemon::start(
        &[],
        &["--threads", threads],
        &[("PURVEYOR_POLL_US", std::ffi::OsStr::new("1000"))],
    )
}

/// On a runtime of two threads, a connection answering back to back by polling takes its
/// socket off the runtime's I/O driver, so the other runtime thread sleeps through its
/// requests. Before, that thread waited in `epoll_wait` on the socket and was woken by
/// every request, only to find it taken (about one sleep and wake per request).
#[test]
fn a_polling_connection_lets_the_idle_runtime_thread_sleep() {
    let d = polling_daemon("2");
    let mut c = d.client();
    let host = class("purveyor.host");
    for _ in 0..100 {
        c.get(&host, &InstanceKey::new()).unwrap();
    }
    const REQUESTS: u64 = 3000;
    // Up to three rounds: other tests running beside this one take the CPUs and make a
    // polling connection give way (and sleep); the behaviour shows in a round they leave
    // alone. Without it every round sleeps more than once per request.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = runtime_sleeps(d.pid());
        for _ in 0..REQUESTS {
            c.get(&host, &InstanceKey::new()).unwrap();
        }
        rounds.push(runtime_sleeps(d.pid()) - before);
        if rounds.last().is_some_and(|&slept| slept < REQUESTS / 4) {
            break;
        }
    }
    assert!(
        rounds.iter().any(|&slept| slept < REQUESTS / 4),
        "the daemon's runtime threads slept {rounds:?} times in rounds of {REQUESTS} back-to-back requests"
    );
    // Once the client stops, the connection waits on its socket again: a request after
    // a pause is answered.
    std::thread::sleep(Duration::from_millis(20));
    c.get(&host, &InstanceKey::new()).unwrap();
}

/// A client asking back to back does not keep a one-thread daemon from everyone else: its
/// polling connection gives the thread back to the runtime every so often (tokio's
/// budget), so another client connects and is answered while the first keeps asking.
#[test]
fn a_client_asking_back_to_back_does_not_starve_another() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let d = polling_daemon("1");
    let host = class("purveyor.host");
    let (stop, asked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let busy = {
        let (stop, asked, host) = (stop.clone(), asked.clone(), host.clone());
        let mut c = d.client();
        std::thread::spawn(move || {
            // Bounded: the test stops it, or 60 s pass.
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                c.get(&host, &InstanceKey::new()).unwrap();
                asked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_until("1000 requests", Duration::from_secs(10), || {
        asked.load(Ordering::Relaxed) >= 1000
    });
    let (done, answered) = std::sync::mpsc::channel();
    let other = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let mut c = purveyor_client::Client::connect_socket(
                &socket,
                &purveyor_client::ConnectOptions::default(),
            )
            .unwrap();
            c.ping().unwrap();
            let _ = done.send(());
        })
    };
    let result = answered.recv_timeout(Duration::from_secs(10));
    let during = asked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(
        result.is_ok(),
        "another client got no answer in 10 s while one asked back to back"
    );
    other.join().unwrap();
    assert!(during > 1000, "the busy client stopped asking");
}

/// After two reads through the daemon, a client reads an isolated provider on a direct
/// channel to its worker: the same answers and errors, and the host counts the calls.
/// Providers not in an isolated worker, and clients that opt out, stay on the daemon.
#[test]
fn isolated_reads_go_on_a_direct_channel() {
    let d = start(&[("iso", c_manifest("iso", "isolated", ""))]);
    let mut c = d.client();
    let counter = class("demo.counter");
    let first = c.get(&counter, &named("a")).unwrap();
    assert!(c.direct_channels().is_empty(), "one read is not enough");
    c.get(&counter, &named("a")).unwrap();
    assert_eq!(
        c.direct_channels(),
        vec![("iso".to_string(), vec![counter.clone()])]
    );
    let direct = c.get(&counter, &named("a")).unwrap();
    assert_eq!(u64_of(&direct, "hits"), u64_of(&first, "hits") + 2);
    assert_eq!(u64_of(&direct, "pid"), u64_of(&first, "pid"));
    let all = c.enumerate(&counter, &InstanceKey::new()).unwrap();
    assert_eq!(all.len(), 2);
    let one = c.enumerate(&counter, &named("b")).unwrap();
    assert_eq!(one.len(), 1);
    match c.get(&counter, &named("nobody")) {
        Err(ClientError::NotFound { message }) => {
            assert_eq!(message, "no instance of demo.counter with name=nobody")
        }
        other => panic!("{other:?}"),
    }
    match c.get(&counter, &InstanceKey::new()) {
        Err(ClientError::InvalidRequest { message }) => {
            assert!(
                message.starts_with("demo.counter is keyed by name"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.direct_channels().len(), 1, "errors keep the channel");
    // Calls on the channel reach the host's statistics (when the worker goes quiet):
    // two through the daemon, four direct (the keyless get was refused before any call).
    wait_until(
        "the host to count direct calls",
        Duration::from_secs(10),
        || d.status("iso").calls >= 6,
    );
    assert_eq!(d.status("iso").calls, 6);
    // A builtin provider has no worker to reach: its reads stay on the daemon.
    for _ in 0..3 {
        c.get(&class("system.load"), &InstanceKey::new()).unwrap();
    }
    assert_eq!(c.direct_channels().len(), 1);
    // A client may opt out.
    let mut plain = purveyor_client::Client::connect_socket(
        &d.socket,
        &purveyor_client::ConnectOptions::default().direct(false),
    )
    .unwrap();
    for _ in 0..3 {
        plain.get(&counter, &named("a")).unwrap();
    }
    assert!(plain.direct_channels().is_empty());
}

/// A client whose reads of `demo.counter` go on a direct channel (its third read did),
/// and the pid of the worker serving them.
fn direct_client(d: &Daemon) -> (purveyor_client::Client, u32) {
    let mut c = d.client();
    let counter = class("demo.counter");
    for _ in 0..2 {
        c.get(&counter, &named("a")).unwrap();
    }
    let pid = u64_of(&c.get(&counter, &named("a")).unwrap(), "pid") as u32;
    assert_eq!(c.direct_channels().len(), 1, "{:?}", c.direct_channels());
    (c, pid)
}

/// A worker that crashes during a direct call: the client's error names the provider
/// and the signal, as through the daemon, and the next read restarts it.
#[test]
fn crash_on_a_direct_channel_is_reported_and_restarts() {
    let d = start(&[("iso", c_manifest("iso", "isolated", ""))]);
    let (mut c, before) = direct_client(&d);
    let counter = class("demo.counter");
    match c.get(&counter, &named("crash")) {
        Err(ClientError::ProviderFailed { provider, message }) => {
            assert_eq!(provider.as_deref(), Some("iso"));
            assert!(
                message.starts_with("provider iso crashed: worker for provider iso (pid ")
                    && message.contains("killed by signal 11 (SIGSEGV)"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        c.direct_channels().is_empty(),
        "the dead channel is dropped"
    );
    let after = u64_of(&c.get(&counter, &named("a")).unwrap(), "pid") as u32;
    assert_ne!(after, before, "a new worker serves the next read");
    assert!(!alive(before));
    assert_eq!(d.status("iso").crashes, 1);
    // It served, so the class gets a channel to the new worker.
    for _ in 0..2 {
        c.get(&counter, &named("a")).unwrap();
    }
    assert_eq!(c.direct_channels().len(), 1);
}

/// A direct call past its deadline: the worker answers the client with a timeout naming
/// the provider, the host kills the worker, and a new one serves the next read.
#[test]
fn deadline_on_a_direct_channel_kills_the_worker() {
    let d = start(&[(
        "iso",
        c_manifest("iso", "isolated", "call_timeout = \"300ms\""),
    )]);
    let (mut c, before) = direct_client(&d);
    let counter = class("demo.counter");
    let asked = Instant::now();
    assert_timeout(
        c.get(&counter, &named("hang")),
        "iso",
        "provider iso did not answer within 300ms; its process was killed and restarts on next use",
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    wait_until("the hung worker to die", Duration::from_secs(5), || {
        !alive(before)
    });
    let after = u64_of(&c.get(&counter, &named("a")).unwrap(), "pid") as u32;
    assert_ne!(before, after);
    let status = d.status("iso");
    assert_eq!(status.crashes, 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer a direct call within 300ms")),
        "{status:?}"
    );
}

#[test]
fn hundred_concurrent_first_requests_cause_one_load() {
    let d = start(&[("iso", c_manifest("iso", "isolated", ""))]);
    let mut c = d.client();
    let ids: Vec<u32> = (0..100)
        .map(|_| {
            c.send(purveyor_protocol::Request::Get {
                class: class("demo.counter"),
                key: named("a"),
            })
            .unwrap()
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for _ in &ids {
        let (_, reply) = c.recv().unwrap();
        match reply.unwrap() {
            purveyor_protocol::Response::Instance(i) => {
                pids.insert(u64_of(&i, "pid"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pids.len(), 1, "one worker served them all");
    assert_eq!(d.status("iso").loads, 1);
}

#[test]
fn host_group_shares_one_worker() {
    let lib = rust_library().display().to_string();
    let d = start(&[
        (
            "c1",
            c_manifest("c1", "isolated", "host_group = \"shared\""),
        ),
        (
            "r1",
            manifest(
                "r1",
                "isolated",
                &format!("library = {lib:?}\nhost_group = \"shared\""),
                "demo.greeting",
                "",
            ),
        ),
    ]);
    let mut c = d.client();
    let a = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid");
    let b = u64_of(&c.get(&class("demo.greeting"), &named("x")).unwrap(), "pid");
    assert_eq!(a, b, "one worker for the group");
}

#[test]
fn non_pure_provider_is_released_as_a_client() {
    let d = start(&[(
        "np",
        c_manifest("np", "external", "pure = false\nclear_after = \"200ms\""),
    )]);
    let mut c = d.client();
    c.get(&class("demo.counter"), &named("a")).unwrap();
    wait_until("the release", Duration::from_secs(5), || {
        d.status("np").state == ProviderState::ReleasedAsClient
    });
    let status = c.status().unwrap();
    assert_eq!(status.providers_loaded, 0, "not counted as loaded");
    // A new request loads a fresh instance.
    c.get(&class("demo.counter"), &named("a")).unwrap();
    assert_eq!(d.status("np").loads, 2);
}

/// SIGTERM with a provider stuck in a call: the daemon releases what it can, kills the
/// rest and exits, leaving no provider process behind.
#[test]
fn sigterm_with_a_provider_mid_call_exits_and_kills_it() {
    let mut d = start(&[(
        "iso",
        c_manifest("iso", "isolated", "call_timeout = \"60s\""),
    )]);
    let mut c = d.client();
    let pid = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    c.send(purveyor_protocol::Request::Get {
        class: class("demo.counter"),
        key: named("hang"),
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let status = d.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    wait_until("the worker to die", Duration::from_secs(5), || !alive(pid));
}

/// SIGKILL of the daemon leaves no orphans: workers and external providers die with it.
#[test]
fn sigkill_of_the_daemon_leaves_no_orphans() {
    let mut d = start(&[
        ("iso", c_manifest("iso", "isolated", "")),
        (
            "uptime",
            manifest(
                "uptime",
                "external",
                &format!(
                    "command = [\"python3\", {:?}]",
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../../examples/providers/python/uptime.py"
                    )
                ),
                "demo.uptime",
                "",
            ),
        ),
    ]);
    let mut c = d.client();
    let iso = u64_of(&c.get(&class("demo.counter"), &named("a")).unwrap(), "pid") as u32;
    let py = u64_of(
        &c.get(&class("demo.uptime"), &InstanceKey::new()).unwrap(),
        "pid",
    ) as u32;
    assert!(alive(iso) && alive(py));
    d.stop(libc::SIGKILL);
    wait_until("the worker to die", Duration::from_secs(5), || !alive(iso));
    wait_until("the python provider to die", Duration::from_secs(5), || {
        !alive(py)
    });
}

#[test]
fn python_example_serves_through_the_daemon() {
    let d = start(&[(
        "uptime",
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/providers/python/uptime.toml"
        ))
        .unwrap()
        .replace(
            "\"uptime.py\"",
            &format!(
                "{:?}",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../examples/providers/python/uptime.py"
                )
            ),
        ),
    )]);
    let mut c = d.client();
    let up = c.get(&class("demo.uptime"), &InstanceKey::new()).unwrap();
    match up.get("seconds") {
        Some(Value::F64(s)) => assert!(*s > 0.0),
        other => panic!("{other:?}"),
    }
}

/// A 32-bit external provider (gcc -m32) served by the 64-bit daemon.
#[test]
#[ignore = "needs a 32-bit C toolchain (gcc-multilib); .ci/run installs it and runs this"]
fn thirty_two_bit_external_provider() {
    let exe = compile(
        "demo-external-32",
        DEMO_C,
        &["-m32", "-DPURVEYOR_EXTERNAL", "-O2"],
    );
    let file = Command::new("file").arg(&exe).output();
    if let Ok(out) = file {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("32-bit"), "{text}");
    }
    let m = manifest(
        "ext32",
        "external",
        &format!("command = [{:?}]", exe.display().to_string()),
        "demo.counter",
        "",
    );
    let d = start(&[("ext32", m)]);
    let mut c = d.client();
    let all = c
        .enumerate(&class("demo.counter"), &InstanceKey::new())
        .unwrap();
    assert_eq!(all.len(), 2);
    let a = c.get(&class("demo.counter"), &named("a")).unwrap();
    assert!(u64_of(&a, "hits") >= 1);
}

/// File-backed mappings (anonymous ones come and go with malloc arenas and thread
/// stacks of the test's own threads) and resident memory.
fn maps_and_rss() -> (usize, u64) {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/'))
        })
        .count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (maps, rss)
}

/// The `dlclose` rule (docs/provider-abi.md): the Rust example library loaded, called and
/// released 1000 times in this process, with no growth in mappings or memory and no crash.
#[test]
fn library_load_unload_1000_times() {
    use purveyor_host::LibraryProvider;
    use purveyor_provider::{CallContext, Provider};
    let path = rust_library();
    let cycle = |i: usize| {
        let p = LibraryProvider::open(path, "greeting").unwrap();
        let ctx = CallContext::internal();
        // Run the call on a fresh thread too: thread-local destructors in the library must
        // not outlive its code.
        std::thread::scope(|s| {
            s.spawn(|| {
                let got = p.get(&class("demo.greeting"), &named("x"), &ctx).unwrap();
                assert!(got.is_some(), "cycle {i}");
            });
        });
        drop(p);
    };
    for i in 0..20 {
        cycle(i);
    }
    let (maps_before, rss_before) = maps_and_rss();
    for i in 0..1000 {
        cycle(i);
    }
    let (maps_after, rss_after) = maps_and_rss();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert_eq!(maps_before, maps_after, "file mappings grew:\n{maps}");
    let library_maps = maps
        .lines()
        .filter(|l| l.ends_with(path.to_str().unwrap()))
        .count();
    assert!(
        (1..=6).contains(&library_maps),
        "the library is mapped once (its segments), not per load:\n{maps}"
    );
    assert!(
        rss_after < rss_before + 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
}
