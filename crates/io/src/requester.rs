//! Who an I/O operation is for.

/// The credentials an operation runs for: whose files it may touch (a host switches its
/// thread's file-system credentials to these) and whose memory buffers it sees.
///
/// Invariant: fixed when the requester's connection was accepted (`SO_PEERCRED`,
/// `SO_PEERGROUPS`), never re-read from a process that may since have gone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group may or may not be among them).
    pub groups: Vec<u32>,
}

impl Requester {
    /// This process's own effective credentials.
    pub fn this_process() -> Self {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Requester {
            uid,
            gid,
            groups: process_groups(),
        }
    }
}

/// This process's supplementary groups.
fn process_groups() -> Vec<u32> {
    // SAFETY: with a size of 0, getgroups only counts.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: getgroups writes at most `groups.len()` entries into `groups`.
    let got = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(got.max(0) as usize);
    groups
}
