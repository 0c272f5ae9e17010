//! SQL queries and change events through the daemon (see `docs/performance.md`,
//! "Queries"), each next to its plain request in the same run:
//! - `SELECT * FROM system.process WHERE pid = P` next to a plain `get` of that instance;
//! - `SELECT * FROM` a 1 000-instance class next to an `enumerate` of it, per row;
//! - a join of two 1 000-instance classes: its time and the provider calls it made;
//! - 1 000 change subscribers on one class at 100 ms: the provider's enumerations per
//!   second, the daemon's CPU per interval, and the time from a change to the last
//!   subscriber.
//!
//! Needs the release `purveyor` binary and config library (`bench/run` builds them), and
//! `cc` for the curves' provider library.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use purveyor_bench::{
    BenchDaemon, Echoes, build_many, helper_mode, percentiles, placed, register, register_config,
    release_file, us,
};
use purveyor_client::{AsyncClient, Client, ConnectOptions, Encoding, Push, Target};
use purveyor_model::{ClassPath, Identifier, Instance, InstanceKey, Value};
use purveyor_protocol::Request;

const ROUNDS: usize = 2000;

fn main() {
    if helper_mode() {
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("query: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    purveyor_bench::raise_open_files();
    let dir = tempfile::tempdir().unwrap();
    let many = build_many(dir.path());
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    register(&providers, "n1000", &many);
    register(&providers, "n1000b", &many);
    let daemon = BenchDaemon::start(&bin, dir.path(), &[], &[]);
    let mut c = client(&daemon.socket);
    key_query(&mut c, daemon.pid());
    regimes(&mut c, dir.path(), daemon.pid());
    thousand(&mut c);
    match release_file("libpurveyor_config.so") {
        Some(lib) => change_subscribers(&bin, &lib),
        None => println!("change subscribers: skipped (build purveyor-example-config)"),
    }
}

fn client(socket: &Path) -> Client {
    let options = ConnectOptions::default()
        .target(Target::Socket(socket.to_owned()))
        .encoding(Encoding::Binary);
    Client::connect(&options).unwrap()
}

fn key_query(c: &mut Client, pid: u32) {
    let class = ClassPath::new("system.process").unwrap();
    let mut key = InstanceKey::new();
    key.insert(Identifier::new("pid").unwrap(), Value::U64(pid.into()));
    let sql = format!("SELECT * FROM system.process WHERE pid = {pid}");
    // Warm: the provider loaded, both paths run once.
    c.get(&class, &key).unwrap();
    assert_eq!(c.query(&sql, false).unwrap().rows.len(), 1);
    let (mut gets, mut queries) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        std::hint::black_box(c.get(&class, &key).unwrap());
        gets.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(c.query(&sql, false).unwrap());
        queries.push(t.elapsed());
    }
    let (get50, get99) = percentiles(&mut gets);
    let (q50, q99) = percentiles(&mut queries);
    println!("# query: {ROUNDS} rounds, interleaved, unpinned");
    println!(
        "WHERE pid = P on system.process: {:.1} µs p50 ({:.1} µs p99); plain get of the same instance {:.1} µs p50 ({:.1} µs p99); ratio {:.2}×",
        us(q50),
        us(q99),
        us(get50),
        us(get99),
        q50.as_secs_f64() / get50.as_secs_f64()
    );
}

/// The key query and its plain get in every regime (`purveyor_bench::placed`): next to the
/// floor (an echo pinned with the client), the split and unpinned echoes, unpinned and
/// with the daemon pinned together with the client.
fn regimes(c: &mut Client, dir: &Path, pid: u32) {
    let echoes = Echoes::spawn(dir);
    let mut key = InstanceKey::new();
    key.insert(Identifier::new("pid").unwrap(), Value::U64(pid.into()));
    let get = Request::Get {
        class: ClassPath::new("system.process").unwrap(),
        key,
    };
    let query = Request::Query {
        sql: format!("SELECT * FROM system.process WHERE pid = {pid}"),
        plan: false,
    };
    for (name, request) in [("get", &get), ("query", &query)] {
        let m = placed(c, pid, None, &echoes, request, 10, 200);
        println!(
            "{name} of system.process pid=P ({} B reply): {}",
            m.reply_len,
            m.line()
        );
    }
}

/// Calls made to provider `name` so far.
fn calls(c: &mut Client, name: &str) -> u64 {
    c.providers()
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_str() == name)
        .map_or(0, |p| p.calls)
}

fn thousand(c: &mut Client) {
    let class = ClassPath::new("bench.n1000").unwrap();
    let sql = "SELECT * FROM bench.n1000";
    assert_eq!(c.query(sql, false).unwrap().rows.len(), 1000);
    let (mut queries, mut enumerates) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(c.query(sql, false).unwrap());
        queries.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(c.enumerate(&class, &InstanceKey::new()).unwrap());
        enumerates.push(t.elapsed());
    }
    let (q50, _) = percentiles(&mut queries);
    let (e50, _) = percentiles(&mut enumerates);
    println!(
        "SELECT * of a 1 000-instance class: {:.0} µs p50 ({:.2} µs per row); enumerate of it {:.0} µs p50 ({:.2} µs per row); ratio {:.2}×",
        us(q50),
        us(q50) / 1000.0,
        us(e50),
        us(e50) / 1000.0,
        q50.as_secs_f64() / e50.as_secs_f64()
    );
    let join =
        "SELECT count(*), sum(b.value) FROM bench.n1000 AS a JOIN bench.n1000b AS b ON b.id = a.id";
    let plan = c.query(join, true).unwrap().plan;
    let before = calls(c, "n1000") + calls(c, "n1000b");
    let mut joins = Vec::new();
    const JOINS: u64 = 50;
    for _ in 0..JOINS {
        let t = Instant::now();
        std::hint::black_box(c.query(join, false).unwrap());
        joins.push(t.elapsed());
    }
    let made = calls(c, "n1000") + calls(c, "n1000b") - before;
    let (j50, _) = percentiles(&mut joins);
    println!(
        "join of two 1 000-instance classes on their key: {:.0} µs p50; {:.1} provider calls per join; plan: {}",
        us(j50),
        made as f64 / JOINS as f64,
        plan.join("; ")
    );
}

fn setting(value: usize) -> Instance {
    Instance::from_pairs([
        ("name", Value::String("watched".into())),
        ("type", Value::String("string".into())),
        ("value", Value::String(value.to_string())),
    ])
}

/// The daemon's user + system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
}

const SUBSCRIBERS: usize = 1000;
const CHANGES: usize = 20;

fn change_subscribers(bin: &Path, lib: &Path) {
    let dir = tempfile::tempdir().unwrap();
    register_config(&dir.path().join("providers"), lib);
    let state = dir.path().join("state");
    let daemon = BenchDaemon::start(
        bin,
        dir.path(),
        &[
            "--limit",
            "conn.total=5000",
            "--limit",
            "conn.per_user=5000",
        ],
        &[("PURVEYOR_STATE_DIR", &state)],
    );
    let class = ClassPath::new("config.setting").unwrap();
    let mut writer = client(&daemon.socket);
    writer.put(&class, setting(usize::MAX)).unwrap();
    let options = ConnectOptions::default()
        .target(Target::Socket(daemon.socket.clone()))
        .encoding(Encoding::Binary);
    let base = Instant::now();
    let held: Arc<Vec<AtomicUsize>> = Arc::new((0..CHANGES).map(|_| AtomicUsize::new(0)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..CHANGES).map(|_| AtomicU64::new(0)).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let interval = Duration::from_millis(100);
    let tasks: Vec<_> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..SUBSCRIBERS {
            let c = AsyncClient::connect(&options).await.unwrap();
            c.watch_changes(&class, vec![], interval, false)
                .await
                .unwrap();
            let (held, last) = (held.clone(), last.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = 0;
                while got < CHANGES {
                    let (_, push) = c.next_event().await.unwrap();
                    let Push::Change { instance, .. } = push else {
                        panic!("{push:?}")
                    };
                    let Some(Value::String(v)) = instance.get("value") else {
                        continue;
                    };
                    let Ok(i) = v.parse::<usize>() else { continue };
                    last[i].fetch_max(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    held[i].fetch_add(1, Ordering::SeqCst);
                    got += 1;
                }
            }));
        }
        tasks
    });
    // Quiet polls: provider enumerations and daemon CPU over 3 s.
    std::thread::sleep(Duration::from_millis(500));
    let (calls0, cpu0) = (calls(&mut writer, "config"), cpu_ticks(daemon.pid()));
    let quiet = Duration::from_secs(3);
    std::thread::sleep(quiet);
    let polls = calls(&mut writer, "config") - calls0;
    let ticks = cpu_ticks(daemon.pid()) - cpu0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let intervals = quiet.as_secs_f64() / interval.as_secs_f64();
    let mut to_last = Vec::new();
    for i in 0..CHANGES {
        let sent = base.elapsed().as_nanos() as u64;
        writer.put(&class, setting(i)).unwrap();
        let give_up = Instant::now() + Duration::from_secs(30);
        while held[i].load(Ordering::SeqCst) < SUBSCRIBERS {
            assert!(
                Instant::now() < give_up,
                "change {i} did not reach every subscriber"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        to_last.push(Duration::from_nanos(last[i].load(Ordering::SeqCst) - sent));
    }
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (l50, l99) = percentiles(&mut to_last);
    println!(
        "{SUBSCRIBERS} change subscribers, one class at 100 ms: {:.1} provider enumerations per second (target 10); daemon CPU {:.1} ms per interval; a change reaches the last subscriber {:.1} ms p50 ({:.1} ms p99) after its put was sent",
        polls as f64 / quiet.as_secs_f64(),
        ticks as f64 / hz * 1000.0 / intervals,
        us(l50) / 1000.0,
        us(l99) / 1000.0
    );
}
