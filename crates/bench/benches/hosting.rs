//! Provider calls per hosting model, each next to the raw Unix-socket echo floor measured
//! in the same run; cold load per model; memory per loaded provider
//! (see `docs/performance.md`).
//!
//! Needs the release `purveyor` binary and example library, and `cc`:
//! `cargo build --release -p purveyor -p purveyor-example-provider && cargo bench -p purveyor-bench --bench hosting`
//! (or `bench/run`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, Echoes, helper_mode, ms, percentiles, placed, release_file};
use purveyor_client::{Client, ConnectOptions, Encoding};
use purveyor_model::{ClassPath, Identifier, InstanceKey, ProviderState, Value};
use purveyor_protocol::{Request, Response};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 2000;
const COLD_SAMPLES: usize = 20;

fn main() {
    if helper_mode() {
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("hosting: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let Some(rust_lib) = release_file("libpurveyor_example.so") else {
        println!("hosting: skipped (run `cargo build --release -p purveyor-example-provider`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c_exe = dir.path().join("demo-external");
    let demo_c = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/providers/c/demo.c"
    );
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../../include");
    let ok = Command::new("cc")
        .args(["-O2", "-DPURVEYOR_EXTERNAL", "-I", include, "-o"])
        .arg(&c_exe)
        .arg(demo_c)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cc failed");

    let echoes = Echoes::spawn(dir.path());

    println!(
        "# purveyor hosting benchmark ({} round trips each, interleaved with the echo)",
        ROUNDS * PER_ROUND
    );
    let lib = rust_lib.display().to_string();
    // PURVEYOR_BENCH_IN_PROCESS_ONLY=1: only the in-process figures; `=in-daemon`: only
    // the in-daemon one (to count its instructions under `valgrind --tool=callgrind`).
    let only = std::env::var("PURVEYOR_BENCH_IN_PROCESS_ONLY").ok();
    in_process(dir.path(), &lib, only.as_deref() == Some("in-daemon"));
    if only.is_some() {
        return;
    }
    let models: [(&str, String, &str, bool); 4] = [
        ("builtin", String::new(), "purveyor.host", false),
        (
            "in-daemon",
            format!("hosting = \"in-daemon\"\nlibrary = {lib:?}"),
            "demo.greeting",
            true,
        ),
        (
            "isolated",
            format!("hosting = \"isolated\"\nlibrary = {lib:?}"),
            "demo.greeting",
            true,
        ),
        (
            "external (C)",
            format!(
                "hosting = \"external\"\ncommand = [{:?}]",
                c_exe.display().to_string()
            ),
            "demo.counter",
            true,
        ),
    ];
    for (label, entry, class, keyed) in &models {
        let base = dir.path().join(label.replace([' ', '(', ')'], ""));
        let pdir = base.join("providers");
        std::fs::create_dir_all(&pdir).unwrap();
        if !entry.is_empty() {
            std::fs::write(
                pdir.join("bench.toml"),
                format!(
                    "name = \"bench\"\n{entry}\nclasses = [\"{class}\"]\ncapabilities = [\"enumerate\", \"get\"]\nclear_after = \"100ms\"\n"
                ),
            )
            .unwrap();
        }
        // PURVEYOR_BENCH_THREADS=N: the daemon's runtime threads (default: one per two CPUs).
        let threads: Vec<String> = std::env::var("PURVEYOR_BENCH_THREADS")
            .map(|t| vec!["--threads".into(), t])
            .unwrap_or_default();
        let threads: Vec<&str> = threads.iter().map(String::as_str).collect();
        let daemon = BenchDaemon::start(&bin, &base, &threads, &[("PURVEYOR_WORKER", &bin)]);
        let socket = &daemon.socket;
        let mut c = Client::connect_socket(
            socket,
            &ConnectOptions::default().encoding(Encoding::Binary),
        )
        .unwrap();
        let mut key = InstanceKey::new();
        if *keyed {
            let name = if *class == "demo.counter" { "a" } else { "x" };
            key.insert(Identifier::new("name").unwrap(), Value::String(name.into()));
        }
        let request = Request::Get {
            class: ClassPath::new(*class).unwrap(),
            key,
        };
        if !entry.is_empty() {
            cold_load(label, &mut c, &request);
        }
        latency(label, &mut c, &daemon, &echoes, &request);
        if *label == "in-daemon" {
            against_builtin(&mut c, &request);
        }
        if *label == "isolated" {
            // The same calls with direct channels off: client → daemon → worker and back.
            let mut relayed = Client::connect_socket(
                socket,
                &ConnectOptions::default()
                    .encoding(Encoding::Binary)
                    .direct(false),
            )
            .unwrap();
            // `PURVEYOR_BENCH_ONLY=relayed`: relayed gets alone, unpinned, for `SECS`
            // seconds (default 5), for `perf sched`.
            if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "relayed") {
                relayed_alone(&mut relayed, &request);
                return;
            }
            latency(
                "isolated, relayed",
                &mut relayed,
                &daemon,
                &echoes,
                &request,
            );
        }
        if !entry.is_empty() {
            memory(label, &mut c, &request, &daemon);
        }
    }
}

/// The host's own work per get, with no socket: `Host::handle` in a loop, for the builtin
/// `purveyor.host` and an in-daemon `demo.greeting` in one host, in alternating rounds.
/// The difference is what the library boundary costs (encode, call, decode, watchdog).
fn in_process(dir: &Path, lib: &str, library_only: bool) {
    let pdir = dir.join("in-process");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("bench.toml"),
        format!(
            "name = \"bench\"\nhosting = \"in-daemon\"\nlibrary = {lib:?}\nclasses = [\"demo.greeting\"]\ncapabilities = [\"get\"]\n"
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host =
        purveyor_client::default_host(purveyor_protocol::HostMode::Embedded, Some(vec![pdir]));
    let caller = purveyor_host::Caller::current_process();
    let mut key = InstanceKey::new();
    key.insert(Identifier::new("name").unwrap(), Value::String("x".into()));
    let requests = [
        Request::Get {
            class: ClassPath::new("purveyor.host").unwrap(),
            key: InstanceKey::new(),
        },
        Request::Get {
            class: ClassPath::new("demo.greeting").unwrap(),
            key,
        },
    ];
    const N: u32 = 20_000;
    let mut best = [Duration::MAX; 2];
    runtime.block_on(async {
        for _ in 0..ROUNDS {
            for (i, request) in requests.iter().enumerate() {
                if i == 0 && library_only {
                    continue;
                }
                let t = Instant::now();
                for _ in 0..N {
                    host.handle(request.clone(), &caller).await.unwrap();
                }
                best[i] = best[i].min(t.elapsed() / N);
            }
        }
    });
    println!(
        "in-process    Host::handle get, best round: builtin {:.2} us, in-daemon {:.2} us (+{:.2} us)",
        best[0].as_secs_f64() * 1e6,
        best[1].as_secs_f64() * 1e6,
        (best[1].as_secs_f64() - best[0].as_secs_f64()) * 1e6
    );
}

/// First request after the provider was unloaded: load + call, p50 over several loads.
fn cold_load(label: &str, c: &mut Client, request: &Request) {
    let mut samples = Vec::new();
    for _ in 0..COLD_SAMPLES {
        wait_unloaded(c);
        let t = Instant::now();
        c.request(request.clone()).unwrap();
        samples.push(t.elapsed());
    }
    let (p50, p99) = percentiles(&mut samples);
    println!(
        "{label:<13} cold first request (load + call): p50 {:>7.3} ms  max {:>7.3} ms",
        ms(p50),
        ms(p99)
    );
}

fn wait_unloaded(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bench = c
            .providers()
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_str() == "bench")
            .unwrap();
        if bench.state == ProviderState::Registered {
            // Let a released worker finish exiting before the next sample.
            std::thread::sleep(Duration::from_millis(20));
            return;
        }
        assert!(Instant::now() < deadline, "the provider was not unloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn relayed_alone(c: &mut Client, request: &Request) {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (p50, p99) = alone(c, request, std::time::Duration::from_secs(secs));
    println!(
        "isolated, relayed get alone, unpinned: p50 {:.1} us p99 {:.1} us",
        purveyor_bench::us(p50),
        purveyor_bench::us(p99)
    );
}

/// `request` asked back to back for `time`, nothing pinned: p50 and p99.
fn alone(
    c: &mut Client,
    request: &Request,
    time: std::time::Duration,
) -> (std::time::Duration, std::time::Duration) {
    let until = std::time::Instant::now() + time;
    let mut samples = Vec::new();
    while std::time::Instant::now() < until {
        let t = std::time::Instant::now();
        c.request(request.clone()).unwrap();
        samples.push(t.elapsed());
    }
    purveyor_bench::percentiles(&mut samples)
}

fn latency(label: &str, c: &mut Client, daemon: &BenchDaemon, echoes: &Echoes, request: &Request) {
    // Enough reads for a client to open its direct channel, where it may (more after
    // the cold loads closed its earlier channels unused).
    for done in 0..200 {
        match c.request(request.clone()).unwrap() {
            Response::Instance(_) => {}
            other => panic!("{label}: {other:?}"),
        }
        if done >= 2 && !c.direct_channels().is_empty() {
            break;
        }
    }
    let direct = if c.direct_channels().is_empty() {
        ""
    } else {
        " on a direct channel"
    };
    // Before any round pins anything: where the scheduler puts the processes on its own
    // (a pinned round leaves them together, which the unpinned rounds after it inherit).
    let (first, _) = alone(c, request, std::time::Duration::from_secs(1));
    let m = placed(c, daemon.pid(), None, echoes, request, ROUNDS, PER_ROUND);
    println!(
        "{label:<13} get ({} B reply){direct}: {} | alone for 1 s before any pinning: p50 {:.1} us",
        m.reply_len,
        m.line(),
        purveyor_bench::us(first)
    );
}

/// The in-daemon target is relative to the builtin call: both measured in one daemon, in
/// alternating rounds (so both see the same machine), p50 and p99 of each and their ratio.
fn against_builtin(c: &mut Client, request: &Request) {
    let builtin = Request::Get {
        class: ClassPath::new("purveyor.host").unwrap(),
        key: InstanceKey::new(),
    };
    let mut samples = [Vec::new(), Vec::new()];
    for round in 0..=ROUNDS {
        for (i, r) in [&builtin, request].into_iter().enumerate() {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                c.request(r.clone()).unwrap();
                if round > 0 {
                    samples[i].push(t.elapsed());
                }
            }
        }
    }
    let [b, ours] = samples.map(|mut s| percentiles(&mut s));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "in-daemon     get vs builtin get, same daemon, alternating rounds: p50 {:.1} vs {:.1} us, p99 {:.1} vs {:.1} us | ratio p50 {:.2}x  p99 {:.2}x",
        purveyor_bench::us(ours.0),
        purveyor_bench::us(b.0),
        purveyor_bench::us(ours.1),
        purveyor_bench::us(b.1),
        ratio(ours.0, b.0),
        ratio(ours.1, b.1)
    );
}

/// Resident memory a loaded provider costs: the daemon's growth, plus its own process.
fn memory(label: &str, c: &mut Client, request: &Request, daemon: &BenchDaemon) {
    wait_unloaded(c);
    let before = rss_kb(daemon.pid());
    c.request(request.clone()).unwrap();
    let after = rss_kb(daemon.pid());
    let status = c
        .providers()
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_str() == "bench")
        .unwrap();
    let process = status.pid.map_or(0, rss_kb);
    println!(
        "{label:<13} memory per loaded provider: daemon +{} kB, its process {} kB",
        after.saturating_sub(before),
        process
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
