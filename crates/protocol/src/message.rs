//! The messages of protocol version 1.

use std::fmt;

use purveyor_model::{
    ClassPath, ClassSchema, Condition, Hosting, Identifier, Instance, InstanceKey, NamespacePath,
    ProviderName, ProviderState, Timestamp, Unit, Value, ValueType,
};
use serde::{Deserialize, Serialize};

use crate::{DialogInput, Form, FormUpdate};

/// The protocol's major version: a peer with another major version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// The minor version: additions only (new requests, new variants at the end).
pub const PROTOCOL_MINOR: u16 = 13;
/// The first minor version whose binary form of instances this side speaks (names sent
/// once per reply: `docs/protocol.md`). Binary peers below it are refused.
pub const BINARY_INSTANCES_SINCE: u16 = 6;

/// How the payloads after the handshake are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// postcard: compact, serde-based; integers as varints, which are word-size independent.
    Binary,
    /// JSON text, for any language with a standard JSON library.
    Json,
}

/// The client's first frame, always JSON:
/// `{"protocol":1,"minor":0,"encoding":"json","client":"my-tool/1.0"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Hello {
    pub protocol: u16,
    #[serde(default)]
    pub minor: u16,
    pub encoding: Encoding,
    #[serde(default)]
    pub client: String,
    /// The client shows in-call dialogs (minor 5). A client without a UI (`--no-input`,
    /// no terminal) leaves it false, and a provider asking it for a dialog is told "no UI
    /// available".
    #[serde(default)]
    pub ui: bool,
    /// The client takes the dialogs it is an agent for on direct channels (minor 12,
    /// `docs/dialogs.md`, "Direct channels"): a `dialog_channel` push, with a socket
    /// riding on it, comes before the dialog's `dialog_open`. Only over a local socket.
    #[serde(default)]
    pub direct_dialogs: bool,
}

/// The server's answer to [`Hello`], always JSON. After it, both sides use `encoding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Welcome {
    pub protocol: u16,
    pub minor: u16,
    pub encoding: Encoding,
    /// `purveyor/0.1.0`.
    pub server: String,
    /// The largest payload the server accepts.
    pub max_frame: u32,
    /// This connection's number in the server's logs.
    pub connection: u32,
}

/// A frame from the client after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    /// A request. `id` is the client's choice; the reply carries it back. Requests are
    /// answered in any order.
    Request { id: u32, request: Request },
}

impl ClientMessage {
    /// The id of the request a payload holds, when its envelope (`{"request": {"id": N,
    /// …}}`, or in binary the variant and the id) decodes even though the whole message
    /// does not: such a request is answered with `invalid_request`, and its connection
    /// lives on. `None` when not even the envelope decodes (then the connection closes).
    pub fn request_id(encoding: crate::Encoding, payload: &[u8]) -> Option<u32> {
        match encoding {
            crate::Encoding::Json => {
                // The usual layout first, without reading the rest (a bad request may be
                // megabytes long); any other layout through the whole envelope.
                if let Some(id) = json_request_id_prefix(payload) {
                    return Some(id);
                }
                #[derive(Deserialize)]
                #[serde(rename_all = "snake_case")]
                enum Envelope {
                    Request {
                        id: u32,
                        #[serde(rename = "request")]
                        _request: serde::de::IgnoredAny,
                    },
                }
                match serde_json::from_slice::<Envelope>(payload).ok()? {
                    Envelope::Request { id, .. } => Some(id),
                }
            }
            crate::Encoding::Binary => {
                // The variant index and the id, both varints; `Request` is variant 0.
                let ((variant, id), _) = postcard::take_from_bytes::<(u32, u32)>(payload).ok()?;
                (variant == 0).then_some(id)
            }
        }
    }
}

/// The id of a JSON request laid out as `{"request": {"id": N, …` (whitespace allowed),
/// read from its first bytes only.
fn json_request_id_prefix(payload: &[u8]) -> Option<u32> {
    let mut rest = payload;
    let mut expect = |token: &[u8]| -> Option<()> {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        rest = rest[start..].strip_prefix(token)?;
        Some(())
    };
    for token in [&b"{"[..], b"\"request\"", b":", b"{", b"\"id\"", b":"] {
        expect(token)?;
    }
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = &rest[start..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || end > 10 || !matches!(digits[end..].first(), Some(b',' | b'}' | b' ')) {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// A frame from the server after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to the request with this `id`.
    Reply { id: u32, outcome: Outcome },
    /// A message the server sends on its own, tied to a long-lived 32-bit handle (a
    /// subscription, a dialog, a stream) that an earlier reply created.
    Push { handle: u32, push: Push },
    /// The server is closing the connection, and says why. Nothing follows.
    Goodbye { error: RemoteError },
}

/// A request's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Response),
    Err(RemoteError),
}

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Answered with [`Response::Pong`]; loads nothing.
    Ping,
    /// The host's own status.
    Status,
    /// The schemas of every class in `namespace` (all classes when `None`).
    ListClasses { namespace: Option<NamespacePath> },
    /// One class's schema.
    Describe { class: ClassPath },
    /// Every instance of `class` whose properties equal the selector's values.
    Enumerate {
        class: ClassPath,
        #[serde(default)]
        selector: InstanceKey,
    },
    /// The one instance with this full key (empty for a singleton class).
    Get {
        class: ClassPath,
        #[serde(default)]
        key: InstanceKey,
    },
    /// Every registered provider with its state and statistics.
    ListProviders,
    /// Lets a quarantined provider load again (minor 1). Answered with `providers`,
    /// holding that provider's status.
    EnableProvider { name: ProviderName },
    /// Creates or updates the instance whose key properties `instance` carries (minor 3).
    /// Checked against the schema first. Answered with `done`.
    Put {
        class: ClassPath,
        instance: Instance,
    },
    /// Deletes the instance with this full key (minor 3). Answered with `done`.
    Delete {
        class: ClassPath,
        #[serde(default)]
        key: InstanceKey,
    },
    /// Calls a method of the instance with this key (empty for a singleton or a static
    /// method) with typed arguments, checked against the schema (minor 3). Answered with
    /// `returned`.
    Call {
        class: ClassPath,
        method: Identifier,
        #[serde(default)]
        key: InstanceKey,
        #[serde(default)]
        args: Instance,
    },
    /// Subscribes this connection to `class`'s events (all of them, or the one named),
    /// keeping those whose data satisfies every condition (minor 3). Answered with
    /// `subscribed`; the events arrive as pushes for the handle.
    Subscribe {
        class: ClassPath,
        #[serde(default)]
        event: Option<Identifier>,
        #[serde(default)]
        filter: Vec<Condition>,
    },
    /// Ends a subscription (minor 3). Answered with `done`.
    Unsubscribe { handle: u32 },
    /// The I/O procedures the host serves: the global ones its providers install, then its
    /// built-ins (minor 4). Answered with `io_procedures`.
    IoList,
    /// Opens a stream on `name` (`report.xor+`, `backup.tar+etc/hosts`, a plain path)
    /// (minor 4). Answered with `io_opened`. With `pass_fd`, a plain local file opened for
    /// reading may come back as a file descriptor instead of a stream (`fd` in the answer).
    IoOpen {
        name: String,
        mode: IoMode,
        #[serde(default)]
        pass_fd: bool,
    },
    /// Reads up to `max` bytes from a stream (minor 4). Answered with `io_data`; empty at
    /// the end. The host reads only when asked: this is the flow control.
    IoRead { handle: u32, max: u32 },
    /// Writes to a stream, then flushes it with `flush` (minor 4). Answered with
    /// `io_value`: the bytes written.
    IoWrite {
        handle: u32,
        #[serde(with = "serde_bytes")]
        #[cfg_attr(feature = "schema", schemars(with = "Vec<u8>"))]
        data: Vec<u8>,
        #[serde(default)]
        flush: bool,
    },
    /// Moves a stream's position (minor 4). Answered with `io_value`: the new position.
    IoSeek {
        handle: u32,
        offset: i64,
        whence: IoWhence,
    },
    /// A custom message (numbered from 0x4000) to a stream's procedure (minor 4).
    /// Answered with `io_value`: the procedure's answer.
    IoMessage {
        handle: u32,
        message: u32,
        #[serde(default, with = "serde_bytes")]
        #[cfg_attr(feature = "schema", schemars(with = "Vec<u8>"))]
        input: Vec<u8>,
    },
    /// Closes a stream: the procedure finishes it (minor 4). Answered with `done`.
    IoClose { handle: u32 },
    /// Deletes what `name` names, through its procedure (minor 4). Answered with `done`.
    IoDelete { name: String },
    /// Renames within one procedure (minor 4). Answered with `done`.
    IoRename { from: String, to: String },
    /// Makes this connection its user's UI agent: spontaneous dialogs for the user come
    /// to it (minor 5; the most recently registered agent of a user wins). Answered with
    /// `agent`.
    RegisterAgent,
    /// The dialog `handle` is shown: the host delivers the updates it held (minor 5).
    /// Answered with `done`.
    DialogReady { handle: u32 },
    /// Input for the provider: a button pressed, fields' values, or intermediate data
    /// (minor 5). Answered with `done` once the provider has been sent it.
    DialogSend { handle: u32, input: DialogInput },
    /// Closes the dialog; the provider is told the user closed it (minor 5). Answered
    /// with `done`.
    DialogClose { handle: u32 },
    /// A direct channel to the isolated worker serving `class` (minor 7): one socket on
    /// which this client's gets and enumerates of that provider's classes go to the
    /// worker and back without the daemon in between (`docs/protocol.md`, "Direct
    /// channels"). Answered with `direct`, the socket riding on the reply
    /// (`SCM_RIGHTS`); refused with `unsupported` when the class's provider is not in an
    /// isolated worker, or the connection shows dialogs or cannot carry descriptors.
    Direct { class: ClassPath },
    /// A SQL query over classes (minor 9; `docs/query.md`): each class a table, each
    /// property a column. Answered with `rows`.
    Query {
        sql: String,
        /// Also say what each class was asked (the plan).
        #[serde(default)]
        plan: bool,
    },
    /// Changes to any readable class's instances (minor 10; `docs/query.md`, "Change
    /// events"): the host enumerates the class every `interval_ms`, diffs by key and
    /// pushes each instance created, deleted or modified whose instance satisfies every
    /// condition. A counter or delta property that moves is a modification only with
    /// `counters`. Answered with `subscribed`; the changes come as `change` pushes.
    WatchChanges {
        class: ClassPath,
        #[serde(default)]
        filter: Vec<Condition>,
        interval_ms: u64,
        #[serde(default)]
        counters: bool,
    },
    /// Re-reads the manifests, the access policy and the gateway's `http.toml` without a
    /// restart (minor 11; `docs/lifecycle.md`, "Reload"): all or nothing. Root and the
    /// daemon's user only.
    Reload,
}

/// What a reload changed: providers by name, and the files re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Providers whose manifest changed: the old one is released after its calls in
    /// flight, the new one loads on its next use.
    pub changed: Vec<String>,
    /// The access policy file that was read, if any (else the defaults are in force).
    #[serde(default)]
    pub policy: Option<String>,
    /// The gateway's configuration file that was read, if any.
    #[serde(default)]
    pub http: Option<String>,
}

/// What happened to an instance ([`Push::Change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Deleted,
    Modified,
}

/// One property of a modified instance: its value before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PropertyChange {
    pub name: Identifier,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// A query's answer: its columns, its rows (`None`: SQL `NULL`), and, when asked, what
/// each class was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueryRows {
    pub columns: Vec<QueryColumn>,
    pub rows: Vec<Vec<Option<Value>>>,
    #[serde(default)]
    pub plan: Vec<String>,
}

/// A result column: its name, and, for a column that is a class's property as it is,
/// the property's type and unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueryColumn {
    pub name: String,
    #[serde(default, rename = "type")]
    pub ty: Option<ValueType>,
    #[serde(default)]
    pub unit: Option<Unit>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    Pong,
    Status(HostStatus),
    Classes(ClassList),
    Class(ClassSchema),
    Instances(InstanceList),
    Instance(Instance),
    Providers(Vec<ProviderStatus>),
    /// A put, delete or unsubscribe was done (for a put or delete: committed by the
    /// provider).
    Done,
    /// A method's result (`null` for a method without one).
    Returned(Option<Value>),
    /// A subscription's handle: every event for it arrives as a push with this handle.
    Subscribed {
        handle: u32,
    },
    /// The I/O procedures a host serves, in lookup order.
    IoProcedures(Vec<IoProcedureInfo>),
    /// A stream is open: its handle, and its size when the procedure knows it. With
    /// `fd`, the file's descriptor came with this reply (`SCM_RIGHTS`) and `handle` is
    /// not a stream (there is nothing to close on the host).
    IoOpened {
        handle: u32,
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        fd: bool,
    },
    /// Bytes read from a stream; empty at its end.
    IoData(
        #[serde(with = "serde_bytes")]
        #[cfg_attr(feature = "schema", schemars(with = "Vec<u8>"))]
        Vec<u8>,
    ),
    /// A count, a position or a custom message's answer.
    IoValue(i64),
    /// This connection is a UI agent, with this handle (a provider may target it).
    Agent {
        handle: u32,
    },
    /// A direct channel is open (minor 7): its socket came with this reply
    /// (`SCM_RIGHTS`); `token` names it. Gets and enumerates of `classes` (the
    /// provider's classes this client may read) may go on it, in binary encoding.
    Direct {
        token: u32,
        provider: ProviderName,
        classes: Vec<ClassPath>,
    },
    /// A query's answer (minor 9).
    Rows(QueryRows),
    /// The answer to `reload` (minor 11).
    Reloaded(ReloadReport),
}

/// How a stream is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    Read,
    /// Create or truncate, then write.
    Write,
    ReadWrite,
}

/// Where a seek's offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum IoWhence {
    Start,
    Current,
    End,
}

/// One I/O procedure a host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IoProcedureInfo {
    /// The four-character code, padded: `"XOR "`.
    pub code: String,
    /// `global` (a provider installs it) or `built-in`.
    pub scope: String,
    /// `provider xor`, `built-in`.
    pub origin: String,
    #[serde(default)]
    pub description: String,
    /// Streams open on it now, through this host.
    #[serde(default)]
    pub open_streams: u32,
    /// Hidden by another install of the same code that is looked up first.
    #[serde(default)]
    pub shadowed: bool,
}

/// Server-pushed messages: events of subscriptions, and dialogs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Push {
    /// An event raised by a class, for the subscription `handle` names.
    Event {
        class: ClassPath,
        event: Identifier,
        data: Instance,
    },
    /// Events for the subscription `handle` names were dropped because this connection
    /// did not read them fast enough: `dropped` since the last such report. Sent before
    /// any event that came after the loss.
    Lost { dropped: u64 },
    /// A dialog opened for this connection (minor 5): for the request `request` (an
    /// in-call dialog) or, with none, a spontaneous one for this agent. The application
    /// shows it, then sends `dialog_ready`; updates come after that.
    DialogOpen {
        /// The provider asking.
        provider: String,
        #[serde(default)]
        request: Option<u32>,
        /// Milliseconds before the host closes it.
        deadline_ms: u64,
        form: Form,
    },
    /// A change to the dialog `handle` names.
    DialogUpdate { update: FormUpdate },
    /// The dialog is closed, and why. Nothing more comes for its handle.
    DialogClosed { reason: String },
    /// An instance of a watched class was created, deleted or modified (minor 10): the
    /// instance as it is now (as it was, when deleted) and, when modified, each property
    /// that changed.
    Change {
        class: ClassPath,
        change: ChangeKind,
        instance: Instance,
        #[serde(default)]
        changed: Vec<PropertyChange>,
    },
    /// The dialog `handle` names, opened next, has a direct channel to its provider
    /// (minor 12, only to a client whose hello asked for `direct_dialogs`): the socket
    /// riding on this push (`SCM_RIGHTS`) carries its updates and the client's inputs as
    /// [`crate::DialogMessage`] frames. Its open and close still come as pushes.
    DialogChannel,
}

/// The classes of a namespace, and the providers that could not say what theirs are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClassList {
    pub classes: Vec<ClassSchema>,
    /// One error per provider that failed to load or describe its classes.
    #[serde(default)]
    pub problems: Vec<RemoteError>,
}

/// The instances of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InstanceList {
    pub class: ClassPath,
    #[serde(with = "purveyor_model::instance_list")]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<Instance>"))]
    pub instances: Vec<Instance>,
}

/// Whether the host is a daemon or runs inside the client's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    Daemon,
    Embedded,
}

/// The host's own status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostStatus {
    /// `purveyor/0.1.0`.
    pub server: String,
    pub protocol: u16,
    pub mode: HostMode,
    pub pid: u32,
    pub started: Timestamp,
    /// The socket the daemon listens on; `None` when embedded.
    pub socket: Option<String>,
    /// The directories manifests were read from.
    pub provider_dirs: Vec<String>,
    pub providers: u32,
    pub providers_loaded: u32,
    pub connections_open: u32,
    pub connections_total: u64,
    pub requests: u64,
    /// Manifests that were refused at start-up, each naming its file, line and field.
    pub manifest_problems: Vec<String>,
}

/// One registered provider, as `purveyor providers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProviderStatus {
    pub name: ProviderName,
    pub hosting: Hosting,
    pub state: ProviderState,
    pub classes: Vec<ClassPath>,
    pub pure: bool,
    pub clear_after_ms: u64,
    /// Where the manifest came from: a file path, or `builtin:NAME`.
    pub manifest: String,
    pub loads: u64,
    pub unloads: u64,
    pub calls: u64,
    pub errors: u64,
    pub last_use: Option<Timestamp>,
    pub last_error: Option<String>,
    /// The process serving it (isolated and external providers, while loaded).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Times its process crashed (or was killed after a missed deadline).
    #[serde(default)]
    pub crashes: u64,
    /// Calls running now.
    #[serde(default)]
    pub in_flight: u32,
    /// When loaded and idle: milliseconds until the idle unload.
    #[serde(default)]
    pub unload_in_ms: Option<u64>,
}

/// Why a request failed, or why the server is closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
    /// The provider at fault, when one is.
    #[serde(default)]
    pub provider: Option<ProviderName>,
}

/// The kinds of failure a client can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No such class, instance, namespace or provider.
    NotFound,
    /// The caller lacks a permission; the message names it.
    AccessDenied,
    /// The provider failed to load or to answer; `provider` names it.
    ProviderFailed,
    /// The provider did not answer within its deadline; `provider` names it.
    Timeout,
    /// The request does not fit the schema (unknown property, wrong type...).
    InvalidRequest,
    /// The provider or server does not offer this operation.
    Unsupported,
    /// The server is shutting down.
    ShuttingDown,
    /// A malformed, oversized or unexpected frame.
    Protocol,
    /// A bug in the server: please report it.
    Internal,
    /// A limit on what a client may make the server hold was reached (connections,
    /// subscriptions, I/O operations, memory buffers); the message names the limit and its
    /// setting (minor 8; a client below minor 8 is sent `invalid_request` instead).
    LimitExceeded,
}

/// The protocol minor that added [`ErrorCode::LimitExceeded`].
pub const LIMIT_EXCEEDED_SINCE: u16 = 8;

impl ErrorCode {
    /// This code as a client of protocol minor `minor` can read it: codes added after its
    /// minor become `invalid_request` (the message still says what happened).
    pub fn for_minor(self, minor: u16) -> Self {
        match self {
            ErrorCode::LimitExceeded if minor < LIMIT_EXCEEDED_SINCE => ErrorCode::InvalidRequest,
            other => other,
        }
    }
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
            provider: None,
        }
    }

    pub fn with_provider(mut self, provider: ProviderName) -> Self {
        self.provider = Some(provider);
        self
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ProviderFailed => "provider_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Internal => "internal",
            ErrorCode::LimitExceeded => "limit_exceeded",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    #[test]
    fn the_envelope_gives_the_id_of_a_request_that_does_not_decode() {
        let json = |t: &str| ClientMessage::request_id(crate::Encoding::Json, t.as_bytes());
        assert_eq!(
            json(r#"{"request":{"id":7,"request":{"get":{"class":"X"}}}}"#),
            Some(7)
        );
        assert_eq!(
            json(r#" { "request" : { "id" : 12 , "request": 1 } }"#),
            Some(12)
        );
        // Another order goes through the whole envelope.
        assert_eq!(json(r#"{"request":{"request":{"x":1},"id":9}}"#), Some(9));
        assert_eq!(json(r#"{"hello":1}"#), None);
        assert_eq!(json(r#"{"request":{"id":99999999999,"request":1}}"#), None);
        let binary = |b: &[u8]| ClientMessage::request_id(crate::Encoding::Binary, b);
        assert_eq!(binary(&[0, 5, 200]), Some(5));
        assert_eq!(binary(&[1, 5]), None);
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    /// The JSON forms `docs/protocol.md` gives for `query` and `rows`, and the binary form
    /// round trips.
    #[test]
    fn query_and_rows_have_the_documented_forms() {
        let request: Request = serde_json::from_str(
            r#"{"query": {"sql": "SELECT pid FROM system.process WHERE pid = 1", "plan": true}}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            Request::Query {
                sql: "SELECT pid FROM system.process WHERE pid = 1".into(),
                plan: true
            }
        );
        let rows = Response::Rows(QueryRows {
            columns: vec![
                QueryColumn {
                    name: "pid".into(),
                    ty: Some("u64".parse().unwrap()),
                    unit: Some(Unit::None),
                },
                QueryColumn {
                    name: "n".into(),
                    ty: None,
                    unit: None,
                },
            ],
            rows: vec![vec![Some(Value::U64(1)), None]],
            plan: vec!["system.process: get pid=1 → 1 instance".into()],
        });
        assert_eq!(
            serde_json::to_string(&rows).unwrap(),
            r#"{"rows":{"columns":[{"name":"pid","type":"u64","unit":"none"},{"name":"n","type":null,"unit":null}],"rows":[[{"u64":1},null]],"plan":["system.process: get pid=1 → 1 instance"]}}"#
        );
        let bytes = postcard::to_allocvec(&rows).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), rows);
    }

    /// `watch_changes` and the `change` push as `docs/protocol.md` gives them; `change`
    /// is the last push variant, so the binary forms of the others did not move.
    #[test]
    fn watch_changes_and_change_have_the_documented_forms() {
        let request: Request = serde_json::from_str(
            r#"{"watch_changes": {"class": "system.process", "filter": [], "interval_ms": 1000, "counters": false}}"#,
        )
        .unwrap();
        assert!(matches!(
            request,
            Request::WatchChanges {
                interval_ms: 1000,
                ..
            }
        ));
        let push = Push::Change {
            class: ClassPath::new("system.process").unwrap(),
            change: ChangeKind::Modified,
            instance: Instance::from_pairs([("pid", Value::U64(1))]),
            changed: vec![PropertyChange {
                name: Identifier::new("rss").unwrap(),
                old: Some(Value::U64(1)),
                new: None,
            }],
        };
        assert_eq!(
            serde_json::to_string(&push).unwrap(),
            r#"{"change":{"class":"system.process","change":"modified","instance":{"pid":{"u64":1}},"changed":[{"name":"rss","old":{"u64":1},"new":null}]}}"#
        );
        let lost = postcard::to_allocvec(&Push::Lost { dropped: 3 }).unwrap();
        assert_eq!(lost[0], 1, "lost keeps its binary index");
        let bytes = postcard::to_allocvec(&push).unwrap();
        assert_eq!(postcard::from_bytes::<Push>(&bytes).unwrap(), push);
    }
}
