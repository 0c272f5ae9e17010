//! Purveyor's wire protocol (documented in `docs/protocol.md`).
//!
//! **API boundary:** every type that crosses a process boundary is defined here (or in
//! `purveyor-model`, whose types these messages carry). Nothing else is serialized.
//!
//! A connection is a stream of frames: a 4-byte little-endian payload length, then the
//! payload. The first frame each way is a JSON handshake ([`Hello`], [`Welcome`]); after it,
//! every payload is a [`ClientMessage`] or [`ServerMessage`] in the encoding the client chose
//! ([`Encoding::Binary`], postcard, or [`Encoding::Json`]).
//!
//! **Invariant:** no wire type holds a pointer-sized integer (`usize`, `isize`): every
//! integer has a fixed width, so 32-bit and 64-bit peers read the same message.

mod codec;
mod dialog;
pub mod dialog_channel;
pub mod fds;
mod frame;
mod message;
mod paths;
pub mod poll;
mod provider;
mod pushes;

pub use codec::{
    DecodeError, EncodeError, decode, decode_io_data_head, decode_server_message, encode_frame,
    encode_io_data_head, encode_payload, encode_server_frame,
};
pub use dialog::{
    Button, DIALOG_FRAME_MAX, DialogEvent, DialogInput, DialogMessage, DialogOp, Field, FieldKind,
    Form, FormUpdate, Progress,
};
#[cfg(feature = "schema")]
pub mod layout;
pub use frame::{FRAME_HEADER_LEN, FrameBuffer, FrameError, MAX_FRAME_DEFAULT};
pub use message::{
    BINARY_INSTANCES_SINCE, ChangeKind, ClassList, ClientMessage, Encoding, ErrorCode, Hello,
    HostMode, HostStatus, InstanceList, IoMode, IoProcedureInfo, IoWhence, LIMIT_EXCEEDED_SINCE,
    Outcome, PROTOCOL_MINOR, PROTOCOL_VERSION, PropertyChange, ProviderStatus, Push, QueryColumn,
    QueryRows, ReloadReport, RemoteError, Request, Response, ServerMessage, Welcome,
};
pub use paths::default_socket_path;
pub use provider::{
    CallerInfo, DirectAttach, DirectNews, FaultKind, PROVIDER_ABI_VERSION, ProviderCall,
    ProviderFault, ProviderHello, ProviderReady, ProviderReply, ProviderRequest,
    ProviderRequestRef, ProviderResponse, RaisedEvent, ReadCall,
};
pub use purveyor_model::shorten;
pub use pushes::PushQueue;
