//! The Purveyor client library: a typed API over the protocol, blocking ([`Client`]) and
//! async ([`AsyncClient`]).
//!
//! [`Target::Auto`] (the default) talks to the daemon if one answers on the socket, and
//! otherwise runs a host inside this process on the same configuration (the `embedded`
//! feature, on by default), so the first command works on a fresh machine.

mod asynchronous;
mod blocking;
pub mod dialog;
mod dialog_channels;
mod direct;
mod error;
pub mod io;
mod options;
mod stream;
mod typed;
mod wire;

pub use asynchronous::AsyncClient;
pub use blocking::Client;
pub use dialog::{DialogUi, ModuleUi, OpenDialog, UiAction};
pub use error::ClientError;
pub use options::{ConnectOptions, Mode, Target};
pub use purveyor_protocol::{
    Button, ChangeKind, ClassList, DialogInput, Encoding, Field, FieldKind, Form, FormUpdate,
    HostMode, HostStatus, IoMode, IoProcedureInfo, Progress, PropertyChange, ProviderStatus, Push,
    QueryColumn, QueryRows, ReloadReport, Request, Response,
};
pub use purveyor_remote::{
    ClientFlags as RemoteFlags, ClientSettings as RemoteSettings, RemoteAddress,
};

#[cfg(feature = "embedded")]
#[cfg(feature = "embedded")]
pub use purveyor_builtins::{default_host, host_with};
