//! Double-submit CSRF check, as Ops-Center's front end already performs it: a state-changing
//! request authenticated by the session cookie must carry an `X-CSRF-Token` header equal to
//! the `csrf_token` cookie. Bearer-authenticated requests are not exposed to CSRF and pass.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::RestError;
use crate::auth::{bearer, cookie_value};

pub async fn require_csrf_token(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = bearer(text("authorization")).is_some();
    let cookie = text("cookie").unwrap_or_default();
    let cookie_session = cookie_value(cookie, "session_token").is_some();
    if bearer || !cookie_session {
        return next.run(req).await;
    }
    let expected = cookie_value(cookie, "csrf_token").unwrap_or_default();
    let presented = text("x-csrf-token").unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return RestError::detail(
            StatusCode::FORBIDDEN,
            "CSRF check failed: send the csrf_token cookie's value in the X-CSRF-Token header",
        )
        .into_response();
    }
    next.run(req).await
}
