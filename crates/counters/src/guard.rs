//! Read-only mappings of files that someone else may shrink at any moment.
//!
//! A reader touching a page of a shared file mapping that lies past the file's end gets
//! `SIGBUS`, which kills the process: a publisher that calls `ftruncate` smaller could take
//! the daemon down. A [`GuardedMap`] registers its address range with a process-wide
//! `SIGBUS` handler. When a fault hits a registered range, the handler maps a page of
//! zeros over the faulting page (`MAP_FIXED`), marks the mapping *faulted* and returns; the
//! load is retried and reads zeros. The reader then sees [`GuardedMap::faulted`] and
//! refuses the file. A fault anywhere else goes to the handler that was there before (or
//! kills the process, as it would have).
//!
//! **Invariants.** The handler only reads the registry's atomics and calls `mmap`; it
//! allocates nothing and takes no lock. A range is registered before its mapping is
//! handed out and unregistered before it is unmapped. The registry has [`SLOTS`] entries;
//! a file that finds none free is refused (the limit is documented with the counters).
//! Costs nothing on the read path: one relaxed atomic load per check of `faulted`.

use std::fs::File;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How many mappings can be guarded at once.
pub const SLOTS: usize = 16_384;

struct Slot {
    /// 0 when free. Written last when a slot is taken, first when it is freed.
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
    /// Taken (between claiming and freeing), whether or not `start` is set yet.
    taken: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
    taken: AtomicBool::new(false),
};

static REGISTRY: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
/// The `SIGBUS` action that was installed before ours: faults outside our ranges go to it.
static mut PREVIOUS: Option<libc::sigaction> = None;

/// A read-only shared mapping of a whole file, guarded against the file shrinking.
pub struct GuardedMap {
    map: memmap2::Mmap,
    slot: usize,
}

impl GuardedMap {
    /// Maps `file` (read-only, shared) and guards the mapping. `Err` names what failed.
    pub fn new(file: &File) -> Result<GuardedMap, String> {
        install();
        let slot = claim().ok_or_else(|| {
            format!("{SLOTS} counter files are mapped already (the limit); close some first")
        })?;
        // SAFETY: a read-only shared mapping: the bytes are only ever read, as untrusted
        // data; a fault past the file's end is caught by the handler (module docs).
        let map = match unsafe { memmap2::Mmap::map(file) } {
            Ok(map) => map,
            Err(e) => {
                release(slot);
                return Err(format!("cannot map: {e}"));
            }
        };
        let entry = &REGISTRY[slot];
        entry.faulted.store(false, Ordering::Relaxed);
        entry.len.store(map.len(), Ordering::Relaxed);
        entry.start.store(map.as_ptr() as usize, Ordering::Release);
        Ok(GuardedMap { map, slot })
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The mapped bytes. Plain reads of them are safe against shrinking (they read zeros
    /// past the end once it shrank), but may see the publisher's writes half done.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether a read touched a page past the file's end: the file shrank while mapped,
    /// and what was read since may be zeros.
    pub fn faulted(&self) -> bool {
        REGISTRY[self.slot].faulted.load(Ordering::Relaxed)
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregistered before `map` is unmapped (fields drop after this).
        release(self.slot);
    }
}

fn claim() -> Option<usize> {
    REGISTRY.iter().position(|slot| {
        slot.taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

fn release(slot: usize) {
    let entry = &REGISTRY[slot];
    entry.start.store(0, Ordering::Release);
    entry.len.store(0, Ordering::Relaxed);
    entry.taken.store(false, Ordering::Release);
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a valid handler and a zeroed mask; the previous action is
        // saved once, before the handler can run (it is installed by this very call).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                PREVIOUS = Some(previous);
            }
        }
    });
}

/// The `SIGBUS` handler (module docs).
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for entry in &REGISTRY {
        let start = entry.start.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= start + entry.len.load(Ordering::Relaxed) {
            continue;
        }
        // SAFETY: sysconf and mmap are system calls; the page lies inside our own live
        // read-only mapping (registered), which it replaces with zeros.
        let mapped = unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            entry.faulted.store(true, Ordering::Relaxed);
            return;
        }
    }
    // Not ours: what would have happened without us.
    // SAFETY: PREVIOUS was written once, before this handler was installed.
    let previous = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    match previous {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has
                // this signature.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: a plain handler installed without SA_SIGINFO.
                let handler: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // Back to the default action; returning retries the access, which then kills
            // the process with SIGBUS as it would have.
            // SAFETY: resetting a signal's action to its default.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file shrunk under its mapping: reading past the new end used to kill the process
    /// with SIGBUS; now it reads zeros and the mapping says it faulted.
    #[test]
    fn reading_past_a_shrunk_end_raised_sigbus() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 3 * 4096]).unwrap();
        let map = GuardedMap::new(&file).unwrap();
        assert_eq!(map.bytes()[2 * 4096 + 5], 7);
        assert!(!map.faulted());
        file.set_len(4096).unwrap();
        // SAFETY: inside the mapping; a volatile read so it is not optimized away.
        let past = unsafe { std::ptr::read_volatile(map.as_ptr().add(2 * 4096 + 5)) };
        assert_eq!(past, 0);
        assert!(map.faulted());
        assert_eq!(
            map.bytes()[5],
            7,
            "the part still in the file reads as before"
        );
        drop(map);
        // A fresh mapping of another file starts clean.
        let other = tempfile::tempfile().unwrap();
        other.set_len(4096).unwrap();
        assert!(!GuardedMap::new(&other).unwrap().faulted());
    }
}
