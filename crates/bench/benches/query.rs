//! SQL queries through the daemon (see `docs/performance.md`, "Queries"): `SELECT * FROM
//! system.process WHERE pid = P` next to a plain `get system.process pid=P` of the same
//! instance, interleaved in the same run, from the same client.
//!
//! Needs the release `purveyor` binary (`bench/run` builds it).

use std::time::Instant;

use purveyor_bench::{BenchDaemon, helper_mode, percentiles, release_file, us};
use purveyor_client::{Client, ConnectOptions, Encoding, Target};
use purveyor_model::{ClassPath, Identifier, InstanceKey, Value};

const ROUNDS: usize = 2000;

fn main() {
    if helper_mode() {
        return;
    }
    let Some(bin) = release_file("purveyor") else {
        println!("query: skipped (run `cargo build --release -p purveyor` first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = BenchDaemon::start(&bin, dir.path(), &[], &[]);
    let options = ConnectOptions::default()
        .target(Target::Socket(daemon.socket.clone()))
        .encoding(Encoding::Binary);
    let mut c = Client::connect(&options).unwrap();
    let pid = daemon.pid();
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
