//! `query`: SQL over classes (`docs/query.md`), run by `purveyor-query` on a blocking
//! thread. Each class it reads is a `describe`, `get` or `enumerate` made as the caller
//! through [`super::answer`], so the access policy, loading, deadlines and statistics are
//! those of the same plain requests: a query never loads a provider a `get` would not.

use std::sync::Arc;

use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey};
use purveyor_protocol::{ErrorCode, RemoteError, Request, Response};
use purveyor_provider::Caller;
use tokio::runtime::Handle;

use crate::cx::Cx;
use crate::state::Shared;

pub(super) async fn query(
    host: &Arc<Shared>,
    cx: &Cx<'_>,
    sql: String,
    plan: bool,
) -> Result<Response, RemoteError> {
    let source = Arc::new(AsCaller {
        host: host.clone(),
        caller: cx.caller.clone(),
        runtime: Handle::current(),
    });
    let limits = purveyor_query::Limits::default();
    let run = move || purveyor_query::run(source, &sql, plan, &limits);
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(rows)) => Ok(Response::Rows(rows)),
        Ok(Err(e)) => Err(e.remote()),
        Err(e) => Err(RemoteError::new(
            ErrorCode::Internal,
            format!("the query stopped: {e}"),
        )),
    }
}

/// The host as a query's source, read as `caller`.
struct AsCaller {
    host: Arc<Shared>,
    caller: Caller,
    runtime: Handle,
}

impl AsCaller {
    fn ask(&self, request: Request) -> Result<Response, RemoteError> {
        self.runtime.block_on(super::answer(
            &self.host,
            Cx::one_off(&self.caller),
            request,
        ))
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

fn unexpected(response: &Response) -> RemoteError {
    RemoteError::new(
        ErrorCode::Internal,
        format!("a query's read was answered {response:?}"),
    )
}
