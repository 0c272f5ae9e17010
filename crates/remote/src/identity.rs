//! Who a remote client is: the common name of its verified certificate, mapped to a
//! local user (`docs/remote.md`, "Who a remote client is").
//!
//! A name listed in `[users]` maps to the user it names; any other maps to the local
//! user of the same name, unless `only_listed` is set. Root is reached only through an
//! explicit `[users]` entry: a certificate whose common name happens to be `root` is not
//! enough.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};

/// A remote client after its handshake: the certificate's name and the local account it
/// acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUser {
    /// The certificate's common name.
    pub certificate: String,
    /// The local user name.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// How certificate names map to local users.
#[derive(Debug, Clone, Default)]
pub struct Users {
    listed: BTreeMap<String, String>,
    only_listed: bool,
}

/// The longest common name X.509 allows (RFC 5280's `ub-common-name`).
const MAX_NAME: usize = 64;

impl Users {
    /// Checks every entry's names; `Err` names the bad one.
    pub fn new(listed: BTreeMap<String, String>, only_listed: bool) -> Result<Users, String> {
        for (cert, user) in &listed {
            if !certificate_name_ok(cert) {
                return Err(format!(
                    "{:?} is not a certificate name (1..64 printable characters)",
                    shorten(cert)
                ));
            }
            if !user_name_ok(user) {
                return Err(format!(
                    "{:?} (for {cert:?}) is not a user name",
                    shorten(user)
                ));
            }
        }
        Ok(Users {
            listed,
            only_listed,
        })
    }

    /// The local user a certificate named `name` acts as, or why it has none.
    pub fn resolve(&self, name: &str) -> Result<RemoteUser, String> {
        let listed = self.listed.get(name);
        let user = match listed {
            Some(user) => user.as_str(),
            None if self.only_listed => {
                return Err(format!(
                    "certificate {name:?} is not listed in the daemon's [users]"
                ));
            }
            None if user_name_ok(name) => name,
            None => {
                return Err(format!(
                    "certificate {name:?} is not a local user name and is not listed in the daemon's [users]"
                ));
            }
        };
        let (uid, gid) = lookup(user)?.ok_or_else(|| {
            format!("certificate {name:?} names user {user:?}, who does not exist here")
        })?;
        if uid == 0 && listed.is_none() {
            return Err(format!(
                "certificate {name:?} would act as root; only a [users] entry can map a certificate to root"
            ));
        }
        Ok(RemoteUser {
            certificate: name.to_owned(),
            user: user.to_owned(),
            uid,
            gid,
            groups: groups(user, gid),
        })
    }
}

/// The common name in a certificate's subject (DER), checked printable and at most 64
/// characters. The certificate was verified before this reads it.
pub(crate) fn certificate_name(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the client certificate's subject has no common name (CN)")?
        .as_str()
        .map_err(|_| "the client certificate's common name is not text")?;
    if !certificate_name_ok(name) {
        return Err(format!(
            "the client certificate's common name {:?} is not 1..64 printable characters",
            shorten(name)
        ));
    }
    Ok(name.to_owned())
}

fn certificate_name_ok(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME && name.chars().all(|c| !c.is_control())
}

/// POSIX-portable user names, as `useradd` takes them (and `$` for machine accounts).
fn user_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c))
}

fn shorten(text: &str) -> String {
    text.chars().take(MAX_NAME).collect()
}

/// `getpwnam_r`: the user's uid and primary gid.
fn lookup(user: &str) -> Result<Option<(u32, u32)>, String> {
    let name = CString::new(user).map_err(|_| format!("{user:?} holds a NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffers are valid for their stated lengths; `result` points at
        // `pwd` or is null afterwards.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "cannot look up user {user:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        return Ok((!result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)));
    }
}

/// `getgrouplist`: the groups the user is in (the primary one included).
fn groups(user: &str, gid: u32) -> Vec<u32> {
    let Ok(name) = CString::new(user) else {
        return vec![gid];
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; the call writes at most that many
        // and sets `n` to how many it needed.
        let rc =
            unsafe { libc::getgrouplist(CStr::as_ptr(&name), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if groups.len() >= 65_536 {
            return vec![gid];
        }
        let want = (n.max(0) as usize).max(groups.len() * 2);
        groups.resize(want, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(listed: &[(&str, &str)], only_listed: bool) -> Users {
        let listed = listed
            .iter()
            .map(|(c, u)| (c.to_string(), u.to_string()))
            .collect();
        Users::new(listed, only_listed).unwrap()
    }

    #[test]
    fn an_unlisted_name_is_the_same_named_user_but_never_root() {
        let u = users(&[], false);
        let nobody = u.resolve("nobody").unwrap();
        assert_eq!((nobody.uid, nobody.user.as_str()), (65534, "nobody"));
        let e = u.resolve("root").unwrap_err();
        assert!(e.contains("only a [users] entry"), "{e}");
        let e = u.resolve("no-such-user-here").unwrap_err();
        assert!(e.contains("does not exist here"), "{e}");
        let e = u.resolve("alice@laptop").unwrap_err();
        assert!(e.contains("not a local user name"), "{e}");
    }

    #[test]
    fn listed_names_map_and_only_listed_refuses_the_rest() {
        let u = users(&[("ops@host", "root"), ("guest", "nobody")], true);
        assert_eq!(u.resolve("ops@host").unwrap().uid, 0);
        assert_eq!(u.resolve("guest").unwrap().uid, 65534);
        let e = u.resolve("nobody").unwrap_err();
        assert!(e.contains("not listed"), "{e}");
        assert!(Users::new([("a".into(), "bad name".into())].into(), false).is_err());
        assert!(Users::new([("".into(), "root".into())].into(), false).is_err());
    }

    #[test]
    fn root_is_in_its_groups() {
        assert!(groups("root", 0).contains(&0));
    }
}
