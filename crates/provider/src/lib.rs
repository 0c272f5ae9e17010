//! The Purveyor provider SDK.
//!
//! A provider implements [`Provider`]: it declares the schemas of the classes it serves and
//! answers calls for their instances. The host decides where the code runs (compiled in,
//! in the daemon, in a worker process) from the provider's manifest; the trait is the same.
//!
//! **API boundary:** provider authors depend on this crate and `purveyor-model` only.

use std::time::Instant;

pub mod abi;

pub use purveyor_model as model;
use purveyor_model::{ClassPath, ClassSchema, Instance, InstanceKey};
pub use purveyor_protocol as protocol;

/// A provider: the code that supplies the instances of some classes.
///
/// Calls may arrive concurrently from several threads. A call that cannot finish before
/// [`CallContext::deadline`] is abandoned by the host and the client is told so; the
/// provider should not hold locks across slow work.
pub trait Provider: Send + Sync + 'static {
    /// The schemas of the classes this provider serves. Called once after loading; every
    /// class its manifest lists must be here. A provider that fills a namespace at run
    /// time (`"app.*"` in its manifest) is asked again whenever classes are listed, and
    /// answers with the classes it has now.
    fn classes(&self) -> Vec<ClassSchema>;

    /// The current schema of `class`, for a provider that fills a namespace at run time;
    /// `None` when there is no such class now. Others keep the default.
    fn schema(&self, _class: &ClassPath) -> Option<std::sync::Arc<ClassSchema>> {
        None
    }

    /// Every instance of `class`.
    fn enumerate(
        &self,
        class: &ClassPath,
        ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError>;

    /// The instance with this full key (empty for a singleton class), or `None`. The
    /// default enumerates and picks; override it when one instance is cheaper to read.
    fn get(
        &self,
        class: &ClassPath,
        key: &InstanceKey,
        ctx: &CallContext,
    ) -> Result<Option<Instance>, ProviderError> {
        Ok(self
            .enumerate(class, ctx)?
            .into_iter()
            .find(|instance| instance.matches(key)))
    }

    /// The cleanup hook: called once when the host releases the provider (idle unload or
    /// shutdown), after the last call. Close what the OS does not reclaim here.
    fn release(&self) {}
}

/// Who is calling, and until when.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub caller: Caller,
    /// The host abandons the call after this instant.
    pub deadline: Option<Instant>,
}

/// The peer a request came from, from the socket's credentials (`SO_PEERCRED`); in
/// embedded mode, the current process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A provider's failure, reported to the client with the provider's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("{0}")]
    Failed(String),
}

impl CallContext {
    /// A context for calls made by the host itself or by tests.
    pub fn internal() -> Self {
        CallContext {
            caller: Caller::current_process(),
            deadline: None,
        }
    }
}

impl Caller {
    /// The current process's own credentials.
    pub fn current_process() -> Self {
        Caller {
            uid: current_uid(),
            gid: current_gid(),
            pid: std::process::id(),
        }
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn current_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}
