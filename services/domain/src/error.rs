//! The one error type of keyhouse. The server maps it to gRPC in one place and to REST in one
//! place; nothing here knows either transport.

use std::fmt;

/// Everything a keyhouse operation can fail with. Messages are shown to callers, so they never
/// carry a secret or an internal cause; `Internal` keeps its cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{reason}")]
    /// `reason` is the whole message and names the field; `field` is for REST's `loc`.
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Lost a race with a concurrent change to the same record; trying again will do.
    #[error("{0}")]
    Aborted(String),
    /// Over a limit (a rate, a count, a capacity); the message names the limit and its setting.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::Internal(cause.into())
    }

    /// Whether this is the failure to reach the database at all (what opens the breaker in
    /// `db::guarded`), rather than a refusal or a busy answer.
    pub fn is_database_down(&self) -> bool {
        matches!(self, Self::Unavailable(m) if m == DATABASE_UNAVAILABLE)
    }
}

const DATABASE_UNAVAILABLE: &str = "database unavailable";

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable(DATABASE_UNAVAILABLE.into())
            }
            // Every uniqueness rule keyhouse relies on is checked before writing; meeting one
            // here means a concurrent change wrote the same record first.
            other
                if matches!(
                    other.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                Self::Aborted("a concurrent change to the same record came first; try again".into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(err: sea_orm::TransactionError<Error>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

/// Why a caller was not authenticated. Each transport words these its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    NoToken,
    InvalidSession,
    /// A `uc_` key where the call takes only a session.
    ApiKeyNotAccepted,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::NoToken => "not authenticated: no session token",
            AuthFailure::InvalidSession => "invalid or expired session",
            AuthFailure::ApiKeyNotAccepted => {
                "an API key is not accepted on this call: sign in with a session"
            }
        })
    }
}
