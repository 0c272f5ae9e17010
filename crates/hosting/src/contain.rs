//! Containing a provider process and everything it starts (`docs/lifecycle.md`,
//! "Process trees").
//!
//! A provider process is started under a **guard**: between fork and exec, the child
//! forks once more. The grandchild goes on to exec the provider; the child stays behind as
//! the guard, a process that never execs and only calls async-signal-safe system calls:
//!
//! - it is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`), so every process the provider
//!   starts, however it detaches (a double fork, `setsid`), is reparented to the guard
//!   when its parent exits, never to init;
//! - it waits for a signal. When the provider exits, when the host asks (`SIGTERM`), or
//!   when the host dies (its parent-death signal is `SIGTERM` too), it kills the
//!   provider's process group and then, round by round, every child it has (reparented
//!   descendants included), until it has none; then it exits the way the provider did
//!   (the same code, or the same signal), so the host sees the provider's own end.
//!
//! The provider itself has `PR_SET_PDEATHSIG(SIGKILL)` against the guard, so it cannot
//! outlive it even if the guard is killed outright. The host never `SIGKILL`s a guard:
//! it asks with `SIGTERM` ([`stop`]), which the guard cannot ignore (it waits for it).
//!
//! **Invariant:** after the guard exits, no process the provider started is running
//! (except one stuck in uninterruptible sleep past [`KILL_ROUNDS`] rounds, which the
//! guard logs nothing about: it has no descriptors left).

use std::os::fd::RawFd;

/// How many rounds of "kill every child, reap" the guard makes before it gives up.
pub const KILL_ROUNDS: u32 = 1000;

/// The signals the guard waits for; blocked in it so that it can.
const WAITED: [i32; 5] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
];

/// Asks a guard (the host's child) to stop its provider and everything it started.
pub fn stop(guard: u32) {
    if guard != 0 {
        // SAFETY: kill sends a signal; the pid is our own unreaped child, so it is not reused.
        unsafe { libc::kill(guard as libc::pid_t, libc::SIGTERM) };
    }
}

/// Splits the process into guard and provider. Called between fork and exec (from
/// `pre_exec`): returns `Ok(())` in the grandchild, which goes on to exec the provider;
/// the guard never returns. `report` is a pipe the guard writes the provider's pid to
/// (4 bytes, native order) before closing every descriptor it has.
///
/// # Safety
///
/// Only between fork and exec of a child: it calls async-signal-safe system calls only
/// and allocates nothing.
pub unsafe fn split(report: RawFd) -> std::io::Result<()> {
    // SAFETY: the whole body: raw system calls on this process, with valid pointers to
    // locals; nothing here allocates or takes a lock.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in WAITED {
            libc::sigaddset(&mut set, s);
        }
        // Blocked before the fork: a provider that exits at once is not missed.
        if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = libc::getpid();
        let provider = libc::fork();
        if provider < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if provider == 0 {
            // The provider: dies with its guard; its own process group, so that one
            // kill reaches whatever stays in it; the signal mask it had before.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != guard {
                libc::_exit(1);
            }
            libc::setpgid(0, 0);
            libc::close(report);
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return Ok(());
        }
        // The guard. The host learns who the provider is; then nothing of the host's is
        // kept open here (the exec-error pipe, the provider's stdin and stdout…).
        let bytes = (provider as u32).to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        close_all();
        let name = c"purveyor-guard";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
        guard_loop(provider, &set)
    }
}

/// The guard's life: wait; when the provider ends or the host says so, kill the tree and
/// end as the provider did.
///
/// # Safety
///
/// Only in the guard: the forked child that [`split`] keeps, which never execs.
unsafe fn guard_loop(provider: libc::pid_t, set: &libc::sigset_t) -> ! {
    // SAFETY: the whole body: raw system calls, as in `split`.
    unsafe {
        loop {
            let signal = libc::sigwaitinfo(set, std::ptr::null_mut());
            if signal == libc::SIGCHLD {
                // The provider ended? Its zombie holds its pid, so its process group id
                // cannot be reused while the group is killed.
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let peek = libc::waitid(
                    libc::P_PID,
                    provider as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                if peek == 0 && info.si_pid() == provider {
                    libc::kill(-provider, libc::SIGKILL);
                    let mut status = 0;
                    libc::waitpid(provider, &mut status, 0);
                    kill_tree(provider);
                    end_as(status);
                }
                // Else reap whatever ended: reparented descendants.
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == provider {
                        kill_tree(provider);
                        end_as(status);
                    }
                }
            } else if signal > 0 {
                // Told to stop (or the host died): the provider goes first.
                libc::kill(provider, libc::SIGKILL);
                kill_tree(provider);
                end_as(libc::SIGKILL);
            }
        }
    }
}

/// Kills the provider's process group, then every child of the guard, round by round (a
/// killed process's children become the guard's), reaping them, until none is left.
///
/// # Safety
///
/// Only in the guard: the forked child that [`split`] keeps, which never execs.
unsafe fn kill_tree(provider: libc::pid_t) {
    // SAFETY: the whole body: raw system calls, as in `split`.
    unsafe {
        libc::kill(-provider, libc::SIGKILL);
        for _ in 0..KILL_ROUNDS {
            let mut any = false;
            for_each_child(|pid| {
                any = true;
                libc::kill(pid, libc::SIGKILL);
            });
            // Reap what was killed (blocking: SIGKILL ends a process promptly); ECHILD
            // when the guard has no children left.
            let mut status = 0;
            let reaped = libc::waitpid(-1, &mut status, 0);
            if reaped < 0 && !any {
                return;
            }
        }
    }
}

/// Calls `f` with each pid in `/proc/thread-self/children` (the guard is single-threaded,
/// so these are all its children). Parses as it reads, into a stack buffer.
///
/// # Safety
///
/// Only in the guard: the forked child that [`split`] keeps, which never execs.
unsafe fn for_each_child(mut f: impl FnMut(libc::pid_t)) {
    // SAFETY: the whole body: raw system calls, as in `split`.
    unsafe {
        let fd = libc::open(
            c"/proc/thread-self/children".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 512];
        let mut pid: libc::pid_t = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &b in buf.iter().take(n as usize) {
                if b.is_ascii_digit() {
                    pid = pid
                        .saturating_mul(10)
                        .saturating_add((b - b'0') as libc::pid_t);
                } else if pid > 0 {
                    f(pid);
                    pid = 0;
                }
            }
        }
        if pid > 0 {
            f(pid);
        }
        libc::close(fd);
    }
}

/// Closes every descriptor of this process.
///
/// # Safety
///
/// Only in the guard: the forked child that [`split`] keeps, which never execs.
unsafe fn close_all() {
    // SAFETY: the whole body: raw system calls, as in `split`.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Ends the guard the way a wait status says the provider ended: the same exit code, or
/// the same signal (without a core dump of the guard). A bare signal number is the wait
/// status of a process killed by that signal.
///
/// # Safety
///
/// Only in the guard: the forked child that [`split`] keeps, which never execs.
unsafe fn end_as(status: i32) -> ! {
    // SAFETY: the whole body: raw system calls, as in `split`.
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            status
        };
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal)
    }
}
