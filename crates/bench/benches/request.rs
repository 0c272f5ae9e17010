//! Request latency and throughput through the daemon socket, each next to its floor in
//! the same run (see `docs/performance.md`).
//!
//! The bench process is the client. It re-executes itself as a child that runs the daemon
//! (the real host and server on a multi-threaded runtime), and as three raw Unix-socket
//! echo servers, each a process of its own (pinned to CPU 0, to CPU 1, and not pinned),
//! which answer each frame with a frame of the same size as the daemon's reply. Each
//! latency line says which regime it measured: ours unpinned (what users get) and pinned
//! together with the client, a plain JSON client's, and the floors (`Placed`).
//!
//! Run: `cargo build --release -p purveyor && cargo bench -p purveyor-bench`
//! (or `bench/run`).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use purveyor_bench::{Echoes, helper_mode, ms, percentiles, placed, said_hello, us};
use purveyor_client::{Client, ConnectOptions, Encoding, Target};
use purveyor_model::{ClassPath, InstanceKey};
use purveyor_protocol::{HostMode, Request};

const CHILD_ENV: &str = "PURVEYOR_BENCH_CHILD";
const ROUNDS: usize = 10;
const PER_ROUND: usize = 3000;

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    if helper_mode() {
        return;
    }
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "in-process") {
        in_process();
        return;
    }
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "idle-connections") {
        idle_connections();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(dir.path());
    let daemon = dir.path().join("daemon.sock");
    let echoes = Echoes::spawn(dir.path());
    let pid = server.child.id();

    println!(
        "# purveyor request benchmark ({} round trips each, interleaved)",
        ROUNDS * PER_ROUND
    );
    // `PURVEYOR_BENCH_ONLY=throughput`: the pipelined figures alone (for profiling).
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "throughput") {
        throughput(&daemon, "purveyor.host", 4);
        throughput(&daemon, "system.load", 4);
        server.stop();
        return;
    }
    // `PURVEYOR_BENCH_ONLY=latency` stops after the latency figures (for profiling).
    let only_latency = std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "latency");
    // The transport and server loop alone, with no provider work.
    latency_of(&daemon, pid, &echoes, "ping", Request::Ping);
    // `PURVEYOR_BENCH_CLASS=C` measures one class's latency instead of both.
    let classes = match std::env::var("PURVEYOR_BENCH_CLASS") {
        Ok(class) => vec![class],
        Err(_) => vec!["purveyor.host".to_string(), "system.load".to_string()],
    };
    for class in &classes {
        latency(&daemon, pid, &echoes, class);
    }
    if only_latency {
        server.stop();
        return;
    }
    in_process();
    throughput(&daemon, "purveyor.host", 4);
    throughput(&daemon, "system.load", 4);
    server.stop();
    one_shot();
    idle_rss();
    idle_connections();
}

/// The child: the daemon, until stdin closes.
fn child(dir: &Path) {
    let runtime = match std::env::var("PURVEYOR_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .unwrap(),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(purveyor_host::server::default_runtime_threads(false))
            .enable_all()
            .build()
            .unwrap(),
    };
    let listener = purveyor_host::socket::bind(&dir.join("daemon.sock"), 0o600).unwrap();
    runtime.block_on(async {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        let host = purveyor_client::default_host(HostMode::Daemon, Some(vec![dir.join("none")]));
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1])).await;
        };
        purveyor_host::server::serve(listener, host, stdin_closed)
            .await
            .unwrap();
    });
}

struct Server {
    child: Child,
}

impl Server {
    fn spawn(dir: &Path) -> Server {
        let child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, dir)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("daemon.sock").exists() {
            assert!(Instant::now() < deadline, "bench server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { child }
    }

    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(socket: &Path) -> Client {
    let options = ConnectOptions::default()
        .target(Target::Socket(socket.to_owned()))
        .encoding(Encoding::Binary);
    Client::connect(&options).unwrap()
}

fn latency(daemon: &Path, pid: u32, echoes: &Echoes, class: &str) {
    let class = ClassPath::new(class).unwrap();
    let request = Request::Get {
        class: class.clone(),
        key: InstanceKey::new(),
    };
    latency_of(daemon, pid, echoes, &format!("get {class}"), request);
}

fn latency_of(daemon: &Path, pid: u32, echoes: &Echoes, what: &str, request: Request) {
    let mut c = client(daemon);
    let m = placed(
        &mut c,
        pid,
        Some(daemon),
        echoes,
        &request,
        ROUNDS,
        PER_ROUND,
    );
    println!(
        "{what:<18} ({} B request, {} B reply): {}",
        m.request_len,
        m.reply_len,
        m.line()
    );
}

/// The host's own work per request, with no socket: `Host::handle` called in a loop.
fn in_process() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = purveyor_client::default_host(
        HostMode::Embedded,
        Some(vec![PathBuf::from("/nonexistent")]),
    );
    let caller = purveyor_host::Caller::current_process();
    let classes = match std::env::var("PURVEYOR_BENCH_CLASS") {
        Ok(class) => vec![class],
        Err(_) => vec!["purveyor.host".to_string(), "system.load".to_string()],
    };
    for class in &classes {
        let request = Request::Get {
            class: ClassPath::new(class).unwrap(),
            key: InstanceKey::new(),
        };
        let n = 1_000_000;
        let elapsed = runtime.block_on(async {
            host.handle(request.clone(), &caller).await.unwrap();
            let t = Instant::now();
            for _ in 0..n {
                host.handle(request.clone(), &caller).await.unwrap();
            }
            t.elapsed()
        });
        println!(
            "in-process Host::handle get {class}: {:.2} us per request",
            us(elapsed) / n as f64
        );
    }
}

/// `clients` threads, each with its own connection keeping `WINDOW` requests in flight.
fn throughput(daemon: &Path, class: &str, clients: usize) {
    const WINDOW: usize = 64;
    const RUN: Duration = Duration::from_secs(2);
    let class = ClassPath::new(class).unwrap();
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let daemon: PathBuf = daemon.to_owned();
            let class = class.clone();
            std::thread::spawn(move || {
                let mut c = client(&daemon);
                let request = Request::Get {
                    class,
                    key: InstanceKey::new(),
                };
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                for _ in 0..WINDOW {
                    c.send(request.clone()).unwrap();
                }
                let mut done = 0u64;
                while start.elapsed() < RUN {
                    let (_, reply) = c.recv().unwrap();
                    reply.unwrap();
                    done += 1;
                    c.send(request.clone()).unwrap();
                }
                for _ in 0..WINDOW {
                    c.recv().unwrap().1.unwrap();
                }
                done
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let rate = total as f64 / RUN.as_secs_f64();
    println!(
        "pipelined get {class}: {clients} clients x {WINDOW} in flight: {rate:>9.0} requests/s"
    );
}

/// A whole `purveyor get system.load` process, start to exit, next to spawning `true`.
fn one_shot() {
    let Some(bin) = purveyor_binary() else {
        println!("one-shot: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let mut daemon = start_daemon(&bin, &socket);
    let run = |args: &[&str], env_socket: Option<&Path>| -> Duration {
        let mut cmd = Command::new(&bin);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(s) = env_socket {
            cmd.env("PURVEYOR_SOCKET", s);
        } else {
            cmd.env("PURVEYOR_SOCKET", dir.path().join("absent.sock"));
        }
        let t = Instant::now();
        let status = cmd.status().unwrap();
        assert!(status.success());
        t.elapsed()
    };
    let floor = || -> Duration {
        let t = Instant::now();
        Command::new("true").status().unwrap();
        t.elapsed()
    };
    let mut via_daemon = Vec::new();
    let mut embedded = Vec::new();
    let mut spawn = Vec::new();
    for _ in 0..200 {
        via_daemon.push(run(&["get", "system.load"], Some(&socket)));
        embedded.push(run(&["get", "system.load"], None));
        spawn.push(floor());
    }
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    let (d50, d99) = percentiles(&mut via_daemon);
    let (e50, e99) = percentiles(&mut embedded);
    let (s50, _) = percentiles(&mut spawn);
    println!(
        "one-shot `purveyor get system.load`: daemon p50 {:.2} ms p99 {:.2} ms | embedded p50 {:.2} ms p99 {:.2} ms | spawn `true` p50 {:.2} ms",
        ms(d50),
        ms(d99),
        ms(e50),
        ms(e99),
        ms(s50)
    );
}

/// The real daemon's resident memory after start-up and a few requests, idle.
fn idle_rss() {
    let Some(bin) = purveyor_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let mut daemon = start_daemon(&bin, &socket);
    let mut c = client(&socket);
    for class in [
        "system.load",
        "system.cpu",
        "system.process",
        "purveyor.provider",
    ] {
        c.enumerate(&ClassPath::new(class).unwrap(), &InstanceKey::new())
            .unwrap();
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?");
    println!(
        "daemon idle after requests: {}",
        rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Cost curve: one client's `get purveyor.host` beside 0, 100, 1 000 and 10 000 idle
/// connections (each said hello and holds nothing) to the real daemon, and the daemon's
/// resident memory per idle connection.
fn idle_connections() {
    let Some(bin) = purveyor_binary() else {
        return;
    };
    // This process holds the idle connections.
    purveyor_bench::raise_open_files();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let mut daemon = Command::new(&bin)
        .args(["serve", "--socket"])
        .arg(&socket)
        .args([
            "--limit",
            "conn.total=20000",
            "--limit",
            "conn.per_user=20000",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let rss = purveyor_bench::rss_kb;
    let mut c = client(&socket);
    let request = Request::Get {
        class: ClassPath::new("purveyor.host").unwrap(),
        key: InstanceKey::new(),
    };
    let mut idle: Vec<UnixStream> = Vec::new();
    let base = {
        c.request(request.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        rss(daemon.id())
    };
    println!("# idle connections beside one active client (get purveyor.host, unpinned)");
    for n in [0usize, 100, 1000, 10_000] {
        while idle.len() < n {
            match hello(&socket) {
                Some(s) => idle.push(s),
                None => break,
            }
        }
        let mut samples = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let t = Instant::now();
            c.request(request.clone()).unwrap();
            samples.push(t.elapsed());
        }
        let (p50, p99) = percentiles(&mut samples);
        std::thread::sleep(Duration::from_millis(200));
        let now = rss(daemon.id());
        let per = if idle.is_empty() {
            String::from("-")
        } else {
            format!(
                "{:.1} kB",
                now.saturating_sub(base) as f64 / idle.len() as f64
            )
        };
        println!(
            "{:>6} idle: p50 {:>6.1} us  p99 {:>7.1} us | daemon RSS {} kB, per idle connection {per}",
            idle.len(),
            us(p50),
            us(p99),
            now
        );
    }
    drop(idle);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A connection that said hello (JSON) and was welcomed.
fn hello(socket: &Path) -> Option<UnixStream> {
    let (s, answer) = said_hello(socket, "json", "bench-idle").ok()?;
    std::str::from_utf8(&answer)
        .is_ok_and(|w| !w.contains("goodbye"))
        .then_some(s)
}

/// The real `purveyor serve` on `socket`, once it accepts connections.
fn start_daemon(bin: &Path, socket: &Path) -> Child {
    let daemon = Command::new(bin)
        .args(["serve", "--socket"])
        .arg(socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon
}

fn purveyor_binary() -> Option<PathBuf> {
    // target/release/deps/request-HASH → target/release/purveyor
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("purveyor");
    bin.exists().then_some(bin)
}
