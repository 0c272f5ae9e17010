//! The schemas of the system classes.

use purveyor_model::{ClassSchema, PropertyDef, Semantic, Unit};

use Semantic::{Counter, Discrete, Gauge, Key};

/// Every class the system provider serves.
pub fn schemas() -> Vec<ClassSchema> {
    vec![
        ClassSchema::fixed(
            "system.cpu",
            "CPU time by state, for all CPUs together (cpu=total) and for each CPU (from /proc/stat)",
            vec![
                p("cpu", "string", Unit::None, Key, "total, or cpuN"),
                p("user", "f64", Unit::Seconds, Counter, "time in user mode"),
                p(
                    "nice",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time in user mode at low priority",
                ),
                p(
                    "system",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time in kernel mode",
                ),
                p("idle", "f64", Unit::Seconds, Counter, "idle time"),
                p(
                    "iowait",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "idle time waiting for I/O",
                ),
                p(
                    "irq",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time serving interrupts",
                ),
                p(
                    "softirq",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time serving soft interrupts",
                ),
                p(
                    "steal",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time stolen by the hypervisor",
                ),
            ],
        ),
        ClassSchema::fixed(
            "system.memory",
            "Memory use (from /proc/meminfo)",
            vec![
                p("total", "u64", Unit::Bytes, Gauge, "usable RAM"),
                p("free", "u64", Unit::Bytes, Gauge, "unused RAM"),
                p(
                    "available",
                    "u64",
                    Unit::Bytes,
                    Gauge,
                    "RAM available for new work without swapping",
                ),
                p("buffers", "u64", Unit::Bytes, Gauge, "block device buffers"),
                p("cached", "u64", Unit::Bytes, Gauge, "page cache"),
                p(
                    "shared",
                    "u64",
                    Unit::Bytes,
                    Gauge,
                    "shared memory (tmpfs, shm)",
                ),
                p("swap_total", "u64", Unit::Bytes, Gauge, "swap space"),
                p("swap_free", "u64", Unit::Bytes, Gauge, "unused swap space"),
            ],
        ),
        ClassSchema::fixed(
            "system.load",
            "Run-queue load averages (from /proc/loadavg)",
            vec![
                p(
                    "load1",
                    "f64",
                    Unit::None,
                    Gauge,
                    "load average over 1 minute",
                ),
                p(
                    "load5",
                    "f64",
                    Unit::None,
                    Gauge,
                    "load average over 5 minutes",
                ),
                p(
                    "load15",
                    "f64",
                    Unit::None,
                    Gauge,
                    "load average over 15 minutes",
                ),
                p("runnable", "u64", Unit::Count, Gauge, "runnable threads"),
                p(
                    "threads",
                    "u64",
                    Unit::Count,
                    Gauge,
                    "threads in the system",
                ),
                p(
                    "last_pid",
                    "u64",
                    Unit::None,
                    Discrete,
                    "the most recently assigned pid",
                ),
            ],
        ),
        ClassSchema::fixed(
            "system.process",
            "Processes (from /proc/PID/stat)",
            vec![
                p("pid", "u64", Unit::None, Key, "process id"),
                p("ppid", "u64", Unit::None, Discrete, "parent process id"),
                p(
                    "name",
                    "string",
                    Unit::None,
                    Discrete,
                    "command name (comm)",
                ),
                p(
                    "state",
                    "string",
                    Unit::None,
                    Discrete,
                    "R running, S sleeping, D disk wait, Z zombie, T stopped, I idle",
                ),
                p("threads", "u64", Unit::Count, Gauge, "number of threads"),
                p("rss", "u64", Unit::Bytes, Gauge, "resident set size"),
                p("vsize", "u64", Unit::Bytes, Gauge, "virtual memory size"),
                p(
                    "user_time",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "CPU time in user mode",
                ),
                p(
                    "system_time",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "CPU time in kernel mode",
                ),
                p(
                    "started",
                    "timestamp",
                    Unit::None,
                    Discrete,
                    "when the process started",
                ),
            ],
        ),
        ClassSchema::fixed(
            "system.disk",
            "Block device I/O (from /proc/diskstats)",
            vec![
                p("device", "string", Unit::None, Key, "device name"),
                p("reads", "u64", Unit::Operations, Counter, "reads completed"),
                p("read_bytes", "u64", Unit::Bytes, Counter, "bytes read"),
                p(
                    "read_time",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time spent reading",
                ),
                p(
                    "writes",
                    "u64",
                    Unit::Operations,
                    Counter,
                    "writes completed",
                ),
                p("write_bytes", "u64", Unit::Bytes, Counter, "bytes written"),
                p(
                    "write_time",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time spent writing",
                ),
                p(
                    "in_progress",
                    "u64",
                    Unit::Operations,
                    Gauge,
                    "I/Os in progress",
                ),
                p(
                    "io_time",
                    "f64",
                    Unit::Seconds,
                    Counter,
                    "time spent doing I/O",
                ),
            ],
        ),
        ClassSchema::fixed(
            "system.net",
            "Network interfaces (from /proc/net/dev and /sys/class/net)",
            vec![
                p("interface", "string", Unit::None, Key, "interface name"),
                p("rx_bytes", "u64", Unit::Bytes, Counter, "bytes received"),
                p(
                    "rx_packets",
                    "u64",
                    Unit::Packets,
                    Counter,
                    "packets received",
                ),
                p("rx_errors", "u64", Unit::Packets, Counter, "receive errors"),
                p(
                    "rx_dropped",
                    "u64",
                    Unit::Packets,
                    Counter,
                    "received packets dropped",
                ),
                p("tx_bytes", "u64", Unit::Bytes, Counter, "bytes sent"),
                p("tx_packets", "u64", Unit::Packets, Counter, "packets sent"),
                p("tx_errors", "u64", Unit::Packets, Counter, "send errors"),
                p(
                    "tx_dropped",
                    "u64",
                    Unit::Packets,
                    Counter,
                    "sent packets dropped",
                ),
                p(
                    "mtu",
                    "u64",
                    Unit::Bytes,
                    Discrete,
                    "maximum transmission unit",
                ),
            ],
        ),
        ClassSchema::fixed(
            "system.host",
            "Host facts (from /proc/sys/kernel, /proc/uptime and /sys/devices/system/cpu)",
            vec![
                p("hostname", "string", Unit::None, Discrete, "host name"),
                p("kernel", "string", Unit::None, Discrete, "kernel release"),
                p(
                    "kernel_version",
                    "string",
                    Unit::None,
                    Discrete,
                    "kernel build version",
                ),
                p("uptime", "f64", Unit::Seconds, Gauge, "time since boot"),
                p(
                    "boot_time",
                    "timestamp",
                    Unit::None,
                    Discrete,
                    "when the machine booted",
                ),
                p("cpus", "u64", Unit::Count, Discrete, "CPUs online"),
            ],
        ),
    ]
}

fn p(name: &str, ty: &str, unit: Unit, semantic: Semantic, description: &str) -> PropertyDef {
    PropertyDef::new(name, ty, unit, semantic, description)
}
