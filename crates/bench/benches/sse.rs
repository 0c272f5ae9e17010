//! Events to one Server-Sent Events client (`docs/http.md`, "Events";
//! `docs/performance.md`, "Remote and HTTP"): writers put to the example `config`
//! provider (isolated, group commit) as fast as they can for a few seconds; one SSE
//! client (a raw HTTP/1.1 reader) and one socket subscriber count what they get, in the
//! same run, with the time from sending a put to each one's receipt of its event. Before
//! that, one put at a time, unpinned and pinned together, next to the echo floors
//! (`docs/performance.md`, "Placement").
//!
//! Needs the release `purveyor` binary and config library (`bench/run` builds them).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, Echoes, percentiles, pin_process, pin_this_process, us};
use purveyor_client::{Client, ConnectOptions, Push, Request, Target};
use purveyor_model::{ClassPath, Instance, Value};

const WRITERS: usize = 8;
const RUN: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const ONE_AT_A_TIME: usize = 200;
/// How long a reader waits for the next event before it stops.
const QUIET: Duration = Duration::from_secs(2);

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
    let echoes = Echoes::spawn(d);
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
    // The first put, which also gives the sizes of a put and its acknowledgement (the
    // echo floors' frames).
    let (_, put_len, ack_len) = purveyor_bench::request_and_reply_sizes(
        &mut Client::connect(&options).unwrap(),
        &Request::Put {
            class: class.clone(),
            instance: Instance::from_pairs([
                ("name", Value::String("warm".into())),
                ("type", Value::String("string".into())),
                ("value", Value::String("0".into())),
            ]),
        },
    );

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
    // Each event's time from its put being sent, as the SSE client and a socket subscriber
    // read it, on channels.
    let (sse_tx, sse_rx) = mpsc::channel();
    let sse_reader = std::thread::spawn(move || {
        sse.set_read_timeout(Some(QUIET)).unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(at) = sent_at(&line) {
                let took = (base.elapsed().as_nanos() as u64).saturating_sub(at);
                if sse_tx.send(Duration::from_nanos(took)).is_err() {
                    break;
                }
            }
        }
    });
    let mut subscriber = Client::connect(&options).unwrap();
    subscriber.subscribe(&class, None, vec![]).unwrap();
    let (socket_tx, socket_rx) = mpsc::channel();
    let socket_reader = std::thread::spawn(move || {
        while let Ok(Some((_, push))) = subscriber.next_event(Some(QUIET)) {
            if let Push::Event { data, .. } = push
                && let Some(Value::String(v)) = data.get("value")
                && let Ok(at) = v.parse::<u64>()
            {
                let took = (base.elapsed().as_nanos() as u64).saturating_sub(at);
                if socket_tx.send(Duration::from_nanos(took)).is_err() {
                    break;
                }
            }
        }
    });

    // One put at a time, unpinned and pinned together (this process, the daemon and its
    // worker on CPU 0), next to the echo floors of a put's size.
    let mut one = Client::connect(&options).unwrap();
    let [
        mut ack,
        mut ack_pinned,
        mut to_sse,
        mut to_sse_pinned,
        mut to_socket,
    ] = [(); 5].map(|()| Vec::new());
    for round in 0..=ROUNDS {
        for pinned in [false, true] {
            if pinned {
                pin_this_process(Some(0));
                pin_process(daemon.pid(), Some(0));
            }
            for _ in 0..ONE_AT_A_TIME {
                let sent = Instant::now();
                put(&mut one, "one");
                let acked = sent.elapsed();
                let sse = sse_rx.recv_timeout(QUIET).expect("the SSE client's event");
                let socket = socket_rx
                    .recv_timeout(QUIET)
                    .expect("the subscriber's event");
                if round > 0 {
                    let (a, e) = if pinned {
                        (&mut ack_pinned, &mut to_sse_pinned)
                    } else {
                        to_socket.push(socket);
                        (&mut ack, &mut to_sse)
                    };
                    a.push(acked);
                    e.push(sse);
                }
            }
            pin_this_process(None);
            pin_process(daemon.pid(), None);
        }
    }
    let floors = echoes.floors(put_len, ack_len, 2000);
    println!(
        "# one put at a time ({ROUNDS} rounds of {ONE_AT_A_TIME} each way; isolated config provider, a durable commit per put)"
    );
    let [ack, ack_pinned, to_sse, to_sse_pinned, to_socket] =
        [ack, ack_pinned, to_sse, to_sse_pinned, to_socket].map(|mut v| percentiles(&mut v));
    println!(
        "event to the SSE client from sending its put: unpinned p50 {:.0} us p99 {:.0} us | pinned together p50 {:.0} us | the socket subscriber unpinned p50 {:.0} us | the put's acknowledgement unpinned p50 {:.0} us, pinned together p50 {:.0} us | {} (a put's sizes: {put_len} B / {ack_len} B)",
        us(to_sse.0),
        us(to_sse.1),
        us(to_sse_pinned.0),
        us(to_socket.0),
        us(ack.0),
        us(ack_pinned.0),
        floors.line()
    );

    let stop = Arc::new(AtomicBool::new(false));
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
    // Everything sent arrives within QUIET of the last put, or is counted missing.
    let drain = |rx: &mpsc::Receiver<Duration>| -> Vec<Duration> {
        std::iter::from_fn(|| rx.recv_timeout(QUIET).ok()).collect()
    };
    let mut sse_got = drain(&sse_rx);
    let mut socket_got = drain(&socket_rx);
    drop((sse_rx, socket_rx));
    sse_reader.join().unwrap();
    socket_reader.join().unwrap();
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
