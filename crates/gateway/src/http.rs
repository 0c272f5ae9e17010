//! The HTTP server: routes, identities and the mapping of host answers and errors to
//! HTTP. Every route answers through [`Host::handle`], the same entry point the socket
//! server uses, so the same access policy decides (see [`crate::auth`] for who an HTTP
//! request acts as). Routes are documented in `docs/http.md`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use purveyor_host::Host;
use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey, NamespacePath};
use purveyor_protocol::{ErrorCode, RemoteError, Request, Response as Answer};
use serde::Deserialize;

use crate::auth::{self, Identity};
use crate::config::GatewayConfig;
use crate::{exposition, metrics};

/// What every handler shares.
pub struct Gateway {
    pub host: Host,
    /// `http.toml` in force: replaced by a reload (`purveyor reload`), read per request.
    pub config: Arc<purveyor_host::Current<GatewayConfig>>,
    /// Becomes `true` when the daemon stops: long responses (event streams) end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Calls answered `202` because they opened a dialog (`crate::pending`).
    pub(crate) calls: crate::pending::Calls,
    /// The sender of `stopping` when nobody else holds it ([`Gateway::new`]).
    pub(crate) _never_stops: Option<tokio::sync::watch::Sender<bool>>,
}

impl Gateway {
    /// A gateway that is never told to stop (tests, embedding).
    pub fn new(host: Host, config: Arc<purveyor_host::Current<GatewayConfig>>) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        Gateway {
            host,
            config,
            stopping,
            calls: Default::default(),
            _never_stops: Some(stop),
        }
    }
}

/// An HTTP error: a status and the host's error, as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    error: RemoteError,
}

impl From<RemoteError> for Failure {
    fn from(error: RemoteError) -> Self {
        let status = match error.code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
            ErrorCode::InvalidRequest | ErrorCode::Protocol => StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ProviderFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure { status, error }
    }
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            error: RemoteError::new(code, message),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.error })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Who the request acts as (anonymous, or a bearer token's user).
pub(crate) fn identity(gateway: &Gateway, headers: &HeaderMap) -> Result<Identity> {
    let authorization = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::AccessDenied,
                "the Authorization header is not text",
            )
        })?),
    };
    auth::identify(&gateway.config.get().tokens, authorization)
        .map_err(|message| Failure::new(StatusCode::UNAUTHORIZED, ErrorCode::AccessDenied, message))
}

/// The identity, if it may change things: anonymous requests get 401 (with
/// `WWW-Authenticate: Bearer`), read-only tokens 403.
pub(crate) fn writer(gateway: &Gateway, headers: &HeaderMap, what: &str) -> Result<Identity> {
    let identity = identity(gateway, headers)?;
    if identity.may_write {
        return Ok(identity);
    }
    let (status, message) = if identity.token.is_none() {
        (
            StatusCode::UNAUTHORIZED,
            format!(
                "{what} over HTTP needs a bearer token that grants it; anonymous requests may only read"
            ),
        )
    } else {
        (
            StatusCode::FORBIDDEN,
            format!("{what}: {} is read-only", identity.who()),
        )
    };
    Err(Failure::new(status, ErrorCode::AccessDenied, message))
}

pub(crate) async fn ask(
    gateway: &Gateway,
    identity: &Identity,
    request: Request,
) -> Result<Answer> {
    Ok(gateway.host.handle(request, &identity.caller).await?)
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

pub(crate) fn class_path(text: &str) -> Result<ClassPath> {
    ClassPath::new(text).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("{text:?} is not a class path: {e}"),
        )
    })
}

pub(crate) async fn schema(
    gateway: &Gateway,
    identity: &Identity,
    class: &ClassPath,
) -> Result<ClassSchema> {
    match ask(
        gateway,
        identity,
        Request::Describe {
            class: class.clone(),
        },
    )
    .await?
    {
        Answer::Class(schema) => Ok(schema),
        other => Err(unexpected(&other)),
    }
}

/// `?name=value&…` typed by the class's schema (asked for only when there is a query).
pub(crate) async fn selector(
    gateway: &Gateway,
    identity: &Identity,
    class: &ClassPath,
    query: &[(String, String)],
) -> Result<InstanceKey> {
    if query.is_empty() {
        return Ok(InstanceKey::new());
    }
    let schema = schema(gateway, identity, class).await?;
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    InstanceKey::parse(&schema, &pairs).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )
    })
}

pub(crate) fn unexpected(answer: &Answer) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        format!("the host answered {answer:?}"),
    )
}

pub(crate) async fn healthz(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway
        .host
        .handle(Request::Ping, &Identity::anonymous().caller)
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", error.message),
        )
            .into_response(),
    }
}

/// Ready when the host takes requests and every builtin provider of the exported
/// namespaces loads (the system provider reads `/proc`).
pub(crate) async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let anonymous = Identity::anonymous();
    if let Err(error) = gateway
        .host
        .handle(Request::Status, &anonymous.caller)
        .await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", error.message),
        )
            .into_response();
    }
    let wake = |m: &purveyor_host::Manifest| m.hosting == purveyor_model::Hosting::Builtin;
    let list = gateway
        .host
        .export_classes(
            &gateway.config.get().metrics.export,
            &wake,
            &anonymous.caller,
        )
        .await;
    match list.problems.first() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problem.message),
        )
            .into_response(),
    }
}

pub(crate) async fn scrape(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    let config = gateway.config.get();
    let snapshot = metrics::gather(&gateway.host, &config.metrics, &identity.caller).await;
    for problem in &snapshot.problems {
        tracing::warn!(%problem, "metrics scrape left a class out");
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(exposition::wants_openmetrics);
    let (content_type, body) = if openmetrics {
        (exposition::OPENMETRICS, exposition::openmetrics(snapshot))
    } else {
        (exposition::TEXT, exposition::text(&snapshot))
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

pub(crate) async fn status(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    match ask(&gateway, &identity, Request::Status).await? {
        Answer::Status(status) => Ok(json(&status)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn providers(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    match ask(&gateway, &identity, Request::ListProviders).await? {
        Answer::Providers(list) => Ok(json(&list)),
        other => Err(unexpected(&other)),
    }
}

#[derive(Deserialize)]
pub(crate) struct ClassesQuery {
    namespace: Option<String>,
}

pub(crate) async fn classes(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<ClassesQuery>,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    let namespace = match query.namespace {
        None => None,
        Some(text) => Some(NamespacePath::new(text.as_str()).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("{text:?} is not a namespace: {e}"),
            )
        })?),
    };
    match ask(&gateway, &identity, Request::ListClasses { namespace }).await? {
        Answer::Classes(list) => Ok(json(&list)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn describe(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(class): Path<String>,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    let class = class_path(&class)?;
    Ok(json(&schema(&gateway, &identity, &class).await?))
}

pub(crate) async fn instances(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(class): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    let class = class_path(&class)?;
    let selector = selector(&gateway, &identity, &class, &query).await?;
    match ask(&gateway, &identity, Request::Enumerate { class, selector }).await? {
        Answer::Instances(list) => Ok(json(&list)),
        other => Err(unexpected(&other)),
    }
}

/// `GET /v1/query?sql=…&plan=true`: a SQL query over classes as the request's identity
/// (`docs/query.md`); it only reads, so no token is needed beyond what each class needs.
pub(crate) async fn query_get(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    run_query(&gateway, &identity, params).await
}

/// `POST /v1/query` with `{"sql": "…", "plan": false}`: the same, for SQL that does not fit
/// a URL.
pub(crate) async fn query_post(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response> {
    let identity = identity(&gateway, &headers)?;
    let params: QueryParams = body(&bytes, "{\"sql\": \"…\", \"plan\": false}")?;
    run_query(&gateway, &identity, params).await
}

#[derive(Deserialize)]
pub(crate) struct QueryParams {
    sql: String,
    #[serde(default)]
    plan: bool,
}

async fn run_query(
    gateway: &Gateway,
    identity: &Identity,
    params: QueryParams,
) -> Result<Response> {
    let request = Request::Query {
        sql: params.sql,
        plan: params.plan,
    };
    match ask(gateway, identity, request).await? {
        Answer::Rows(rows) => Ok(json(&rows)),
        other => Err(unexpected(&other)),
    }
}

/// The body of a JSON request, with the parse error as a 400 that says where.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("the body is not {what}: {e}"),
        )
    })
}

pub(crate) async fn put(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(class): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response> {
    let identity = writer(&gateway, &headers, "put")?;
    let class = class_path(&class)?;
    let instance: Instance = body(
        &bytes,
        "an instance (an object of typed values, {\"name\": {\"string\": \"x\"}})",
    )?;
    ask(&gateway, &identity, Request::Put { class, instance }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn delete(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(class): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response> {
    let identity = writer(&gateway, &headers, "delete")?;
    let class = class_path(&class)?;
    let key = selector(&gateway, &identity, &class, &query).await?;
    ask(&gateway, &identity, Request::Delete { class, key }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn not_found() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such route; see docs/http.md (/metrics, /healthz, /readyz, /v1/...)",
    )
}
