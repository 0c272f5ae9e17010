//! A publisher to try: `cargo run -p purveyor-counters --example shop`, then
//! `purveyor get app.shop` and `purveyor watch app.shop` in another terminal.
//! Runs for `SECONDS` (default 60), updating its counters a few thousand times a second.

use std::time::{Duration, Instant};

use purveyor_counters::{CounterSet, CounterType, Unit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(60), |s| s.parse())?;
    let set = CounterSet::builder("shop")
        .help("An example shop")
        .counter("sales", CounterType::Counter, Unit::Count, "sales so far")
        .counter("queue", CounterType::Raw, Unit::Count, "customers waiting")
        .counter("refunds", CounterType::Delta, Unit::Count, "refunds")
        .counter(
            "latency",
            CounterType::Average,
            Unit::Microseconds,
            "time per sale",
        )
        .counter(
            "hits",
            CounterType::Fraction,
            Unit::Percent,
            "cache hit ratio",
        )
        .counter(
            "uptime",
            CounterType::Elapsed,
            Unit::Seconds,
            "time since opening",
        )
        .instances(8)
        .create()?;
    println!("publishing {}", set.path().display());
    let tills: Vec<_> = ["till1", "till2"]
        .iter()
        .map(|n| set.instance(n))
        .collect::<Result<_, _>>()?;
    for till in &tills {
        till.elapsed("uptime")?.start_now();
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        for (i, till) in tills.iter().enumerate() {
            till.counter("sales")?.inc();
            till.counter("queue")?.set(n % 7 + i as u64);
            if n.is_multiple_of(50) {
                till.counter("refunds")?.inc();
            }
            till.average("latency")?
                .observe(100 + (n % 100) * (i as u64 + 1));
            till.fraction("hits")?
                .add(u64::from(!n.is_multiple_of(4)), 1);
        }
        n += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}
