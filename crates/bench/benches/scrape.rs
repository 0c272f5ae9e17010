//! One `/metrics` scrape of the HTTP gateway covering the built-in `system` provider, the
//! host's own `purveyor` classes and 10 000 application counters (10 sets of 1 000), next
//! to Debian's `prometheus-node-exporter` scraping the same machine in the same run (when
//! it is installed). Reported: time per scrape (median of 50), bytes, samples, and time
//! per sample (the figure: faster than node_exporter per sample exported).
//!
//! Needs the release `purveyor` binary (`bench/run` builds it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, helper_mode, percentiles, release_file};
use purveyor_counters::{CounterSet, CounterType, Unit};

const SCRAPES: usize = 50;
const SETS: usize = 10;
const COUNTERS: usize = 1_000;

fn main() {
    if helper_mode() {
        return;
    }
    println!("# purveyor /metrics scrape benchmark");
    let Some(bin) = release_file("purveyor") else {
        println!("skipped: build the release binary first (bench/run does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let counters = dir.path().join("counters");
    std::fs::create_dir(&counters).unwrap();
    let mut sets = Vec::new();
    let mut instances = Vec::new();
    for s in 0..SETS {
        let mut builder = CounterSet::builder(&format!("bench{s}"));
        for c in 0..COUNTERS {
            builder = builder.counter(
                &format!("c{c}"),
                CounterType::Counter,
                Unit::Count,
                "a counter",
            );
        }
        let set = builder.instances(1).create_in(&counters).unwrap();
        let one = set.instance("one").unwrap();
        for c in 0..COUNTERS {
            one.counter(&format!("c{c}")).unwrap().add(c as u64);
        }
        instances.push(one);
        sets.push(set);
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _daemon = BenchDaemon::start(
        &bin,
        dir.path(),
        &["--http", &addr.to_string()],
        &[("PURVEYOR_COUNTERS", &counters)],
    );
    wait_for_http(addr);
    let ours = measure(addr, "text/plain");
    let open = measure(addr, "application/openmetrics-text;version=1.0.0");
    let app = ours
        .body
        .lines()
        .filter(|l| l.starts_with("app_bench"))
        .count();
    assert!(app >= SETS * COUNTERS, "only {app} application samples");
    println!(
        "purveyor   text:        {}  ({app} application counters)",
        ours.line()
    );
    println!("purveyor   openmetrics: {}", open.line());

    match node_exporter() {
        None => println!("node_exporter: not installed (apt-get install prometheus-node-exporter)"),
        Some((mut child, addr)) => {
            wait_for_http(addr);
            let node = measure(addr, "text/plain");
            let _ = child.kill();
            let _ = child.wait();
            println!("node_exporter text:        {}", node.line());
            println!(
                "per sample: purveyor {:.3} us, node_exporter {:.3} us: purveyor takes {:.3}x node_exporter's time per sample",
                ours.per_sample_us(),
                node.per_sample_us(),
                ours.per_sample_us() / node.per_sample_us()
            );
        }
    }
    drop(instances);
}

struct Scrape {
    median: Duration,
    p99: Duration,
    bytes: usize,
    samples: usize,
    body: String,
}

impl Scrape {
    fn per_sample_us(&self) -> f64 {
        self.median.as_secs_f64() * 1e6 / self.samples as f64
    }

    fn line(&self) -> String {
        format!(
            "median {:.2} ms (p99 {:.2} ms), {} bytes, {} samples, {:.3} us/sample",
            self.median.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.bytes,
            self.samples,
            self.per_sample_us()
        )
    }
}

/// `SCRAPES` scrapes (after one warm-up), each on a new connection as Prometheus would.
fn measure(addr: SocketAddr, accept: &str) -> Scrape {
    let mut body = get(addr, accept);
    let mut times = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let start = Instant::now();
        body = get(addr, accept);
        times.push(start.elapsed());
    }
    let (median, p99) = percentiles(&mut times);
    let samples = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Scrape {
        median,
        p99,
        bytes: body.len(),
        samples,
        body,
    }
}

/// The body of `GET /metrics` (HTTP/1.0, so not chunked).
fn get(addr: SocketAddr, accept: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

fn wait_for_http(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's node_exporter on a free loopback port, if installed.
fn node_exporter() -> Option<(Child, SocketAddr)> {
    let program = ["prometheus-node-exporter", "node_exporter"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(program)
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((child, addr))
}
