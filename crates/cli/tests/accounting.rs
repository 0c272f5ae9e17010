//! What each provider costs (`docs/lifecycle.md`, "Accounting"): CPU charged to the right
//! provider, a worker's as its process's, and `purveyor top` showing the one burning
//! CPU first. The burner is the C demo provider's `get name=burnN` (N ms of CPU).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, Tmux, demo_and_neighbour, provider_row};

fn burn(d: &Daemon, ms: u32) {
    let out = d.cli(&["get", "demo.counter", &format!("name=burn{ms}")]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_in_daemon_providers_cpu_is_charged_to_it_and_not_to_a_neighbour() {
    let d = Daemon::start(&demo_and_neighbour("hot", "in-daemon", ""), &[], &[]);
    assert!(d.cli(&["get", "demo.greeting", "name=x"]).status.success());
    burn(&d, 300);
    burn(&d, 300);
    let hot = provider_row(&d, "hot");
    let cpu = hot["cpu_seconds"].as_f64().unwrap();
    assert!((0.55..1.5).contains(&cpu), "hot: {hot}");
    assert!(hot["rss_bytes"].is_null(), "no process of its own: {hot}");
    // An in-daemon library's requests and replies are counted as they cross its ABI.
    assert!(hot["bytes_out"].as_u64().unwrap() > 20, "{hot}");
    assert!(hot["bytes_in"].as_u64().unwrap() > 20, "{hot}");
    assert!(hot["latency_p50_ms"].as_f64().unwrap() >= 256.0, "{hot}");
    let neighbour = provider_row(&d, "greeting");
    assert!(
        neighbour["cpu_seconds"].as_f64().unwrap() < 0.05,
        "{neighbour}"
    );
}

#[test]
fn a_workers_cpu_seconds_are_what_proc_says_of_its_process() {
    let d = Daemon::start(&demo_and_neighbour("hot", "isolated", ""), &[], &[]);
    burn(&d, 400);
    let hot = provider_row(&d, "hot");
    let pid = hot["pid"].as_u64().expect("a worker pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let proc_cpu =
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks;
    let cpu = hot["cpu_seconds"].as_f64().unwrap();
    assert!(cpu >= 0.35, "{hot}");
    assert!(
        (cpu - proc_cpu).abs() <= 0.1 * proc_cpu,
        "purveyor says {cpu}, /proc says {proc_cpu}"
    );
    assert!(hot["rss_bytes"].as_u64().unwrap() > 100_000, "{hot}");
    // The frames of its calls, both ways (a get's request and its instance).
    assert!(hot["bytes_out"].as_u64().unwrap() > 20, "{hot}");
    assert!(hot["bytes_in"].as_u64().unwrap() > 20, "{hot}");
}

/// `purveyor top` in a terminal: the provider burning CPU comes first; `q` quits.
#[test]
#[ignore = "needs tmux; .ci/run installs it and runs the ignored tests"]
fn purveyor_top_shows_the_burning_provider_first() {
    let d = Daemon::start(&demo_and_neighbour("hot", "in-daemon", ""), &[], &[]);
    assert!(d.cli(&["get", "demo.greeting", "name=x"]).status.success());
    // Burn in the background for as long as the test runs (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = std::process::Command::new(common::BIN)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["get", "demo.counter", "name=burn150"])
                    .output();
            }
        })
    };
    let command = format!(
        "{} --socket {} top --interval 0.5",
        common::BIN,
        d.socket.display()
    );
    let tmux = Tmux::start(d.dir.path(), "top", &command);
    let first_row = || -> String {
        let screen = tmux.screen();
        let mut lines = screen
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("PROVIDER"));
        lines.next();
        lines.next().unwrap_or_default().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !first_row().trim_start().starts_with("hot") {
        assert!(
            Instant::now() < deadline,
            "hot never came first:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sorted by memory instead: the header says so.
    tmux.keys(&["m"]);
    tmux.wait_for("now Memory");
    tmux.keys(&["q"]);
    stop.store(true, Ordering::Relaxed);
    burner.join().unwrap();
}

/// `purveyor top --once --json`: a worker burning CPU during the interval comes first.
#[test]
fn top_once_json_sorts_by_cpu() {
    let d = Daemon::start(&demo_and_neighbour("hot", "isolated", ""), &[], &[]);
    burn(&d, 1);
    assert!(d.cli(&["get", "demo.greeting", "name=x"]).status.success());
    let socket = d.socket.clone();
    let burner = std::thread::spawn(move || {
        std::process::Command::new(common::BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["get", "demo.counter", "name=burn600"])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    let out = d.cli(&["top", "--once", "--json", "--interval", "0.3"]);
    assert!(out.status.success(), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(burner.join().unwrap().status.success());
    let first = &view["providers"][0];
    assert_eq!(first["name"], "hot", "{view}");
    assert!(first["cpu_percent"].as_f64().unwrap() > 30.0, "{view}");
    assert!(view["host"]["pid"].as_u64().unwrap() > 0);
}
