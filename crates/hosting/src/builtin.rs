//! Providers compiled into the binary (`hosting = "builtin"`).

use std::sync::Arc;

use purveyor_provider::{Provider, ProviderError};

/// Makes a provider when it is first used.
pub type Factory = Arc<dyn Fn() -> Result<Arc<dyn Provider>, ProviderError> + Send + Sync>;

/// How the host runs a provider's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// On the connection's own task. Only for trusted code whose calls never block (reading
    /// procfs, reading memory): no thread hand-off, but no deadline either.
    Inline,
    /// On the blocking thread pool, abandoned at the call's deadline.
    Blocking,
}

/// A provider compiled into the binary, with its manifest.
#[derive(Clone)]
pub struct BuiltinProvider {
    /// The name manifests use in `builtin = "..."`.
    pub name: String,
    /// The default manifest (TOML); a file for the same provider in a providers directory
    /// replaces it.
    pub manifest: &'static str,
    pub factory: Factory,
    pub dispatch: Dispatch,
}

impl BuiltinProvider {
    pub fn new<P: Provider>(
        name: &str,
        manifest: &'static str,
        dispatch: Dispatch,
        make: impl Fn() -> Result<P, ProviderError> + Send + Sync + 'static,
    ) -> Self {
        BuiltinProvider {
            name: name.into(),
            manifest,
            factory: Arc::new(move || make().map(|p| Arc::new(p) as Arc<dyn Provider>)),
            dispatch,
        }
    }
}

impl std::fmt::Debug for BuiltinProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinProvider")
            .field("name", &self.name)
            .field("dispatch", &self.dispatch)
            .finish_non_exhaustive()
    }
}
