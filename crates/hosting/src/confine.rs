//! Who a provider process runs as and what it may use (`docs/lifecycle.md`, "Identity
//! and limits"): applied in the provider's own process between fork and exec, after the
//! guard split off ([`crate::contain`]), so the guard keeps the host's identity and can
//! always stop it.
//!
//! **Order:** resource limits first (raising nothing: a limit is only ever lowered), then
//! supplementary groups, group, user — in that order, since each later step drops the
//! right to do the earlier ones — then `no_new_privs`, then the parent-death signal again
//! (a change of user clears it).

/// What a provider process is confined to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confine {
    /// Run as this user and group, with these supplementary groups (`None`: the host's).
    pub identity: Option<Identity>,
    /// `setrlimit` resources and their values (soft = hard, but for CPU: see `apply`).
    pub rlimits: Vec<(RlimitResource, u64)>,
    /// A worker's strict sandbox, which it applies itself (`crate::sandbox`).
    pub sandbox: Option<crate::sandbox::Sandbox>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The resources a manifest may limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitResource {
    /// CPU seconds (`RLIMIT_CPU`): past them the kernel sends `SIGXCPU`, which ends it.
    Cpu,
    /// Open descriptors (`RLIMIT_NOFILE`).
    OpenFiles,
    /// Processes and threads of its user (`RLIMIT_NPROC`: counted per user, so meant for
    /// a provider with a user of its own).
    Processes,
}

impl RlimitResource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            RlimitResource::Cpu => libc::RLIMIT_CPU,
            RlimitResource::OpenFiles => libc::RLIMIT_NOFILE,
            RlimitResource::Processes => libc::RLIMIT_NPROC,
        }
    }
}

impl Confine {
    /// Gives a worker its sandbox's rules (it applies them itself: `crate::sandbox`).
    pub(crate) fn pass_sandbox(&self, cmd: &mut tokio::process::Command) -> Result<(), String> {
        if let Some(sandbox) = &self.sandbox {
            let rules = serde_json::to_string(sandbox).map_err(|e| e.to_string())?;
            cmd.env(crate::sandbox::ENV, rules);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.identity.is_none() && self.rlimits.is_empty() && self.sandbox.is_none()
    }

    /// Applies the confinement to this process.
    ///
    /// # Safety
    ///
    /// Only between fork and exec: async-signal-safe system calls on data prepared
    /// before the fork; nothing allocates.
    pub(crate) unsafe fn apply(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: system calls with pointers to our own, already allocated data.
        unsafe {
            for (resource, value) in &self.rlimits {
                // CPU: the kernel sends SIGXCPU at the soft limit and SIGKILL at the hard
                // one, so the hard one is a second later (the reason stays readable).
                let hard = match resource {
                    RlimitResource::Cpu => value.saturating_add(1),
                    _ => *value,
                };
                let limit = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource.raw(), &limit) != 0 {
                    return fail();
                }
            }
            if let Some(id) = &self.identity
                && (libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0
                    || libc::setresgid(id.gid, id.gid, id.gid) != 0
                    || libc::setresuid(id.uid, id.uid, id.uid) != 0)
            {
                return fail();
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return fail();
            }
        }
        Ok(())
    }
}

/// Which of the kernel's mechanisms enforce providers' `[limits]` on this machine, in
/// words for the daemon's log and `purveyor check`: rlimits (CPU, open files, processes)
/// and the host's own resident-memory watch — and what cgroup v2 would offer here, and why
/// it is not used. (cgroup v2 needs a subtree delegated to the daemon, with the memory
/// and cpu controllers: under systemd, `Delegate=yes`.)
pub fn limits_report() -> String {
    const IN_FORCE: &str = "limits: rlimits (cpu, open_files, processes) and the host's resident-memory watch (memory)";
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return format!(
            "{IN_FORCE}; cgroup v2 is not in use on this machine (v1 hierarchies only)"
        );
    };
    let root = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        std::path::PathBuf::from("/sys/fs/cgroup")
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup/unified")
    };
    let dir = root.join(path.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let have = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !have("memory") || !have("cpu") {
        return format!(
            "{IN_FORCE}; cgroup v2 at {} lacks the memory and cpu controllers (they are on v1 here)",
            dir.display()
        );
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return format!(
            "{IN_FORCE}; cgroup v2 at {} is not delegated to the daemon (systemd's Delegate=yes would)",
            dir.display()
        );
    }
    format!(
        "{IN_FORCE}; cgroup v2 at {} is delegated, but providers' limits do not use it yet",
        dir.display()
    )
}

#[cfg(test)]
mod limits_report_tests {
    #[test]
    fn the_report_names_what_is_in_force_and_why_not_cgroups() {
        let report = super::limits_report();
        assert!(report.starts_with("limits: rlimits"), "{report}");
        assert!(report.contains("cgroup v2"), "{report}");
    }
}
