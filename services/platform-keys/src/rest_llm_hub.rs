//! The LLM Hub's provider-key paths (`/api/v1/llm/providers`), drop-in for Ops-Center's
//! `provider_keys_api.py`. An LLM Hub provider key is the platform key of the same provider: the
//! handlers translate and call PlatformKeyService, so a key saved here is a new platform-key
//! version (audited, versioned, watched) and never a second copy.
//!
//! The providers are the catalog's platform keys that have a live test (the provisioning key and
//! the LiteLLM master key are not LLM providers). Ops-Center also lists `cohere`, `mistral` and
//! `custom`, which keyhouse keeps no platform key for: those types are refused as unknown.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use keyhouse_domain::providers::{Auth, Provider, catalog};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_server::PlatformKeyService;
use keyhouse_server::rest::{
    self, ErrorBody, JsonBody, Path, Places, RestError, ValidationErrorBody, grpc_request,
};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::PlatformKeyGrpc;

/// The REST path of each RPC here, as (RPC method, HTTP method, path); see `rest::ROUTES`.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("ListPlatformKeys", "get", "/api/v1/llm/providers/keys"),
    ("UpdatePlatformKey", "post", "/api/v1/llm/providers/keys"),
    ("TestPlatformKey", "post", "/api/v1/llm/providers/keys/test"),
    (
        "DeletePlatformKey",
        "delete",
        "/api/v1/llm/providers/keys/{provider_id}",
    ),
    ("ListPlatformKeys", "get", "/api/v1/llm/providers/info"),
];

/// The namespace of the providers' ids: `id` is the UUIDv5 of the provider type under it, the
/// same on every replica and across restarts.
const PROVIDER_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_8d4a_4f0b_9e57_2a61_c0d8_e934);

/// A name no catalog entry has. A type that is not an LLM provider is sent as this, so that the
/// service still checks the caller first (403 before 400) and then answers NOT_FOUND.
const NO_PROVIDER: &str = "-";

pub fn router(service: PlatformKeyGrpc) -> Router {
    Router::new()
        .route(
            "/api/v1/llm/providers/keys",
            get(list_llm_provider_keys).post(save_llm_provider_key),
        )
        .route(
            "/api/v1/llm/providers/keys/test",
            post(test_llm_provider_key),
        )
        .route(
            "/api/v1/llm/providers/keys/{provider_id}",
            delete(delete_llm_provider_key),
        )
        .route("/api/v1/llm/providers/info", get(llm_provider_info))
        .with_state(service)
}

#[derive(OpenApi)]
#[openapi(
    paths(list_llm_provider_keys, save_llm_provider_key, test_llm_provider_key, delete_llm_provider_key, llm_provider_info),
    components(schemas(LlmProviderJson, LlmProviderList, SaveBody, SavedJson, TestBody, TestedJson,
        DeletedJson, ProviderInfoJson, ProviderInfoList, ErrorBody, ValidationErrorBody)),
    tags((name = "llm-hub", description = "The LLM Hub's provider keys: the platform keys of the LLM providers (admins only)"))
)]
pub struct Docs;

/// The LLM providers, in catalog order.
pub fn providers() -> impl Iterator<Item = &'static Provider> {
    catalog::platform().filter(|p| p.live_test.is_some())
}

/// The stable id of a provider type.
pub fn provider_id(provider_type: &str) -> Uuid {
    Uuid::new_v5(&PROVIDER_NAMESPACE, provider_type.as_bytes())
}

fn llm(provider_type: &str) -> Option<&'static Provider> {
    providers().find(|p| p.id == provider_type.trim())
}

fn invalid_type() -> RestError {
    let known: Vec<_> = providers().map(|p| p.id).collect();
    RestError::detail(
        StatusCode::BAD_REQUEST,
        format!("Invalid provider type. Supported: {}", known.join(", ")),
    )
}

#[derive(Serialize, ToSchema)]
pub struct LlmProviderJson {
    /// Stable: the UUIDv5 of `provider_type`.
    pub id: String,
    /// The display name.
    pub name: String,
    pub provider_type: String,
    pub has_key: bool,
    /// `database`, `environment` or `not_set`.
    pub key_source: String,
    /// Always true.
    pub enabled: bool,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health_status: String,
    pub last_tested: Option<String>,
    /// `success` or `failed` (the last test), null when never tested.
    pub test_status: Option<String>,
    pub key_preview: Option<String>,
    /// Always `{}`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct LlmProviderList {
    pub success: bool,
    /// Those with a key first.
    pub providers: Vec<LlmProviderJson>,
    pub total: usize,
}

#[derive(Deserialize, ToSchema)]
pub struct SaveBody {
    pub provider_type: String,
    /// At least 10 characters and at most 1024 bytes (1 KiB), in the provider's format.
    #[schema(max_length = 1024)]
    pub api_key: String,
    /// Accepted and ignored: the display name is the catalog's.
    #[serde(default)]
    pub name: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct SavedJson {
    pub success: bool,
    pub provider_id: String,
    pub name: String,
    pub provider_type: String,
    pub has_key: bool,
    pub enabled: bool,
    /// Always null: test with `POST /api/v1/llm/providers/keys/test`.
    #[schema(value_type = Option<Object>)]
    pub test_result: Option<serde_json::Value>,
    pub message: String,
}

#[derive(Deserialize, ToSchema)]
pub struct TestBody {
    pub provider_type: String,
    /// A value to test instead of the stored (or environment) one: tested, never stored.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub api_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TestedJson {
    pub success: bool,
    pub latency_ms: i64,
    /// Always null: keyhouse does not count the provider's models.
    pub models_found: Option<i64>,
    /// Why the test failed; null on success.
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedJson {
    pub success: bool,
    pub provider_id: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderInfoJson {
    pub provider_type: String,
    pub display_name: String,
    pub description: String,
    pub key_format: String,
    pub supports_test: bool,
    /// `bearer` (`Authorization: Bearer`) or `header` (the key in a provider-specific header).
    pub auth_type: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderInfoList {
    pub success: bool,
    pub providers: Vec<ProviderInfoJson>,
    pub total: usize,
}

async fn platform_keys(
    svc: &PlatformKeyGrpc,
    headers: &HeaderMap,
) -> Result<Vec<pb::PlatformKey>, RestError> {
    Ok(svc
        .list_platform_keys(grpc_request(headers, pb::ListPlatformKeysRequest {}))
        .await?
        .into_inner()
        .keys)
}

/// Every LLM provider, those with a key first.
#[utoipa::path(get, path = "/api/v1/llm/providers/keys", tag = "llm-hub",
    responses((status = 200, description = "OK", body = LlmProviderList)))]
async fn list_llm_provider_keys(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<LlmProviderList>, RestError> {
    let mut providers: Vec<LlmProviderJson> = platform_keys(&svc, &headers)
        .await?
        .into_iter()
        .filter(|k| llm(&k.name).is_some())
        .map(|k| LlmProviderJson {
            id: provider_id(&k.name).to_string(),
            name: k.display_name,
            has_key: k.has_key,
            key_source: k.source,
            enabled: true,
            test_status: match k.health_status.as_str() {
                "healthy" => Some("success".to_owned()),
                "unhealthy" => Some("failed".to_owned()),
                _ => None,
            },
            health_status: k.health_status,
            last_tested: rest::rfc3339_opt(k.last_tested.as_ref()),
            key_preview: (!k.key_preview.is_empty()).then_some(k.key_preview),
            config: serde_json::json!({}),
            provider_type: k.name,
        })
        .collect();
    providers.sort_by_key(|p| !p.has_key);
    Ok(Json(LlmProviderList {
        success: true,
        total: providers.len(),
        providers,
    }))
}

/// Save a provider's key: a new version of its platform key, audited.
#[utoipa::path(post, path = "/api/v1/llm/providers/keys", tag = "llm-hub", request_body = SaveBody,
    responses((status = 200, description = "OK", body = SavedJson), (status = 400, description = "Not an LLM provider", body = ErrorBody),
        (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn save_llm_provider_key(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SaveBody>,
) -> Result<Json<SavedJson>, RestError> {
    let spec = llm(&body.provider_type);
    let req = pb::UpdatePlatformKeyRequest {
        name: spec.map_or(NO_PROVIDER, |p| p.id).to_owned(),
        api_key: body.api_key,
    };
    svc.update_platform_key(grpc_request(&headers, req))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => invalid_type(),
            _ => Places::BODY.error(s),
        })?;
    let spec = spec.ok_or_else(invalid_type)?;
    Ok(Json(SavedJson {
        success: true,
        provider_id: provider_id(spec.id).to_string(),
        name: spec.display_name.to_owned(),
        provider_type: spec.id.to_owned(),
        has_key: true,
        enabled: true,
        test_result: None,
        message: "API key saved successfully".to_owned(),
    }))
}

/// Test a provider's key against the provider: the stored (or environment) key, or the
/// `api_key` given, which is tested and never stored. A failed test is `success: false`.
///
/// At most 10 tests a minute for each admin, counted by each replica in memory.
#[utoipa::path(post, path = "/api/v1/llm/providers/keys/test", tag = "llm-hub", request_body = TestBody,
    responses((status = 200, description = "OK (also when the test failed)", body = TestedJson),
        (status = 400, description = "Not an LLM provider, or no key configured", body = ErrorBody),
        (status = 422, description = "Validation error naming the field", body = ValidationErrorBody),
        (status = 429, description = "More than 10 tests in a minute", body = ErrorBody)))]
async fn test_llm_provider_key(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TestBody>,
) -> Result<Json<TestedJson>, RestError> {
    let spec = llm(&body.provider_type);
    let req = pb::TestPlatformKeyRequest {
        name: spec.map_or(NO_PROVIDER, |p| p.id).to_owned(),
        api_key: body.api_key,
    };
    let out = svc
        .test_platform_key(grpc_request(&headers, req))
        .await
        .map_err(|s| match (s.code(), spec) {
            (tonic::Code::NotFound, None) => invalid_type(),
            (tonic::Code::NotFound, Some(p)) => RestError::detail(
                StatusCode::BAD_REQUEST,
                format!("No API key configured for provider: {}", p.id),
            ),
            _ => Places::BODY.error(s),
        })?
        .into_inner();
    Ok(Json(TestedJson {
        success: out.ok,
        latency_ms: out.latency_ms,
        models_found: None,
        error: (!out.ok).then_some(out.detail),
    }))
}

/// Delete a provider's stored key; its environment variable applies again, if set.
#[utoipa::path(delete, path = "/api/v1/llm/providers/keys/{provider_id}", tag = "llm-hub",
    params(("provider_id" = String, Path, description = "the provider's `id` from the list")),
    responses((status = 200, description = "OK", body = DeletedJson), (status = 404, description = "Provider not found, or no stored key", body = ErrorBody)))]
async fn delete_llm_provider_key(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeletedJson>, RestError> {
    let spec = providers().find(|p| provider_id(p.id).to_string() == id.trim().to_lowercase());
    let req = pb::DeletePlatformKeyRequest {
        name: spec.map_or(NO_PROVIDER, |p| p.id).to_owned(),
    };
    let places = Places {
        path: &["name"],
        query: &[],
    };
    svc.delete_platform_key(grpc_request(&headers, req))
        .await
        .map_err(|s| match (s.code(), spec) {
            (tonic::Code::NotFound, None) => {
                RestError::detail(StatusCode::NOT_FOUND, "Provider not found")
            }
            _ => places.error(s),
        })?;
    Ok(Json(DeletedJson {
        success: true,
        provider_id: id,
        message:
            "API key deleted successfully (will fall back to environment variable if configured)"
                .to_owned(),
    }))
}

/// What each LLM provider is and how its key is tested.
#[utoipa::path(get, path = "/api/v1/llm/providers/info", tag = "llm-hub",
    responses((status = 200, description = "OK", body = ProviderInfoList)))]
async fn llm_provider_info(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<ProviderInfoList>, RestError> {
    let providers: Vec<ProviderInfoJson> = platform_keys(&svc, &headers)
        .await?
        .into_iter()
        .filter_map(|k| {
            let spec = llm(&k.name)?;
            let live = spec.live_test.as_ref()?;
            Some(ProviderInfoJson {
                provider_type: k.name,
                display_name: k.display_name,
                description: k.description,
                key_format: k.key_format,
                supports_test: true,
                auth_type: match live.auth {
                    Auth::Bearer => "bearer",
                    Auth::Header(_) => "header",
                }
                .to_owned(),
            })
        })
        .collect();
    Ok(Json(ProviderInfoList {
        success: true,
        total: providers.len(),
        providers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llm_providers_are_the_platform_keys_with_a_live_test() {
        let ids: Vec<_> = providers().map(|p| p.id).collect();
        assert!(ids.contains(&"openai") && ids.contains(&"openrouter"));
        assert!(!ids.contains(&"provisioning") && !ids.contains(&"litellm"));
        assert!(llm(NO_PROVIDER).is_none() && catalog::find(NO_PROVIDER).is_none());
    }

    #[test]
    fn provider_ids_are_stable_and_distinct() {
        assert_eq!(provider_id("openai"), provider_id("openai"));
        assert_eq!(provider_id("openai").get_version_num(), 5);
        assert_ne!(provider_id("openai"), provider_id("anthropic"));
    }
}
