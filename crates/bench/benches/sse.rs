//! Events to one Server-Sent Events client (`docs/http.md`, "Events";
//! `docs/performance.md`, "Remote and HTTP"): writers put to the example `config`
//! provider (isolated, group commit) as fast as they can for a few seconds; one SSE
//! client (a raw HTTP/1.1 reader) and one socket subscriber count what they get, in the
//! same run, with the time from sending a put to each one's receipt of its event.
//!
//! Needs the release `purveyor` binary and config library (`bench/run` builds them).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, percentiles, us};
use purveyor_client::{Client, ConnectOptions, Push, Target};
use purveyor_model::{ClassPath, Instance, Value};

const WRITERS: usize = 8;
const RUN: Duration = Duration::from_secs(3);

fn main() {
    if purveyor_bench::helper_mode() {
        return;
    }
    let Some((bin, lib)) = purveyor_bench::release_daemon_and(
        "sse",
        "libpurveyor_config.so",
        "purveyor-example-config",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    purveyor_bench::register_config(&d.join("providers"), &lib);
    std::fs::write(
        d.join("access.toml"),
        "[namespace.config]\nread = [\"@local\"]\nsubscribe = [\"@local\"]\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let access = d.join("access.toml");
    let state = d.join("state");
    let daemon = BenchDaemon::start(
        &bin,
        d,
        &["--http", &http, "--access", access.to_str().unwrap()],
        &[("PURVEYOR_STATE_DIR", &state)],
    );
    let options = ConnectOptions::default().target(Target::Socket(daemon.socket.clone()));
    let class = ClassPath::new("config.setting").unwrap();
    let base = Instant::now();
    let put = |c: &mut Client, name: &str| {
        let at = base.elapsed().as_nanos() as u64;
        c.put(
            &class,
            Instance::from_pairs([
                ("name", Value::String(name.into())),
                ("type", Value::String("string".into())),
                ("value", Value::String(at.to_string())),
            ]),
        )
        .unwrap();
    };
    put(&mut Client::connect(&options).unwrap(), "warm");

    // The SSE client: a raw HTTP/1.1 request, then lines.
    let mut sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        sse,
        "GET /v1/classes/config.setting/events HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(sse.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with(": subscribed") {
        line.clear();
        lines.read_line(&mut line).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sse_reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            sse.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Some(at) = sent_at(&line) {
                    got.push((base.elapsed().as_nanos() as u64).saturating_sub(at));
                }
                if stop.load(Ordering::Relaxed) && got.is_empty() {
                    break;
                }
            }
            got
        })
    };
    // The socket subscriber, for comparison.
    let mut subscriber = Client::connect(&options).unwrap();
    subscriber.subscribe(&class, None, vec![]).unwrap();
    let socket_reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(Some((_, push))) = subscriber.next_event(Some(Duration::from_secs(2))) {
            if let Push::Event { data, .. } = push
                && let Some(Value::String(v)) = data.get("value")
                && let Ok(at) = v.parse::<u64>()
            {
                got.push((base.elapsed().as_nanos() as u64).saturating_sub(at));
            }
        }
        got
    });
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (options, acked, stop) = (options.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&options).unwrap();
                let name = format!("w{w}");
                let class = ClassPath::new("config.setting").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let at = base.elapsed().as_nanos() as u64;
                    c.put(
                        &class,
                        Instance::from_pairs([
                            ("name", Value::String(name.clone())),
                            ("type", Value::String("string".into())),
                            ("value", Value::String(at.to_string())),
                        ]),
                    )
                    .unwrap();
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let produced = acked.load(Ordering::Relaxed);
    let mut sse_got: Vec<Duration> = sse_reader
        .join()
        .unwrap()
        .into_iter()
        .map(Duration::from_nanos)
        .collect();
    let mut socket_got: Vec<Duration> = socket_reader
        .join()
        .unwrap()
        .into_iter()
        .map(Duration::from_nanos)
        .collect();
    let secs = RUN.as_secs_f64();
    println!(
        "# events to one SSE client ({WRITERS} writers putting for {} s; isolated config provider)",
        RUN.as_secs()
    );
    let (s50, s99) = percentiles(&mut sse_got);
    let (k50, k99) = percentiles(&mut socket_got);
    println!(
        "puts acknowledged {produced} ({:.0}/s) | SSE client received {} ({:.0}/s), from sending the put p50 {:.0} us p99 {:.0} us | socket subscriber received {} ({:.0}/s), p50 {:.0} us p99 {:.0} us",
        produced as f64 / secs,
        sse_got.len(),
        sse_got.len() as f64 / secs,
        us(s50),
        us(s99),
        socket_got.len(),
        socket_got.len() as f64 / secs,
        us(k50),
        us(k99),
    );
}

/// The put time carried in an SSE `data:` line's `value`, if it is one.
fn sent_at(line: &str) -> Option<u64> {
    let data = line.strip_prefix("data: ")?;
    let json: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    json["event"]["data"]["value"]["string"]
        .as_str()?
        .parse()
        .ok()
}
