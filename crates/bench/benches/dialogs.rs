//! The dialog round trip through the daemon (see `docs/performance.md`): the provider (the
//! example `confirm`, isolated) sends an update, the UI agent answers it, and the provider
//! has the answer — timed inside the provider — next to two raw Unix-socket echoes of
//! similar frames, back to back, in the same run (the issue's floor: "two raw socket
//! echoes").
//!
//! Needs the release `purveyor` binary and dialogs library (`bench/run` builds them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use purveyor_bench::{BenchDaemon, EchoChild, percentiles, us};
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
    let echo = EchoChild::spawn(dir.path());
    println!("# purveyor dialogs benchmark ({ROUNDS} rounds of {PER_ROUND} round trips)");

    let mut agent =
        Client::connect_socket(&daemon.socket, &ConnectOptions::default().ui(true)).unwrap();
    agent.set_dialog_ui(Box::new(Answering));
    agent.register_agent().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let agent_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                agent.next_event(Some(Duration::from_millis(20))).unwrap();
            }
        })
    };
    let mut caller = Client::connect_socket(&daemon.socket, &ConnectOptions::default()).unwrap();
    let class = ClassPath::new("demo.dialog_probe").unwrap();
    let method = Identifier::new("round_trips").unwrap();
    let mut e = UnixStream::connect(&echo.socket).unwrap();
    // Frames the size of a dialog_update push and of a dialog_send request.
    let mut frame = 48u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&48u32.to_le_bytes());
    frame.resize(4 + 48, 0);
    let mut buf = vec![0u8; 4 + 48];
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for round in 0..=ROUNDS {
        let warmup = round == 0;
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            for _ in 0..2 {
                e.write_all(&frame).unwrap();
                e.read_exact(&mut buf).unwrap();
            }
            if !warmup {
                floor.push(t.elapsed());
            }
        }
        let args = Instance::from_pairs([("count", Value::U64(PER_ROUND))]);
        let times = match caller
            .call(&class, &method, &InstanceKey::new(), args)
            .unwrap()
        {
            Some(Value::String(s)) => s,
            other => panic!("round_trips answered {other:?}"),
        };
        if !warmup {
            ours.extend(
                times
                    .split(',')
                    .map(|ns| Duration::from_nanos(ns.parse().unwrap())),
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    agent_thread.join().unwrap();
    let (p50, p99) = percentiles(&mut ours);
    let (f50, f99) = percentiles(&mut floor);
    println!(
        "dialog round trip (provider update -> agent input -> provider, isolated worker): p50 {:.1} us  p99 {:.1} us | two raw echoes p50 {:.1} us  p99 {:.1} us | ratio p50 {:.2}x  p99 {:.2}x (target <= 3x)",
        us(p50),
        us(p99),
        us(f50),
        us(f99),
        p50.as_secs_f64() / f50.as_secs_f64(),
        p99.as_secs_f64() / f99.as_secs_f64()
    );
    drop(daemon);
}
