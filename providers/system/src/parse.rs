//! Parsers for the kernel's text files. Each takes the file's text and returns instances, or
//! a message that names the line and field that did not parse.

use purveyor_model::{Instance, Timestamp, Value};

/// `/proc/stat` cpu lines: one instance for the total (`cpu=total`) and one per CPU.
pub fn cpu(text: &str, clock_ticks: f64) -> Result<Vec<Instance>, String> {
    const FIELDS: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut list = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let mut words = line.split_ascii_whitespace();
        let Some(label) = words.next().filter(|w| w.starts_with("cpu")) else {
            continue;
        };
        let name = if label == "cpu" { "total" } else { label };
        let mut instance = Instance::from_pairs([("cpu", Value::String(name.into()))]);
        for field in FIELDS {
            // Old kernels have fewer columns; a missing column is left out, not invented.
            let Some(word) = words.next() else { break };
            let ticks: u64 = number(word, line_no, field)?;
            instance.set(field, Value::F64(ticks as f64 / clock_ticks));
        }
        list.push(instance);
    }
    if list.is_empty() {
        return Err("no cpu lines".into());
    }
    Ok(list)
}

/// `btime` from `/proc/stat`, as nanoseconds since the epoch.
pub fn boot_time(text: &str) -> Result<i64, String> {
    for (line_no, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("btime ") {
            let secs: i64 = number(rest.trim(), line_no, "btime")?;
            return Ok(secs.saturating_mul(1_000_000_000));
        }
    }
    Err("no btime line".into())
}

/// `/proc/meminfo`, kB values scaled to bytes.
pub fn memory(text: &str) -> Result<Instance, String> {
    const FIELDS: [(&str, &str); 8] = [
        ("MemTotal", "total"),
        ("MemFree", "free"),
        ("MemAvailable", "available"),
        ("Buffers", "buffers"),
        ("Cached", "cached"),
        ("Shmem", "shared"),
        ("SwapTotal", "swap_total"),
        ("SwapFree", "swap_free"),
    ];
    let mut instance = Instance::new();
    for (line_no, line) in text.lines().enumerate() {
        let Some((label, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(&(_, name)) = FIELDS.iter().find(|(l, _)| *l == label) else {
            continue;
        };
        let mut words = rest.split_ascii_whitespace();
        let value: u64 = number(words.next().unwrap_or(""), line_no, label)?;
        let scale = match words.next() {
            Some("kB") => 1024,
            None => 1,
            Some(other) => return Err(format!("line {}: unknown unit {other:?}", line_no + 1)),
        };
        instance.set(name, Value::U64(value.saturating_mul(scale)));
    }
    if instance.get("total").is_none() {
        return Err("no MemTotal line".into());
    }
    Ok(instance)
}

/// `/proc/loadavg`: `0.52 0.58 0.59 2/1024 12345`.
pub fn load(text: &str) -> Result<Instance, String> {
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    if words.len() < 5 {
        return Err(format!("expected 5 fields, found {}", words.len()));
    }
    let (runnable, threads) = words[3]
        .split_once('/')
        .ok_or_else(|| format!("field 4 {:?} is not RUNNABLE/THREADS", words[3]))?;
    Ok(purveyor_model::instance! {
        "load1" => Value::F64(number(words[0], 0, "load1")?),
        "load5" => Value::F64(number(words[1], 0, "load5")?),
        "load15" => Value::F64(number(words[2], 0, "load15")?),
        "runnable" => Value::U64(number(runnable, 0, "runnable")?),
        "threads" => Value::U64(number(threads, 0, "threads")?),
        "last_pid" => Value::U64(number(words[4], 0, "last_pid")?),
    })
}

/// What [`process_stat`] needs to scale raw numbers.
#[derive(Debug, Clone, Copy)]
pub struct ProcessParams {
    pub clock_ticks: f64,
    pub page_size: u64,
    pub boot_time_ns: i64,
}

/// `/proc/PID/stat`. The command name is in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn process_stat(text: &str, params: ProcessParams) -> Result<Instance, String> {
    let open = text.find('(').ok_or("no '(' before the command name")?;
    let close = text.rfind(')').ok_or("no ')' after the command name")?;
    if close < open {
        return Err("')' before '('".into());
    }
    let pid: u64 = number(text[..open].trim(), 0, "pid")?;
    let name = &text[open + 1..close];
    // Fields after the name, numbered as in proc(5) from 3 (state).
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize, what: &str| -> Result<u64, String> {
        let word = rest
            .get(n - 3)
            .ok_or_else(|| format!("field {n} ({what}) is missing"))?;
        number(word, 0, what)
    };
    let state = rest.first().ok_or("field 3 (state) is missing")?;
    let start_ticks = field(22, "starttime")?;
    let started = params
        .boot_time_ns
        .saturating_add((start_ticks as f64 / params.clock_ticks * 1e9) as i64);
    Ok(purveyor_model::instance! {
        "pid" => Value::U64(pid),
        "ppid" => Value::U64(field(4, "ppid")?),
        "name" => Value::String(name.into()),
        "state" => Value::String((*state).into()),
        "threads" => Value::U64(field(20, "num_threads")?),
        "rss" => Value::U64(field(24, "rss")?.saturating_mul(params.page_size)),
        "vsize" => Value::U64(field(23, "vsize")?),
        "user_time" => Value::F64(field(14, "utime")? as f64 / params.clock_ticks),
        "system_time" => Value::F64(field(15, "stime")? as f64 / params.clock_ticks),
        "started" => Value::Timestamp(Timestamp(started)),
    })
}

/// `/proc/diskstats`: sectors are 512 bytes, times are milliseconds.
pub fn diskstats(text: &str) -> Result<Vec<Instance>, String> {
    let mut list = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words.len() < 14 {
            return Err(format!(
                "line {}: expected at least 14 fields, found {}",
                line_no + 1,
                words.len()
            ));
        }
        let n = |i: usize, what: &str| number::<u64>(words[i], line_no, what);
        let ms = |i: usize, what: &str| n(i, what).map(|v| Value::F64(v as f64 / 1000.0));
        list.push(Instance::from_pairs([
            ("device", Value::String(words[2].into())),
            ("reads", Value::U64(n(3, "reads")?)),
            (
                "read_bytes",
                Value::U64(n(5, "sectors read")?.saturating_mul(512)),
            ),
            ("read_time", ms(6, "read time")?),
            ("writes", Value::U64(n(7, "writes")?)),
            (
                "write_bytes",
                Value::U64(n(9, "sectors written")?.saturating_mul(512)),
            ),
            ("write_time", ms(10, "write time")?),
            ("in_progress", Value::U64(n(11, "I/Os in progress")?)),
            ("io_time", ms(12, "I/O time")?),
        ]));
    }
    Ok(list)
}

/// `/proc/net/dev`: two header lines, then `iface: 16 numbers`.
pub fn net_dev(text: &str) -> Result<Vec<Instance>, String> {
    const FIELDS: [(usize, &str); 8] = [
        (0, "rx_bytes"),
        (1, "rx_packets"),
        (2, "rx_errors"),
        (3, "rx_dropped"),
        (8, "tx_bytes"),
        (9, "tx_packets"),
        (10, "tx_errors"),
        (11, "tx_dropped"),
    ];
    let mut list = Vec::new();
    for (line_no, line) in text.lines().enumerate().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            return Err(format!(
                "line {}: no ':' after the interface name",
                line_no + 1
            ));
        };
        let words: Vec<&str> = rest.split_ascii_whitespace().collect();
        if words.len() < 16 {
            return Err(format!(
                "line {}: expected 16 numbers, found {}",
                line_no + 1,
                words.len()
            ));
        }
        let mut instance = Instance::from_pairs([("interface", Value::String(name.trim().into()))]);
        for (index, field) in FIELDS {
            instance.set(field, Value::U64(number(words[index], line_no, field)?));
        }
        list.push(instance);
    }
    Ok(list)
}

/// The files `system.host` is made of.
pub struct HostFiles<'a> {
    pub hostname: &'a str,
    pub osrelease: &'a str,
    pub version: &'a str,
    pub uptime: &'a str,
    pub stat: &'a str,
    pub online_cpus: Option<u64>,
}

pub fn host(files: HostFiles<'_>) -> Result<Instance, String> {
    let uptime: f64 = number(
        files.uptime.split_ascii_whitespace().next().unwrap_or(""),
        0,
        "uptime",
    )?;
    let mut instance = Instance::from_pairs([
        ("hostname", Value::String(files.hostname.trim().into())),
        ("kernel", Value::String(files.osrelease.trim().into())),
        ("kernel_version", Value::String(files.version.trim().into())),
        ("uptime", Value::F64(uptime)),
        (
            "boot_time",
            Value::Timestamp(Timestamp(boot_time(files.stat)?)),
        ),
    ]);
    if let Some(cpus) = files.online_cpus {
        instance.set("cpus", Value::U64(cpus));
    }
    Ok(instance)
}

/// The number of CPUs in a sysfs CPU list such as `0-3,6,8-9`.
pub fn cpu_list_len(text: &str) -> Option<u64> {
    let mut count = 0;
    for part in text.trim().split(',') {
        count += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse::<u64>().ok()?)? + 1,
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    Some(count)
}

fn number<T: std::str::FromStr>(word: &str, line_no: usize, what: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("line {}: {what} {word:?} is not a number", line_no + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lines() {
        let text = "cpu  100 2 30 400 5 0 6 0 0 0\ncpu0 50 1 15 200 2 0 3 0 0 0\nintr 1 2\n";
        let list = cpu(text, 100.0).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].get("cpu"), Some(&Value::String("total".into())));
        assert_eq!(list[0].get("user"), Some(&Value::F64(1.0)));
        assert_eq!(list[1].get("idle"), Some(&Value::F64(2.0)));
        assert_eq!(
            cpu("cpu 1 x\n", 100.0).unwrap_err(),
            "line 1: nice \"x\" is not a number"
        );
    }

    #[test]
    fn parses_process_names_with_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 8192 10 18446744073709551615";
        let params = ProcessParams {
            clock_ticks: 100.0,
            page_size: 4096,
            boot_time_ns: 1_000_000_000,
        };
        let p = process_stat(stat, params).unwrap();
        assert_eq!(p.get("name"), Some(&Value::String("a (b) c".into())));
        assert_eq!(p.get("state"), Some(&Value::String("S".into())));
        assert_eq!(p.get("ppid"), Some(&Value::U64(1)));
        assert_eq!(p.get("threads"), Some(&Value::U64(3)));
        assert_eq!(p.get("rss"), Some(&Value::U64(40960)));
        assert_eq!(p.get("user_time"), Some(&Value::F64(2.5)));
        assert_eq!(
            p.get("started"),
            Some(&Value::Timestamp(Timestamp(11_000_000_000)))
        );
        assert!(
            process_stat("42 (x) S 1", params)
                .unwrap_err()
                .contains("field 22")
        );
    }

    #[test]
    fn parses_load_memory_net_disk() {
        let l = load("0.50 0.25 0.10 2/300 999\n").unwrap();
        assert_eq!(l.get("threads"), Some(&Value::U64(300)));
        let m = memory("MemTotal: 1000 kB\nMemFree: 10 kB\nHugePages_Total: 0\n").unwrap();
        assert_eq!(m.get("total"), Some(&Value::U64(1_024_000)));
        let n = net_dev("h1\nh2\n  lo: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n").unwrap();
        assert_eq!(n[0].get("tx_bytes"), Some(&Value::U64(20)));
        let d = diskstats("   8       0 sda 5 0 10 1500 2 0 4 250 0 100 1750 0 0 0 0\n").unwrap();
        assert_eq!(d[0].get("read_bytes"), Some(&Value::U64(5120)));
        assert_eq!(d[0].get("read_time"), Some(&Value::F64(1.5)));
        assert_eq!(cpu_list_len("0-3,6,8-9\n"), Some(7));
    }
}
