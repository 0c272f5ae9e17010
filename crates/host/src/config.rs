//! Host configuration.

use std::path::PathBuf;
use std::time::Duration;

use purveyor_protocol::{HostMode, MAX_FRAME_DEFAULT};

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
}

impl HostConfig {
    /// The defaults: manifests from `$PURVEYOR_PROVIDERS` (colon-separated) if set, else
    /// `$XDG_CONFIG_HOME/purveyor/providers` (or `~/.config/purveyor/providers`) then
    /// `/etc/purveyor/providers`.
    pub fn from_env(mode: HostMode) -> Self {
        HostConfig {
            provider_dirs: default_provider_dirs(),
            mode,
            max_frame: MAX_FRAME_DEFAULT,
            handshake_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            max_in_flight: 1024,
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
    dirs
}
