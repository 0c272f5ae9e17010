//! `user = "requestor"` (`docs/lifecycle.md`, "Identity"): a provider whose worker runs as
//! the calling user, so that it has exactly the caller's rights. The manifest's slot never
//! loads; each user who calls gets a slot of their own — the same manifest with `user` set
//! to them — and with it a worker of their own, loaded, idled and quarantined like any
//! other. **Invariant:** workers of different users never share a process, since a slot
//! has one process and a user's slot serves only that user.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use purveyor_protocol::{ErrorCode, RemoteError};

use super::Slot;
use crate::cache_control::CacheControl;
use crate::manifest::RunAs;
use purveyor_provider::Caller;

/// The most users one requestor provider keeps slots for; beyond, a new user is refused
/// (`limit_exceeded`) until the daemon restarts or reloads the provider.
pub(crate) const MAX_USERS: usize = 256;

/// A requestor provider's users' slots.
pub(crate) struct Requestors {
    by_uid: Mutex<BTreeMap<u32, Arc<Slot>>>,
    crashes: u32,
    window: Duration,
    cache: Option<Arc<CacheControl>>,
}

impl Requestors {
    pub fn new(crashes: u32, window: Duration, cache: Option<Arc<CacheControl>>) -> Self {
        Requestors {
            by_uid: Mutex::new(BTreeMap::new()),
            crashes,
            window,
            cache,
        }
    }
}

impl Slot {
    /// The slot that serves `caller`: this one, or — for a requestor provider — the one
    /// of the caller's user, made on first use.
    pub fn for_caller(self: &Arc<Self>, caller: &Caller) -> Result<Arc<Slot>, RemoteError> {
        let Some(users) = &self.requestors else {
            return Ok(self.clone());
        };
        let mut by_uid = users.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = by_uid.get(&caller.uid) {
            return Ok(slot.clone());
        }
        if by_uid.len() >= MAX_USERS {
            return Err(self.error(
                ErrorCode::LimitExceeded,
                format!(
                    "provider {} already runs workers for {MAX_USERS} users, the most a requestor provider may",
                    self.manifest.name
                ),
            ));
        }
        let user = purveyor_io::users::user_name(caller.uid).ok_or_else(|| {
            self.error(
                ErrorCode::AccessDenied,
                format!(
                    "provider {} runs as its caller, and uid {} has no user name here",
                    self.manifest.name, caller.uid
                ),
            )
        })?;
        let mut manifest = self.manifest.clone();
        manifest.run_as = Some(RunAs {
            user,
            uid: caller.uid,
            gid: caller.gid,
        });
        let slot = Arc::new(Slot::new(
            manifest,
            users.crashes,
            users.window,
            users.cache.clone(),
        ));
        if self.retired.load(std::sync::atomic::Ordering::Acquire) {
            slot.retire();
        }
        by_uid.insert(caller.uid, slot.clone());
        Ok(slot)
    }

    /// The users' slots of a requestor provider (none for any other).
    pub fn user_slots(&self) -> Vec<Arc<Slot>> {
        match &self.requestors {
            Some(users) => users
                .by_uid
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether this is a requestor provider's own slot, which never loads.
    pub fn serves_per_user(&self) -> bool {
        self.requestors.is_some()
    }
}
