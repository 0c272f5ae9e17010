//! How a provider process ends: asking its guard to stop it ([`crate::contain`]), waiting
//! for it within a grace period, and saying how it ended.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

/// Asks the child (a guard) to stop its provider and everything it started, unless it
/// has already ended.
pub(crate) fn stop(child: &mut Child) {
    if let (Ok(None), Some(guard)) = (child.try_wait(), child.id()) {
        crate::contain::stop(guard);
    }
}

/// How long a guard has to kill its provider's processes before it is killed itself.
const GUARD_GRACE: Duration = Duration::from_secs(5);

/// Waits up to `grace` for the child to exit, stops it if it has not, and describes how
/// it ended (`", exit status 3"`, `", killed by signal 11 (SIGSEGV)"`).
pub(crate) async fn finish(child: &mut Child, grace: Duration) -> String {
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            stop(child);
            let status = match tokio::time::timeout(GUARD_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    // A guard stuck reaping (a process in uninterruptible sleep).
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            match status {
                Ok(status) => status,
                Err(e) => return format!(", and waiting for it failed: {e}"),
            }
        }
    };
    format!(", {}", describe_exit(status))
}

/// The provider's pid, as its guard reported it (`None` when it did not).
pub(crate) fn provider_pid(mut report: std::io::PipeReader) -> Option<u32> {
    use std::io::Read as _;
    let mut bytes = [0u8; 4];
    report.read_exact(&mut bytes).ok()?;
    Some(u32::from_ne_bytes(bytes)).filter(|&pid| pid != 0)
}

/// `exit status 3`, `killed by signal 11 (SIGSEGV)`.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(signal) = status.signal() {
        format!(
            "killed by signal {signal} ({}){}",
            signal_name(signal),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        )
    } else {
        format!("{status}")
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}
