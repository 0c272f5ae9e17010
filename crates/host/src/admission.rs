//! Which connections the daemon takes: at most `conn.total` at once and `conn.per_user`
//! per user (`docs/security.md`, "Limits"), so that no user can take every descriptor
//! and lock the others out.
//!
//! **Invariant:** a connection is counted from [`Admission::admit`] until its [`Ticket`]
//! drops, so the counts are exactly the connections being served.

use purveyor_hosting::lock::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Limits;

/// Connections root and the daemon's own user may open past `conn.total`, so that the
/// owners can still look at a daemon that others have filled.
pub const OWNER_RESERVE: u32 = 32;

/// The connections open now, in all and by user.
#[derive(Default)]
pub(crate) struct Admission {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: u32,
    by_user: HashMap<u32, u32>,
}

/// A connection's place; dropping it gives the place back.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    uid: u32,
}

impl Admission {
    /// Takes a place for a connection of `uid`, or says which limit it would pass.
    /// `privileged` (root, the daemon's user): no per-user limit, and
    /// [`OWNER_RESERVE`] places past the total.
    pub(crate) fn admit(
        self: &Arc<Self>,
        uid: u32,
        privileged: bool,
        limits: &Limits,
    ) -> Result<Ticket, String> {
        let mut open = self.open.locked();
        let total = if privileged {
            limits.conn_total.saturating_add(OWNER_RESERVE)
        } else {
            limits.conn_total
        };
        if open.total >= total {
            return Err(format!(
                "the daemon has {} connections open, its limit (conn.total = {}); try again later",
                open.total, limits.conn_total
            ));
        }
        let mine = open.by_user.get(&uid).copied().unwrap_or(0);
        if !privileged && mine >= limits.conn_per_user {
            return Err(format!(
                "uid {uid} has {mine} connections open, the limit per user (conn.per_user = {}); close some first",
                limits.conn_per_user
            ));
        }
        open.total += 1;
        *open.by_user.entry(uid).or_default() += 1;
        Ok(Ticket {
            admission: self.clone(),
            uid,
        })
    }

    #[cfg(test)]
    fn counts(&self, uid: u32) -> (u32, u32) {
        let open = self.open.locked();
        (open.total, open.by_user.get(&uid).copied().unwrap_or(0))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.admission.open.locked();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_user.get_mut(&self.uid) {
            *mine -= 1;
            if *mine == 0 {
                open.by_user.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_total_limits_with_a_reserve_for_the_owners() {
        let limits = Limits {
            conn_total: 3,
            conn_per_user: 2,
            ..Limits::default()
        };
        let admission = Arc::new(Admission::default());
        let a1 = admission.admit(1000, false, &limits).unwrap();
        let _a2 = admission.admit(1000, false, &limits).unwrap();
        let err = admission.admit(1000, false, &limits).err().unwrap();
        assert!(
            err.contains("uid 1000 has 2") && err.contains("conn.per_user = 2"),
            "{err}"
        );
        let _b1 = admission.admit(1001, false, &limits).unwrap();
        let err = admission.admit(1002, false, &limits).err().unwrap();
        assert!(err.contains("conn.total = 3"), "{err}");
        // Root still gets in, past the total and the per-user limit.
        let roots: Vec<_> = (0..5)
            .map(|_| admission.admit(0, true, &limits).unwrap())
            .collect();
        assert_eq!(admission.counts(0), (8, 5));
        drop(roots);
        drop(a1);
        assert_eq!(admission.counts(1000), (2, 1));
        assert!(admission.admit(1000, false, &limits).is_ok());
    }
}
