//! What each provider costs (`docs/lifecycle.md`, "Accounting"): CPU time, resident
//! memory, timeouts and call latency, shown by `purveyor.provider`, `/metrics` and
//! `purveyor top`.
//!
//! **Where the numbers come from.** A provider in its own process (isolated, external) is
//! charged what the kernel says of that process (`/proc/PID/stat`: user + system time,
//! resident pages), read when asked; a provider whose calls run on the host's threads
//! (builtin, in-daemon) is charged the thread CPU clock around each of its calls, and has
//! no memory of its own to show. Latency is every call's wall time into a histogram of
//! power-of-two buckets (1 µs … 2³⁵ µs): p50 and p99 are a bucket's upper bound, within a
//! factor of two, since the provider was registered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a provider has cost (`Slot::usage`).
pub(crate) struct Usage {
    /// CPU time: its process's now (isolated, external: since that process started),
    /// plus its calls on the host's threads (builtin, in-daemon).
    pub cpu: Duration,
    /// Its process's resident memory (`None`: no process of its own, or not loaded).
    pub rss_bytes: Option<u64>,
    pub timeouts: u64,
    pub limit_kills: u64,
    /// Bytes sent to its current process and received from it.
    pub bytes: Option<(u64, u64)>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

/// Buckets: `[0, 1 µs]`, `(1, 2]`, `(2, 4]`, … `(2³⁴, 2³⁵] µs` and above.
const BUCKETS: usize = 36;

/// Call latencies by power-of-two bucket.
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (u64::BITS - us.saturating_sub(1).leading_zeros()) as usize;
        self.counts[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the `q` quantile (0 < q ≤ 1); `None`
    /// before any call.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(1u64 << bucket));
            }
        }
        Some(Duration::from_micros(1u64 << (BUCKETS - 1)))
    }
}

/// The calls of one provider running on host threads now: so a long call (or a stuck
/// one) is charged while it runs, not only when it ends.
///
/// **How a call on a host thread is charged** without a system call for most calls (the
/// thread CPU clock is a system call, 665 ns on a VM, against 27 ns for the monotonic
/// clock; `docs/performance.md`, "Accounting"): each thread keeps a reading of its CPU
/// clock, taken at most [`REFRESH`] ago, and the wall time of the short calls it has
/// charged since. A call shorter than [`SHORT`] is charged its wall time (an upper bound
/// of its CPU time) and reads no clock. A longer one reads the clock at its end and is
/// charged the CPU the thread used since the reading, less the short calls charged since,
/// at most its wall time — exact for a call that computes; for one that waits, too much
/// by at most the thread's other work since the reading (≤ [`REFRESH`]).
#[derive(Default)]
pub(crate) struct Running {
    next: AtomicU64,
    /// Per running call: its id, its thread's CPU clock, the thread CPU it starts from
    /// (estimated as above), and when it began.
    calls: std::sync::Mutex<Vec<(u64, libc::clockid_t, Duration, Instant)>>,
}

/// A call shorter than this is charged its wall time.
pub(crate) const SHORT: Duration = Duration::from_micros(200);
/// A thread's CPU clock reading is taken again when older than this.
pub(crate) const REFRESH: Duration = Duration::from_millis(10);

/// A call begun with [`Running::start`].
pub(crate) struct Started {
    id: u64,
    from: Duration,
    at: Instant,
}

/// This thread's CPU clock reading, when it was taken, and the wall time of the short
/// calls charged since.
#[derive(Clone, Copy)]
struct Base {
    cpu: Duration,
    at: Instant,
    short: Duration,
}

thread_local! {
    static BASE: std::cell::Cell<Option<Base>> = const { std::cell::Cell::new(None) };
    static CLOCK: libc::clockid_t = this_thread_clock();
}

impl Running {
    /// This thread begins a call.
    pub fn start(&self) -> Started {
        let at = Instant::now();
        let base = match BASE.get() {
            Some(base) if at.duration_since(base.at) < REFRESH => base,
            _ => {
                let base = Base {
                    cpu: thread_cpu(),
                    at,
                    short: Duration::ZERO,
                };
                BASE.set(Some(base));
                base
            }
        };
        let from = base.cpu + base.short;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let clock = CLOCK.with(|c| *c);
        use purveyor_hosting::lock::Locked;
        self.calls.locked().push((id, clock, from, at));
        Started { id, from, at }
    }

    /// The call ended, on the thread that began it: the CPU time it is charged.
    pub fn finish(&self, started: Started) -> Duration {
        use purveyor_hosting::lock::Locked;
        self.calls.locked().retain(|(id, ..)| *id != started.id);
        let took = started.at.elapsed();
        let Some(mut base) = BASE.get() else {
            return took;
        };
        if took < SHORT {
            base.short += took;
            BASE.set(Some(base));
            return took;
        }
        let now = thread_cpu();
        BASE.set(Some(Base {
            cpu: now,
            at: Instant::now(),
            short: Duration::ZERO,
        }));
        now.saturating_sub(started.from).min(took)
    }

    /// CPU time the calls running now have used so far (each at most its wall time).
    pub fn so_far(&self) -> Duration {
        use purveyor_hosting::lock::Locked;
        let calls = self.calls.locked().clone();
        calls
            .iter()
            .map(|(_, clock, from, at)| {
                cpu_of(*clock)
                    .unwrap_or_default()
                    .saturating_sub(*from)
                    .min(at.elapsed())
            })
            .sum()
    }
}

/// This thread's CPU time so far (user + system): a system call.
fn thread_cpu() -> Duration {
    cpu_of(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// The CPU clock of the calling thread, readable from any thread while it lives.
fn this_thread_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
    // SAFETY: pthread_self is this thread; the out-pointer is ours.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc == 0 {
        clock
    } else {
        libc::CLOCK_THREAD_CPUTIME_ID
    }
}

/// A CPU clock's reading.
fn cpu_of(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; an invalid clock is an error.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// What the kernel says a process has used: CPU time (user + system) and resident bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessUsage {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// `/proc/PID/stat` of `pid`, or `None` if it is gone.
pub(crate) fn process_usage(pid: u32) -> Option<ProcessUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text, ticks_per_second(), page_size())
}

/// This process's own usage, cheaply enough for every `get purveyor.host`: CPU time from
/// `getrusage` and resident memory from `/proc/self/statm`, both read at most every
/// [`RSS_REFRESH`] (either costs more than the rest of the request).
pub(crate) fn self_usage() -> ProcessUsage {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, ProcessUsage)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, usage)) = &*last
        && at.elapsed() < RSS_REFRESH
    {
        return *usage;
    }
    // SAFETY: all-zero is a valid `rusage`; getrusage writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a `rusage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page_size()));
    let now = ProcessUsage {
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        rss_bytes,
    };
    *last = Some((std::time::Instant::now(), now));
    now
}

/// How old the CPU time and resident memory [`self_usage`] reports may be (`getrusage`
/// sums every thread of the daemon: a microsecond or more per `get purveyor.host`).
pub(crate) const RSS_REFRESH: Duration = Duration::from_millis(100);

/// Fields 14 and 15 (utime, stime, in clock ticks) and 24 (rss, in pages), counted after
/// the command name's closing parenthesis (the name may hold spaces and parentheses).
fn parse_stat(text: &str, ticks: u64, page: u64) -> Option<ProcessUsage> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks_used = field(14)? + field(15)?;
    Some(ProcessUsage {
        cpu: Duration::from_nanos(ticks_used.saturating_mul(1_000_000_000 / ticks.max(1))),
        rss_bytes: field(24)?.saturating_mul(page),
    })
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_usage_agrees_with_proc() {
        let me = self_usage();
        let proc = process_usage(std::process::id()).unwrap();
        // Ticks are coarser than getrusage's microseconds.
        assert!(
            me.cpu + Duration::from_millis(50) >= proc.cpu,
            "{me:?} {proc:?}"
        );
        assert!(me.rss_bytes > 0);
        let diff = me.rss_bytes.abs_diff(proc.rss_bytes);
        assert!(diff < proc.rss_bytes / 2, "{me:?} {proc:?}");
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(3));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(2));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(4)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_micros(8192)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(1 << 21)));
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(1 << 40));
    }

    /// A call that computes is charged its CPU; one that waits, almost nothing; a short
    /// one, its wall time; a running one, what it has used so far.
    #[test]
    fn calls_are_charged_the_cpu_they_use() {
        let running = Running::default();
        // Computes until this thread has used `d` of CPU (however busy the machine).
        let spin = |d: Duration| {
            let t = thread_cpu();
            let mut x = 0u64;
            while thread_cpu() - t < d {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        };
        let started = running.start();
        spin(Duration::from_millis(60));
        let busy = running.finish(started);
        assert!(
            busy >= Duration::from_millis(40) && busy <= Duration::from_millis(70),
            "{busy:?}"
        );
        let started = running.start();
        std::thread::sleep(Duration::from_millis(60));
        let idle = running.finish(started);
        assert!(idle < Duration::from_millis(15), "a waiting call: {idle:?}");
        let started = running.start();
        let short = running.finish(started);
        assert!(short < SHORT, "{short:?}");
        // Running: charged while it runs, from another thread's point of view.
        let running = std::sync::Arc::new(running);
        let r = running.clone();
        let worker = std::thread::spawn(move || {
            let started = r.start();
            spin(Duration::from_millis(150));
            r.finish(started)
        });
        std::thread::sleep(Duration::from_millis(80));
        let so_far = running.so_far();
        assert!(so_far >= Duration::from_millis(10), "{so_far:?}");
        worker.join().unwrap();
        assert_eq!(running.so_far(), Duration::ZERO);
    }

    #[test]
    fn a_stat_line_with_a_strange_name_is_read_from_its_end() {
        let line = "812 (we (ird) n) S 1 812 812 0 -1 4194560 150 0 0 0 250 50 0 0 20 0 1 0 100 10000000 300 18446744073709551615";
        let usage = parse_stat(line, 100, 4096).unwrap();
        assert_eq!(usage.cpu, Duration::from_secs(3));
        assert_eq!(usage.rss_bytes, 300 * 4096);
        assert_eq!(parse_stat("812 (x", 100, 4096), None);
        // This process: some CPU, some memory.
        let me = process_usage(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
    }
}
