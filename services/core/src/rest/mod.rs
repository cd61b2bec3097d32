//! The REST shim's plumbing, shared by every service's routes: JSON bodies in, the core's
//! errors out in the shape the Ops-Center front end parses, gRPC requests built from HTTP
//! headers, and the CSRF check for cookie sessions. Handlers translate and call the gRPC
//! method, so REST and gRPC cannot disagree.

mod body;
mod csrf;
mod error;

pub use body::{JsonBody, MAX_BODY_BYTES, OptionalJsonBody};
pub use csrf::require_csrf_token;
pub use error::{ErrorBody, RestError, ValidationErrorBody, ValidationItem};

use axum::http::HeaderMap;
use chrono::SecondsFormat;

/// The gRPC request a REST call stands for: the same credentials and request id.
pub fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for name in ["authorization", "cookie", "x-request-id"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = value.parse()
        {
            req.metadata_mut().insert(name, value);
        }
    }
    req
}

/// RFC 3339, UTC, microseconds: `2026-11-25T15:08:02.591474Z`.
pub fn rfc3339(t: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn rfc3339_opt(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.map(rfc3339)
}

/// A query parameter as an integer, or a 422 naming it.
pub fn query_int(value: Option<&String>, name: &'static str) -> Result<i32, RestError> {
    match value.map(|v| v.trim()) {
        None | Some("") => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            RestError::validation(
                "query",
                name,
                format!("{name} must be an integer"),
                "int_parsing",
            )
        }),
    }
}

/// An RFC 3339 query parameter, or a 422 naming it.
pub fn query_time(
    value: Option<&String>,
    name: &'static str,
) -> Result<Option<prost_types::Timestamp>, RestError> {
    let Some(value) = value.map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let at = chrono::DateTime::parse_from_rfc3339(value).map_err(|_| {
        RestError::validation(
            "query",
            name,
            format!("{name} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"),
            "datetime_parsing",
        )
    })?;
    Ok(Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }))
}
