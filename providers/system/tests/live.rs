//! The system provider's values checked against the live files they come from.

use purveyor_model::{ClassPath, InstanceKey, Value};
use purveyor_provider::{CallContext, Provider};
use purveyor_system::SystemProvider;

fn enumerate(class: &str) -> Vec<purveyor_model::Instance> {
    SystemProvider::new()
        .enumerate(&ClassPath::new(class).unwrap(), &CallContext::internal())
        .unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The `n`th whitespace-separated word of `text`, parsed.
fn word<T: std::str::FromStr>(text: &str, n: usize) -> T
where
    T::Err: std::fmt::Debug,
{
    text.split_whitespace().nth(n).unwrap().parse().unwrap()
}

fn f64_of(instance: &purveyor_model::Instance, name: &str) -> f64 {
    instance.get(name).and_then(Value::as_f64).unwrap()
}

fn ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

#[test]
fn cpu_total_user_time_lies_between_two_reads_of_proc_stat() {
    let user_ticks = |text: &str| -> f64 { word(text.lines().next().unwrap(), 1) };
    let before = user_ticks(&read("/proc/stat"));
    let list = enumerate("system.cpu");
    let after = user_ticks(&read("/proc/stat"));
    let total = list
        .iter()
        .find(|i| i.get("cpu") == Some(&Value::String("total".into())))
        .unwrap();
    let user = f64_of(total, "user") * ticks();
    assert!(
        before <= user + 0.5 && user <= after + 0.5,
        "{before} <= {user} <= {after}"
    );
    let cpu_lines = read("/proc/stat")
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .count();
    assert_eq!(list.len(), cpu_lines);
}

#[test]
fn memory_total_equals_meminfo() {
    let meminfo = read("/proc/meminfo");
    let kb: u64 = word(meminfo.lines().next().unwrap(), 1);
    let list = enumerate("system.memory");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].get("total"), Some(&Value::U64(kb * 1024)));
}

#[test]
fn load_equals_loadavg() {
    let before = read("/proc/loadavg");
    let list = enumerate("system.load");
    let after = read("/proc/loadavg");
    let load1 = f64_of(&list[0], "load1");
    let first = |t: &str| -> f64 { word(t, 0) };
    assert!(
        load1 == first(&before) || load1 == first(&after),
        "{load1} vs {before} / {after}"
    );
}

#[test]
fn own_process_is_reported_with_its_name_and_parent() {
    let pid = std::process::id() as u64;
    let provider = SystemProvider::new();
    let class = ClassPath::new("system.process").unwrap();
    let mut key = InstanceKey::new();
    key.insert("pid".parse().unwrap(), Value::U64(pid));
    let me = provider
        .get(&class, &key, &CallContext::internal())
        .unwrap()
        .unwrap();
    assert_eq!(
        me.get("name"),
        Some(&Value::String(read("/proc/self/comm").trim().into()))
    );
    assert_eq!(
        me.get("ppid"),
        Some(&Value::U64(std::os::unix::process::parent_id() as u64))
    );
    let threads = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|t| t.trim().parse::<u64>().unwrap())
        .unwrap();
    assert!(matches!(me.get("threads"), Some(Value::U64(n)) if *n >= 1 && *n <= threads + 64));
    let all = provider
        .enumerate(&class, &CallContext::internal())
        .unwrap();
    assert!(all.iter().any(|p| p.get("pid") == Some(&Value::U64(pid))));
    assert!(all.iter().any(|p| p.get("pid") == Some(&Value::U64(1))));
    key.insert("pid".parse().unwrap(), Value::U64(u32::MAX as u64 + 7));
    assert_eq!(
        provider
            .get(&class, &key, &CallContext::internal())
            .unwrap(),
        None
    );
}

#[test]
fn loopback_counters_lie_between_two_reads_of_net_dev() {
    let lo_rx = |t: &str| -> u64 {
        let line = t
            .lines()
            .find(|l| l.trim_start().starts_with("lo:"))
            .unwrap();
        word(line.split_once(':').unwrap().1, 0)
    };
    let before = lo_rx(&read("/proc/net/dev"));
    let list = enumerate("system.net");
    let after = lo_rx(&read("/proc/net/dev"));
    let lo = list
        .iter()
        .find(|i| i.get("interface") == Some(&Value::String("lo".into())))
        .unwrap();
    let Some(Value::U64(rx)) = lo.get("rx_bytes") else {
        panic!("no rx_bytes")
    };
    assert!(before <= *rx && *rx <= after);
    assert_eq!(
        lo.get("mtu"),
        Some(&Value::U64(
            read("/sys/class/net/lo/mtu").trim().parse().unwrap()
        ))
    );
}

#[test]
fn disks_are_the_devices_of_diskstats() {
    let names: Vec<String> = read("/proc/diskstats")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
        .collect();
    let list = enumerate("system.disk");
    let got: Vec<String> = list
        .iter()
        .map(|i| i.get("device").unwrap().to_string())
        .collect();
    assert_eq!(got, names);
}

#[test]
fn host_facts_match_kernel_files() {
    let host = &enumerate("system.host")[0];
    assert_eq!(
        host.get("hostname"),
        Some(&Value::String(
            read("/proc/sys/kernel/hostname").trim().into()
        ))
    );
    assert_eq!(
        host.get("kernel"),
        Some(&Value::String(
            read("/proc/sys/kernel/osrelease").trim().into()
        ))
    );
    let uptime: f64 = word(&read("/proc/uptime"), 0);
    assert!((f64_of(host, "uptime") - uptime).abs() < 5.0);
    let online = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    assert!(matches!(host.get("cpus"), Some(Value::U64(n)) if *n >= online));
}
