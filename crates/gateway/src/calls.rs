//! Method calls whose provider asks the caller something (`docs/http.md`, "Dialogs"):
//! with `Prefer: respond-async`, a call that opens an in-call dialog answers `202` with
//! a call resource; the caller reads the dialog there, answers it, and fetches the
//! result.
//!
//! Each such call runs in a session of its own that shows dialogs; a task follows its
//! pushes (a dialog opened is made ready at once, since the HTTP caller is the UI; its
//! updates and its close are recorded) until the call ends. **Limits:** at most
//! [`MAX_CALLS`] at once for the whole gateway (more get `429`); a finished call's result
//! is kept [`KEEP_RESULT`] for its caller to fetch, then dropped; only the identity that
//! made a call can see or answer it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use purveyor_model::{Identifier, Instance};
use purveyor_protocol::Response as Answer;
use purveyor_protocol::{DialogInput, ErrorCode, Push, RemoteError, Request};
use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::http::{
    Failure, Gateway, ask, body, class_path, identity, json, selector, unexpected, writer,
};
use crate::pending::{Call, CallState, Calls, DialogView, KEEP_RESULT, MAX_CALLS};

/// The longest `?wait=` a `GET /v1/calls/{id}` may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// `id`, if it is a call of `identity`'s.
fn find(calls: &Calls, id: u32, identity: &Identity) -> Result<Arc<Call>, Failure> {
    calls.sweep();
    let table = calls.table.lock().unwrap_or_else(|e| e.into_inner());
    table
        .get(&id)
        .filter(|call| call.owner == identity.who())
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!(
                    "no call {id} of {} (finished calls are kept {} s)",
                    identity.who(),
                    KEEP_RESULT.as_secs()
                ),
            )
        })
}

/// Runs `request` (a call) for an HTTP caller that accepts `202`: the answer when it
/// finishes without a dialog, else `202` with the call resource once a dialog opens.
pub(crate) async fn call_async(
    gateway: &Arc<Gateway>,
    identity: &Identity,
    request: Request,
) -> Result<Response, Failure> {
    let calls = &gateway.calls;
    calls.sweep();
    let call = {
        let mut table = calls.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_CALLS {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::LimitExceeded,
                format!(
                    "{MAX_CALLS} HTTP calls with dialogs are open or waiting to be fetched, the gateway's limit"
                ),
            ));
        }
        let id = calls.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let session = gateway.host.session(identity.caller.clone());
        session.set_shows(true);
        let call = Arc::new(Call {
            id,
            owner: identity.who(),
            session,
            state: Default::default(),
            changed: tokio::sync::Notify::new(),
        });
        table.insert(id, call.clone());
        call
    };
    tokio::spawn(run(gateway.clone(), call.clone(), request));
    // Until it ends, or a dialog opens.
    loop {
        let notified = call.changed.notified();
        {
            let state = call.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.outcome.is_some() {
                drop(state);
                return Ok(finished(calls, &call));
            }
            if !state.dialogs.is_empty() {
                let body = view(&call, &state);
                drop(state);
                let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
                if let Ok(href) = format!("/v1/calls/{}", call.id).parse() {
                    response.headers_mut().insert(header::LOCATION, href);
                }
                return Ok(response);
            }
        }
        notified.await;
    }
}

/// The call's task: runs it in its session, following its pushes, until it ends.
async fn run(gateway: Arc<Gateway>, call: Arc<Call>, request: Request) {
    let host = &gateway.host;
    let answer = host.handle_in(request, &call.session);
    tokio::pin!(answer);
    let outcome = loop {
        tokio::select! {
            outcome = &mut answer => break outcome,
            () = call.session.sink().ready() => follow(&gateway, &call).await,
        }
    };
    follow(&gateway, &call).await;
    let mut state = call.state.lock().unwrap_or_else(|e| e.into_inner());
    state.outcome = Some(match outcome {
        Ok(Answer::Returned(value)) => Ok(value),
        Ok(other) => Err(RemoteError::new(
            ErrorCode::Internal,
            format!("the host answered {other:?}"),
        )),
        Err(e) => Err(e),
    });
    state.finished = Some(Instant::now());
    state.version += 1;
    drop(state);
    call.changed.notify_waiters();
}

/// Records the session's pushes; a dialog opened is made ready at once.
async fn follow(gateway: &Gateway, call: &Call) {
    let mut ready = Vec::new();
    {
        let mut state = call.state.lock().unwrap_or_else(|e| e.into_inner());
        for (handle, push) in call.session.sink().take() {
            match push {
                Push::DialogOpen {
                    provider,
                    deadline_ms,
                    form,
                    ..
                } => {
                    state.dialogs.insert(
                        handle,
                        DialogView {
                            handle,
                            provider,
                            deadline_ms,
                            form,
                            updates: Vec::new(),
                            closed: None,
                            href: format!("/v1/calls/{}/dialogs/{handle}", call.id),
                        },
                    );
                    ready.push(handle);
                }
                Push::DialogUpdate { update } => {
                    if let Some(d) = state.dialogs.get_mut(&handle)
                        && d.updates.len() < 1024
                    {
                        d.updates.push(update);
                    }
                }
                Push::DialogClosed { reason } => {
                    if let Some(d) = state.dialogs.get_mut(&handle) {
                        d.closed = Some(reason);
                    }
                }
                _ => {}
            }
        }
        state.version += 1;
    }
    call.changed.notify_waiters();
    for handle in ready {
        let _ = gateway
            .host
            .handle_in(Request::DialogReady { handle }, &call.session)
            .await;
    }
}

#[derive(Serialize)]
struct CallView {
    call: CallRef,
    dialogs: Vec<DialogView>,
}

#[derive(Serialize)]
struct CallRef {
    id: u32,
    href: String,
    state: &'static str,
}

fn view(call: &Call, state: &CallState) -> CallView {
    CallView {
        call: CallRef {
            id: call.id,
            href: format!("/v1/calls/{}", call.id),
            state: if state.outcome.is_some() {
                "finished"
            } else {
                "running"
            },
        },
        dialogs: state.dialogs.values().cloned().collect(),
    }
}

/// A finished call's answer, as a synchronous call would have had it; the call is then
/// forgotten.
fn finished(calls: &Calls, call: &Call) -> Response {
    let outcome = call
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .outcome
        .clone();
    calls
        .table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&call.id);
    match outcome {
        Some(Ok(value)) => axum::Json(serde_json::json!({ "returned": value })).into_response(),
        Some(Err(error)) => Failure::from(error).into_response(),
        None => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the call has no outcome",
        )
        .into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct WaitParams {
    wait: Option<String>,
}

/// `GET /v1/calls/{id}[?wait=10s]`: `202` with the call and its dialogs while it runs
/// (after waiting up to `wait` for a change), its answer once it has finished.
pub(crate) async fn get_call(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<u32>,
    Query(params): Query<WaitParams>,
) -> Result<Response, Failure> {
    let identity = identity(&gateway, &headers)?;
    let call = find(&gateway.calls, id, &identity)?;
    let wait = match params.wait.as_deref() {
        None => Duration::ZERO,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("wait={text:?}: {e}"),
                )
            })?
            .min(MAX_WAIT),
    };
    let seen = call.state.lock().unwrap_or_else(|e| e.into_inner()).version;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = call.changed.notified();
        {
            let state = call.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.outcome.is_some() {
                drop(state);
                return Ok(finished(&gateway.calls, &call));
            }
            if state.version != seen || tokio::time::Instant::now() >= deadline {
                return Ok((StatusCode::ACCEPTED, axum::Json(view(&call, &state))).into_response());
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// `POST /v1/calls/{id}/dialogs/{handle}` with `{"button": "…", "values": {…}}`: the
/// caller's answer, sent to the provider (`204`).
pub(crate) async fn answer_dialog(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path((id, handle)): Path<(u32, u32)>,
    bytes: axum::body::Bytes,
) -> Result<Response, Failure> {
    let identity = identity(&gateway, &headers)?;
    let call = find(&gateway.calls, id, &identity)?;
    let input: DialogInput = body(
        &bytes,
        "a dialog answer ({\"button\": \"ok\", \"values\": {\"name\": {\"string\": \"x\"}}})",
    )?;
    gateway
        .host
        .handle_in(Request::DialogSend { handle, input }, &call.session)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1/calls/{id}/dialogs/{handle}`: the caller closes the dialog (`204`).
pub(crate) async fn close_dialog(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path((id, handle)): Path<(u32, u32)>,
) -> Result<Response, Failure> {
    let identity = identity(&gateway, &headers)?;
    let call = find(&gateway.calls, id, &identity)?;
    gateway
        .host
        .handle_in(Request::DialogClose { handle }, &call.session)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether the caller accepts `202` for a call that opens a dialog (`Prefer:
/// respond-async`, RFC 7240).
pub(crate) fn accepts_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// `POST /v1/classes/{class}/methods/{method}[?key…]`: a method call; with `Prefer:
/// respond-async`, one whose provider opens a dialog answers `202` ([`call_async`]).
pub(crate) async fn call(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path((class, method)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    bytes: axum::body::Bytes,
) -> Result<Response, Failure> {
    let identity = writer(&gateway, &headers, "calling a method")?;
    let class = class_path(&class)?;
    let method = Identifier::new(method.as_str()).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("{method:?} is not a method name: {e}"),
        )
    })?;
    let key = selector(&gateway, &identity, &class, &query).await?;
    let args: Instance = if bytes.is_empty() {
        Instance::default()
    } else {
        body(
            &bytes,
            "the arguments (an object of typed values, {\"name\": {\"u64\": 5}})",
        )?
    };
    let request = Request::Call {
        class,
        method,
        key,
        args,
    };
    if accepts_async(&headers) && !gateway.config.get().dialogs_refused {
        // The caller can answer a dialog through the API: 202 if one opens.
        return call_async(&gateway, &identity, request).await;
    }
    match ask(&gateway, &identity, request).await? {
        Answer::Returned(value) => Ok(json(&serde_json::json!({ "returned": value }))),
        other => Err(unexpected(&other)),
    }
}
