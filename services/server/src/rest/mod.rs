//! The REST shim's plumbing, shared by every service's routes: JSON bodies in, the core's
//! errors out in the shape the Ops-Center front end parses, gRPC requests built from HTTP
//! headers, and the CSRF check for cookie sessions. Handlers translate and call the gRPC
//! method, so REST and gRPC cannot disagree.

mod body;
mod csrf;
mod error;
mod params;

pub use body::{JsonBody, MAX_BODY_BYTES, OptionalJsonBody};
pub use csrf::{require_csrf_token, require_csrf_token_grpc};
pub use error::{ErrorBody, Places, RestError, ValidationErrorBody, ValidationItem};
pub use params::{Path, Query};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use serde::Serialize;

/// The header that carries the next page's token on every paged REST list.
pub const NEXT_PAGE_TOKEN: &str = "x-next-page-token";

/// One page of a list, the way every paged REST list answers: the items as a JSON array, and
/// the next page's token in `X-Next-Page-Token` (absent on the last page). The Ops-Center front
/// end reads the key list as a bare array, so the token cannot go in the body.
pub fn page<T: Serialize>(items: Vec<T>, next_page_token: &str) -> Response {
    let mut response = Json(items).into_response();
    if !next_page_token.is_empty()
        && let Ok(value) = HeaderValue::from_str(next_page_token)
    {
        response.headers_mut().insert(NEXT_PAGE_TOKEN, value);
    }
    response
}

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

/// A query parameter as an integer (0 when absent), or a 422 naming it. Present but empty is
/// not an integer either: the document promises one.
pub fn query_int(value: Option<&String>, name: &'static str) -> Result<i32, RestError> {
    match value.map(|v| v.trim()) {
        None => Ok(0),
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
