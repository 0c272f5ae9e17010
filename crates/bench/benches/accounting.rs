//! The cost of accounting (`docs/lifecycle.md`, "Accounting"; `docs/performance.md`,
//! "Accounting"): a `get` of an in-daemon provider — the call accounting touches most,
//! with the thread CPU clock read around it — on a daemon with accounting and on one with
//! `PURVEYOR_ACCOUNTING=0`, in interleaved rounds from one client each, unpinned.
//!
//! Needs the release `purveyor` binary (`bench/run` builds it) and `cc`.

use std::path::Path;
use std::time::{Duration, Instant};

use purveyor_bench::{
    BenchDaemon, build_many, helper_mode, percentiles, pin_process, pin_thread, register,
    release_file, us,
};
use purveyor_client::{Client, ConnectOptions, Encoding, Target};
use purveyor_model::{ClassPath, Identifier, InstanceKey, Value};

const ROUNDS: usize = 21;
const PER_ROUND: usize = 1000;

fn main() {
    if helper_mode() {
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("accounting: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let many = build_many(dir.path());
    let start = |name: &str, accounting: bool| {
        let home = dir.path().join(name);
        let providers = home.join("providers");
        std::fs::create_dir_all(&providers).unwrap();
        register(&providers, "n10", &many);
        let off = Path::new("0");
        let env: Vec<(&str, &Path)> = if accounting {
            Vec::new()
        } else {
            vec![("PURVEYOR_ACCOUNTING", off)]
        };
        BenchDaemon::start(&bin, &home, &[], &env)
    };
    let on = start("on", true);
    let off = start("off", false);
    let class = ClassPath::new("bench.n10").unwrap();
    let mut key = InstanceKey::new();
    key.insert(Identifier::new("id").unwrap(), Value::U64(3));
    let mut clients = [client(&on.socket), client(&off.socket)];
    for c in &mut clients {
        c.get(&class, &key).unwrap();
    }
    println!(
        "# accounting: {ROUNDS} interleaved rounds of {PER_ROUND} gets per series; medians of the rounds' p50"
    );
    let series = [("unpinned", None), ("pinned together on CPU 0", Some(0))];
    for (what, cpu) in series {
        pin_process(on.pid(), cpu);
        pin_process(off.pid(), cpu);
        pin_thread(cpu);
        let (with, without) = compare(&mut clients, &class, &key);
        println!(
            "in-daemon get, {what}: with accounting {:.2} µs p50, without {:.2} µs p50: overhead {:+.1}% (target ≤ 3%)",
            us(with),
            us(without),
            (us(with) / us(without) - 1.0) * 100.0
        );
    }
    pin_thread(None);
    cold_starts(&bin, &many, dir.path());
}

/// The first get of an isolated provider (a worker started for it, no spare) as the
/// daemon's user, next to one with `user = "nobody"` and `sandbox = "strict"`: 11
/// fresh daemons, medians. Needs root for the user switch.
fn cold_starts(bin: &Path, many: &Path, dir: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("cold start with a user switch: skipped (needs root)");
        return;
    }
    let mut plain = Vec::new();
    let mut confined = Vec::new();
    for round in 0..11 {
        let home = dir.join(format!("cold{round}"));
        let providers = home.join("providers");
        std::fs::create_dir_all(&providers).unwrap();
        for (name, extra) in [
            ("n5", ""),
            ("n6", "user = \"nobody\"\nsandbox = \"strict\"\n"),
        ] {
            std::fs::write(
                providers.join(format!("{name}.toml")),
                format!(
                    "name = \"{name}\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"bench.{name}\"]\ncapabilities = [\"enumerate\", \"get\"]\n{extra}",
                    many.display().to_string()
                ),
            )
            .unwrap();
        }
        let no_spare = Path::new("0");
        let daemon = BenchDaemon::start(bin, &home, &[], &[("PURVEYOR_SPARE_WORKER", no_spare)]);
        let mut c = client(&daemon.socket);
        let mut key = InstanceKey::new();
        key.insert(Identifier::new("id").unwrap(), Value::U64(1));
        for (class, into) in [("bench.n5", &mut plain), ("bench.n6", &mut confined)] {
            let class = ClassPath::new(class).unwrap();
            let t = Instant::now();
            c.get(&class, &key).unwrap();
            into.push(t.elapsed());
        }
    }
    plain.sort();
    confined.sort();
    println!(
        "isolated cold start (first get, no spare worker): {:.2} ms as the daemon's user; {:.2} ms with user = \"nobody\" and sandbox = \"strict\" (medians of 11)",
        us(plain[5]) / 1000.0,
        us(confined[5]) / 1000.0
    );
}

/// The median over rounds of each daemon's p50, rounds alternating between the two.
fn compare(
    clients: &mut [Client; 2],
    class: &ClassPath,
    key: &InstanceKey,
) -> (Duration, Duration) {
    let mut medians: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (which, c) in clients.iter_mut().enumerate() {
            let mut samples = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                std::hint::black_box(c.get(class, key).unwrap());
                samples.push(t.elapsed());
            }
            medians[which].push(percentiles(&mut samples).0);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    (median(&mut medians[0]), median(&mut medians[1]))
}

fn client(socket: &Path) -> Client {
    let options = ConnectOptions::default()
        .target(Target::Socket(socket.to_owned()))
        .encoding(Encoding::Binary);
    Client::connect(&options).unwrap()
}
