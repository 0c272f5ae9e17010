//! The Purveyor host engine: the provider registry built from manifests, each provider's
//! lifecycle, request dispatch, and the Unix-socket server.
//!
//! The same [`Host`] serves a daemon (`purveyor serve`, through [`server::serve`]) and an
//! embedded client (the client library calls [`Host::handle_in`] directly, in a
//! [`Session`] of its own).
//!
//! **Invariant:** nothing from a socket or a provider can panic the host: frames are checked
//! before decoding, provider calls run under `catch_unwind`, and provider answers are checked
//! against the provider's schema.

pub mod access;
mod admission;
mod answer;
mod builtin;
mod config;
pub mod config_file;
mod contain;
mod dialogs;
mod engine;
mod events;
pub mod io;
mod library;
pub mod manifest;
mod process;
mod registry;
mod self_provider;
pub mod server;
mod slot;
pub mod socket;
mod watchdog;
pub mod worker;

pub use access::{AccessPolicy, Permission};
pub use admission::OWNER_RESERVE;
pub use builtin::{BuiltinProvider, Dispatch, Factory};
pub use config::{ClearAfter, HostConfig, Limits};
pub use dialogs::SessionUi;
pub use engine::{Host, HostBuilder};
pub use events::{EventSink, Session};
pub use library::LibraryProvider;
pub use manifest::{Entry, Manifest, ManifestError, ManifestSource, ProviderKind};
pub use purveyor_provider::Caller;
