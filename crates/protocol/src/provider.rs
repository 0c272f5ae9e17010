//! The provider channel: what the host says to a provider that is not compiled into it,
//! and what the provider answers (documented in `docs/provider-abi.md`).
//!
//! The same messages cross every boundary: the C ABI of a provider library (one request's
//! bytes in, one reply's bytes out), an isolated worker process and an external executable
//! (length-prefixed frames over stdin/stdout). So a provider is written once and hosted
//! any way its manifest says.

use purveyor_model::{ClassPath, ClassSchema, Identifier, Instance, InstanceKey, Value};
use serde::{Deserialize, Serialize};

use crate::{DialogEvent, DialogOp, Encoding, IoMode, IoWhence};

/// The provider ABI's version. A library or process with another version is refused with
/// a message naming both versions.
pub const PROVIDER_ABI_VERSION: u32 = 1;

/// The host's first frame to a provider process, always JSON:
/// `{"abi":1,"encoding":"json","provider":"uptime"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHello {
    pub abi: u32,
    /// The encoding of every later frame, both ways.
    pub encoding: Encoding,
    /// The provider the host starts the process for (the first one, for a shared worker).
    #[serde(default)]
    pub provider: String,
}

/// The process's answer to [`ProviderHello`], always JSON: `{"abi":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderReady {
    pub abi: u32,
}

/// Who is calling, from the client's socket credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One request to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRequest {
    /// Chosen by the host; the response carries it back. Responses may come in any order.
    pub id: u32,
    /// The provider this request is for (several share one worker with `host_group`).
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub caller: CallerInfo,
    /// Milliseconds the provider has before the host gives up on it; 0 when unbounded.
    #[serde(default)]
    pub deadline_ms: u64,
    /// Nonzero when the caller can be shown an in-call dialog: the token a dialog's
    /// `open` names to reach it (see `docs/dialogs.md`).
    #[serde(default)]
    pub ui: u32,
    pub call: ProviderCall,
}

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderCall {
    /// The schemas of the classes the provider serves. Answered with `classes`.
    Classes,
    /// Every instance of a class. Answered with `instances`.
    Enumerate { class: ClassPath },
    /// The instance with this full key. Answered with `instance` (null when there is none).
    Get { class: ClassPath, key: InstanceKey },
    /// The cleanup hook: the host is about to release the provider. Answered with
    /// `released`; no further request for this provider follows.
    Release,
    /// To a worker only: load the provider library at `library` for `provider` (the
    /// request's field). Answered with `loaded`.
    Load { library: String },
    /// Create or update an instance (already checked against the schema). Answered with
    /// `done`, after the change is committed.
    Put {
        class: ClassPath,
        instance: Instance,
    },
    /// Delete the instance with this full key. Answered with `done`, after the change is
    /// committed; `not_found` when there is none.
    Delete { class: ClassPath, key: InstanceKey },
    /// Call a method (arguments already checked against the schema). Answered with `done`
    /// carrying the result.
    Call {
        class: ClassPath,
        key: InstanceKey,
        method: Identifier,
        args: Instance,
    },
    /// To a worker only: load the I/O procedure library at `library` for `provider`
    /// (it exports `purveyor_io_install`). Answered with `loaded`.
    LoadIo { library: String },
    /// Open a stream through the procedure installed for `code`, on the container (or
    /// file) `path` and the `element` in it, with the caller's file permissions. Answered
    /// with `io_opened`.
    IoOpen {
        code: String,
        path: String,
        #[serde(default)]
        element: String,
        mode: IoMode,
        /// The caller's supplementary groups, fixed when its connection was accepted (the
        /// file-system credentials the open runs with are `caller`'s uid and gid and these).
        #[serde(default)]
        groups: Vec<u32>,
    },
    /// Read up to `max` bytes. Answered with `io_data` (empty at the end).
    IoRead { stream: u32, max: u32 },
    /// Write, then flush with `flush`. Answered with `io_value` (bytes written).
    IoWrite {
        stream: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(default)]
        flush: bool,
    },
    /// Answered with `io_value` (the new position).
    IoSeek {
        stream: u32,
        offset: i64,
        whence: IoWhence,
    },
    /// A custom message. Answered with `io_value`.
    IoMessage {
        stream: u32,
        message: u32,
        #[serde(default, with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// Close (finish) a stream. Answered with `done`.
    IoClose { stream: u32 },
    /// Delete through the procedure for `code`. Answered with `done`.
    IoDelete {
        code: String,
        path: String,
        #[serde(default)]
        element: String,
        /// As in `IoOpen`.
        #[serde(default)]
        groups: Vec<u32>,
    },
    /// Rename through the procedure for `code`. Answered with `done`.
    IoRename {
        code: String,
        from: String,
        #[serde(default)]
        from_element: String,
        to: String,
        #[serde(default)]
        to_element: String,
        /// As in `IoOpen`.
        #[serde(default)]
        groups: Vec<u32>,
    },
    /// News of the provider's dialog number `dialog`. Sent with id 0 and never answered.
    Dialog { dialog: u32, event: DialogEvent },
    /// To an isolated worker, never to a library: close the provider's direct channels
    /// whose permissions come from an access policy older than generation `policy` (a
    /// reload replaced it), now and when they arrive later; their clients go through the
    /// host, which attaches them again under the new policy. Answered with `done` once
    /// they take no more requests.
    CloseDirect { policy: u64 },
}

/// One response from a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderResponse {
    pub id: u32,
    pub reply: ProviderReply,
}

/// What the provider answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderReply {
    Classes(Vec<ClassSchema>),
    Instances(#[serde(with = "purveyor_model::instance_list")] Vec<Instance>),
    Instance(Option<Instance>),
    Released,
    Loaded,
    /// The provider could not do what was asked.
    Error(ProviderFault),
    /// A put, delete or call is done: the method's result (if it has one), and the events
    /// the change raised, which the host delivers to subscribers after checking them.
    Done {
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        events: Vec<RaisedEvent>,
    },
    /// A stream opened by `io_open`, with its size when known.
    IoOpened {
        stream: u32,
        #[serde(default)]
        size: Option<u64>,
    },
    /// Bytes read.
    IoData(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A count, position or custom answer.
    IoValue(i64),
    /// Not an answer (sent with id 0, at any time): the provider `provider` opens,
    /// updates or closes its dialog number `dialog`.
    Dialog {
        provider: String,
        dialog: u32,
        /// Boxed: a form is large, and every other reply small.
        op: Box<DialogOp>,
    },
    /// Not an answer (sent with id 0 by an isolated worker): news of the direct channels
    /// of the provider `provider` (`docs/provider-abi.md`, "Direct channels").
    Direct {
        provider: String,
        news: DirectNews,
    },
}

/// What an isolated worker tells the host about the calls its direct channels served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectNews {
    /// `calls` calls ended (`errors` of them failed) since the last news. With `keep_ms`
    /// above 0 the provider is in use: it was used now, and the worker sends this again
    /// if it is used `keep_ms` or more from now, so the host counts it as used until
    /// then. With `keep_ms` 0 it only brings the counts up to date.
    Used {
        calls: u64,
        errors: u64,
        keep_ms: u64,
    },
    /// A direct call missed its deadline; the worker answered the client with a
    /// timeout. The host kills the worker (it restarts on next use), as for a call of
    /// its own.
    Overdue { deadline_ms: u64 },
    /// The events a put or delete on a direct channel raised, sent before its answer:
    /// the host checks and delivers them as it does a put's or delete's of its own.
    Events { events: Vec<RaisedEvent> },
}

/// What the host sends an isolated worker with a direct channel's socket, on the
/// worker's attach socket (`PURVEYOR_ATTACH_FD`): one JSON frame per channel, the socket
/// riding on it (`SCM_RIGHTS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectAttach {
    /// The provider whose classes the channel serves.
    pub provider: String,
    /// Who is on the other end (the host checked its credentials).
    pub caller: CallerInfo,
    /// The classes the client may read, with their schemas (answers are checked against
    /// them, as the host checks its own).
    pub classes: Vec<ClassSchema>,
    /// The provider's manifest offers `get` / `enumerate`.
    pub offers_get: bool,
    pub offers_enumerate: bool,
    /// Each call's deadline.
    pub deadline_ms: u64,
    /// How long a `used` news keeps the provider in use (a quarter of its `clear_after`).
    pub keep_ms: u64,
    /// The classes (of `classes`) whose puts the client may send on the channel: the
    /// access policy lets it write them and the manifest offers `put`. Others' puts are
    /// answered `unsupported` (the client sends them through the host).
    #[serde(default)]
    pub writable: Vec<ClassPath>,
    /// The same for deletes: the classes (of `classes`) the access policy lets the client
    /// write, when the manifest offers `delete`.
    #[serde(default)]
    pub deletable: Vec<ClassPath>,
    /// The generation of the access policy these permissions come from (a reload makes
    /// a new one, and closes channels of older ones: `ProviderCall::CloseDirect`).
    #[serde(default)]
    pub policy: u64,
    /// When set, the socket is not a channel for reads but the direct channel of the
    /// provider's dialog number `dialog` (`docs/dialogs.md`, "Direct channels"); the
    /// fields above other than `provider` are then unused.
    #[serde(default)]
    pub dialog: Option<u32>,
}

/// An event a provider raises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaisedEvent {
    pub class: ClassPath,
    pub event: Identifier,
    pub data: Instance,
}

/// A provider's failure, as it crosses a boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderFault {
    pub kind: FaultKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    NotFound,
    Unsupported,
    InvalidArgument,
    AccessDenied,
    Failed,
}

impl ProviderRequest {
    /// News of `provider`'s dialog number `dialog`: sent with id 0, never answered.
    pub fn dialog_news(provider: &str, dialog: u32, event: DialogEvent) -> Self {
        ProviderRequest {
            id: 0,
            provider: provider.to_string(),
            caller: CallerInfo::default(),
            deadline_ms: 0,
            ui: 0,
            call: ProviderCall::Dialog { dialog, event },
        }
    }
}

impl ProviderCall {
    /// The call's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderCall::Classes => "classes",
            ProviderCall::Enumerate { .. } => "enumerate",
            ProviderCall::Get { .. } => "get",
            ProviderCall::Release => "release",
            ProviderCall::Load { .. } => "load",
            ProviderCall::Put { .. } => "put",
            ProviderCall::Delete { .. } => "delete",
            ProviderCall::Call { .. } => "call",
            ProviderCall::LoadIo { .. } => "load_io",
            ProviderCall::IoOpen { .. } => "io_open",
            ProviderCall::IoRead { .. } => "io_read",
            ProviderCall::IoWrite { .. } => "io_write",
            ProviderCall::IoSeek { .. } => "io_seek",
            ProviderCall::IoMessage { .. } => "io_message",
            ProviderCall::IoClose { .. } => "io_close",
            ProviderCall::IoDelete { .. } => "io_delete",
            ProviderCall::IoRename { .. } => "io_rename",
            ProviderCall::Dialog { .. } => "dialog",
            ProviderCall::CloseDirect { .. } => "close_direct",
        }
    }
}

/// A read call that borrows its class and key from the request it serves, so that a get
/// or an enumerate reaches a provider library without copying them. It encodes to the
/// same bytes as the [`ProviderCall`] it stands for, in both encodings: its variants keep
/// `ProviderCall`'s names and order (the binary encoding numbers variants by order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadCall<'a> {
    Classes,
    Enumerate {
        class: &'a ClassPath,
    },
    Get {
        class: &'a ClassPath,
        key: &'a InstanceKey,
    },
}

impl ReadCall<'_> {
    /// The owned call, for a provider that is sent its calls in a frame of their own.
    pub fn to_call(&self) -> ProviderCall {
        match *self {
            ReadCall::Classes => ProviderCall::Classes,
            ReadCall::Enumerate { class } => ProviderCall::Enumerate {
                class: class.clone(),
            },
            ReadCall::Get { class, key } => ProviderCall::Get {
                class: class.clone(),
                key: key.clone(),
            },
        }
    }
}

impl ProviderCall {
    /// The call as a [`ReadCall`], when it is one.
    pub fn as_read(&self) -> Option<ReadCall<'_>> {
        match self {
            ProviderCall::Classes => Some(ReadCall::Classes),
            ProviderCall::Enumerate { class } => Some(ReadCall::Enumerate { class }),
            ProviderCall::Get { class, key } => Some(ReadCall::Get { class, key }),
            _ => None,
        }
    }
}

/// A [`ProviderRequest`] that borrows its call (`C` is a `&ProviderCall` or a
/// [`ReadCall`]) and provider name: encodes to the same bytes, for the host's side of a
/// library call, which need not own what it only encodes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProviderRequestRef<'a, C> {
    pub id: u32,
    pub provider: &'a str,
    pub caller: CallerInfo,
    pub deadline_ms: u64,
    pub ui: u32,
    pub call: C,
}

impl ProviderCall {
    /// Whether this is one of the I/O procedure calls (`io_*`), which an I/O procedure
    /// provider answers.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            ProviderCall::IoOpen { .. }
                | ProviderCall::IoRead { .. }
                | ProviderCall::IoWrite { .. }
                | ProviderCall::IoSeek { .. }
                | ProviderCall::IoMessage { .. }
                | ProviderCall::IoClose { .. }
                | ProviderCall::IoDelete { .. }
                | ProviderCall::IoRename { .. }
        )
    }
}

impl ProviderReply {
    /// The reply's name, for error messages about unexpected replies.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderReply::Classes(_) => "classes",
            ProviderReply::Instances(_) => "instances",
            ProviderReply::Instance(_) => "instance",
            ProviderReply::Released => "released",
            ProviderReply::Loaded => "loaded",
            ProviderReply::Error(_) => "error",
            ProviderReply::Done { .. } => "done",
            ProviderReply::IoOpened { .. } => "io_opened",
            ProviderReply::IoData(_) => "io_data",
            ProviderReply::IoValue(_) => "io_value",
            ProviderReply::Dialog { .. } => "dialog",
            ProviderReply::Direct { .. } => "direct",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_requests_encode_as_the_owned_ones() {
        let class = ClassPath::new("demo.greeting").unwrap();
        let mut key = InstanceKey::new();
        key.insert(Identifier::new("name").unwrap(), Value::String("x".into()));
        let calls = [
            ProviderCall::Classes,
            ProviderCall::Enumerate {
                class: class.clone(),
            },
            ProviderCall::Get {
                class: class.clone(),
                key: key.clone(),
            },
            ProviderCall::Release,
        ];
        for encoding in [Encoding::Binary, Encoding::Json] {
            for call in &calls {
                let owned = ProviderRequest {
                    id: 9,
                    provider: "p".into(),
                    caller: CallerInfo {
                        uid: 1,
                        gid: 2,
                        pid: 3,
                    },
                    deadline_ms: 250,
                    ui: 4,
                    call: call.clone(),
                };
                fn by_ref<C>(owned: &ProviderRequest, call: C) -> ProviderRequestRef<'_, C> {
                    ProviderRequestRef {
                        id: owned.id,
                        provider: &owned.provider,
                        caller: owned.caller,
                        deadline_ms: owned.deadline_ms,
                        ui: owned.ui,
                        call,
                    }
                }
                let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
                crate::encode_payload(encoding, &owned, &mut a).unwrap();
                crate::encode_payload(encoding, &by_ref(&owned, call), &mut b).unwrap();
                assert_eq!(a, b, "{encoding} {call:?} by reference");
                match call.as_read() {
                    Some(read) => {
                        assert_eq!(read.to_call(), *call);
                        crate::encode_payload(encoding, &by_ref(&owned, read), &mut c).unwrap();
                        assert_eq!(a, c, "{encoding} {call:?} as a read");
                    }
                    None => assert!(matches!(call, ProviderCall::Release)),
                }
            }
        }
    }

    #[test]
    fn json_forms_are_the_documented_ones() {
        let req = ProviderRequest {
            id: 3,
            provider: "uptime".into(),
            caller: CallerInfo {
                uid: 1000,
                gid: 1000,
                pid: 42,
            },
            deadline_ms: 10000,
            ui: 0,
            call: ProviderCall::Get {
                class: ClassPath::new("demo.uptime").unwrap(),
                key: InstanceKey::new(),
            },
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"id":3,"provider":"uptime","caller":{"uid":1000,"gid":1000,"pid":42},"deadline_ms":10000,"ui":0,"call":{"get":{"class":"demo.uptime","key":{}}}}"#
        );
        let classes: ProviderRequest =
            serde_json::from_str(r#"{"id":1,"call":"classes"}"#).unwrap();
        assert_eq!(classes.call, ProviderCall::Classes);
        let resp: ProviderResponse = serde_json::from_str(
            r#"{"id":3,"reply":{"error":{"kind":"not_found","message":"no such thing"}}}"#,
        )
        .unwrap();
        assert_eq!(
            resp.reply,
            ProviderReply::Error(ProviderFault {
                kind: FaultKind::NotFound,
                message: "no such thing".into()
            })
        );
        let none: ProviderResponse =
            serde_json::from_str(r#"{"id":4,"reply":{"instance":null}}"#).unwrap();
        assert_eq!(none.reply, ProviderReply::Instance(None));
    }
}
