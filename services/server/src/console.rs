//! The web console: the single-page app built from `web/` and checked in under `web/dist`,
//! embedded in every binary so that `keyhouse serve` needs no Node. Its files are served at `/`
//! under a strict Content-Security-Policy; any other page path serves the app's `index.html`
//! (the app routes in the browser), while the API's paths keep their JSON 404s.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::probes;

#[derive(rust_embed::Embed)]
#[folder = "../../web/dist"]
struct Files;

/// No inline script or style, nothing from another origin, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Paths that belong to the API, the docs and the probes: unknown ones there answer 404 as the
/// API does, never with the app. `/assets/` holds the app's own files, so a missing one is a 404.
const NOT_THE_APP: &[&str] = &[
    "/api/",
    "/auth/",
    "/assets/",
    "/keyhouse.",
    "/grpc.",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// The router's fallback: an embedded file, the app for a page path, else the API's 404 or 405.
pub async fn fallback(req: Request) -> Response {
    let path = req.uri().path();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return probes::not_found().await.into_response();
    }
    if let Some(file) = path.strip_prefix('/').and_then(Files::get) {
        return serve(path, file);
    }
    let app_path = !NOT_THE_APP.iter().any(|p| path.starts_with(p))
        && !path.contains("/.")
        && path != "/favicon.ico";
    match Files::get("index.html") {
        Some(index) if app_path => serve("/index.html", index),
        _ => probes::not_found().await.into_response(),
    }
}

fn serve(path: &str, file: rust_embed::EmbeddedFile) -> Response {
    // Hashed asset names change with their content: those may be kept for good; the page that
    // names them is checked every time.
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = [
        (header::CONTENT_TYPE, content_type(path)),
        (header::CACHE_CONTROL, cache),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    let mut response = (StatusCode::OK, file.data.into_owned()).into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "webmanifest") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_embedded() {
        let index = Files::get("index.html").expect("web/dist/index.html is embedded");
        assert!(String::from_utf8_lossy(&index.data).contains("<html"));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(
            content_type("/assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("/x"), "application/octet-stream");
    }
}
