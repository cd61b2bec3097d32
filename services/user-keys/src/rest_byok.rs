//! The Ops-Center BYOK REST paths (`/api/v1/byok`), as its front end calls them. Each handler
//! translates and calls the gRPC method.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::UserKeyService;
use keyhouse_server::rest::{
    self, ErrorBody, JsonBody, Path, Places, RestError, ValidationErrorBody, grpc_request,
};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::UserKeyGrpc;

/// The provider named in the path, for a 422's `loc`.
const PROVIDER_PATH: Places = Places {
    path: &["provider"],
    query: &[],
};

/// The REST path of each BYOK RPC, as (RPC method, HTTP method, path); see `rest::ROUTES`.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("ListProviders", "get", "/api/v1/byok/providers"),
    ("ListProviderKeys", "get", "/api/v1/byok/keys"),
    ("PutProviderKey", "post", "/api/v1/byok/keys/add"),
    (
        "TestProviderKey",
        "post",
        "/api/v1/byok/keys/test/{provider}",
    ),
    (
        "DeleteProviderKey",
        "delete",
        "/api/v1/byok/keys/{provider}",
    ),
];

pub fn router(service: UserKeyGrpc) -> Router {
    Router::new()
        .route("/api/v1/byok/providers", get(providers))
        .route("/api/v1/byok/keys", get(keys))
        .route("/api/v1/byok/keys/add", post(add))
        .route("/api/v1/byok/keys/test/{provider}", post(test))
        .route("/api/v1/byok/keys/{provider}", delete(remove))
        .route("/api/v1/byok/stats", get(stats))
        .with_state(service)
}

#[derive(OpenApi)]
#[openapi(
    paths(providers, keys, add, test, remove, stats),
    components(schemas(ProviderJson, ProviderKeyJson, AddBody, AddedJson, ProviderKeyTestedJson, ProviderKeyDeletedJson, StatsJson, ErrorBody, ValidationErrorBody)),
    tags((name = "byok", description = "Users' own provider keys"))
)]
pub struct Docs;

#[derive(Serialize, ToSchema)]
pub struct ProviderJson {
    pub id: String,
    pub name: String,
    pub key_format: String,
    pub configured: bool,
    pub requires_endpoint: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderKeyJson {
    pub provider: String,
    pub provider_name: String,
    pub key_preview: String,
    pub label: Option<String>,
    pub added_date: Option<String>,
    pub last_tested: Option<String>,
    /// `valid`, `invalid`, `error` or `unknown`.
    pub test_status: String,
    /// Whether the owner opted in to scheduled health checks.
    pub health_checks: bool,
    /// `healthy`, `unhealthy` or `unknown` (never tested since stored).
    pub health_status: String,
    pub last_latency_ms: Option<i64>,
    /// Why the last test failed: `auth`, `network`, `refused`, `timeout`, `server` or `http`.
    pub health_error: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct AddBody {
    pub provider: String,
    /// The provider key: at least 10 characters and at most 1024 bytes (1 KiB), in the
    /// provider's format.
    #[schema(max_length = 1024)]
    pub key: String,
    pub label: Option<String>,
    /// Required for ollama and custom, refused for every other provider: an http(s) URL with no
    /// credentials, query or fragment whose host is public, unless an operator allows its
    /// network (`KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS`).
    pub endpoint: Option<String>,
    /// Test the key on keyhouse's schedule and keep its health; off for a new key when absent,
    /// a replaced key keeps its setting.
    pub health_checks: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct AddedJson {
    pub message: String,
    pub provider: String,
    pub provider_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderKeyTestedJson {
    pub provider: String,
    /// `valid`, `invalid` or `error`.
    pub status: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// Ops-Center's BYOK statistics of the signed-in user.
#[derive(Serialize, ToSchema)]
pub struct StatsJson {
    /// Every provider a user may bring a key for.
    pub total_providers: usize,
    /// The providers the user holds a key for.
    pub configured_providers: usize,
    /// Those of the user's keys that have been tested.
    pub tested_providers: usize,
    /// Those whose last test found the key valid.
    pub valid_providers: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderKeyDeletedJson {
    pub success: bool,
    pub message: String,
}

/// The providers, each marked `configured` for the caller.
#[utoipa::path(get, path = "/api/v1/byok/providers", tag = "byok", operation_id = "byok_list_providers",
    responses((status = 200, description = "OK", body = Vec<ProviderJson>)))]
async fn providers(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<Vec<ProviderJson>>, RestError> {
    let out = svc
        .list_providers(grpc_request(&headers, pb::ListProvidersRequest {}))
        .await?
        .into_inner();
    Ok(Json(
        out.providers
            .into_iter()
            .map(|p| ProviderJson {
                id: p.id,
                name: p.name,
                key_format: p.key_format,
                configured: p.configured,
                requires_endpoint: p.requires_endpoint,
            })
            .collect(),
    ))
}

/// The caller's provider keys, masked.
#[utoipa::path(get, path = "/api/v1/byok/keys", tag = "byok", operation_id = "byok_list_keys",
    responses((status = 200, description = "OK", body = Vec<ProviderKeyJson>)))]
async fn keys(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<Vec<ProviderKeyJson>>, RestError> {
    let out = svc
        .list_provider_keys(grpc_request(&headers, pb::ListProviderKeysRequest {}))
        .await?
        .into_inner();
    Ok(Json(
        out.keys
            .into_iter()
            .map(|k| ProviderKeyJson {
                added_date: rest::rfc3339_opt(k.added_at.as_ref()),
                last_tested: rest::rfc3339_opt(k.last_tested.as_ref()),
                label: (!k.label.is_empty()).then_some(k.label),
                provider: k.provider,
                provider_name: k.provider_name,
                key_preview: k.key_preview,
                test_status: k.test_status,
                last_latency_ms: k.last_tested.is_some().then_some(k.last_latency_ms),
                health_error: (!k.health_error.is_empty()).then_some(k.health_error),
                health_checks: k.health_checks,
                health_status: k.health_status,
            })
            .collect(),
    ))
}

/// Store (or replace) the caller's key for a provider.
#[utoipa::path(post, path = "/api/v1/byok/keys/add", tag = "byok", operation_id = "byok_add_key", request_body = AddBody,
    responses((status = 200, description = "OK", body = AddedJson), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn add(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AddBody>,
) -> Result<Json<AddedJson>, RestError> {
    let req = pb::PutProviderKeyRequest {
        provider: body.provider,
        key: body.key,
        label: body.label.unwrap_or_default(),
        endpoint: body.endpoint.unwrap_or_default(),
        health_checks: body.health_checks,
    };
    let out = svc
        .put_provider_key(grpc_request(&headers, req))
        .await?
        .into_inner();
    Ok(Json(AddedJson {
        message: out.message,
        provider: out.provider,
        provider_name: out.provider_name,
    }))
}

/// Test the caller's key against the provider (15 s timeout); the result is stored.
///
/// An endpoint or provider URL the outbound guard refuses is the result `error` with the
/// reason; nothing is sent.
#[utoipa::path(post, path = "/api/v1/byok/keys/test/{provider}", tag = "byok", operation_id = "byok_test_key", params(("provider" = String, Path)),
    responses((status = 200, description = "OK", body = ProviderKeyTestedJson), (status = 404, description = "Not found", body = ErrorBody)))]
async fn test(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(provider): Path<String>,
) -> Result<Json<ProviderKeyTestedJson>, RestError> {
    let out = svc
        .test_provider_key(grpc_request(
            &headers,
            pb::TestProviderKeyRequest { provider },
        ))
        .await
        .map_err(|s| PROVIDER_PATH.error(s))?
        .into_inner();
    Ok(Json(ProviderKeyTestedJson {
        details: serde_json::json!({ "status_code": out.status_code, "latency_ms": out.latency_ms }),
        provider: out.provider,
        status: out.status,
        message: out.message,
    }))
}

/// Delete the caller's key for a provider.
#[utoipa::path(delete, path = "/api/v1/byok/keys/{provider}", tag = "byok", operation_id = "byok_delete_key", params(("provider" = String, Path)),
    responses((status = 200, description = "OK", body = ProviderKeyDeletedJson), (status = 404, description = "Not found", body = ErrorBody)))]
async fn remove(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(provider): Path<String>,
) -> Result<Json<ProviderKeyDeletedJson>, RestError> {
    let out = svc
        .delete_provider_key(grpc_request(
            &headers,
            pb::DeleteProviderKeyRequest { provider },
        ))
        .await
        .map_err(|s| PROVIDER_PATH.error(s))?
        .into_inner();
    Ok(Json(ProviderKeyDeletedJson {
        success: out.success,
        message: out.message,
    }))
}

/// The caller's BYOK statistics, in Ops-Center's shape: from ListProviders and ListProviderKeys.
#[utoipa::path(get, path = "/api/v1/byok/stats", tag = "byok", operation_id = "byok_stats",
    responses((status = 200, description = "OK", body = StatsJson)))]
async fn stats(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<StatsJson>, RestError> {
    let providers = svc
        .list_providers(grpc_request(&headers, pb::ListProvidersRequest {}))
        .await?
        .into_inner()
        .providers;
    let keys = svc
        .list_provider_keys(grpc_request(&headers, pb::ListProviderKeysRequest {}))
        .await?
        .into_inner()
        .keys;
    Ok(Json(StatsJson {
        total_providers: providers.len(),
        configured_providers: keys.len(),
        tested_providers: keys.iter().filter(|k| k.last_tested.is_some()).count(),
        valid_providers: keys.iter().filter(|k| k.test_status == "valid").count(),
    }))
}
