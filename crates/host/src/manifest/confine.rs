//! `user`, `group` and `[limits]` of a manifest (`docs/lifecycle.md`, "Identity and
//! limits"): for a provider in a process of its own only, names resolved when read.

use std::time::Duration;

use purveyor_model::Hosting;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    memory: Option<String>,
    cpu: Option<String>,
    open_files: Option<u64>,
    processes: Option<u64>,
    calls: Option<u32>,
}

/// Who an isolated or external provider's process runs as (`user`, `group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// What an isolated or external provider's process may use (`[limits]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Resident memory, in bytes: past it the host stops the process.
    pub memory: Option<u64>,
    /// CPU time of its process (`RLIMIT_CPU`): past it the kernel ends it (`SIGXCPU`).
    pub cpu: Option<Duration>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    /// Calls running at once; more are refused (`limit_exceeded`). Any hosting.
    pub calls: Option<u32>,
}

impl ProviderLimits {
    pub fn is_empty(&self) -> bool {
        *self == ProviderLimits::default()
    }

    /// Whether a limit the kernel or the host enforces on a process is set (all but
    /// `calls`, which the host counts for any provider).
    pub fn need_a_process(&self) -> bool {
        self.memory.is_some()
            || self.cpu.is_some()
            || self.open_files.is_some()
            || self.processes.is_some()
    }
}

/// `user`, `group` and `[limits]`: only for a provider in a process of its own (not
/// shared by a host group), names resolved now (through NSS).
/// `user = "requestor"`: the provider's worker runs as each caller (a worker per user).
pub const REQUESTOR: &str = "requestor";

pub(super) fn confinement(
    raw: &super::RawManifest,
    hosting: Option<Hosting>,
    errors: &mut super::Errors<'_>,
) -> (Option<RunAs>, bool, ProviderLimits) {
    let own_process =
        matches!(hosting, Some(Hosting::Isolated | Hosting::External)) && raw.host_group.is_none();
    let limits = limits(raw, errors);
    let mut run_as = None;
    let requestor = raw.user.as_ref().is_some_and(|u| u.get_ref() == REQUESTOR);
    if requestor {
        if let Some(group) = &raw.group {
            let why = "a requestor provider runs with each caller's own groups: drop group";
            errors.push(Some(group.span()), Some("group"), why.into());
        }
    } else if let Some(user) = &raw.user {
        let name = user.get_ref();
        match crate::access::user_ids(name) {
            Some((uid, mut gid)) => {
                if let Some(group) = &raw.group {
                    match crate::access::group_id(group.get_ref()) {
                        Some(g) => gid = g,
                        None => errors.push(
                            Some(group.span()),
                            Some("group"),
                            format!("there is no group named {:?}", group.get_ref()),
                        ),
                    }
                }
                run_as = Some(RunAs {
                    user: name.clone(),
                    uid,
                    gid,
                });
            }
            None => errors.push(
                Some(user.span()),
                Some("user"),
                format!("there is no user named {name:?}"),
            ),
        }
    } else if let Some(group) = &raw.group {
        errors.push(Some(group.span()), Some("group"), "group needs user".into());
    }
    if (run_as.is_some() || requestor || limits.need_a_process()) && !own_process {
        let span = raw
            .user
            .as_ref()
            .map(|u| u.span())
            .or_else(|| raw.limits.as_ref().map(|l| l.span()));
        errors.push(
            span,
            Some(if raw.user.is_some() { "user" } else { "limits" }),
            "user and limits apply to a provider in a process of its own: hosting \"isolated\" (without host_group) or \"external\"".into(),
        );
    }
    (run_as, requestor, limits)
}

/// `[limits]`, each checked against its minimum.
fn limits(raw: &super::RawManifest, errors: &mut super::Errors<'_>) -> ProviderLimits {
    let mut limits = ProviderLimits::default();
    if let Some(spanned) = &raw.limits {
        let span = Some(spanned.span());
        let l = spanned.get_ref();
        if let Some(m) = &l.memory {
            match crate::config_file::parse_size(m) {
                Ok(bytes) if bytes >= 1 << 20 => limits.memory = Some(bytes),
                Ok(_) => errors.push(
                    span.clone(),
                    Some("limits.memory"),
                    format!("{m:?} is below the minimum of 1MiB"),
                ),
                Err(e) => errors.push(span.clone(), Some("limits.memory"), e),
            }
        }
        if let Some(c) = &l.cpu {
            match humantime::parse_duration(c) {
                Ok(d) if d >= Duration::from_secs(1) => limits.cpu = Some(d),
                Ok(_) => errors.push(
                    span.clone(),
                    Some("limits.cpu"),
                    format!("{c:?} is below the minimum of 1s (the kernel counts whole seconds)"),
                ),
                Err(e) => errors.push(
                    span.clone(),
                    Some("limits.cpu"),
                    format!("{c:?} is not a duration ({e})"),
                ),
            }
        }
        limits.open_files = l.open_files;
        match l.calls {
            Some(0) => errors.push(
                span.clone(),
                Some("limits.calls"),
                "calls = 0 would refuse every call".into(),
            ),
            calls => limits.calls = calls,
        }
        limits.processes = l.processes;
    }
    limits
}

/// `sandbox = "strict"` and `sandbox_read`: for an isolated worker of its own, or an
/// external program.
pub(super) fn sandbox(
    raw: &super::RawManifest,
    hosting: Option<Hosting>,
    errors: &mut super::Errors<'_>,
) -> Option<Vec<std::path::PathBuf>> {
    let Some(mode) = &raw.sandbox else {
        if raw.sandbox_read.is_some() {
            errors.push(
                None,
                Some("sandbox_read"),
                "sandbox_read needs sandbox = \"strict\"".into(),
            );
        }
        return None;
    };
    if mode.get_ref() != "strict" {
        errors.push(
            Some(mode.span()),
            Some("sandbox"),
            format!(
                "{:?} is not a sandbox (the one there is: \"strict\")",
                mode.get_ref()
            ),
        );
        return None;
    }
    let own_worker = hosting == Some(Hosting::Isolated) && raw.host_group.is_none();
    if !own_worker && hosting != Some(Hosting::External) {
        errors.push(
            Some(mode.span()),
            Some("sandbox"),
            "sandbox applies to a provider in a process of its own (hosting = \"isolated\" without host_group, or \"external\")".into(),
        );
        return None;
    }
    let mut read = Vec::new();
    for path in raw.sandbox_read.iter().flatten() {
        if !path.starts_with('/') {
            errors.push(
                None,
                Some("sandbox_read"),
                format!("{path:?} is not an absolute path"),
            );
        } else {
            read.push(std::path::PathBuf::from(path));
        }
    }
    Some(read)
}

impl super::Manifest {
    /// Said when a root daemon would run this provider's process as root without the
    /// manifest asking for it (`user = "root"`): a provider in a process of its own runs
    /// as the daemon's user unless `user` says otherwise.
    pub fn runs_as_root_unasked(&self, daemon_uid: u32) -> Option<String> {
        let own_process = matches!(self.hosting, Hosting::Isolated | Hosting::External);
        (own_process && daemon_uid == 0 && self.run_as.is_none() && !self.requestor).then(|| {
            format!(
                "{}: provider {} ({}) would run as root; give it user = \"NAME\" (or user = \"root\" to say so)",
                self.source, self.name, self.hosting
            )
        })
    }
}
