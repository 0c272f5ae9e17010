//! The Purveyor host: the provider registry built from manifests, each provider's
//! lifecycle, the requests, sessions, events and dialogs, and the Unix-socket server.
//! Running a provider — in this process or another — is `purveyor-hosting`'s job; this
//! crate decides when, for whom, and what the answer means.
//!
//! The same [`Host`] serves a daemon (`purveyor serve`, through [`server::serve`]) and an
//! embedded client (the client library calls [`Host::handle_in`] directly, in a
//! [`Session`] of its own). `ARCHITECTURE.md` maps the modules and what may depend on
//! what.
//!
//! **Invariant:** nothing from a socket or a provider can panic the host: frames are checked
//! before decoding, provider calls run under `catch_unwind` or in a process of their own,
//! and provider answers are checked against the provider's schema.

pub mod access;
mod accounting;
mod admission;
mod cache_control;
mod calls;
mod changes;
mod config;
pub mod config_file;
mod connection;
mod cx;
mod dialogs;
mod events;
mod host;
mod loading;
mod local_io;
pub mod manifest;
mod outcomes;
mod pipes;
mod policy;
mod push;
mod registry;
mod reload;
mod requests;
mod self_provider;
pub mod server;
mod session;
mod slot;
pub mod socket;
mod spare;
mod state;
mod streams;

pub use access::{AccessPolicy, Permission};
pub use admission::OWNER_RESERVE;
pub use config::{ClearAfter, HostConfig, Limits};
pub use host::{Host, HostBuilder};
pub use manifest::{Entry, Manifest, ManifestError, ManifestSource, ProviderKind};
pub use purveyor_hosting::lock::Current;
pub use purveyor_hosting::{BuiltinProvider, Dispatch, Factory, LibraryProvider};
pub use purveyor_provider::Caller;
pub use push::PushSink;
pub use reload::Reloader;
pub use session::Session;
pub use state::SERVER_NAME;
