//! `query`: SQL over classes (`docs/query.md`), run by `purveyor-query` on a blocking
//! thread. Each class it reads is a `describe`, `get` or `enumerate` made as the caller
//! through [`super::answer`], so the access policy, loading, deadlines and statistics are
//! those of the same plain requests: a query never loads a provider a `get` would not.
//! The host keeps the engine's SQLite connections between queries (`Shared::queries`).

use std::sync::Arc;

use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey};
use purveyor_protocol::{ErrorCode, RemoteError, Request, Response};
use purveyor_provider::Caller;
use tokio::runtime::Handle;

use purveyor_query::QueryError;

use crate::access::Permission;
use crate::calls::allowed;
use crate::cx::Cx;
use crate::outcomes::schema_for;
use crate::state::Shared;

pub(super) async fn query(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    sql: String,
    plan: bool,
) -> Result<Response, RemoteError> {
    if let Some(answer) = now(host, cx, &sql, plan) {
        return answer;
    }
    let limits = purveyor_query::Limits::default();
    // A read must wait (a load, a worker, a deadline): SQLite works synchronously, so the
    // query runs on the blocking pool, and each read it makes is a task on the runtime
    // that it waits for. Not `block_in_place`, and no read on the pool thread itself: a
    // provider process dies with the thread that started it, which must be one of the
    // runtime's long-lived worker threads (`purveyor_hosting::process`), never a thread
    // that may retire.
    let source = Arc::new(AsCaller {
        host: host.clone(),
        caller: cx.caller.clone(),
        runtime: Handle::current(),
        may_wait: true,
    });
    let host = host.clone();
    let run = move || host.queries().run(source, &sql, plan, &limits);
    // The query is answered at its own limit even if its thread is still busy (SQLite's
    // progress handler cannot interrupt a read it waits for); the thread is abandoned.
    let waited = limits.time + STUCK_GRACE;
    let result = match tokio::time::timeout(waited, tokio::task::spawn_blocking(run)).await {
        Ok(joined) => joined.map_err(|e| {
            RemoteError::new(ErrorCode::Internal, format!("the query stopped: {e}"))
        })?,
        Err(_) => {
            return Err(RemoteError::new(
                ErrorCode::Timeout,
                format!(
                    "the query ran longer than its limit of {}s (a class read is stuck)",
                    limits.time.as_secs()
                ),
            ));
        }
    };
    result.map(Response::Rows).map_err(|e| e.remote())
}

/// The query on this thread, as long as every class read can be answered at once (loaded
/// providers whose calls run inline: no waiting, no hand-off) and SQLite is done within
/// [`AT_ONCE`], so a runtime thread is never held longer; `None` when it cannot be.
fn now(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    sql: &str,
    plan: bool,
) -> Option<Result<Response, RemoteError>> {
    let source = Arc::new(AsCaller {
        host: host.clone(),
        caller: cx.caller.clone(),
        runtime: Handle::try_current().ok()?,
        may_wait: false,
    });
    let at_once = purveyor_query::Limits {
        time: AT_ONCE,
        ..purveyor_query::Limits::default()
    };
    match host.queries().run(source, sql, plan, &at_once) {
        Err(QueryError::Class(e)) if e.message == WOULD_WAIT => None,
        Err(QueryError::Limit(_)) => None,
        done => Some(done.map(Response::Rows).map_err(|e| e.remote())),
    }
}

/// How long past its time limit a query on the blocking pool is waited for.
const STUCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest a query runs on a runtime thread before it goes to the blocking pool.
const AT_ONCE: std::time::Duration = std::time::Duration::from_millis(20);

/// What a read that would have to wait answers while the query runs on a runtime thread.
const WOULD_WAIT: &str = "a class read would wait";

/// The host as a query's source, read as `caller`.
struct AsCaller {
    host: Arc<Shared>,
    caller: Caller,
    runtime: Handle,
    /// Reads may wait for the host (the query is on a thread that may block).
    may_wait: bool,
}

impl AsCaller {
    fn ask(&self, request: Request) -> Result<Response, RemoteError> {
        let cx = Cx::one_off(&self.caller);
        let now = match &request {
            Request::Get { class, .. } | Request::Enumerate { class, .. } => {
                super::read::ready_now(&self.host, class)
            }
            _ => None,
        };
        if let Some((slot, loaded)) = now {
            self.host.admit()?;
            return match request {
                Request::Get { class, key } => {
                    super::read::get_now(&self.host, &cx, &slot, &loaded, class, key)
                }
                Request::Enumerate { class, selector } => {
                    super::read::enumerate_now(&self.host, &cx, &slot, &loaded, class, selector)
                }
                other => Err(unexpected_request(&other)),
            };
        }
        if let Request::Describe { class } = &request
            && let Some(slot) = self.host.registry().slot_for(class)
            && let Some(loaded) = slot.loaded_now()
        {
            allowed(&self.host, &cx, Permission::Read, class.as_str())?;
            return Ok(Response::Class(
                schema_for(slot, &loaded, class)?.as_ref().clone(),
            ));
        }
        if !self.may_wait {
            return Err(RemoteError::new(ErrorCode::Internal, WOULD_WAIT));
        }
        let (host, caller) = (self.host.clone(), self.caller.clone());
        let read = self
            .runtime
            .spawn(async move { super::answer(&host, Cx::one_off(&caller), request).await });
        self.runtime.block_on(read).unwrap_or_else(|e| {
            Err(RemoteError::new(
                ErrorCode::Internal,
                format!("a query's read stopped: {e}"),
            ))
        })
    }
}

impl purveyor_query::Source for AsCaller {
    fn schema(&self, class: &ClassPath) -> Result<Option<Arc<ClassSchema>>, RemoteError> {
        match self.ask(Request::Describe {
            class: class.clone(),
        }) {
            Ok(Response::Class(schema)) => Ok(Some(Arc::new(schema))),
            Ok(other) => Err(unexpected(&other)),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fetch(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        whole: bool,
    ) -> Result<Vec<Instance>, RemoteError> {
        let request = if whole {
            Request::Get {
                class: class.clone(),
                key: key.clone(),
            }
        } else {
            Request::Enumerate {
                class: class.clone(),
                selector: key.clone(),
            }
        };
        match self.ask(request) {
            Ok(Response::Instance(instance)) => Ok(vec![instance]),
            Ok(Response::Instances(list)) => Ok(list.instances),
            Ok(other) => Err(unexpected(&other)),
            // A get of a key nobody has: no row.
            Err(e) if whole && e.code == ErrorCode::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn unexpected_request(request: &Request) -> RemoteError {
    RemoteError::new(
        ErrorCode::Internal,
        format!("a query cannot ask {request:?}"),
    )
}

fn unexpected(response: &Response) -> RemoteError {
    RemoteError::new(
        ErrorCode::Internal,
        format!("a query's read was answered {response:?}"),
    )
}
