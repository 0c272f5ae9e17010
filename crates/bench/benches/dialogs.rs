//! The dialog round trip (see `docs/performance.md`): the provider (the example `confirm`,
//! isolated) sends an update, the UI agent answers it, and the provider has the answer —
//! timed inside the provider — next to two raw Unix-socket echoes of similar frames, back
//! to back, in the same run (the floor: "two raw socket echoes"). The agent takes
//! the dialog on a direct channel (`docs/dialogs.md`); `PURVEYOR_BENCH_DIRECT_DIALOGS=0`
//! measures it through the daemon.
//!
//! Needs the release `purveyor` binary and dialogs library (`bench/run` builds them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, Echoes, percentiles, pin_process, pin_thread, us};
use purveyor_client::{
    Client, ConnectOptions, DialogInput, DialogUi, FormUpdate, OpenDialog, UiAction,
};
use purveyor_model::{ClassPath, Identifier, Instance, InstanceKey, Value};

const ROUNDS: u64 = 3;
const PER_ROUND: u64 = 1000;

/// An agent that answers every update at once with a small input.
struct Answering;

impl DialogUi for Answering {
    fn open(&mut self, _dialog: &OpenDialog) -> UiAction {
        UiAction::Wait
    }

    fn update(&mut self, _handle: u32, update: &FormUpdate) -> UiAction {
        let seq = update.text.clone().unwrap_or_default();
        UiAction::Send(DialogInput {
            button: None,
            values: Instance::from_pairs([("seq", Value::String(seq))]),
        })
    }
}

/// The agent's options: direct dialog channels unless `PURVEYOR_BENCH_DIRECT_DIALOGS=0`
/// (to measure the round trip through the daemon).
fn agent_options() -> ConnectOptions {
    ConnectOptions::default()
        .ui(true)
        .direct_dialogs(direct_dialogs())
}

fn direct_dialogs() -> bool {
    std::env::var("PURVEYOR_BENCH_DIRECT_DIALOGS").map_or(true, |v| v != "0")
}

fn main() {
    if purveyor_bench::helper_mode() {
        return;
    }
    let Some((bin, lib)) = purveyor_bench::release_daemon_and(
        "dialogs",
        "libpurveyor_dialogs.so",
        "purveyor-example-dialogs",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::write(
        providers.join("confirm.toml"),
        format!(
            "name = \"confirm\"\nhosting = \"isolated\"\nlibrary = {:?}\nclasses = [\"demo.vault\", \"demo.dialog_probe\"]\ncapabilities = [\"enumerate\", \"get\", \"call\"]\ncall_timeout = \"60s\"\n",
            lib.display().to_string()
        ),
    )
    .unwrap();
    let daemon = BenchDaemon::start(&bin, dir.path(), &[], &[]);
    let echoes = Echoes::spawn(dir.path());
    println!("# purveyor dialogs benchmark ({ROUNDS} rounds of {PER_ROUND} round trips)");

    let mut agent = Client::connect_socket(&daemon.socket, &agent_options()).unwrap();
    agent.set_dialog_ui(Box::new(Answering));
    agent.register_agent().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Whether the agent's thread should be pinned to CPU 0 (it looks between events).
    let pinned = Arc::new(AtomicBool::new(false));
    let agent_thread = {
        let (stop, pinned) = (stop.clone(), pinned.clone());
        std::thread::spawn(move || {
            let mut is_pinned = false;
            while !stop.load(Ordering::Relaxed) {
                let want = pinned.load(Ordering::Relaxed);
                if want != is_pinned {
                    pin_thread(want.then_some(0));
                    is_pinned = want;
                }
                agent.next_event(Some(Duration::from_millis(20))).unwrap();
            }
        })
    };
    let mut caller = Client::connect_socket(&daemon.socket, &ConnectOptions::default()).unwrap();
    let class = ClassPath::new("demo.dialog_probe").unwrap();
    let method = Identifier::new("round_trips").unwrap();
    let connect = |path: &std::path::Path| UnixStream::connect(path).unwrap();
    let mut together = connect(&echoes.together.socket);
    let mut split = echoes.split.as_ref().map(|e| connect(&e.socket));
    let mut free = connect(&echoes.free.socket);
    // Frames the size of a dialog_update push and of a dialog_send request.
    let mut frame = 48u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&48u32.to_le_bytes());
    frame.resize(4 + 48, 0);
    let mut buf = vec![0u8; 4 + 48];
    // Two echoes back to back, PER_ROUND times, into `samples` unless warming up.
    let mut two_echoes = |e: &mut UnixStream, samples: &mut Vec<Duration>, warmup: bool| {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            for _ in 0..2 {
                e.write_all(&frame).unwrap();
                e.read_exact(&mut buf).unwrap();
            }
            if !warmup {
                samples.push(t.elapsed());
            }
        }
    };
    // The provider's own timings of PER_ROUND round trips.
    let mut round_trips = |samples: &mut Vec<Duration>, warmup: bool| {
        let args = Instance::from_pairs([("count", Value::U64(PER_ROUND))]);
        let times = match caller
            .call(&class, &method, &InstanceKey::new(), args)
            .unwrap()
        {
            Some(Value::String(s)) => s,
            other => panic!("round_trips answered {other:?}"),
        };
        if !warmup {
            samples.extend(
                times
                    .split(',')
                    .map(|ns| Duration::from_nanos(ns.parse().unwrap())),
            );
        }
    };
    let [
        mut floor,
        mut split_s,
        mut free_s,
        mut ours,
        mut ours_pinned,
    ] = [(); 5].map(|()| Vec::new());
    // `PURVEYOR_BENCH_ONLY=unpinned`: unpinned round trips alone for `SECS` (default 5)
    // seconds, printed as one p50 (for `perf record` / `perf sched`).
    if std::env::var("PURVEYOR_BENCH_ONLY").is_ok_and(|v| v == "unpinned") {
        let secs: u64 = std::env::var("SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            round_trips(&mut ours, false);
        }
        let (p50, p99) = percentiles(&mut ours);
        println!(
            "dialog round trip unpinned alone: p50 {:.1} us  p99 {:.1} us",
            us(p50),
            us(p99)
        );
        stop.store(true, Ordering::Relaxed);
        agent_thread.join().unwrap();
        return;
    }
    for round in 0..=ROUNDS {
        let warmup = round == 0;
        pin_thread(Some(0));
        two_echoes(&mut together, &mut floor, warmup);
        if let Some(split) = split.as_mut() {
            two_echoes(split, &mut split_s, warmup);
        }
        // Ours pinned together: the daemon, its worker and the agent on CPU 0.
        pin_process(daemon.pid(), Some(0));
        pinned.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        round_trips(&mut ours_pinned, warmup);
        pinned.store(false, Ordering::Relaxed);
        pin_process(daemon.pid(), None);
        pin_thread(None);
        std::thread::sleep(Duration::from_millis(50));
        two_echoes(&mut free, &mut free_s, warmup);
        round_trips(&mut ours, warmup);
    }
    stop.store(true, Ordering::Relaxed);
    agent_thread.join().unwrap();
    let (p50, p99) = percentiles(&mut ours);
    let (f50, f99) = percentiles(&mut floor);
    let (pinned50, _) = percentiles(&mut ours_pinned);
    let (free50, _) = percentiles(&mut free_s);
    let split = (!split_s.is_empty()).then(|| percentiles(&mut split_s).0);
    println!(
        "dialog round trip (provider update -> agent input -> provider, isolated worker, {}): unpinned p50 {:.1} us  p99 {:.1} us ({:.2}x, target <= 3x) | pinned together p50 {:.1} us ({:.2}x) | floor (two echoes pinned together) p50 {:.1} us  p99 {:.1} us | two echoes unpinned p50 {:.1} us{}",
        if direct_dialogs() {
            "direct channel"
        } else {
            "through the daemon"
        },
        us(p50),
        us(p99),
        p50.as_secs_f64() / f50.as_secs_f64(),
        us(pinned50),
        pinned50.as_secs_f64() / f50.as_secs_f64(),
        us(f50),
        us(f99),
        us(free50),
        split
            .map(|s| format!(
                ", split {:.1} us (two cross-CPU wake-ups here: ~{:.0} us)",
                us(s),
                us(s.saturating_sub(f50))
            ))
            .unwrap_or_default()
    );
    drop(daemon);
}
