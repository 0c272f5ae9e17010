//! Helpers shared by the benchmarks: percentiles, units, and the raw echo floor.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use purveyor_client::{Client, Encoding};
use purveyor_protocol::{ClientMessage, Outcome, Request, ServerMessage, encode_frame};

/// One request's round trip next to the echo floor of the same sizes, in the same run.
pub struct VsEcho {
    pub request_len: usize,
    pub reply_len: usize,
    pub ours: (Duration, Duration),
    pub floor: (Duration, Duration),
    /// The same request on a bare socket to the daemon: a pre-encoded frame written, the
    /// reply's bytes read and not decoded (the daemon's share without the client library).
    pub bare: Option<(Duration, Duration)>,
}

impl VsEcho {
    /// `p50 … us  p99 … us | raw echo p50 … | ratio p50 …x  p99 …x`.
    pub fn line(&self) -> String {
        let ((p50, p99), (f50, f99)) = (self.ours, self.floor);
        format!(
            "p50 {:>6.1} us  p99 {:>6.1} us | raw echo p50 {:>6.1} us  p99 {:>6.1} us | ratio p50 {:.2}x  p99 {:.2}x",
            us(p50),
            us(p99),
            us(f50),
            us(f99),
            p50.as_secs_f64() / f50.as_secs_f64(),
            p99.as_secs_f64() / f99.as_secs_f64(),
        ) + &match self.bare {
            Some((b50, b99)) => format!(
                " | bare socket p50 {:>6.1} us  p99 {:>6.1} us ({:.2}x)",
                us(b50),
                us(b99),
                b50.as_secs_f64() / f50.as_secs_f64()
            ),
            None => String::new(),
        }
    }
}

/// Measures `request` through `c` against the echo server at `echo`, asked for frames of
/// the same sizes: `rounds` rounds (after one warm-up) of `per_round` echoes, then
/// `per_round` requests.
pub fn against_echo(
    c: &mut Client,
    echo: &Path,
    bare: Option<&Path>,
    request: &Request,
    rounds: usize,
    per_round: usize,
) -> VsEcho {
    // The sizes the echo must mirror: this request's frame and its reply's frame.
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
    // Same payload size (at least the 4 bytes that tell the echo its reply size).
    let payload = request_len.max(4);
    let mut echo_frame = (payload as u32).to_le_bytes().to_vec();
    echo_frame.extend_from_slice(&(reply_len as u32).to_le_bytes());
    echo_frame.resize(4 + payload, 0);
    let mut e = UnixStream::connect(echo).unwrap();
    let mut buf = vec![0u8; 4 + reply_len];
    let mut ours = Vec::with_capacity(rounds * per_round);
    let mut floor = Vec::with_capacity(rounds * per_round);
    let mut bare_samples = Vec::with_capacity(rounds * per_round);
    let mut bare = bare.map(bare_connection);
    let mut bare_buf = vec![0u8; out.len()];
    // `per_round` round trips of `one`, timed into `samples` unless warming up.
    let time = |samples: &mut Vec<Duration>, warmup: bool, one: &mut dyn FnMut()| {
        for _ in 0..per_round {
            let t = Instant::now();
            one();
            if !warmup {
                samples.push(t.elapsed());
            }
        }
    };
    for round in 0..=rounds {
        let warmup = round == 0;
        time(&mut floor, warmup, &mut || {
            e.write_all(&echo_frame).unwrap();
            e.read_exact(&mut buf).unwrap();
        });
        if let Some(b) = bare.as_mut() {
            time(&mut bare_samples, warmup, &mut || {
                b.write_all(&frame).unwrap();
                b.read_exact(&mut bare_buf).unwrap();
            });
        }
        time(&mut ours, warmup, &mut || {
            c.request(request.clone()).unwrap();
        });
    }
    VsEcho {
        request_len,
        reply_len,
        ours: percentiles(&mut ours),
        floor: percentiles(&mut floor),
        bare: (!bare_samples.is_empty()).then(|| percentiles(&mut bare_samples)),
    }
}

/// A connection to the daemon at `path` that has said hello in the binary encoding, for
/// writing pre-encoded frames and reading replies without decoding them.
fn bare_connection(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    let hello = format!(
        r#"{{"protocol":1,"minor":{},"encoding":"binary","client":"bench-bare"}}"#,
        purveyor_protocol::PROTOCOL_MINOR
    );
    s.write_all(&(hello.len() as u32).to_le_bytes()).unwrap();
    s.write_all(hello.as_bytes()).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let mut welcome = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut welcome).unwrap();
    s
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
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn release_file(name: &str) -> Option<PathBuf> {
    // target/release/deps/BENCH-HASH → target/release/NAME
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
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
        echo_server(Path::new(&path));
        return true;
    }
    false
}

/// The echo floor in a process of its own (this benchmark's executable, in
/// [`helper_mode`]), so that floor and request cross the same two processes; stopped when
/// dropped.
pub struct EchoChild {
    pub socket: PathBuf,
    child: std::process::Child,
}

impl EchoChild {
    pub fn spawn(dir: &Path) -> EchoChild {
        let socket = dir.join("echo.sock");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("PURVEYOR_BENCH_ECHO", &socket)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_socket(&socket);
        EchoChild { socket, child }
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
