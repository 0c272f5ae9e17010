//! The providers compiled into this build, and the host that serves them. The daemon
//! (`purveyor serve`) and an embedded client both build their host here, so both modes
//! give the same answers; neither goes through the other's crate.

use std::path::PathBuf;

use purveyor_host::{BuiltinProvider, Dispatch, Host, HostBuilder, HostConfig};
use purveyor_protocol::HostMode;

/// The host an embedded client runs: the default configuration (or `provider_dirs`) with
/// every provider compiled into this build.
pub fn default_host(mode: HostMode, provider_dirs: Option<Vec<PathBuf>>) -> Host {
    let config = match provider_dirs {
        Some(dirs) => HostConfig::with_dirs(mode, dirs),
        None => HostConfig::from_env(mode),
    };
    host_with(config)
}

/// A host with `config` and the providers compiled into this build.
pub fn host_with(config: HostConfig) -> Host {
    HostBuilder::new(config)
        .builtin(BuiltinProvider::new(
            "system",
            purveyor_system::MANIFEST,
            // procfs reads never wait on a device: inline is safe and saves a thread hop.
            Dispatch::Inline,
            || Ok(purveyor_system::SystemProvider::new()),
        ))
        .builtin(BuiltinProvider::new(
            "counters",
            purveyor_app_counters::MANIFEST,
            // Reads of mapped memory and one non-blocking inotify read: never waits.
            Dispatch::Inline,
            || {
                let grace = std::env::var("PURVEYOR_COUNTERS_GRACE")
                    .ok()
                    .and_then(|g| humantime::parse_duration(&g).ok())
                    .unwrap_or(std::time::Duration::from_secs(60));
                Ok(purveyor_app_counters::AppCounters::new(
                    purveyor_app_counters::AppCounters::default_dirs(),
                    purveyor_app_counters::AppCounters::default_mmv_dirs(),
                    grace,
                ))
            },
        ))
        .build()
}
