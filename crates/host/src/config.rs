//! Host configuration.

use std::path::PathBuf;
use std::time::Duration;

use purveyor_protocol::{HostMode, MAX_FRAME_DEFAULT};

use crate::access::AccessPolicy;
use crate::manifest::{MIN_CLEAR_AFTER, ProviderKind};

/// What a host needs to start. [`HostConfig::from_env`] gives the defaults a user gets.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Directories of provider manifests, searched in order: when two hold a manifest for
    /// the same provider, the first wins. Missing directories are skipped.
    pub provider_dirs: Vec<PathBuf>,
    /// Daemon or embedded; reported by `purveyor status`.
    pub mode: HostMode,
    /// The largest frame accepted from a client.
    pub max_frame: u32,
    /// How long a client has to send its hello.
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before connections are cut.
    pub shutdown_grace: Duration,
    /// How many requests one connection may have in flight before the server stops reading
    /// from it.
    pub max_in_flight: usize,
    /// The `purveyor` binary run as `purveyor worker` for isolated providers. `None`: the
    /// `PURVEYOR_WORKER` variable, else this executable if it is `purveyor`, else a
    /// `purveyor` beside this executable or one directory up.
    pub worker_program: Option<PathBuf>,
    /// A provider whose process crashes this many times within `crash_window` is
    /// quarantined until `purveyor providers enable NAME`; 0: never.
    pub quarantine_crashes: u32,
    pub crash_window: Duration,
    /// `clear_after` for providers whose manifest gives none, by kind.
    pub clear_after: ClearAfter,
    /// Who may read, write, call and subscribe, by namespace (`docs/security.md`).
    pub access: std::sync::Arc<AccessPolicy>,
    /// The most events queued for one session; more are dropped and reported as lost.
    pub event_queue: usize,
    /// What clients can make the host hold (`docs/security.md`, "Limits").
    pub limits: Limits,
    /// How long a connection whose requests arrive back to back looks for the next one
    /// before blocking (`PURVEYOR_POLL_US`; zero: never; `docs/performance.md`).
    pub poll: Duration,
    /// Keep one isolated worker started ahead of need, so an isolated provider's load does
    /// not wait for a process to start (`crate::spare`). On for a daemon unless
    /// `PURVEYOR_SPARE_WORKER=0`; off for an embedded host.
    pub spare_worker: bool,
    /// Measure what each provider costs: thread CPU and latency of every call
    /// (`accounting.rs`). On unless `PURVEYOR_ACCOUNTING=0` (for the overhead bench).
    pub accounting: bool,
}

/// What clients can make the host hold, each with a default, a setting
/// (`purveyor serve --limit NAME=VALUE`) and a counter in `purveyor.host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MEM ` buffers: `io.mem_per_user`, `io.mem_total`, `io.mem_idle`.
    pub io_mem: purveyor_io::MemoryLimits,
    /// `conn.total`: connections open at once (root and the daemon's user get 32 more).
    pub conn_total: u32,
    /// `conn.per_user`: connections one user may have open (root and the daemon's user:
    /// no per-user limit).
    pub conn_per_user: u32,
    /// `conn.idle`: a connection that holds nothing (no request running, no subscription,
    /// no stream, not a UI agent) and sends nothing for this long is closed.
    pub conn_idle: Duration,
    /// `conn.frame_time`: how long a frame may take to arrive once it has begun.
    pub conn_frame_time: Duration,
    /// `conn.subscriptions`: subscriptions one connection may hold.
    pub conn_subscriptions: u32,
    /// `conn.request_max`: the largest frame a client may send (the welcome's
    /// `max_frame`); replies may be up to `max_frame`.
    pub conn_request_max: u32,
    /// `io.ops_per_user`, `io.ops_total`: built-in I/O calls (opens, reads, writes…)
    /// running at once, for one user and for everyone.
    pub io_ops_per_user: u32,
    pub io_ops_total: u32,
    /// `io.op_time`: how long one built-in I/O call may take before its client is told it
    /// failed (the thread finishes it, holding its user's slot).
    pub io_op_time: Duration,
    /// `http.connections`: HTTP connections open at once.
    pub http_connections: u32,
    /// `http.header_time`: how long a client has to send a request's headers (also
    /// between requests on a kept-alive connection).
    pub http_header_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            io_mem: purveyor_io::MemoryLimits::default(),
            conn_total: 1024,
            conn_per_user: 64,
            conn_idle: Duration::from_secs(600),
            conn_frame_time: Duration::from_secs(30),
            conn_subscriptions: 1024,
            conn_request_max: 4 << 20,
            io_ops_per_user: 16,
            io_ops_total: 64,
            io_op_time: Duration::from_secs(60),
            http_connections: 256,
            http_header_time: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Applies one `NAME=VALUE` setting (sizes in bytes, or with KiB, MiB, GiB; durations
    /// like `30s` or `15m`).
    pub fn apply(&mut self, setting: &str) -> Result<(), String> {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?} is not NAME=VALUE"))?;
        let size = || crate::config_file::parse_size(value).map_err(|e| format!("{name}: {e}"));
        let duration = || {
            humantime::parse_duration(value)
                .map_err(|e| format!("{name}: {value:?} is not a duration ({e})"))
        };
        let count = || -> Result<u32, String> {
            match value.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{name}: {value:?} is not a count (a whole number, at least 1)"
                )),
            }
        };
        match name {
            "io.mem_per_user" => self.io_mem.per_user = size()?,
            "io.mem_total" => self.io_mem.total = size()?,
            "io.mem_idle" => self.io_mem.idle = duration()?,
            "conn.total" => self.conn_total = count()?,
            "conn.per_user" => self.conn_per_user = count()?,
            "conn.idle" => self.conn_idle = duration()?,
            "conn.frame_time" => self.conn_frame_time = duration()?,
            "conn.subscriptions" => self.conn_subscriptions = count()?,
            "conn.request_max" => {
                self.conn_request_max = u32::try_from(size()?)
                    .ok()
                    .filter(|n| *n >= 4096)
                    .ok_or_else(|| format!("{name}: {value:?} must be from 4 KiB to 4 GiB"))?
            }
            "io.ops_per_user" => self.io_ops_per_user = count()?,
            "io.ops_total" => self.io_ops_total = count()?,
            "io.op_time" => self.io_op_time = duration()?,
            "http.connections" => self.http_connections = count()?,
            "http.header_time" => self.http_header_time = duration()?,
            _ => {
                return Err(format!(
                    "there is no limit named {name:?} (limits: {})",
                    Self::NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Every limit's name.
    pub const NAMES: &[&str] = &[
        "conn.total",
        "conn.per_user",
        "conn.idle",
        "conn.frame_time",
        "conn.subscriptions",
        "conn.request_max",
        "io.mem_per_user",
        "io.mem_total",
        "io.mem_idle",
        "io.ops_per_user",
        "io.ops_total",
        "io.op_time",
        "http.connections",
        "http.header_time",
    ];
}

/// Default idle-unload intervals by provider kind, like cache-control classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearAfter {
    /// Instances and methods: 5 minutes.
    pub instance: Duration,
    /// Counters: 10 minutes, since scrapers read them every few seconds.
    pub counter: Duration,
    /// Events: 10 minutes.
    pub event: Duration,
    /// I/O procedures: 1 minute.
    pub io: Duration,
}

impl Default for ClearAfter {
    fn default() -> Self {
        ClearAfter {
            instance: Duration::from_secs(300),
            counter: Duration::from_secs(600),
            event: Duration::from_secs(600),
            io: Duration::from_secs(60),
        }
    }
}

impl ClearAfter {
    pub fn get(&self, kind: ProviderKind) -> Duration {
        match kind {
            ProviderKind::Instance => self.instance,
            ProviderKind::Counter => self.counter,
            ProviderKind::Event => self.event,
            ProviderKind::Io => self.io,
        }
    }

    pub fn set(&mut self, kind: ProviderKind, value: Duration) {
        *match kind {
            ProviderKind::Instance => &mut self.instance,
            ProviderKind::Counter => &mut self.counter,
            ProviderKind::Event => &mut self.event,
            ProviderKind::Io => &mut self.io,
        } = value;
    }

    /// Applies `KIND=DURATION` (`counter=30s`), as `purveyor serve --clear-after` takes it.
    pub fn apply(&mut self, setting: &str) -> Result<(), String> {
        let (kind, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?} is not KIND=DURATION (like counter=30s)"))?;
        let kind: ProviderKind = kind.trim().parse()?;
        let value = humantime::parse_duration(value.trim())
            .map_err(|e| format!("{value:?} is not a duration ({e}); write it like 30s or 5m"))?;
        if value < MIN_CLEAR_AFTER {
            return Err(format!(
                "{} is shorter than the minimum of {}",
                humantime::format_duration(value),
                humantime::format_duration(MIN_CLEAR_AFTER)
            ));
        }
        self.set(kind, value);
        Ok(())
    }
}

impl HostConfig {
    /// The defaults: manifests from `$PURVEYOR_PROVIDERS` (colon-separated) if set, else
    /// `$XDG_CONFIG_HOME/purveyor/providers` (or `~/.config/purveyor/providers`), then
    /// `/etc/purveyor/providers`, then `/usr/lib/purveyor/providers`.
    pub fn from_env(mode: HostMode) -> Self {
        HostConfig {
            provider_dirs: default_provider_dirs(),
            mode,
            max_frame: MAX_FRAME_DEFAULT,
            handshake_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            max_in_flight: 64,
            worker_program: None,
            quarantine_crashes: 3,
            crash_window: Duration::from_secs(60),
            clear_after: ClearAfter::default(),
            access: std::sync::Arc::new(AccessPolicy::defaults()),
            event_queue: 4096,
            limits: Limits::default(),
            poll: purveyor_protocol::poll::poll_window(),
            spare_worker: mode == HostMode::Daemon
                && std::env::var_os("PURVEYOR_SPARE_WORKER").is_none_or(|v| v != "0"),
            accounting: std::env::var_os("PURVEYOR_ACCOUNTING").is_none_or(|v| v != "0"),
        }
    }

    /// A configuration that reads manifests from `dirs` only.
    pub fn with_dirs(mode: HostMode, dirs: Vec<PathBuf>) -> Self {
        HostConfig {
            provider_dirs: dirs,
            ..Self::from_env(mode)
        }
    }
}

fn default_provider_dirs() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("PURVEYOR_PROVIDERS") {
        return std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    let mut dirs = Vec::new();
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(home) = config_home {
        dirs.push(home.join("purveyor/providers"));
    }
    dirs.push(PathBuf::from("/etc/purveyor/providers"));
    // Packaged providers (`dist/deb`): the administrator's /etc comes first, so a file
    // there replaces a packaged one of the same name.
    dirs.push(PathBuf::from("/usr/lib/purveyor/providers"));
    dirs
}

impl HostConfig {
    /// The program to run as `PROGRAM worker` (see [`HostConfig::worker_program`]).
    pub fn worker_program(&self) -> Result<PathBuf, String> {
        if let Some(p) = &self.worker_program {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("PURVEYOR_WORKER") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to run workers: {e}"))?;
        if exe.file_name().is_some_and(|n| n == "purveyor") {
            return Ok(exe);
        }
        // Beside it, or one directory up (test binaries live in target/*/deps).
        let candidates = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(|p| p.parent()));
        for dir in candidates {
            let candidate = dir.join("purveyor");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        Err(format!(
            "no purveyor binary found to run isolated providers (looked beside {}); set PURVEYOR_WORKER to its path",
            exe.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_sizes_and_durations_and_name_the_bad_ones() {
        let mut limits = Limits::default();
        limits.apply("io.mem_per_user=1MiB").unwrap();
        limits.apply("io.mem_total=4096").unwrap();
        limits.apply("io.mem_idle=30s").unwrap();
        assert_eq!(limits.io_mem.per_user, 1 << 20);
        assert_eq!(limits.io_mem.total, 4096);
        assert_eq!(limits.io_mem.idle, Duration::from_secs(30));
        let err = limits.apply("io.mem_total=12 bananas").unwrap_err();
        assert!(err.contains("size unit"), "{err}");
        let err = limits.apply("io.nope=1").unwrap_err();
        assert!(err.contains("io.mem_per_user"), "{err}");
        limits.apply("conn.per_user=8").unwrap();
        assert_eq!(limits.conn_per_user, 8);
        let err = limits.apply("conn.total=0").unwrap_err();
        assert!(err.contains("not a count"), "{err}");
        let err = limits.apply("io.mem_idle").unwrap_err();
        assert!(err.contains("NAME=VALUE"), "{err}");
    }
}
