//! The vocabulary of the provider registry: hosting models, capabilities, lifecycle states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a provider's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Hosting {
    /// Compiled into the Purveyor binary.
    Builtin,
    /// A shared library loaded into the daemon itself: fastest, but a crash takes the
    /// daemon down.
    InDaemon,
    /// A shared library loaded into a separate worker process.
    Isolated,
    /// A separate executable speaking the documented protocol.
    External,
}

/// An operation a provider offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Enumerate,
    Get,
    Put,
    Delete,
    Call,
    Subscribe,
}

/// A provider's lifecycle state, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProviderState {
    /// Known from its manifest; not loaded.
    Registered,
    /// A load is in progress; requests wait for it.
    Loading,
    /// Loaded and serving.
    Loaded,
    /// Being released (idle unload or shutdown); cleanup hooks are running.
    Releasing,
    /// The last load failed (or an in-daemon provider missed a deadline); the next request
    /// retries after a back-off.
    Failed,
    /// Crashed too often in a short time; not loaded again until enabled
    /// (`purveyor providers enable NAME`).
    Quarantined,
    /// A non-pure provider the host released: it may run on as a client of the host, and
    /// is neither counted as loaded nor waited for at shutdown. The next request loads a
    /// fresh instance.
    ReleasedAsClient,
}

impl Hosting {
    pub fn as_str(self) -> &'static str {
        match self {
            Hosting::Builtin => "builtin",
            Hosting::InDaemon => "in-daemon",
            Hosting::Isolated => "isolated",
            Hosting::External => "external",
        }
    }
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::Enumerate,
        Capability::Get,
        Capability::Put,
        Capability::Delete,
        Capability::Call,
        Capability::Subscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Enumerate => "enumerate",
            Capability::Get => "get",
            Capability::Put => "put",
            Capability::Delete => "delete",
            Capability::Call => "call",
            Capability::Subscribe => "subscribe",
        }
    }
}

impl ProviderState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderState::Registered => "registered",
            ProviderState::Loading => "loading",
            ProviderState::Loaded => "loaded",
            ProviderState::Releasing => "releasing",
            ProviderState::Failed => "failed",
            ProviderState::Quarantined => "quarantined",
            ProviderState::ReleasedAsClient => "released-as-client",
        }
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(Hosting, Capability, ProviderState);
