//! API documentation served by keyhouse itself — no CDN, since it runs on closed networks:
//! the OpenAPI document at `/openapi.json`, Swagger UI at `/docs`, ReDoc at `/redoc`.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use keyhouse_domain::authorization::{self, Reach};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder,
};
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

/// The document every binary starts from, with the sign-in paths every binary serves; each
/// service merges its paths into it.
pub fn base_document() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
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
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    BEARER,
                    SecurityScheme::Http(
                        HttpBuilder::new()
                            .scheme(HttpAuthScheme::Bearer)
                            .description(Some(
                                "A session token, or a `uc_` API key on the user-key and BYOK \
                                 paths its scopes allow",
                            ))
                            .build(),
                    ),
                )
                .security_scheme(
                    SESSION_COOKIE,
                    SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                        "session_token",
                        "The Ops-Center session cookie; state-changing calls also need \
                         `X-CSRF-Token` equal to the `csrf_token` cookie",
                    ))),
                )
                .build(),
        ))
        .build();
    doc.merge(<crate::login::Docs as utoipa::OpenApi>::openapi());
    doc
}

const BEARER: &str = "bearer";
const SESSION_COOKIE: &str = "session_cookie";

/// Adds to a service's REST operations what the shared plumbing answers on every route, so the
/// document lists every status a caller can get: who may call, read from the authorization
/// table (`routes` is the service's `ROUTES`: RPC, HTTP method, path), and how a bad
/// credential, CSRF token, body or parameter and an unreachable database are answered. A
/// handler's own `responses` say what is particular to it (404, 409, ...).
pub fn with_shared_answers(
    mut doc: OpenApi,
    service: &str,
    routes: &[(&str, &str, &str)],
) -> OpenApi {
    for (rpc, method, path) in routes {
        let Some(operation) = doc
            .paths
            .paths
            .get_mut(*path)
            .and_then(|item| operation(item, method))
        else {
            continue;
        };
        // A route without a row is refused by the services (and by the tests): document the
        // strictest answer.
        let rule = authorization::rule(service, rpc).ok();
        let anonymous = rule.is_some_and(|r| r.anonymous);
        let changes_state = *method != "get";
        let mut forbidden = Vec::new();
        if !anonymous {
            operation.security = Some(vec![
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
                SecurityRequirement::new(SESSION_COOKIE, Vec::<String>::new()),
            ]);
            answer(
                operation,
                "401",
                "Not authenticated: no credential, or an invalid or expired one",
                "ErrorBody",
            );
            match rule {
                Some(r) if r.user == Reach::None => forbidden.push("admins only"),
                _ => forbidden.push("the API key lacks the scope, is over its rate limit or is limited to IP addresses"),
            }
        }
        if changes_state {
            forbidden.push("the CSRF check failed (cookie sessions)");
        }
        if !forbidden.is_empty() {
            let text = format!("Forbidden: {}", forbidden.join("; "));
            answer(operation, "403", &text, "ErrorBody");
        }
        if operation.request_body.is_some() {
            answer(
                operation,
                "413",
                "The request body is larger than the limit",
                "ErrorBody",
            );
            answer(
                operation,
                "415",
                "The request body is not `application/json`",
                "ErrorBody",
            );
        }
        let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
        if operation.request_body.is_some() || has_parameters {
            answer(
                operation,
                "422",
                "Validation error naming the field",
                "ValidationErrorBody",
            );
        }
        answer(
            operation,
            "503",
            "A database or another store keyhouse needs is unreachable; retry later",
            "ErrorBody",
        );
    }
    doc
}

fn operation<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Operation> {
    match method {
        "get" => item.get.as_mut(),
        "post" => item.post.as_mut(),
        "put" => item.put.as_mut(),
        "delete" => item.delete.as_mut(),
        "patch" => item.patch.as_mut(),
        _ => None,
    }
}

/// Documents `status` with a `{"detail"}` body: 422 only where the handler has not described
/// its own validation; the other shared answers are this function's alone.
fn answer(operation: &mut Operation, status: &str, description: &str, schema: &str) {
    let responses = &mut operation.responses.responses;
    if status == "422" && responses.contains_key(status) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build();
    responses.insert(status.to_owned(), RefOr::T(response));
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
