//! The one mapping from keyhouse errors to HTTP. Bodies keep Ops-Center's shapes:
//! `{"detail": "message"}`, and for validation 422 `{"detail": [{"loc", "msg", "type"}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthFailure;
use crate::error::Error;

/// Fields that arrive in the query string rather than the body.
const QUERY_FIELDS: &[&str] = &[
    "page_size",
    "page_token",
    "status",
    "reason",
    "actor",
    "action",
    "target",
    "since",
    "until",
    "from",
    "to",
];

#[derive(Debug)]
pub enum RestError {
    Detail(StatusCode, String),
    Validation(Vec<ValidationItem>),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidationErrorBody {
    pub detail: Vec<ValidationItem>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ValidationItem {
    /// Where: `["body", "<field>", ...]` or `["query", "<param>"]`; list positions are numbers.
    #[schema(value_type = Vec<Object>)]
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl RestError {
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::Detail(status, detail.into())
    }

    pub fn validation(place: &str, field: &str, msg: impl Into<String>, kind: &str) -> Self {
        let mut loc = vec![serde_json::Value::from(place)];
        if !field.is_empty() {
            loc.push(field.into());
        }
        Self::at(loc, msg, kind)
    }

    pub fn at(loc: Vec<serde_json::Value>, msg: impl Into<String>, kind: &str) -> Self {
        Self::Validation(vec![ValidationItem {
            loc,
            msg: msg.into(),
            kind: kind.to_owned(),
        }])
    }
}

impl From<&Error> for RestError {
    fn from(err: &Error) -> Self {
        match err {
            Error::NotFound(m) => Self::detail(StatusCode::NOT_FOUND, m),
            Error::InvalidArgument {
                field: "key_id", ..
            } => Self::detail(StatusCode::BAD_REQUEST, "Invalid key_id format"),
            Error::InvalidArgument { field, reason } => {
                let place = if QUERY_FIELDS.contains(field) {
                    "query"
                } else {
                    "body"
                };
                Self::validation(place, field, reason.clone(), "value_error")
            }
            Error::Unauthenticated(AuthFailure::NoToken) => Self::detail(
                StatusCode::UNAUTHORIZED,
                "Not authenticated - no session token",
            ),
            Error::Unauthenticated(AuthFailure::InvalidSession) => Self::detail(
                StatusCode::UNAUTHORIZED,
                "Invalid session - please login again",
            ),
            Error::PermissionDenied(m) => Self::detail(StatusCode::FORBIDDEN, m),
            Error::FailedPrecondition(m) | Error::Aborted(m) => {
                Self::detail(StatusCode::CONFLICT, m)
            }
            Error::Unavailable(m) => Self::detail(StatusCode::SERVICE_UNAVAILABLE, m),
            Error::Internal(_) => Self::detail(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        }
    }
}

impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        if let Some(err) =
            std::error::Error::source(&status).and_then(|s| s.downcast_ref::<Error>())
        {
            return err.into();
        }
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::detail(code, status.message())
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        match self {
            Self::Detail(status, detail) => (status, Json(ErrorBody { detail })).into_response(),
            Self::Validation(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ValidationErrorBody { detail }),
            )
                .into_response(),
        }
    }
}
