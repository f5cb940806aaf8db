//! The server's error type: a few domain-level kinds and one mapping to
//! `tonic::Status`. The message of a client-facing kind is written for the
//! person who sent the request; internal details (database errors, I/O) go to
//! the log only, and the client gets the code and a short message.
//!
//! No variant may carry a secret value: messages name secrets, versions and
//! stages, never their contents.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unimplemented(String),
    /// Over a rate limit: try again after `retry_after_ms`.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after_ms: u64,
    },
    /// What the request would change was changed by someone else since it
    /// was read; nothing was written, and trying again may succeed.
    #[error("{0}")]
    Aborted(String),
    /// A stored value or key failed its integrity check: tampering or
    /// corruption, never a client mistake.
    #[error("{0}")]
    Integrity(String),
    /// The audit events of a request that succeeded could not be written,
    /// so it is not answered (fail-closed); the cause goes to the log only.
    #[error("the audit log cannot be written: {0}")]
    AuditUnwritable(String),
    /// Everything the client cannot act on; the text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {error}"))
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::internal("database", error)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Self::internal("database", error)
    }
}

impl From<rekey_shared::NameError> for Error {
    fn from(error: rekey_shared::NameError) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

impl From<rekey_shared::value::ValueError> for Error {
    fn from(error: rekey_shared::value::ValueError) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(message) => Status::new(Code::InvalidArgument, message),
            Error::NotFound(message) => Status::new(Code::NotFound, message),
            Error::AlreadyExists(message) => Status::new(Code::AlreadyExists, message),
            Error::FailedPrecondition(message) => Status::new(Code::FailedPrecondition, message),
            Error::Aborted(message) => Status::new(Code::Aborted, message),
            Error::PermissionDenied(message) => Status::new(Code::PermissionDenied, message),
            Error::Unauthenticated(message) => Status::new(Code::Unauthenticated, message),
            Error::Unimplemented(message) => Status::new(Code::Unimplemented, message),
            Error::ResourceExhausted {
                message,
                retry_after_ms,
            } => {
                let mut status = Status::new(Code::ResourceExhausted, message);
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    tonic::metadata::MetadataValue::from(retry_after_ms),
                );
                status
            }
            Error::Integrity(message) => {
                tracing::error!(%message, "integrity check failed");
                Status::new(Code::DataLoss, message)
            }
            Error::AuditUnwritable(detail) => {
                tracing::error!(%detail, "audit events not written; request refused");
                Status::new(
                    Code::Internal,
                    "the audit log cannot be written, so the request was not answered",
                )
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::new(
                    Code::Internal,
                    "internal server error; the server log has the details",
                )
            }
        }
    }
}
