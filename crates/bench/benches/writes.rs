//! Writable providers, each figure next to its floor measured in the same run (see
//! `docs/performance.md`):
//! - acknowledged durable puts per second (the example `config` provider, isolated;
//!   concurrent puts share a commit of its store), with 1 client and with 4 at once, from
//!   the default client (its puts go on a direct channel to the worker after its first
//!   two) and from one that sends everything through the daemon (`direct(false)`), next
//!   to the bare store's commits per second (one writer, one put per commit) on the same
//!   disk with the same data;
//! - event fan-out: the time from sending a put until each of 100 subscribers (100
//!   connections) holds its event, next to the same bytes written to 100 Unix sockets
//!   and read by 100 threads.
//!
//! Needs the release `purveyor` binary and config library (`bench/run` builds them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, percentiles, us};
use purveyor_client::{Client, ConnectOptions, Push};
use purveyor_model::{ClassPath, Instance, Value};
use purveyor_provider::store::Store;

const PUTS: usize = 400;
const SUBSCRIBERS: usize = 100;
const EVENTS: usize = 200;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if purveyor_bench::helper_mode() {
        return;
    }
    let Some((bin, lib)) = purveyor_bench::release_daemon_and(
        "writes",
        "libpurveyor_config.so",
        "purveyor-example-config",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    purveyor_bench::register_config(&dir.path().join("providers"), &lib);
    let state = dir.path().join("state");
    // PURVEYOR_BENCH_THREADS=N: the daemon's runtime threads (default: one per two CPUs).
    let threads: Vec<String> = std::env::var("PURVEYOR_BENCH_THREADS")
        .map(|t| vec!["--threads".into(), t])
        .unwrap_or_default();
    let threads: Vec<&str> = threads.iter().map(String::as_str).collect();
    let daemon = BenchDaemon::start(
        &bin,
        dir.path(),
        &threads,
        &[("PURVEYOR_STATE_DIR", &state)],
    );
    println!("# purveyor writes benchmark ({PUTS} puts; {SUBSCRIBERS} subscribers)");
    // `PURVEYOR_BENCH_ONLY=one`: one client's put, its parts side by side (for profiling).
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "one") {
        one_client_parts(&daemon.socket, dir.path());
        return;
    }
    // `PURVEYOR_BENCH_ONLY=bare`: the bare store's commits alone for `SECS` seconds, to
    // profile beside `puts`.
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "bare") {
        let secs = std::env::var("SECS").ok().and_then(|s| s.parse().ok());
        let until = Instant::now() + Duration::from_secs(secs.unwrap_or(5));
        let mut rates = Vec::new();
        while Instant::now() < until {
            rates.push(bare_store(
                &dir.path().join(format!("bare{}.redb", rates.len())),
            ));
        }
        println!(
            "bare store alone: {:.0} commits/s (median of {} rounds)",
            median(rates.clone()),
            rates.len()
        );
        return;
    }
    // `PURVEYOR_BENCH_ONLY=puts`: `CLIENTS` clients' puts (default 1) alone for `SECS`
    // seconds (default 5), for `perf sched`; `DIRECT=0`: through the daemon.
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "puts") {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let clients = number("CLIENTS", 1) as usize;
        let direct = number("DIRECT", 1) != 0;
        let until = Instant::now() + Duration::from_secs(number("SECS", 5));
        let mut rates = Vec::new();
        while Instant::now() < until {
            rates.push(puts(&daemon.socket, clients, direct));
        }
        println!(
            "{clients} clients alone: {:.0} puts/s (median of {} rounds)",
            median(rates.clone()),
            rates.len()
        );
        return;
    }
    // The disk's speed wanders from second to second: the three are measured in turn,
    // ROUNDS times, and each figure is the median of its rounds.
    let mut rates: [Vec<f64>; 5] = Default::default();
    for round in 0..ROUNDS {
        rates[0].push(bare_store(&dir.path().join(format!("bare{round}.redb"))));
        rates[1].push(puts(&daemon.socket, 1, true));
        rates[2].push(puts(&daemon.socket, 4, true));
        rates[3].push(puts(&daemon.socket, 1, false));
        rates[4].push(puts(&daemon.socket, 4, false));
    }
    let [bare, one, four, one_daemon, four_daemon] = rates.map(median);
    println!("durable writes (median of {ROUNDS} rounds): bare store {bare:.0} commits/s");
    for (how, one, four) in [
        ("default client (puts on a direct channel)", one, four),
        (
            "through the daemon (direct(false))",
            one_daemon,
            four_daemon,
        ),
    ] {
        println!(
            "  {how}: {one:.0} puts/s with 1 client ({:.2}× the store), {four:.0} puts/s with 4 clients ({:.2}× the store, {:.2}× one client)",
            one / bare,
            four / bare,
            four / one
        );
    }
    fan_out(&daemon.socket);
}

fn setting(name: &str, value: &str) -> Instance {
    Instance::from_pairs([
        ("name", Value::String(name.into())),
        ("type", Value::String("string".into())),
        ("value", Value::String(value.into())),
    ])
}

/// Commits per second of the store the provider uses, one instance per transaction.
fn bare_store(path: &Path) -> f64 {
    let store = Store::open_at(path).unwrap();
    let start = Instant::now();
    for i in 0..PUTS {
        let s = setting(&format!("k{}", i % 50), &i.to_string());
        store
            .write(|tx| tx.put_instance("settings", &format!("k{}", i % 50), &s))
            .unwrap();
    }
    PUTS as f64 / start.elapsed().as_secs_f64()
}

/// One client's put next to its parts, each as p50 of single operations in turn: the bare
/// store's commit, a get relayed by the daemon to the same worker (the trip without the
/// disk), and the put.
fn one_client_parts(socket: &Path, dir: &Path) {
    let class = ClassPath::new("config.setting").unwrap();
    let store = Store::open_at(&dir.join("parts.redb")).unwrap();
    let mut relayed =
        Client::connect_socket(socket, &ConnectOptions::default().direct(false)).unwrap();
    relayed.put(&class, setting("warm", "1")).unwrap();
    let mut direct = Client::connect_socket(socket, &ConnectOptions::default()).unwrap();
    for _ in 0..2 {
        direct.put(&class, setting("warm", "1")).unwrap();
    }
    assert_eq!(
        direct.direct_channels().len(),
        1,
        "a direct channel for puts"
    );
    let mut key = purveyor_model::InstanceKey::new();
    key.insert(
        purveyor_model::Identifier::new("name").unwrap(),
        Value::String("warm".into()),
    );
    store
        .write(|tx| tx.put_instance("settings", "k1", &setting("k1", "1")))
        .unwrap();
    let mut alone = Vec::new();
    for _ in 0..PUTS * 3 {
        let t = Instant::now();
        relayed.get(&class, &key).unwrap();
        alone.push(t.elapsed());
    }
    let mut reads = Vec::new();
    for _ in 0..PUTS * 3 {
        let t = Instant::now();
        store.read(|tx| tx.instance("settings", "k1")).unwrap();
        reads.push(t.elapsed());
    }
    println!(
        "relayed get alone p50 {:.0} µs; bare store read {:.1} µs",
        us(percentiles(&mut alone).0),
        us(percentiles(&mut reads).0)
    );
    let (mut commit, mut get, mut put, mut on_channel) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..PUTS * 3 {
        let name = format!("k{}", i % 50);
        let s = setting(&name, &i.to_string());
        let t = Instant::now();
        store
            .write(|tx| tx.put_instance("settings", &name, &s))
            .unwrap();
        commit.push(t.elapsed());
        let t = Instant::now();
        relayed.get(&class, &key).unwrap();
        get.push(t.elapsed());
        let t = Instant::now();
        relayed.put(&class, s.clone()).unwrap();
        put.push(t.elapsed());
        let t = Instant::now();
        direct.put(&class, s).unwrap();
        on_channel.push(t.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| us(percentiles(v).0);
    let (commit, get, put) = (p50(&mut commit), p50(&mut get), p50(&mut put));
    let on_channel = p50(&mut on_channel);
    println!(
        "one client, p50: bare commit {commit:.0} µs; relayed get {get:.0} µs; put through the daemon {put:.0} µs ({:.0} µs beyond the commit and the get); put on a direct channel {on_channel:.0} µs ({:.0} µs beyond the commit)",
        put - commit - get,
        on_channel - commit
    );
}

/// Acknowledged puts per second with `clients` connections writing at once, on direct
/// channels (`direct`: the default client) or through the daemon.
fn puts(socket: &Path, clients: usize, direct: bool) -> f64 {
    let class = ClassPath::new("config.setting").unwrap();
    let per = PUTS / clients;
    let options = ConnectOptions::default().direct(direct);
    let mut conns: Vec<Client> = (0..clients)
        .map(|_| Client::connect_socket(socket, &options).unwrap())
        .collect();
    // Load the provider first, and let each client open its channel (after two puts).
    for (c, conn) in conns.iter_mut().enumerate() {
        for _ in 0..2 {
            conn.put(&class, setting(&format!("warm{c}"), "1")).unwrap();
        }
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for (c, conn) in conns.iter_mut().enumerate() {
            let class = &class;
            s.spawn(move || {
                for i in 0..per {
                    conn.put(class, setting(&format!("c{c}-{}", i % 50), &i.to_string()))
                        .unwrap();
                }
            });
        }
    });
    (per * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Time from sending a put until the first and the last of 100 subscribers holds its
/// event, and the same for 100 bare sockets.
fn fan_out(socket: &Path) {
    let class = ClassPath::new("config.setting").unwrap();
    let ready = Arc::new(Barrier::new(SUBSCRIBERS + 1));
    // received[subscriber][event] = when it arrived.
    let received: Arc<Mutex<Vec<Vec<Option<Instant>>>>> =
        Arc::new(Mutex::new(vec![vec![None; EVENTS]; SUBSCRIBERS]));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|n| {
            let (socket, class, ready, received) = (
                socket.to_owned(),
                class.clone(),
                ready.clone(),
                received.clone(),
            );
            std::thread::spawn(move || {
                let mut c = Client::connect_socket(&socket, &ConnectOptions::default()).unwrap();
                c.subscribe(&class, None, vec![]).unwrap();
                ready.wait();
                let mut got = 0;
                while got < EVENTS {
                    let Some((_, Push::Event { data, .. })) =
                        c.next_event(Some(Duration::from_secs(10))).unwrap()
                    else {
                        panic!("subscriber {n}: no event within 10 s (or one lost)");
                    };
                    let at = Instant::now();
                    let Some(Value::String(v)) = data.get("value") else {
                        continue;
                    };
                    let i: usize = v.parse().unwrap();
                    received.lock().unwrap()[n][i] = Some(at);
                    got += 1;
                }
            })
        })
        .collect();
    ready.wait();
    // The writer goes through the daemon, which offers a put's events before it
    // acknowledges the put, so "after the ack" is the fan-out alone (a put on a direct
    // channel is acknowledged by the worker as its events leave for the daemon).
    let mut writer =
        Client::connect_socket(socket, &ConnectOptions::default().direct(false)).unwrap();
    let mut sent = Vec::with_capacity(EVENTS);
    let mut ack = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let t = Instant::now();
        writer.put(&class, setting("fan", &i.to_string())).unwrap();
        ack.push(t.elapsed());
        sent.push(t);
        // Let the fan-out finish before the next event.
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in subscribers {
        s.join().unwrap();
    }
    let received = received.lock().unwrap();
    let mut first = Vec::new();
    let mut last = Vec::new();
    for (i, t) in sent.iter().enumerate() {
        let times: Vec<Instant> = received.iter().map(|r| r[i].unwrap()).collect();
        first.push(*times.iter().min().unwrap() - *t);
        last.push(*times.iter().max().unwrap() - *t);
    }
    let (ack50, _) = percentiles(&mut ack);
    let (first50, _) = percentiles(&mut first);
    let (last50, last99) = percentiles(&mut last);
    let floor = socket_fan_out();
    println!(
        "event fan-out to {SUBSCRIBERS} subscribers: put acknowledged {:.0} µs p50; first subscriber {:.0} µs, last {:.0} µs p50 ({:.0} µs p99) after the put was sent; bare 100-socket fan-out of the same bytes {:.0} µs p50 → last subscriber {:.0} µs after the ack ({:.1}× the bare fan-out)",
        us(ack50),
        us(first50),
        us(last50),
        us(last99),
        us(floor),
        us(last50.saturating_sub(ack50)),
        last50.saturating_sub(ack50).as_secs_f64() / floor.as_secs_f64()
    );
}

/// One writer, 100 socket pairs, 100 reader threads: from the first write until the last
/// reader holds its frame (p50 over the same number of rounds).
fn socket_fan_out() -> Duration {
    let frame = vec![7u8; 160];
    let mut writers = Vec::new();
    let received: Arc<Mutex<Vec<Vec<Option<Instant>>>>> =
        Arc::new(Mutex::new(vec![vec![None; EVENTS]; SUBSCRIBERS]));
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|n| {
            let (a, mut b) = UnixStream::pair().unwrap();
            writers.push(a);
            let (received, len) = (received.clone(), frame.len());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; len];
                for i in 0..EVENTS {
                    b.read_exact(&mut buf).unwrap();
                    received.lock().unwrap()[n][i] = Some(Instant::now());
                }
            })
        })
        .collect();
    let mut sent = Vec::new();
    for _ in 0..EVENTS {
        sent.push(Instant::now());
        for w in &mut writers {
            w.write_all(&frame).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for r in readers {
        r.join().unwrap();
    }
    let received = received.lock().unwrap();
    let mut last: Vec<Duration> = sent
        .iter()
        .enumerate()
        .map(|(i, t)| received.iter().map(|r| r[i].unwrap()).max().unwrap() - *t)
        .collect();
    percentiles(&mut last).0
}
