//! Users and groups by name or id, through NSS (`getpwnam_r`, `getpwuid_r`, `getgrnam_r`,
//! `getgrouplist`): the one place the daemon's crates ask who a user is. Each call's
//! buffer starts small and grows on `ERANGE` up to 1 MiB (a bounded answer, whatever the
//! name service says).

use std::ffi::{CStr, CString};

/// The largest buffer a lookup grows to.
const MAX_BUFFER: usize = 1 << 20;

/// A user's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
}

/// Runs a `get*_r` call with a buffer that grows while the call says `ERANGE`; the call
/// returns its error number and whether it found an entry.
fn with_buffer<T>(
    mut call: impl FnMut(&mut [u8]) -> (libc::c_int, Option<T>),
) -> std::io::Result<Option<T>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (rc, found) = call(&mut buf);
        if rc == libc::ERANGE && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        return Ok(found);
    }
}

/// The user called `name`: `Ok(None)` when there is none, `Err` when the name service
/// could not say.
pub fn user_by_name(name: &str) -> std::io::Result<Option<UserIds>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `passwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffers are valid for their lengths; `result` is null or `&pwd`.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        let found = (!result.is_null()).then_some(UserIds {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
        (rc, found)
    })
}

/// The name of the user with `uid`, if there is one.
pub fn user_name(uid: u32) -> Option<String> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `passwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffers are valid for their lengths; `result` is null or `&pwd`.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        let found = (!result.is_null())
            // SAFETY: on success `pw_name` points into `buf`, NUL-terminated.
            .then(|| unsafe { CStr::from_ptr(pwd.pw_name) })
            .and_then(|n| n.to_str().ok().map(str::to_owned));
        (rc, found)
    })
    .ok()
    .flatten()
}

/// The gid of the group called `name`, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `group`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: the buffers are valid for their lengths; `result` is null or `&grp`.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        (rc, (!result.is_null()).then_some(grp.gr_gid))
    })
    .ok()
    .flatten()
}

/// The groups of user `name` whose primary group is `gid` (that one included); just `gid`
/// when the name service cannot say. Call before forking: it allocates.
pub fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    let Ok(name) = CString::new(name) else {
        return vec![gid];
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: the buffer holds `n` gids; getgrouplist writes at most that many and
        // sets `n` to how many there are.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if groups.len() >= 65_536 {
            return vec![gid];
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_are_found_by_name_and_id() {
        assert_eq!(
            user_by_name("root").unwrap(),
            Some(UserIds { uid: 0, gid: 0 })
        );
        assert_eq!(user_by_name("no-such-user-here").unwrap(), None);
        assert_eq!(user_by_name("nul\0inside").unwrap(), None);
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(65534).as_deref(), Some("nobody"));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
        assert!(groups_of("root", 0).contains(&0));
        assert_eq!(groups_of("no-such-user-here", 4242), vec![4242]);
    }
}
