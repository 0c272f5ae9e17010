//! Cost curves: how each cost grows with the work (see `docs/performance.md`, "Cost
//! curves"). Each curve is a table; the figure that should stay flat is per item.
//! - registered providers 10 / 100 / 1 000 (in-daemon libraries, one class each): the
//!   daemon's start-up, the first `ls` (which loads them all) and the next, its RSS;
//! - instances 10 / 1 000 / 100 000 from one in-daemon provider: `get` of the class,
//!   time per instance;
//! - subscribers 1 / 100 / 10 000 (one connection each) to a class of the isolated
//!   `config` provider: from sending a put until the last subscriber holds its event;
//! - counter files 10 / 1 000 / 10 000 (10 counters each) served by the `counters`
//!   provider: finding them, and a snapshot of every set, per counter.
//!
//! `PURVEYOR_BENCH_ONLY=providers|instances|subscribers|counter-files` runs one curve.
//! Needs the release `purveyor` binary and config library (`bench/run` builds them), and
//! `cc` for the curves' provider library (`benches/curves/many.c`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use purveyor_bench::{
    BenchDaemon, build_many, helper_mode, ms, percentiles, register, release_file, rss_kb, us,
};
use purveyor_client::{AsyncClient, Client, ConnectOptions, Encoding, Push, Target};
use purveyor_model::{ClassPath, Instance, InstanceKey, Value};
use purveyor_provider::{CallContext, Caller, Provider};

fn main() {
    if helper_mode() {
        return;
    }
    purveyor_bench::raise_open_files();
    let only = std::env::var("PURVEYOR_BENCH_ONLY").ok();
    let want = |curve: &str| only.as_deref().is_none_or(|o| o == curve);
    let Some(bin) = release_file("purveyor") else {
        println!("curves: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let many = build_many(dir.path());
    if want("providers") {
        providers(&bin, &many);
    }
    if want("instances") {
        instances(&bin, &many);
    }
    if want("subscribers") {
        subscribers(&bin);
    }
    if want("counter-files") {
        counter_files();
    }
}

fn client(socket: &Path) -> Client {
    let options = ConnectOptions::default()
        .target(Target::Socket(socket.to_owned()))
        .encoding(Encoding::Binary);
    Client::connect(&options).unwrap()
}

fn providers(bin: &Path, lib: &Path) {
    println!(
        "# registered providers (in-daemon libraries, one class each): start-up until the socket accepts, the first ls (loads every one), the next ls, daemon RSS after"
    );
    for n in [10usize, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let providers = dir.path().join("providers");
        std::fs::create_dir_all(&providers).unwrap();
        for i in 0..n {
            register(&providers, &format!("p{i}"), lib);
        }
        let t = Instant::now();
        let daemon = BenchDaemon::start(bin, dir.path(), &[], &[]);
        let start_up = t.elapsed();
        let rss_idle = rss_kb(daemon.pid());
        let mut c = client(&daemon.socket);
        let t = Instant::now();
        let first = c.list_classes(None).unwrap();
        let cold = t.elapsed();
        let mut warm = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let list = c.list_classes(None).unwrap();
            warm.push(t.elapsed());
            assert_eq!(list.classes.len(), first.classes.len());
        }
        let bench_classes = first
            .classes
            .iter()
            .filter(|c| c.path().as_str().starts_with("bench."))
            .count();
        assert_eq!(bench_classes, n, "problems: {:?}", first.problems);
        let (warm50, _) = percentiles(&mut warm);
        let rss = rss_kb(daemon.pid());
        println!(
            "providers {n:>5}: start-up {:.1} ms; first ls {:.2} ms ({:.1} µs per provider); next ls {:.2} ms p50 ({:.2} µs per class); RSS {:.1} MB before ls, {:.1} MB after ({:.1} kB per loaded provider)",
            ms(start_up),
            ms(cold),
            us(cold) / n as f64,
            ms(warm50),
            us(warm50) / first.classes.len() as f64,
            rss_idle as f64 / 1024.0,
            rss as f64 / 1024.0,
            rss.saturating_sub(rss_idle) as f64 / n as f64,
        );
    }
}

fn instances(bin: &Path, lib: &Path) {
    println!(
        "# instances from one in-daemon provider (a C library, JSON encoding): get of the class through the daemon, p50"
    );
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    let counts = [10usize, 1000, 100_000];
    for n in counts {
        register(&providers, &format!("n{n}"), lib);
    }
    let daemon = BenchDaemon::start(bin, dir.path(), &[], &[]);
    let mut c = client(&daemon.socket);
    for n in counts {
        let class = ClassPath::new(format!("bench.n{n}")).unwrap();
        let rounds = (2_000_000 / n).clamp(20, 2000);
        let got = c.enumerate(&class, &InstanceKey::new()).unwrap();
        assert_eq!(got.len(), n);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let got = c.enumerate(&class, &InstanceKey::new()).unwrap();
            times.push(t.elapsed());
            std::hint::black_box(got);
        }
        let (p50, p99) = percentiles(&mut times);
        println!(
            "instances {n:>7}: {:.1} µs p50 ({:.1} µs p99); {:.3} µs per instance",
            us(p50),
            us(p99),
            us(p50) / n as f64
        );
    }
}

fn setting(value: usize) -> Instance {
    Instance::from_pairs([
        ("name", Value::String("fan".into())),
        ("type", Value::String("string".into())),
        ("value", Value::String(value.to_string())),
    ])
}

fn subscribers(bin: &Path) {
    let Some(lib) = release_file("libpurveyor_config.so") else {
        println!("subscribers: skipped (run `cargo build --release -p purveyor-example-config`)");
        return;
    };
    println!(
        "# subscribers (one connection each, one tokio runtime of 2 threads in the bench process) to config.setting: from sending a put until the first and the last holds its event, p50"
    );
    for n in [1usize, 100, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        purveyor_bench::register_config(&dir.path().join("providers"), &lib);
        let state = dir.path().join("state");
        let daemon = BenchDaemon::start(
            bin,
            dir.path(),
            &[
                "--limit",
                "conn.total=20000",
                "--limit",
                "conn.per_user=20000",
            ],
            &[("PURVEYOR_STATE_DIR", &state)],
        );
        let events = if n >= 10_000 { 20 } else { 100 };
        let (first, last) = fan_out(&daemon.socket, n, events);
        println!(
            "subscribers {n:>6}: first {:.0} µs, last {:.0} µs p50 after the put was sent ({:.2} µs per subscriber); daemon RSS {:.1} MB",
            us(first),
            us(last),
            us(last) / n as f64,
            rss_kb(daemon.pid()) as f64 / 1024.0
        );
    }
}

/// `n` subscribers; `events` puts one after another, each once every subscriber holds
/// the last. The p50 over the puts of the time until the first and the last subscriber
/// held the event.
fn fan_out(socket: &Path, n: usize, events: usize) -> (Duration, Duration) {
    let class = ClassPath::new("config.setting").unwrap();
    let base = Instant::now();
    // Per event: how many hold it, and when the first and the last got it (ns from base).
    let held: Arc<Vec<AtomicUsize>> = Arc::new((0..events).map(|_| AtomicUsize::new(0)).collect());
    let first: Arc<Vec<AtomicU64>> =
        Arc::new((0..events).map(|_| AtomicU64::new(u64::MAX)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = ConnectOptions::default()
        .target(Target::Socket(socket.to_owned()))
        .encoding(Encoding::Binary);
    let mut writer = client(socket);
    // The provider loaded, and the setting there, before anyone subscribes.
    writer.put(&class, setting(usize::MAX)).unwrap();
    let tasks: Vec<_> = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let c = AsyncClient::connect(&options).await.unwrap();
            c.subscribe(&class, None, vec![]).await.unwrap();
            let (held, first, last) = (held.clone(), first.clone(), last.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = 0;
                while got < events {
                    let (_, push) = c.next_event().await.unwrap();
                    let at = base.elapsed().as_nanos() as u64;
                    let Push::Event { data, .. } = push else {
                        panic!("a subscriber lost events: {push:?}");
                    };
                    let Some(Value::String(v)) = data.get("value") else {
                        continue;
                    };
                    let Ok(i) = v.parse::<usize>() else { continue };
                    first[i].fetch_min(at, Ordering::SeqCst);
                    last[i].fetch_max(at, Ordering::SeqCst);
                    held[i].fetch_add(1, Ordering::SeqCst);
                    got += 1;
                }
            }));
        }
        tasks
    });
    let mut to_first = Vec::with_capacity(events);
    let mut to_last = Vec::with_capacity(events);
    for i in 0..events {
        let sent = base.elapsed().as_nanos() as u64;
        writer.put(&class, setting(i)).unwrap();
        let give_up = Instant::now() + Duration::from_secs(60);
        while held[i].load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < give_up,
                "event {i}: {} of {n} subscribers hold it after 60 s",
                held[i].load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        to_first.push(Duration::from_nanos(first[i].load(Ordering::SeqCst) - sent));
        to_last.push(Duration::from_nanos(last[i].load(Ordering::SeqCst) - sent));
    }
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    (percentiles(&mut to_first).0, percentiles(&mut to_last).0)
}

fn counter_files() {
    println!(
        "# counter files (10 counters each) served by the counters provider, in process: finding them all (the first list of classes), then a snapshot of every set (enumerate each class), p50"
    );
    for n in [10usize, 1000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let sets: Vec<purveyor_counters::CounterSet> = (0..n)
            .map(|i| {
                let mut b = purveyor_counters::CounterSet::builder(&format!("curve{i}"));
                for c in 0..10 {
                    b = b.counter(
                        &format!("c{c}"),
                        purveyor_counters::CounterType::Counter,
                        purveyor_counters::Unit::Count,
                        "",
                    );
                }
                b.create_in(dir.path()).unwrap()
            })
            .collect();
        let provider = purveyor_app_counters::AppCounters::new(
            vec![dir.path().to_owned()],
            Vec::new(),
            Duration::from_secs(60),
        );
        let t = Instant::now();
        let classes = provider.classes();
        let found = t.elapsed();
        assert_eq!(classes.len(), n);
        let ctx = CallContext::new(Caller::current_process(), None);
        let rounds = (20_000 / n).clamp(5, 200);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            for class in &classes {
                std::hint::black_box(provider.enumerate(class.path(), &ctx).unwrap());
            }
            times.push(t.elapsed());
        }
        let (p50, _) = percentiles(&mut times);
        let counters = (n * 10) as f64;
        println!(
            "counter files {n:>6}: found in {:.2} ms ({:.1} µs per file); snapshot of all {:.2} ms p50 ({:.0} ns per counter)",
            ms(found),
            us(found) / n as f64,
            ms(p50),
            p50.as_nanos() as f64 / counters
        );
        drop(sets);
    }
}
