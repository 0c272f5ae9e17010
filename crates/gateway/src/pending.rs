//! The gateway's table of calls answered `202` (see `calls.rs`): each call's session and
//! what its caller can see, kept until fetched or for [`KEEP_RESULT`] after it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use purveyor_host::Session;
use purveyor_model::Value;
use purveyor_protocol::{Form, FormUpdate, RemoteError};
use serde::Serialize;

/// HTTP calls with a session of their own, running or finished, at once.
pub const MAX_CALLS: usize = 64;
/// How long a finished call's result waits for its caller.
pub const KEEP_RESULT: Duration = Duration::from_secs(300);

/// The gateway's calls with dialogs.
#[derive(Default)]
pub struct Calls {
    pub(crate) next: AtomicU32,
    pub(crate) table: std::sync::Mutex<BTreeMap<u32, Arc<Call>>>,
}

/// One call: who made it, its session, and what the caller can see.
pub(crate) struct Call {
    pub(crate) id: u32,
    pub(crate) owner: String,
    pub(crate) session: Session,
    pub(crate) state: std::sync::Mutex<CallState>,
    pub(crate) changed: tokio::sync::Notify,
}

#[derive(Default)]
pub(crate) struct CallState {
    pub(crate) dialogs: BTreeMap<u32, DialogView>,
    pub(crate) outcome: Option<Result<Option<Value>, RemoteError>>,
    pub(crate) finished: Option<Instant>,
    /// Bumped at each change, for `?wait=`.
    pub(crate) version: u64,
}

/// A dialog as the caller sees it.
#[derive(Clone, Serialize)]
pub(crate) struct DialogView {
    pub(crate) handle: u32,
    pub(crate) provider: String,
    pub(crate) deadline_ms: u64,
    pub(crate) form: Form,
    pub(crate) updates: Vec<FormUpdate>,
    pub(crate) closed: Option<String>,
    pub(crate) href: String,
}

impl Calls {
    /// Drops finished calls nobody fetched in time.
    pub(crate) fn sweep(&self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, call| {
            let state = call.state.lock().unwrap_or_else(|e| e.into_inner());
            state.finished.is_none_or(|at| at.elapsed() < KEEP_RESULT)
        });
    }
}
