//! Application counters, each figure next to its floor measured in the same run
//! (see `docs/performance.md`):
//! - a publisher's update next to a bare `AtomicU64::fetch_add` on the same mapping, on one
//!   thread, and on two threads sharing one counter or each with its own;
//! - a snapshot of 100 000 counters in 100 mapped files next to a plain copy of the bytes;
//! - `get app.X` of a 1 000-counter set through the daemon, next to the raw echo.
//!
//! The last part needs the release `purveyor` binary (`bench/run` builds it).

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use purveyor_bench::{BenchDaemon, Echoes, helper_mode, placed, release_file};
use purveyor_client::{Client, ConnectOptions, Encoding};
use purveyor_counters::{CounterFile, CounterSet, CounterType, Unit};
use purveyor_model::{ClassPath, InstanceKey};
use purveyor_protocol::Request;

const UPDATES: u64 = 20_000_000;

fn main() {
    if helper_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!("# purveyor counters benchmark");
    // `PURVEYOR_BENCH_ONLY=get`: the daemon's `get app.big` alone (for profiling).
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "get") {
        get_through_daemon(dir.path());
        return;
    }
    // `PURVEYOR_BENCH_ONLY=in-process`: the host's answer, encoding and decoding of `get
    // app.big` without a socket, repeated for `perf record`.
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "in-process") {
        let counters = dir.path().join("served");
        let _set = big_set(&counters);
        for _ in 0..5 {
            in_process_big(&counters, &big_request());
        }
        return;
    }
    updates(dir.path());
    snapshot(dir.path());
    get_through_daemon(dir.path());
}

/// ns per operation of `f` run `n` times on each of `threads` threads at once.
fn per_op(threads: usize, n: u64, f: impl Fn(usize) + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for _ in 0..n {
                    f(t);
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / n as f64
}

fn updates(dir: &Path) {
    let set = CounterSet::builder("bench_updates")
        .counter("n", CounterType::Counter, Unit::Count, "")
        .instances(2)
        .create_in(dir)
        .unwrap();
    let (a, b) = (set.instance("a").unwrap(), set.instance("b").unwrap());
    let (ca, cb) = (a.counter("n").unwrap(), b.counter("n").unwrap());
    // The floor: the same slots, reached through a mapping of our own.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(set.path())
        .unwrap();
    // SAFETY: the file is the publisher's, alive for this function, never resized.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let reader = CounterFile::open(set.path()).unwrap();
    let slot_of = |name: &str| {
        let (index, _) = reader
            .instances()
            .unwrap()
            .into_iter()
            .find(|(_, n)| n == name)
            .unwrap();
        let values = u32::from_le_bytes(map[72..76].try_into().unwrap()) as usize;
        values + index as usize * reader.stride() * 8
    };
    // SAFETY: 8-aligned offsets inside the mapping, which outlives these references.
    let raw_a = unsafe { &*map.as_ptr().add(slot_of("a")).cast::<AtomicU64>() };
    // SAFETY: as above.
    let raw_b = unsafe { &*map.as_ptr().add(slot_of("b")).cast::<AtomicU64>() };

    for round in 0..2 {
        let bare = per_op(1, UPDATES, |_| {
            black_box(raw_a).fetch_add(1, Ordering::Relaxed);
        });
        let ours = per_op(1, UPDATES, |_| black_box(&ca).add(1));
        if round == 1 {
            println!(
                "update, 1 thread: Counter::add {ours:.2} ns | bare fetch_add {bare:.2} ns | ratio {:.2}x",
                ours / bare
            );
        }
    }
    let shared_bare = per_op(2, UPDATES / 2, |_| {
        black_box(raw_a).fetch_add(1, Ordering::Relaxed);
    });
    let shared = per_op(2, UPDATES / 2, |_| black_box(&ca).add(1));
    let own_bare = per_op(2, UPDATES / 2, |t| {
        black_box(if t == 0 { raw_a } else { raw_b }).fetch_add(1, Ordering::Relaxed);
    });
    let own = per_op(2, UPDATES / 2, |t| {
        black_box(if t == 0 { &ca } else { &cb }).add(1)
    });
    println!(
        "update, 2 threads, one shared counter: {shared:.2} ns/op (bare {shared_bare:.2}, ratio {:.2}x)",
        shared / shared_bare
    );
    println!(
        "update, 2 threads, a counter each (separate cache lines): {own:.2} ns/op (bare {own_bare:.2}, ratio {:.2}x)",
        own / own_bare
    );
}

fn snapshot(dir: &Path) {
    let sets: Vec<CounterSet> = (0..100)
        .map(|i| {
            let mut b = CounterSet::builder(&format!("bench_snap{i}"));
            for c in 0..1000 {
                b = b.counter(&format!("c{c}"), CounterType::Counter, Unit::Count, "");
            }
            b.create_in(dir).unwrap()
        })
        .collect();
    for set in &sets {
        set.counter("c7").unwrap().add(7);
    }
    let files: Vec<CounterFile> = sets
        .iter()
        .map(|s| CounterFile::open(s.path()).unwrap())
        .collect();
    let bytes: Vec<Vec<u8>> = sets
        .iter()
        .map(|s| std::fs::read(s.path()).unwrap())
        .collect();
    let value_bytes = 1000 * 8;
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    let mut copy = vec![0u8; value_bytes * 100];
    for _ in 0..200 {
        let t = Instant::now();
        let snaps: Vec<_> = files.iter().map(|f| f.snapshot().unwrap()).collect();
        ours.push(t.elapsed());
        black_box(snaps);
        let t = Instant::now();
        for (i, b) in bytes.iter().enumerate() {
            let at = b.len() - value_bytes;
            copy[i * value_bytes..(i + 1) * value_bytes].copy_from_slice(&b[at..]);
        }
        black_box(&copy);
        floor.push(t.elapsed());
    }
    ours.sort();
    floor.sort();
    let (o, f) = (ours[ours.len() / 2], floor[floor.len() / 2]);
    println!(
        "snapshot of 100 000 counters in 100 files: p50 {:.3} ms ({:.2} ns/counter) | plain copy {:.3} ms ({:.2} ns/counter) | ratio {:.1}x",
        o.as_secs_f64() * 1e3,
        o.as_nanos() as f64 / 100_000.0,
        f.as_secs_f64() * 1e3,
        f.as_nanos() as f64 / 100_000.0,
        o.as_secs_f64() / f.as_secs_f64()
    );
}

fn get_through_daemon(dir: &Path) {
    let Some(bin) = release_file("purveyor") else {
        println!("get app.X: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let counters = dir.join("served");
    let _set = big_set(&counters);
    let echoes = Echoes::spawn(dir);
    let daemon = BenchDaemon::start(&bin, dir, &[], &[("PURVEYOR_COUNTERS", &counters)]);
    let socket = &daemon.socket;
    let mut c = Client::connect_socket(
        socket,
        &ConnectOptions::default().encoding(Encoding::Binary),
    )
    .unwrap();
    let request = big_request();
    let m = placed(&mut c, daemon.pid(), None, &echoes, &request, 10, 300);
    println!(
        "get app.big (1 000 counters, {} B reply) through the daemon: {}",
        m.reply_len,
        m.line()
    );
    in_process_big(&counters, &request);
}

/// The set `app.big`: 1 000 counters, in a file under `counters`.
fn big_set(counters: &Path) -> CounterSet {
    let mut b = CounterSet::builder("big");
    for c in 0..1000 {
        b = b.counter(&format!("c{c}"), CounterType::Counter, Unit::Count, "");
    }
    let set = b.create_in(counters).unwrap();
    set.counter("c1").unwrap().add(1);
    set
}

fn big_request() -> Request {
    Request::Get {
        class: ClassPath::new("app.big").unwrap(),
        key: InstanceKey::new(),
    }
}

/// Where a `get app.big` spends its time without a socket: the host's answer, the reply's
/// encoding, and the client's decoding, each hot in a loop.
fn in_process_big(counters: &Path, request: &Request) {
    use purveyor_protocol::{Outcome, ServerMessage, decode_server_message, encode_server_frame};
    // SAFETY: set before any thread of this process reads the environment again.
    unsafe { std::env::set_var("PURVEYOR_COUNTERS", counters) };
    let host = purveyor_client::default_host(purveyor_protocol::HostMode::Embedded, None);
    let caller = purveyor_host::Caller::current_process();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 2000;
    let response = runtime
        .block_on(host.handle(request.clone(), &caller))
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        black_box(
            runtime
                .block_on(host.handle(request.clone(), &caller))
                .unwrap(),
        );
    }
    let answer = t.elapsed() / n;
    let msg = ServerMessage::Reply {
        id: 1,
        outcome: Outcome::Ok(response),
    };
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        out.clear();
        encode_server_frame(Encoding::Binary, &msg, u32::MAX, &mut out).unwrap();
    }
    let encode = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        black_box(decode_server_message(Encoding::Binary, &out[4..]).unwrap());
    }
    let decoded = t.elapsed() / n;
    println!(
        "get app.big in process: the host's answer {:.1} us, encoding {:.1} us, decoding {:.1} us",
        answer.as_secs_f64() * 1e6,
        encode.as_secs_f64() * 1e6,
        decoded.as_secs_f64() * 1e6
    );
}
