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
    /// `for_now`: the database was unavailable, and trying again may do.
    #[error("the audit log cannot be written: {detail}")]
    AuditUnwritable { detail: String, for_now: bool },
    /// The database cannot be reached or is busy for now (a connection
    /// lost, a pool exhausted, a lock held): trying again may succeed. The
    /// text goes to the log only.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Everything the client cannot act on; the text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a database error says: unavailable for now (a connection lost or
/// refused, a server shutting down, too many connections, a pool that timed
/// out, SQLite busy or locked), a transaction to try again (serialization
/// failure, deadlock), or something else.
fn database_error(error: &sqlx::Error) -> Option<fn(String) -> Error> {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => Some(Error::Unavailable),
        sqlx::Error::Database(database) => {
            let code = database.code()?;
            let sqlite = database
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some();
            if sqlite {
                // SQLITE_BUSY, SQLITE_LOCKED and their extended codes (a
                // PostgreSQL SQLSTATE such as 42501 would match the mask);
                // SQLITE_CONSTRAINT_FOREIGNKEY.
                return match code.parse::<i32>() {
                    Ok(code) if matches!(code & 0xff, 5 | 6) => Some(Error::Unavailable),
                    Ok(787) => Some(Error::FailedPrecondition),
                    _ => None,
                };
            }
            // PostgreSQL: a connection exception, the server shutting down,
            // too many connections, the writers' lock not had in time, or
            // a session ended for sitting idle in its transaction (a
            // replica that froze while it held the lock, come back).
            if code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "55P03"
                || code == "25P03"
                || code == "25P04"
            {
                Some(Error::Unavailable)
            } else if code == "40001" || code == "40P01" {
                Some(Error::Aborted)
            } else if code == "23503" {
                Some(Error::FailedPrecondition)
            } else {
                None
            }
        }
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {error}"))
    }

    /// What a client is told of this error: its own message for a kind it
    /// can act on; for the server's own failures (internal, the database
    /// away, the audit log unwritable) the short line of the status, the
    /// details going to the log. For text other principals read (a
    /// rotation's history, a Watch event, an audit detail).
    pub fn told(&self) -> String {
        Status::from(self.clone()).message().to_owned()
    }

    /// A failure of the server itself (the database away or busy, a write
    /// that lost a race, the audit log unwritable, anything internal), not
    /// of what it was asked or of a system it talks to: what a rotation
    /// step does not count as one of its attempts.
    pub fn is_servers_own(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::Aborted(_)
                | Error::Internal(_)
                | Error::AuditUnwritable { .. }
        )
    }

    /// Writing a request's audit events failed with `error`.
    pub fn audit_unwritable(error: &Error) -> Self {
        if let Error::AuditUnwritable { detail, for_now } = error {
            return Self::AuditUnwritable {
                detail: detail.clone(),
                for_now: *for_now,
            };
        }
        Self::AuditUnwritable {
            detail: error.to_string(),
            for_now: matches!(error, Error::Unavailable(_) | Error::Aborted(_)),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match database_error(&error).map(|kind| kind(format!("database: {error}"))) {
            // Told to the client as it is: the database's text stays in
            // the log.
            Some(Error::Aborted(detail)) => {
                tracing::warn!(%detail, "a transaction lost to a concurrent one");
                Self::Aborted(
                    "a concurrent change conflicted with this one, which changed nothing; \
                     try again"
                        .to_owned(),
                )
            }
            // A row this one refers to (its secret, its run) was erased
            // by a change that committed first (another replica's, say).
            Some(Error::FailedPrecondition(detail)) => {
                tracing::warn!(%detail, "a change referred to a row erased meanwhile");
                Self::FailedPrecondition(
                    "what this request changes was erased meanwhile (its secret, or its \
                     rotation run), and nothing was changed; read it again"
                        .to_owned(),
                )
            }
            Some(kind) => kind,
            None => Self::internal("database", error),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Self::Unavailable(format!("database: {error}"))
            }
            _ => Self::internal("database", error),
        }
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

/// The longest message a status carries, in characters. It travels as an
/// HTTP/2 header, percent-encoded (a character may take 12 bytes), and
/// clients refuse a header list over 16 KiB: a longer message would reach
/// its caller as a protocol error, not as its status. It is the audit
/// event's detail too.
const MAX_STATUS_CHARS: usize = 1_000;

/// `message`, cut to [`MAX_STATUS_CHARS`] saying so.
fn bounded(message: String) -> String {
    if message.chars().nth(MAX_STATUS_CHARS).is_none() {
        return message;
    }
    let total = message.chars().count();
    let mut cut: String = message.chars().take(MAX_STATUS_CHARS).collect();
    cut.push_str(&format!(
        "… (cut at {MAX_STATUS_CHARS} of {total} characters)"
    ));
    cut
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(message) => Status::new(Code::InvalidArgument, bounded(message)),
            Error::NotFound(message) => Status::new(Code::NotFound, bounded(message)),
            Error::AlreadyExists(message) => Status::new(Code::AlreadyExists, bounded(message)),
            Error::FailedPrecondition(message) => {
                Status::new(Code::FailedPrecondition, bounded(message))
            }
            Error::Aborted(message) => Status::new(Code::Aborted, bounded(message)),
            Error::PermissionDenied(message) => {
                Status::new(Code::PermissionDenied, bounded(message))
            }
            Error::Unauthenticated(message) => Status::new(Code::Unauthenticated, bounded(message)),
            Error::Unimplemented(message) => Status::new(Code::Unimplemented, bounded(message)),
            Error::ResourceExhausted {
                message,
                retry_after_ms,
            } => {
                let mut status = Status::new(Code::ResourceExhausted, bounded(message));
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    tonic::metadata::MetadataValue::from(retry_after_ms),
                );
                status
            }
            Error::Integrity(message) => {
                tracing::error!(%message, "integrity check failed");
                Status::new(Code::DataLoss, bounded(message))
            }
            Error::AuditUnwritable { detail, for_now } => {
                tracing::error!(%detail, "audit events not written; request refused");
                if for_now {
                    Status::new(
                        Code::Unavailable,
                        "the audit log cannot be written for now, so the request was not \
                         answered; try again",
                    )
                } else {
                    Status::new(
                        Code::Internal,
                        "the audit log cannot be written, so the request was not answered",
                    )
                }
            }
            Error::Unavailable(detail) => {
                tracing::error!(%detail, "database unavailable");
                Status::new(
                    Code::Unavailable,
                    "the database is unavailable or busy; try again (the server log has the details)",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_saying_so() {
        let status = Status::from(Error::InvalidArgument("ü".repeat(1_500)));
        assert_eq!(
            status.message(),
            format!("{}… (cut at 1000 of 1500 characters)", "ü".repeat(1_000))
        );
        let status = Status::from(Error::NotFound("n".repeat(1_000)));
        assert_eq!(status.message(), "n".repeat(1_000));
    }

    #[test]
    fn a_database_that_is_away_or_busy_is_unavailable_not_internal() {
        let code = |error: Error| Status::from(error).code();
        assert_eq!(code(sqlx::Error::PoolTimedOut.into()), Code::Unavailable);
        assert_eq!(
            code(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).into()),
            Code::Unavailable
        );
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert_eq!(code(busy.into()), Code::Unavailable);
        let locked = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(6), None);
        assert_eq!(code(locked.into()), Code::Unavailable);
        assert_eq!(code(sqlx::Error::RowNotFound.into()), Code::Internal);
        let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(19), None);
        assert_eq!(code(constraint.into()), Code::Internal);
        // The client hears no database text.
        let status = Status::from(Error::from(sqlx::Error::PoolTimedOut));
        assert!(!status.message().contains("pool"), "{}", status.message());
    }

    /// A PostgreSQL error with `code`.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("could not serialize access due to concurrent update")
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "could not serialize access due to concurrent update"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_transaction_to_try_again_is_aborted_without_the_databases_text() {
        for code in ["40001", "40P01"] {
            let status = Status::from(Error::from(sqlx::Error::Database(Box::new(Coded(code)))));
            assert_eq!(status.code(), Code::Aborted, "{code}");
            assert!(
                !status.message().contains("database") && !status.message().contains("serialize"),
                "{}",
                status.message()
            );
        }
    }
}
