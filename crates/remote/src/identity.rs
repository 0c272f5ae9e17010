//! Who a remote client is: the common name of its verified certificate, mapped to a
//! local user (`docs/remote.md`, "Who a remote client is").
//!
//! A name listed in `[users]` maps to the user it names; any other maps to the local
//! user of the same name, unless `only_listed` is set. Root is reached only through an
//! explicit `[users]` entry: a certificate whose common name happens to be `root` is not
//! enough.

use std::collections::BTreeMap;

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
        let ids = purveyor_io::users::user_by_name(user)
            .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
            .ok_or_else(|| {
                format!("certificate {name:?} names user {user:?}, who does not exist here")
            })?;
        let (uid, gid) = (ids.uid, ids.gid);
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
            groups: purveyor_io::users::groups_of(user, gid),
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
        assert!(purveyor_io::users::groups_of("root", 0).contains(&0));
    }
}
