//! The one mapping from keyhouse errors to HTTP. Bodies keep Ops-Center's shapes:
//! `{"detail": "message"}`, and for validation 422 `{"detail": [{"loc", "msg", "type"}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use keyhouse_domain::Error;
use keyhouse_domain::caller::AuthFailure;

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
    #[schema(schema_with = loc_schema)]
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `loc` holds names and list positions: strings and integers.
fn loc_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    ArrayBuilder::new()
        .items(
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(ObjectBuilder::new().schema_type(Type::Integer)),
        )
        .build()
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

/// Where a handler took each request field from, so that a 422 names the right place: a field
/// named in neither list came from the JSON body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Places {
    pub path: &'static [&'static str],
    pub query: &'static [&'static str],
}

impl Places {
    pub const BODY: Places = Places {
        path: &[],
        query: &[],
    };

    pub const fn query(query: &'static [&'static str]) -> Self {
        Self { path: &[], query }
    }

    fn of(self, field: &str) -> &'static str {
        if self.path.contains(&field) {
            "path"
        } else if self.query.contains(&field) {
            "query"
        } else {
            "body"
        }
    }

    /// The REST error for a failed gRPC call whose request came from these places.
    pub fn error(self, status: tonic::Status) -> RestError {
        match std::error::Error::source(&status).and_then(|s| s.downcast_ref::<Error>()) {
            Some(err) => RestError::from_error(err, self),
            None => RestError::from_code(&status),
        }
    }
}

impl RestError {
    fn from_error(err: &Error, places: Places) -> Self {
        match err {
            Error::NotFound(m) => Self::detail(StatusCode::NOT_FOUND, m),
            Error::InvalidArgument {
                field: "key_id", ..
            } => Self::detail(StatusCode::BAD_REQUEST, "Invalid key_id format"),
            Error::InvalidArgument { field, reason } => {
                Self::validation(places.of(field), field, reason.clone(), "value_error")
            }
            Error::Unauthenticated(AuthFailure::NoToken) => Self::detail(
                StatusCode::UNAUTHORIZED,
                "Not authenticated - no session token",
            ),
            Error::Unauthenticated(AuthFailure::ApiKeyNotAccepted) => Self::detail(
                StatusCode::UNAUTHORIZED,
                "API keys are not accepted here - please login",
            ),
            Error::Unauthenticated(AuthFailure::InvalidSession) => Self::detail(
                StatusCode::UNAUTHORIZED,
                "Invalid session - please login again",
            ),
            Error::PermissionDenied(m) => Self::detail(StatusCode::FORBIDDEN, m),
            Error::FailedPrecondition(m) | Error::Aborted(m) => {
                Self::detail(StatusCode::CONFLICT, m)
            }
            Error::ResourceExhausted(m) => Self::detail(StatusCode::TOO_MANY_REQUESTS, m),
            Error::Unavailable(m) => Self::detail(StatusCode::SERVICE_UNAVAILABLE, m),
            Error::Internal(_) => Self::detail(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        }
    }

    /// A status that carries no keyhouse error (one tonic made itself).
    fn from_code(status: &tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::detail(code, status.message())
    }
}

/// A failed call whose fields all came from the JSON body (or that had none).
impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        Places::BODY.error(status)
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
