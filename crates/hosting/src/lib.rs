//! Runs one Purveyor provider wherever its manifest puts it — compiled in, a library in
//! this process, a library in an isolated worker, an external executable — and is the
//! worker process itself (`purveyor worker`).
//!
//! This crate knows no registry, session, dialog routing, event bus or access policy:
//! what a provider may ask of its host goes through [`HostLink`], and the host
//! (`purveyor-host`) decides what it means. The worker depends on this crate only, so the
//! code a provider runs beside is the same here and in the worker.
//!
//! - [`hosted`]: [`load`] a provider, call it ([`Hosted::call`], [`Hosted::call_inline`]),
//!   release it. The only place the hosting models are matched.
//! - `error`: [`CallError`] and [`LoadError`], which name the provider and carry their
//!   wire code.
//! - [`builtin`]: providers compiled into the binary.
//! - [`library`]: provider libraries through their C table (`dlopen`).
//! - [`process`]: provider processes over the provider channel; [`contain`] keeps each
//!   one's process tree inside a guard.
//! - [`procedures`]: I/O procedure servers, and running file work as the caller.
//! - [`answer`]: checks a provider's answers against its schemas (shared with the
//!   worker's direct channels).
//! - [`watchdog`]: deadlines for calls that run on the caller's own thread.
//! - [`lock`]: taking a `std` lock whatever a panicking holder left (one helper for
//!   the host and hosting alike).
//! - [`worker`]: the isolated worker process.
//!
//! **Invariant:** nothing a provider does can panic or hang the host: every call runs
//! under `catch_unwind` or in a process of its own, within the provider's deadline.

pub mod answer;
pub mod builtin;
pub mod confine;
mod contain;
mod error;
mod exit;
pub mod hosted;
pub mod library;
pub mod lock;
pub mod procedures;
mod process;
pub mod sandbox;
pub mod watchdog;
pub mod worker;

pub use builtin::{BuiltinProvider, Dispatch, Factory};
pub use confine::Confine;
pub use error::{CallError, LoadError, Shown};
pub use hosted::{
    CallCx, HostLink, Hosted, InlineCall, InlineCx, Overrun, ProcessRef, Spec, blocking, load,
    spawn_worker,
};
pub use library::LibraryProvider;
pub use procedures::ProcedureServer;
pub use process::ProcessConn;
pub use watchdog::Watchdog;
