//! The built-in `system` provider: the machine's numbers, read from the kernel's own
//! interfaces (procfs and sysfs) at each request.
//!
//! Classes: `system.cpu`, `system.memory`, `system.load`, `system.process`, `system.disk`,
//! `system.net`, `system.host`. Every parser takes the file's text, so tests feed it both
//! fixtures and the live files.

mod classes;
mod parse;

use std::path::{Path, PathBuf};

use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey, Value};
use purveyor_provider::{CallContext, Provider, ProviderError};

pub use classes::schemas;

/// The provider's manifest, compiled in. A manifest file named `system.toml` in a
/// providers directory replaces it.
pub const MANIFEST: &str = include_str!("../system.toml");

/// Reads procfs and sysfs under configurable roots (`/proc` and `/sys` by default).
#[derive(Debug, Clone)]
pub struct SystemProvider {
    proc_root: PathBuf,
    sys_root: PathBuf,
    clock_ticks: f64,
    page_size: u64,
}

impl SystemProvider {
    pub fn new() -> Self {
        Self::with_roots("/proc", "/sys")
    }

    /// A provider that reads `proc_root` instead of `/proc` and `sys_root` instead of `/sys`.
    pub fn with_roots(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        SystemProvider {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            clock_ticks: clock_ticks_per_second(),
            page_size: page_size(),
        }
    }

    fn read(&self, relative: &str) -> Result<String, ProviderError> {
        read_file(&self.proc_root.join(relative))
    }

    fn proc_path(&self, relative: &str) -> PathBuf {
        self.proc_root.join(relative)
    }

    fn enumerate_class(&self, class: &str) -> Result<Vec<Instance>, ProviderError> {
        let ticks = self.clock_ticks;
        match class {
            "system.cpu" => with_file(self.proc_path("stat"), |t| parse::cpu(t, ticks)),
            "system.memory" => with_file(self.proc_path("meminfo"), parse::memory).map(|i| vec![i]),
            "system.load" => with_file(self.proc_path("loadavg"), parse::load).map(|i| vec![i]),
            "system.disk" => with_file(self.proc_path("diskstats"), parse::diskstats),
            "system.net" => {
                let mut list = with_file(self.proc_path("net/dev"), parse::net_dev)?;
                for instance in &mut list {
                    if let Some(Value::String(name)) = instance.get("interface") {
                        let mtu = self.sys_root.join("class/net").join(name).join("mtu");
                        if let Ok(text) = std::fs::read_to_string(mtu)
                            && let Ok(mtu) = text.trim().parse()
                        {
                            instance.set("mtu", Value::U64(mtu));
                        }
                    }
                }
                Ok(list)
            }
            "system.host" => self.host().map(|i| vec![i]),
            "system.process" => self.processes(),
            other => Err(ProviderError::NotFound(format!(
                "the system provider has no class {other}"
            ))),
        }
    }

    fn host(&self) -> Result<Instance, ProviderError> {
        let stat = self.read("stat")?;
        let cpus = std::fs::read_to_string(self.sys_root.join("devices/system/cpu/online"))
            .ok()
            .and_then(|t| parse::cpu_list_len(&t));
        parse::host(parse::HostFiles {
            hostname: &self.read("sys/kernel/hostname")?,
            osrelease: &self.read("sys/kernel/osrelease")?,
            version: &self.read("sys/kernel/version")?,
            uptime: &self.read("uptime")?,
            stat: &stat,
            online_cpus: cpus,
        })
        .map_err(|e| ProviderError::Failed(format!("{}: {e}", self.proc_root.display())))
    }

    fn boot_time(&self) -> Result<i64, ProviderError> {
        with_file(self.proc_path("stat"), parse::boot_time)
    }

    fn processes(&self) -> Result<Vec<Instance>, ProviderError> {
        let boot = self.boot_time()?;
        let dir = std::fs::read_dir(&self.proc_root).map_err(|e| {
            ProviderError::Failed(format!("cannot list {}: {e}", self.proc_root.display()))
        })?;
        let mut list = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            // A process may exit between the listing and the read: skip it.
            if let Ok(Some(instance)) = self.process(pid, boot) {
                list.push(instance);
            }
        }
        list.sort_by_key(|i| match i.get("pid") {
            Some(Value::U64(pid)) => *pid,
            _ => 0,
        });
        Ok(list)
    }

    fn process(&self, pid: u64, boot: i64) -> Result<Option<Instance>, ProviderError> {
        let path = self.proc_root.join(pid.to_string()).join("stat");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ProviderError::Failed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let params = parse::ProcessParams {
            clock_ticks: self.clock_ticks,
            page_size: self.page_size,
            boot_time_ns: boot,
        };
        parse::process_stat(&text, params)
            .map(Some)
            .map_err(|e| ProviderError::Failed(format!("{}: {e}", path.display())))
    }
}

impl Default for SystemProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl Provider for SystemProvider {
    fn classes(&self) -> Vec<ClassSchema> {
        schemas()
    }

    fn enumerate(
        &self,
        class: &ClassPath,
        _ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        self.enumerate_class(class.as_str())
    }

    fn get(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        _ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        if class.as_str() == "system.process" {
            let Some(Value::U64(pid)) = key.get("pid") else {
                return Err(ProviderError::InvalidArgument(
                    "system.process is keyed by pid (u64)".into(),
                ));
            };
            return self.process(*pid, self.boot_time()?);
        }
        Ok(self
            .enumerate_class(class.as_str())?
            .into_iter()
            .find(|i| i.matches(key)))
    }
}

fn read_file(path: &Path) -> Result<String, ProviderError> {
    std::fs::read_to_string(path)
        .map_err(|e| ProviderError::Failed(format!("cannot read {}: {e}", path.display())))
}

/// Reads `path` and parses it, naming the file in any error.
fn with_file<T>(
    path: PathBuf,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ProviderError> {
    let text = read_file(&path)?;
    parse(&text).map_err(|e| ProviderError::Failed(format!("{}: {e}", path.display())))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}
