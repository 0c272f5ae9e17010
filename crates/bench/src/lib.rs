//! Helpers shared by the benchmarks: percentiles, units, and the raw echo floor.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use purveyor_client::{Client, Encoding};
use purveyor_protocol::{ClientMessage, Outcome, Request, ServerMessage, encode_frame};

/// `request`'s binary frame and the payload sizes of it and of its reply (asks `c` once).
pub fn request_and_reply_sizes(c: &mut Client, request: &Request) -> (Vec<u8>, usize, usize) {
    let mut frame = Vec::new();
    let msg = ClientMessage::Request {
        id: 1,
        request: request.clone(),
    };
    encode_frame(Encoding::Binary, &msg, u32::MAX, &mut frame).unwrap();
    let reply = c.request(request.clone()).unwrap();
    let mut out = Vec::new();
    let msg = ServerMessage::Reply {
        id: 1,
        outcome: Outcome::Ok(reply),
    };
    encode_frame(Encoding::Binary, &msg, u32::MAX, &mut out).unwrap();
    let (request_len, reply_len) = (frame.len() - 4, out.len() - 4);
    (frame, request_len, reply_len)
}

/// What an echo server is sent to mirror `request` ([`Mirror`]). Asks `c` once to learn
/// the reply's size.
fn mirror(c: &mut Client, request: &Request) -> Mirror {
    let (_, request_len, reply_len) = request_and_reply_sizes(c, request);
    Mirror {
        request_len,
        reply_len,
        echo_frame: echo_frame(request_len, reply_len),
    }
}

/// The frame that asks an echo for a `reply_len`-byte payload, its own payload
/// `request_len` bytes (at least the 4 that carry `reply_len`).
fn echo_frame(request_len: usize, reply_len: usize) -> Vec<u8> {
    let payload = request_len.max(4);
    let mut frame = (payload as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&(reply_len as u32).to_le_bytes());
    frame.resize(4 + payload, 0);
    frame
}

/// `request`'s payload's and its reply's payload's sizes, and the frame an echo server is
/// sent to answer alike: a payload the size of the request's (at least the 4 bytes that
/// tell the echo its reply size), asking for a reply the size of the reply's.
struct Mirror {
    request_len: usize,
    reply_len: usize,
    echo_frame: Vec<u8>,
}

/// A raw connection to the daemon at `path` after its hello in `encoding` (`binary` or
/// `json`), and the daemon's answer (a welcome, or a goodbye).
pub fn said_hello(
    path: &Path,
    encoding: &str,
    client: &str,
) -> std::io::Result<(UnixStream, Vec<u8>)> {
    let mut s = UnixStream::connect(path)?;
    let hello = format!(
        r#"{{"protocol":1,"minor":{},"encoding":"{encoding}","client":"{client}"}}"#,
        purveyor_protocol::PROTOCOL_MINOR
    );
    s.write_all(&(hello.len() as u32).to_le_bytes())?;
    s.write_all(hello.as_bytes())?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let mut answer = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut answer)?;
    Ok((s, answer))
}

/// p50 and p99 of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The echo floor's side of one connection: reads a frame whose first 4 payload bytes say
/// how large a reply to send, and answers with a frame of that size, until EOF.
pub fn echo_connection(mut s: UnixStream) {
    let mut header = [0u8; 4];
    let mut buf = vec![0u8; 1 << 16];
    let mut reply = Vec::new();
    while s.read_exact(&mut header).is_ok() {
        let len = u32::from_le_bytes(header) as usize;
        if len < 4 || len > buf.len() || s.read_exact(&mut buf[..len]).is_err() {
            return;
        }
        let want = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        reply.clear();
        reply.extend_from_slice(&(want as u32).to_le_bytes());
        reply.resize(4 + want, 0x5a);
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The echo floor: answers each frame with a frame of the size its first 4 bytes ask for.
pub fn echo_server(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo_connection(stream));
        }
    });
    // Until the bench closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        // Fine-grained: start-up times are measured by this wait.
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn release_file(name: &str) -> Option<PathBuf> {
    // target/release/deps/BENCH-HASH → target/release/NAME
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
}

/// The release `purveyor` binary and the release library `library` (built by package
/// `package`), or `None` after saying that benchmark `bench` is skipped and how to build
/// them.
pub fn release_daemon_and(bench: &str, library: &str, package: &str) -> Option<(PathBuf, PathBuf)> {
    match (release_file("purveyor"), release_file(library)) {
        (Some(bin), Some(lib)) => Some((bin, lib)),
        _ => {
            println!(
                "{bench}: skipped (run `cargo build --release -p purveyor -p {package}` first)"
            );
            None
        }
    }
}

/// A `purveyor serve` started for a benchmark; killed (with its provider processes) when
/// dropped.
pub struct BenchDaemon {
    pub socket: PathBuf,
    child: std::process::Child,
}

impl BenchDaemon {
    /// Starts `bin serve` on `dir/d.sock` with manifests from `dir/providers`, `args` and
    /// `env` added, and waits for its socket.
    pub fn start(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> BenchDaemon {
        let providers = dir.join("providers");
        std::fs::create_dir_all(&providers).unwrap();
        let socket = dir.join("d.sock");
        let child = std::process::Command::new(bin)
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--providers")
            .arg(&providers)
            .args(args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_socket(&socket);
        BenchDaemon { socket, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every benchmark's `main` checks first: `cargo bench -- --list` (nothing to list
/// for a custom harness), and whether this process is an [`EchoChild`]. `true`: return.
pub fn helper_mode() -> bool {
    if std::env::args().any(|a| a == "--list") {
        return true;
    }
    if let Ok(path) = std::env::var("PURVEYOR_BENCH_ECHO") {
        // Pinned before any thread starts, so every connection's thread inherits it.
        let cpu = std::env::var("PURVEYOR_BENCH_ECHO_CPU")
            .ok()
            .and_then(|c| c.parse().ok());
        pin_thread(cpu);
        echo_server(Path::new(&path));
        return true;
    }
    false
}

/// An echo floor in a process of its own (this benchmark's executable, in
/// [`helper_mode`]), so that floor and request cross the same two processes; stopped when
/// dropped.
pub struct EchoChild {
    pub socket: PathBuf,
    child: std::process::Child,
}

impl EchoChild {
    /// An echo whose threads all run on `cpu` (anywhere when `None`).
    pub fn spawn_on(dir: &Path, name: &str, cpu: Option<usize>) -> EchoChild {
        let socket = dir.join(name);
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .env("PURVEYOR_BENCH_ECHO", &socket)
            .stdin(std::process::Stdio::piped());
        if let Some(cpu) = cpu {
            command.env("PURVEYOR_BENCH_ECHO_CPU", cpu.to_string());
        }
        let child = command.spawn().unwrap();
        wait_for_socket(&socket);
        EchoChild { socket, child }
    }
}

/// How many CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu`, or lets it run on every CPU (`None`).
pub fn pin_thread(cpu: Option<usize>) {
    pin_tid(0, cpu);
}

/// Pins every thread of process `pid` and of its descendants (a daemon's provider
/// processes) to `cpu`, or lets them run anywhere (`None`).
pub fn pin_process(pid: u32, cpu: Option<usize>) {
    pin_threads(pid, cpu, true);
}

/// Pins every thread of this process, and none of its children (a bench's echoes and
/// daemon), to `cpu`, or lets them run anywhere (`None`).
pub fn pin_this_process(cpu: Option<usize>) {
    pin_threads(std::process::id(), cpu, false);
}

fn pin_threads(pid: u32, cpu: Option<usize>, descendants: bool) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        pin_tid(tid, cpu);
        if !descendants {
            continue;
        }
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pin_threads(child, cpu, true);
        }
    }
}

fn pin_tid(tid: libc::pid_t, cpu: Option<usize>) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity reads
    // `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            None => (0..libc::CPU_SETSIZE as usize).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The three echo floors of a latency figure, each in a process of its own: pinned on
/// CPU 0 (the client's, when it is pinned), on CPU 1, and anywhere.
pub struct Echoes {
    pub together: EchoChild,
    pub split: Option<EchoChild>,
    pub free: EchoChild,
}

impl Echoes {
    pub fn spawn(dir: &Path) -> Echoes {
        Echoes {
            together: EchoChild::spawn_on(dir, "echo-cpu0.sock", Some(0)),
            split: (cpus() > 1).then(|| EchoChild::spawn_on(dir, "echo-cpu1.sock", Some(1))),
            free: EchoChild::spawn_on(dir, "echo-free.sock", None),
        }
    }
}

/// One request's round trip in each placement, with the echo floors of the same sizes,
/// measured in one run (`docs/performance.md`, "Placement").
pub struct Placed {
    pub request_len: usize,
    pub reply_len: usize,
    /// The echoes of the same sizes: the floor (pinned together), split, unpinned.
    pub floors: Floors,
    /// Ours, nothing pinned: what users get.
    pub ours: (Duration, Duration),
    /// Ours, client and daemon pinned together on one CPU.
    pub ours_together: (Duration, Duration),
    /// A plain blocking client speaking JSON (no polling, no library), nothing pinned.
    pub plain_json: Option<(Duration, Duration)>,
    /// The same plain client with the daemon pinned together on one CPU: what it gets
    /// when the kernel leaves the two side by side.
    pub plain_json_together: Option<(Duration, Duration)>,
}

impl Placed {
    pub fn line(&self) -> String {
        let f = self.floors.floor.0.as_secs_f64();
        let x = |d: Duration| d.as_secs_f64() / f;
        let mut line = format!(
            "unpinned p50 {:>6.1} us p99 {:>6.1} us ({:.2}x) | pinned together p50 {:>6.1} us ({:.2}x)",
            us(self.ours.0),
            us(self.ours.1),
            x(self.ours.0),
            us(self.ours_together.0),
            x(self.ours_together.0),
        );
        if let Some((p50, _)) = self.plain_json {
            line += &format!(
                " | plain JSON client unpinned p50 {:>6.1} us ({:.2}x)",
                us(p50),
                x(p50)
            );
        }
        if let Some((p50, _)) = self.plain_json_together {
            line += &format!(", pinned together {:.1} us ({:.2}x)", us(p50), x(p50));
        }
        line += " | ";
        line += &self.floors.line();
        line
    }
}

/// The echo floors alone, for a figure that is not one request's round trip.
pub struct Floors {
    /// A blocking echo, client and echo pinned together on one CPU.
    pub floor: (Duration, Duration),
    /// The same echo across two CPUs.
    pub split: Option<(Duration, Duration)>,
    /// The same echo, nothing pinned.
    pub free_echo: (Duration, Duration),
}

impl Floors {
    pub fn line(&self) -> String {
        let mut line = format!(
            "floor: echo pinned together p50 {:.1} us, unpinned {:.1} us",
            us(self.floor.0),
            us(self.free_echo.0)
        );
        if let Some((s50, _)) = self.split {
            line += &format!(
                ", split {:.1} us (a cross-CPU wake-up here: ~{:.0} us)",
                us(s50),
                us(s50.saturating_sub(self.floor.0))
            );
        }
        line
    }
}

impl Echoes {
    /// Each echo's round trip for a `request_len`-byte payload answered with a
    /// `reply_len`-byte one, `n` times after `n` to warm up; the floor and the split with
    /// the calling thread on CPU 0, the unpinned echo with it unpinned (as it returns).
    pub fn floors(&self, request_len: usize, reply_len: usize, n: usize) -> Floors {
        let frame = echo_frame(request_len, reply_len);
        let mut buf = vec![0u8; 4 + reply_len];
        let mut time = |e: &EchoChild| {
            let mut s = UnixStream::connect(&e.socket).unwrap();
            let mut samples = Vec::with_capacity(n);
            for i in 0..2 * n {
                let t = Instant::now();
                s.write_all(&frame).unwrap();
                s.read_exact(&mut buf).unwrap();
                if i >= n {
                    samples.push(t.elapsed());
                }
            }
            percentiles(&mut samples)
        };
        pin_thread(Some(0));
        let floor = time(&self.together);
        let split = self.split.as_ref().map(&mut time);
        pin_thread(None);
        Floors {
            floor,
            split,
            free_echo: time(&self.free),
        }
    }
}

/// Measures `request` through `c` (to the daemon whose process is `daemon`, socket
/// `socket`) in each placement, interleaved round by round, next to the echoes' floors:
/// `rounds` rounds (after one warm-up) of `per_round` round trips of each.
pub fn placed(
    c: &mut Client,
    daemon: u32,
    socket: Option<&Path>,
    echoes: &Echoes,
    request: &Request,
    rounds: usize,
    per_round: usize,
) -> Placed {
    let Mirror {
        request_len,
        reply_len,
        echo_frame,
        ..
    } = mirror(c, request);
    let connect = |e: &EchoChild| UnixStream::connect(&e.socket).unwrap();
    let mut together = connect(&echoes.together);
    let mut split = echoes.split.as_ref().map(connect);
    let mut free = connect(&echoes.free);
    let mut plain = socket.map(PlainJson::connect);
    let mut buf = vec![0u8; 4 + reply_len];
    let mut s = [(); 7].map(|()| Vec::with_capacity(rounds * per_round));
    let mut echo = |stream: &mut UnixStream, samples: &mut Vec<Duration>, warm: bool| {
        for _ in 0..per_round {
            let t = Instant::now();
            stream.write_all(&echo_frame).unwrap();
            stream.read_exact(&mut buf).unwrap();
            if !warm {
                samples.push(t.elapsed());
            }
        }
    };
    for round in 0..=rounds {
        let warm = round == 0;
        pin_thread(Some(0));
        echo(&mut together, &mut s[0], warm);
        if let Some(split) = split.as_mut() {
            echo(split, &mut s[1], warm);
        }
        pin_process(daemon, Some(0));
        for _ in 0..per_round {
            let t = Instant::now();
            c.request(request.clone()).unwrap();
            if !warm {
                s[4].push(t.elapsed());
            }
        }
        if let Some(plain) = plain.as_mut() {
            let samples = if warm { None } else { Some(&mut s[6]) };
            plain.time(request, per_round, samples);
        }
        pin_process(daemon, None);
        pin_thread(None);
        echo(&mut free, &mut s[2], warm);
        for _ in 0..per_round {
            let t = Instant::now();
            c.request(request.clone()).unwrap();
            if !warm {
                s[3].push(t.elapsed());
            }
        }
        if let Some(plain) = plain.as_mut() {
            plain.time(
                request,
                per_round,
                if warm { None } else { Some(&mut s[5]) },
            );
        }
    }
    let [
        floor,
        split_s,
        free_s,
        ours,
        together_s,
        plain_s,
        plain_together,
    ] = s;
    let p = |mut v: Vec<Duration>| (!v.is_empty()).then(|| percentiles(&mut v));
    Placed {
        request_len,
        reply_len,
        floors: Floors {
            floor: p(floor).unwrap(),
            split: p(split_s),
            free_echo: p(free_s).unwrap(),
        },
        ours: p(ours).unwrap(),
        ours_together: p(together_s).unwrap(),
        plain_json: p(plain_s),
        plain_json_together: p(plain_together),
    }
}

/// A client we do not control: blocking reads and writes on a socket, JSON frames, no
/// library and no polling.
struct PlainJson {
    stream: UnixStream,
    body: Vec<u8>,
}

impl PlainJson {
    fn connect(path: &Path) -> PlainJson {
        let (stream, _) = said_hello(path, "json", "bench-plain").unwrap();
        PlainJson {
            stream,
            body: Vec::new(),
        }
    }

    fn read_frame(&mut self) {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).unwrap();
        self.body.resize(u32::from_le_bytes(header) as usize, 0);
        self.stream.read_exact(&mut self.body).unwrap();
    }

    fn time(&mut self, request: &Request, n: usize, mut samples: Option<&mut Vec<Duration>>) {
        let mut frame = Vec::new();
        let msg = ClientMessage::Request {
            id: 1,
            request: request.clone(),
        };
        encode_frame(Encoding::Json, &msg, u32::MAX, &mut frame).unwrap();
        for _ in 0..n {
            let t = Instant::now();
            self.stream.write_all(&frame).unwrap();
            self.read_frame();
            if let Some(samples) = samples.as_mut() {
                samples.push(t.elapsed());
            }
        }
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// As many descriptors as this process may have (benches holding thousands of
/// connections; a daemon they start inherits the limit).
pub fn raise_open_files() {
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Registers the example `config` provider (library `lib`, isolated) in `providers`.
pub fn register_config(providers: &Path, lib: &Path) {
    std::fs::create_dir_all(providers).unwrap();
    std::fs::write(
        providers.join("config.toml"),
        format!(
            "name = \"config\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"config.setting\"]\ncapabilities = [\"enumerate\", \"get\", \"put\", \"delete\", \"call\", \"subscribe\"]\n",
            lib.display().to_string()
        ),
    )
    .unwrap();
}

/// Compiles `benches/curves/many.c` (one class per provider name; `nCOUNT` has COUNT
/// instances) into `dir`.
pub fn build_many(dir: &Path) -> PathBuf {
    let lib = dir.join("libmany.so");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/curves/many.c");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../../include");
    let ok = std::process::Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-I", include, "-o"])
        .arg(&lib)
        .arg(source)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cc failed on {source}");
    lib
}

/// Registers `name` in `providers` as an in-daemon provider of that library.
pub fn register(providers: &Path, name: &str, lib: &Path) {
    std::fs::write(
        providers.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\nhosting = \"in-daemon\"\nlibrary = {:?}\nclasses = [\"bench.{name}\"]\ncapabilities = [\"enumerate\", \"get\"]\n",
            lib.display().to_string()
        ),
    )
    .unwrap();
}

/// A process's resident memory, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
