//! How a load or a call failed, as values the host turns into wire errors at its edge.
//! Each message names the provider.

use std::time::Duration;

use purveyor_protocol::ErrorCode;

/// How a call failed. Each message names the provider.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("provider {0} panicked: {1}")]
    Panicked(String, String),
    #[error("provider {0}: call task failed: {1}")]
    Task(String, String),
    #[error("provider {0} did not answer within {1}")]
    Overdue(String, Shown),
    #[error("I/O procedure provider {0} panicked: {1}")]
    ProcedurePanicked(String, String),
    #[error("I/O procedure provider {0} did not answer within {1}")]
    ProcedureOverdue(String, Shown),
    /// Its process ended: the host counts a crash.
    #[error("provider {0} crashed: {1}")]
    Crashed(String, String),
    /// Its process missed the deadline and was killed: restarted on next use.
    #[error(
        "provider {0} did not answer within {1}; its process was killed and restarts on next use"
    )]
    Killed(String, Shown),
    /// An in-daemon call still running past its deadline: the watchdog acted.
    #[error(
        "provider {0} did not answer within {1}; marked failed, since an in-daemon provider cannot be stopped"
    )]
    Stuck(String, Shown),
    #[error("provider {0}: its calls do not run inline")]
    NotInline(String),
}

/// How a load failed. Each message names the provider.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("provider {0} failed to load: {1}")]
    Failed(String, String),
    #[error("provider {0} panicked: {1}")]
    Panicked(String, String),
    #[error("provider {0}: load task failed: {1}")]
    Task(String, String),
    /// A load step in this process ran past the deadline.
    #[error("provider {0} did not finish loading within {1}")]
    Overdue(String, Shown),
    /// Its process did not answer a load step in time: it was killed.
    #[error("provider {0} did not finish loading within {1}")]
    ProcessOverdue(String, Shown),
    #[error("provider {0} answered `{1}` when asked for its classes")]
    Answered(String, &'static str),
}

/// A duration as messages show it (`5s`, `1m 30s`).
#[derive(Debug, Clone, Copy)]
pub struct Shown(pub Duration);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl CallError {
    /// The wire's error code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::Panicked(..) | CallError::ProcedurePanicked(..) | CallError::Crashed(..) => {
                ErrorCode::ProviderFailed
            }
            CallError::Task(..) | CallError::NotInline(..) => ErrorCode::Internal,
            CallError::Overdue(..)
            | CallError::ProcedureOverdue(..)
            | CallError::Killed(..)
            | CallError::Stuck(..) => ErrorCode::Timeout,
        }
    }
}

impl LoadError {
    /// The wire's error code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            LoadError::Task(..) => ErrorCode::Internal,
            LoadError::Overdue(..) => ErrorCode::Timeout,
            _ => ErrorCode::ProviderFailed,
        }
    }
}
