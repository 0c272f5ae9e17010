//! `sandbox = "strict"` (`docs/lifecycle.md`, "Sandbox"): an isolated worker confines
//! itself before it reads its first request — Landlock rules that let it read only what
//! its manifest names (the library, the system's shared libraries, `sandbox_read`) and
//! write only its state directory, and a seccomp filter that answers `EPERM` to the
//! system calls no provider needs (mounting, tracing, module and kernel loading, `bpf`,
//! `perf_event_open`, keyrings, namespaces, clock setting…). What the kernel does not
//! support is reported, not silently skipped.
//!
//! The host passes the rules in `PURVEYOR_SANDBOX` (JSON: [`Sandbox`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The environment variable that carries a worker's sandbox.
pub const ENV: &str = "PURVEYOR_SANDBOX";

/// What a strict worker may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Read (and map) only beneath these.
    pub read: Vec<PathBuf>,
    /// Read and write beneath these.
    pub write: Vec<PathBuf>,
}

/// Paths every worker needs to read: shared libraries and the loader's cache, and a few
/// devices.
pub const SYSTEM_READ: &[&str] = &[
    "/lib",
    "/lib64",
    "/lib32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/dev/null",
    "/dev/urandom",
];

/// Applies the sandbox `PURVEYOR_SANDBOX` describes, if it is set, and says on stderr
/// (the daemon's log) what the kernel enforced.
pub fn apply_from_env() -> Result<(), String> {
    let Some(rules) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let rules: Sandbox = serde_json::from_slice(rules.as_encoded_bytes())
        .map_err(|e| format!("malformed {ENV}: {e}"))?;
    let report = apply(&rules)?;
    eprintln!("purveyor (pid {}): sandbox: {report}", std::process::id());
    Ok(())
}

/// `purveyor sandbox-exec -- PROGRAM ARGS…`: applies the sandbox `PURVEYOR_SANDBOX`
/// describes to this process, then becomes `PROGRAM` (an external provider). Landlock
/// rules and the seccomp filter stay in force across the exec. Returns only on failure,
/// with the exit code (the reason is on stderr, the daemon's log).
pub fn exec(program: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ENV).is_none() {
        eprintln!("purveyor sandbox-exec: {ENV} is not set: refusing to run unconfined");
        return 2;
    }
    if let Err(e) = apply_from_env() {
        eprintln!("purveyor sandbox-exec: {e}");
        return 2;
    }
    let e = std::process::Command::new(program)
        .args(args)
        .env_remove(ENV)
        .exec();
    eprintln!(
        "purveyor sandbox-exec: cannot run {} in its sandbox: {e}",
        program.to_string_lossy()
    );
    127
}

/// What the kernel let the worker do, in words for the log.
pub fn apply(sandbox: &Sandbox) -> Result<String, String> {
    let landlock = landlock(sandbox)?;
    seccomp()?;
    Ok(format!("{landlock}; seccomp filter on"))
}

fn landlock(sandbox: &Sandbox) -> Result<String, String> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        path_beneath_rules,
    };
    let abi = ABI::V5;
    let existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths.iter().filter(|p| p.exists()).cloned().collect()
    };
    let mut read = existing(&sandbox.read);
    read.extend(existing(
        &SYSTEM_READ.iter().map(PathBuf::from).collect::<Vec<_>>(),
    ));
    let write = existing(&sandbox.write);
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&read, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(&write, AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("cannot set up Landlock: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "Landlock fully enforced".into(),
        RulesetStatus::PartiallyEnforced => {
            "Landlock partly enforced (this kernel lacks some access rights)".into()
        }
        RulesetStatus::NotEnforced => {
            "Landlock NOT enforced: this kernel does not support it".into()
        }
    })
}

/// The system calls a strict worker is refused (`EPERM`).
const REFUSED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

fn seccomp() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = match std::env::consts::ARCH {
        "x86_64" => TargetArch::x86_64,
        "aarch64" => TargetArch::aarch64,
        other => return Err(format!("no seccomp filter for {other}")),
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        REFUSED.iter().map(|s| (*s, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("cannot compile the seccomp filter: {e:?}"))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

/// The Landlock ABI this kernel offers (0: none), for the daemon's report.
pub fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset with no attributes and the VERSION flag only
    // returns the ABI version (or an error); it creates nothing.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
    .max(0)
}
