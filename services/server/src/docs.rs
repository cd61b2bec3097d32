//! API documentation served by keyhouse itself — no CDN, since it runs on closed networks:
//! the OpenAPI document at `/openapi.json`, Swagger UI at `/docs`, ReDoc at `/redoc`.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa_swagger_ui::SwaggerUi;

const REDOC_JS: &[u8] = include_bytes!("../assets/redoc/redoc.standalone.js");

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <meta charset="utf-8"/>
    <title>keyhouse API</title>
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

/// The document every binary starts from; each service merges its paths into it.
pub fn base_document() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("keyhouse")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "API keys for an LLM gateway: the Ops-Center REST paths. Authenticate with the \
                     `session_token` cookie (state-changing calls then need `X-CSRF-Token` equal to the \
                     `csrf_token` cookie) or `Authorization: Bearer <session token>`.",
                ))
                .build(),
        )
        .build()
}

pub fn router(doc: OpenApi) -> Router {
    let swagger: Router = SwaggerUi::new("/docs").url("/openapi.json", doc).into();
    swagger
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route(
            "/redoc/redoc.standalone.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "application/javascript")], REDOC_JS).into_response()
            }),
        )
}
