//! Errors a caller can match on.

use std::path::PathBuf;

use purveyor_protocol::{ErrorCode, RemoteError};

/// Why a request or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No such class, instance, namespace or provider.
    #[error("{message}")]
    NotFound { message: String },
    /// The caller lacks a permission; the message names it.
    #[error("{message}")]
    AccessDenied { message: String },
    /// A provider failed to load or to answer.
    #[error("{message}")]
    ProviderFailed {
        provider: Option<String>,
        message: String,
    },
    /// A provider (or the daemon) did not answer in time.
    #[error("{message}")]
    Timeout {
        provider: Option<String>,
        message: String,
    },
    /// The request does not fit the schema.
    #[error("{message}")]
    InvalidRequest { message: String },
    /// The operation is not offered.
    #[error("{message}")]
    Unsupported { message: String },
    /// The daemon is shutting down.
    #[error("{message}")]
    ShuttingDown { message: String },
    /// The peer broke the protocol, or closed the connection.
    #[error("protocol error: {message}")]
    Protocol { message: String },
    /// The daemon's socket could not be reached.
    #[error("cannot connect to the daemon at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection failed while in use.
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    /// A bug on the other side.
    #[error("internal error: {message}")]
    Internal { message: String },
    /// A limit on what this client may make the daemon hold was reached; the message
    /// names it and its setting.
    #[error("limit reached: {message}")]
    LimitExceeded { message: String },
}

impl From<RemoteError> for ClientError {
    fn from(e: RemoteError) -> Self {
        let message = e.message;
        let provider = e.provider.map(|p| p.to_string());
        match e.code {
            ErrorCode::NotFound => ClientError::NotFound { message },
            ErrorCode::AccessDenied => ClientError::AccessDenied { message },
            ErrorCode::ProviderFailed => ClientError::ProviderFailed { provider, message },
            ErrorCode::Timeout => ClientError::Timeout { provider, message },
            ErrorCode::InvalidRequest => ClientError::InvalidRequest { message },
            ErrorCode::Unsupported => ClientError::Unsupported { message },
            ErrorCode::ShuttingDown => ClientError::ShuttingDown { message },
            ErrorCode::Protocol => ClientError::Protocol { message },
            ErrorCode::LimitExceeded => ClientError::LimitExceeded { message },
            _ => ClientError::Internal { message },
        }
    }
}

impl ClientError {
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        ClientError::Protocol {
            message: message.into(),
        }
    }
}

/// A remote connection that could not be made, as [`ClientError::Connect`] naming the
/// address.
pub(crate) fn remote_connect(address: &str, e: purveyor_remote::Error) -> ClientError {
    ClientError::Connect {
        path: address.into(),
        source: std::io::Error::other(e.to_string()),
    }
}
