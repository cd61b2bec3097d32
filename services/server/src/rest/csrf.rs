//! Double-submit CSRF check, as Ops-Center's front end already performs it: a request
//! authenticated by the session cookie must carry an `X-CSRF-Token` header equal to the
//! `csrf_token` cookie. Bearer-authenticated requests are not exposed to CSRF and pass. REST
//! checks state-changing methods; gRPC and grpc-web check every call (all are POSTs).

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::RestError;
use crate::auth::{bearer, cookie_value};

const FAILED: &str =
    "CSRF check failed: send the csrf_token cookie's value in the X-CSRF-Token header";

/// Whether a request passes: no cookie session, a bearer token, or the matching header.
fn passes(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = bearer(text("authorization")).is_some();
    let cookie = text("cookie").unwrap_or_default();
    if bearer || cookie_value(cookie, "session_token").is_none() {
        return true;
    }
    let expected = cookie_value(cookie, "csrf_token").unwrap_or_default();
    let presented = text("x-csrf-token").unwrap_or_default();
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

pub async fn require_csrf_token(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || passes(req.headers())
    {
        return next.run(req).await;
    }
    RestError::detail(StatusCode::FORBIDDEN, FAILED).into_response()
}

/// The same check for gRPC calls, answered as PERMISSION_DENIED (grpc-web translates it).
pub async fn require_csrf_token_grpc(req: Request, next: Next) -> Response {
    if passes(req.headers()) {
        return next.run(req).await;
    }
    tonic::Status::permission_denied(FAILED).into_http()
}
