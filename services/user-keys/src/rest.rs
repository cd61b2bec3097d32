//! The Ops-Center REST paths for user API keys (`/api/v1/account/uc-api-keys`). Each handler
//! turns JSON into the gRPC request, calls the same method gRPC clients call, and turns the
//! answer back into the JSON the Ops-Center front end reads.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::UserKeyService;
use keyhouse_server::rest::{
    self, ErrorBody, JsonBody, OptionalJsonBody, Path, Places, Query, RestError,
    ValidationErrorBody, grpc_request,
};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::UserKeyGrpc;

/// The REST path of each RPC here, as (RPC method, HTTP method, path): checked against the
/// OpenAPI document and the Helm chart's ingress, so that no RPC is half-added.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("CreateKey", "post", "/api/v1/account/uc-api-keys"),
    ("ListKeys", "get", "/api/v1/account/uc-api-keys"),
    ("GetKey", "get", "/api/v1/account/uc-api-keys/{key_id}"),
    (
        "RevokeKey",
        "delete",
        "/api/v1/account/uc-api-keys/{key_id}",
    ),
    (
        "RegenerateKey",
        "post",
        "/api/v1/account/uc-api-keys/{key_id}/regenerate",
    ),
    (
        "GetKeyUsage",
        "get",
        "/api/v1/account/uc-api-keys/{key_id}/usage",
    ),
    ("VerifyKey", "post", "/api/v1/auth/validate-key"),
];

pub fn router(service: UserKeyGrpc) -> Router {
    Router::new()
        .route(
            "/api/v1/account/uc-api-keys",
            post(create_key).get(list_keys),
        )
        .route(
            "/api/v1/account/uc-api-keys/{key_id}",
            get(get_key).delete(revoke_key),
        )
        .route(
            "/api/v1/account/uc-api-keys/{key_id}/regenerate",
            post(regenerate_key),
        )
        .route("/api/v1/account/uc-api-keys/{key_id}/usage", get(key_usage))
        .route("/api/v1/auth/validate-key", post(validate_key))
        .with_state(service)
}

#[derive(OpenApi)]
#[openapi(
        paths(create_key, list_keys, get_key, revoke_key, regenerate_key, key_usage, validate_key),
    components(schemas(CreateKeyBody, RegenerateKeyBody, IssuedKeyJson, ApiKeyJson, RevokedJson, UsageJson, HourJson, ValidateKeyBody, ValidatedJson, KeyOwnerJson, RateLimitJson, ErrorBody, ValidationErrorBody)),
    tags((name = "user-keys", description = "The caller's API keys for the gateway"))
)]
pub struct Docs;

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateKeyBody {
    /// A label for the key, 1-255 characters after trimming.
    pub name: String,
    /// Days until expiry, 1-3650; 90 when omitted.
    pub expires_in_days: Option<i32>,
    /// Scopes to grant; `["llm:inference", "llm:models"]` when omitted or empty.
    pub permissions: Option<Vec<String>>,
    /// Requests per minute allowed, 1-1000000; unlimited when omitted.
    pub rate_limit_per_minute: Option<i32>,
    /// CIDRs (or addresses) the key may be used from; anywhere when omitted or empty.
    pub allowed_ips: Option<Vec<String>>,
}

/// Where a key path's request fields come from, for a 422's `loc`.
const KEY_PATH: Places = Places {
    path: &["key_id"],
    query: &[],
};

#[derive(Default, Deserialize)]
#[serde(default)]
struct ListQuery {
    status: String,
    page_size: Option<String>,
    page_token: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RegenerateKeyBody {
    /// Days until the new secret expires, 1-3650; 90 when omitted.
    pub expires_in_days: Option<i32>,
}

/// A new key: the only response that ever holds `api_key`.
#[derive(Serialize, ToSchema)]
pub struct IssuedKeyJson {
    pub key_id: String,
    /// The full key, shown this once.
    pub api_key: String,
    pub key_name: String,
    pub key_preview: String,
    pub permissions: Vec<String>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub warning: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyJson {
    pub key_id: String,
    pub key_name: String,
    pub key_preview: String,
    pub permissions: Vec<String>,
    pub created_at: Option<String>,
    pub last_used: Option<String>,
    pub expires_at: Option<String>,
    pub is_active: bool,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    pub rate_limit_per_minute: Option<i32>,
    pub allowed_ips: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HourJson {
    pub hour: Option<String>,
    pub requests: i64,
}

#[derive(Serialize, ToSchema)]
pub struct UsageJson {
    pub key_id: String,
    pub total_requests: i64,
    pub hours: Vec<HourJson>,
    pub last_used: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct ValidateKeyBody {
    pub api_key: String,
    /// The address the key was presented from. A key limited to IP networks is valid only with
    /// one inside them; without it the answer is `valid: false`, reason `IP_NOT_ALLOWED`.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// Scopes the request needs; the key must hold every one, or the answer is `valid: false`,
    /// reason `INSUFFICIENT_SCOPE`. At most 64; none when omitted.
    #[serde(default)]
    pub required_scopes: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyOwnerJson {
    /// The key's owner.
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<String>,
}

/// `{"valid": false, "reason": ...}` or `{"valid": true, "user": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct ValidatedJson {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<KeyOwnerJson>,
    /// For a key with a rate limit, once it got past the other checks (valid, or `RATE_LIMITED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitJson>,
}

/// A rate-limited key's window: requests allowed per minute, left in this minute, and when the
/// window resets (RFC 3339).
#[derive(Serialize, ToSchema)]
pub struct RateLimitJson {
    pub limit: i32,
    pub remaining: i32,
    pub reset_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedJson {
    pub success: bool,
    pub message: String,
    pub key_id: String,
}

impl From<pb::IssuedKey> for IssuedKeyJson {
    fn from(k: pb::IssuedKey) -> Self {
        Self {
            created_at: rest::rfc3339_opt(k.created_at.as_ref()),
            expires_at: rest::rfc3339_opt(k.expires_at.as_ref()),
            key_id: k.key_id,
            api_key: k.api_key,
            key_name: k.key_name,
            key_preview: k.key_preview,
            permissions: k.permissions,
            warning: k.warning,
        }
    }
}

impl From<pb::ApiKey> for ApiKeyJson {
    fn from(k: pb::ApiKey) -> Self {
        Self {
            created_at: rest::rfc3339_opt(k.created_at.as_ref()),
            last_used: rest::rfc3339_opt(k.last_used.as_ref()),
            expires_at: rest::rfc3339_opt(k.expires_at.as_ref()),
            key_id: k.key_id,
            key_name: k.key_name,
            key_preview: k.key_preview,
            permissions: k.permissions,
            is_active: k.is_active,
            status: k.status,
            rate_limit_per_minute: k.rate_limit_per_minute,
            allowed_ips: k.allowed_ips,
        }
    }
}

/// Create an API key; the response holds the full key, once.
#[utoipa::path(post, path = "/api/v1/account/uc-api-keys", tag = "user-keys", request_body = CreateKeyBody,
    responses((status = 201, description = "Created: the only time the full key is shown", body = IssuedKeyJson), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody),
              (status = 429, description = "Over a limit on keys (the message names it)", body = ErrorBody)))]
async fn create_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Result<Response, RestError> {
    let req = pb::CreateKeyRequest {
        name: body.name,
        expires_in_days: body.expires_in_days,
        permissions: body.permissions.unwrap_or_default(),
        rate_limit_per_minute: body.rate_limit_per_minute,
        allowed_ips: body.allowed_ips.unwrap_or_default(),
    };
    let key = svc
        .create_key(grpc_request(&headers, req))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(IssuedKeyJson::from(key))).into_response())
}

/// List the caller's keys, newest first. The next page's token is in `X-Next-Page-Token`.
#[utoipa::path(get, path = "/api/v1/account/uc-api-keys", tag = "user-keys",
    params(("status" = Option<String>, Query, description = "active, expired or revoked"),
           ("page_size" = Option<i32>, Query, description = "1-500, default 50"),
           ("page_token" = Option<String>, Query, description = "from X-Next-Page-Token")),
    responses((status = 200, description = "OK", body = Vec<ApiKeyJson>, headers(("X-Next-Page-Token" = String, description = "absent on the last page"))), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn list_keys(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, RestError> {
    let req = pb::ListKeysRequest {
        page_size: rest::query_int(query.page_size.as_ref(), "page_size")?,
        page_token: query.page_token,
        status: query.status,
    };
    let page = svc
        .list_keys(grpc_request(&headers, req))
        .await
        .map_err(|s| Places::query(&["status", "page_size", "page_token"]).error(s))?
        .into_inner();
    let keys: Vec<ApiKeyJson> = page.keys.into_iter().map(Into::into).collect();
    Ok(rest::page(keys, &page.next_page_token))
}

/// One of the caller's keys.
#[utoipa::path(get, path = "/api/v1/account/uc-api-keys/{key_id}", tag = "user-keys", params(("key_id" = String, Path)),
    responses((status = 200, description = "OK", body = ApiKeyJson), (status = 400, description = "Invalid key_id format", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn get_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Result<Json<ApiKeyJson>, RestError> {
    let key = svc
        .get_key(grpc_request(&headers, pb::GetKeyRequest { key_id }))
        .await
        .map_err(|s| KEY_PATH.error(s))?
        .into_inner();
    Ok(Json(key.into()))
}

/// Revoke a key (idempotent).
#[utoipa::path(delete, path = "/api/v1/account/uc-api-keys/{key_id}", tag = "user-keys", params(("key_id" = String, Path)),
    responses((status = 200, description = "OK", body = RevokedJson), (status = 400, description = "Invalid key_id format", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
async fn revoke_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Result<Json<RevokedJson>, RestError> {
    let out = svc
        .revoke_key(grpc_request(&headers, pb::RevokeKeyRequest { key_id }))
        .await
        .map_err(|s| KEY_PATH.error(s))?
        .into_inner();
    Ok(Json(RevokedJson {
        success: out.success,
        message: out.message,
        key_id: out.key_id,
    }))
}

/// Replace a key's secret; the old one stops working at once.
#[utoipa::path(post, path = "/api/v1/account/uc-api-keys/{key_id}/regenerate", tag = "user-keys", params(("key_id" = String, Path)),
    request_body(content = Option<RegenerateKeyBody>, description = "optional"),
    responses((status = 200, description = "OK", body = IssuedKeyJson), (status = 400, description = "Invalid key_id format", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody), (status = 429, description = "Regenerating an expired key would pass the active-keys limit", body = ErrorBody)))]
async fn regenerate_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<RegenerateKeyBody>,
) -> Result<Json<IssuedKeyJson>, RestError> {
    let req = pb::RegenerateKeyRequest {
        key_id,
        expires_in_days: body.expires_in_days,
    };
    let key = svc
        .regenerate_key(grpc_request(&headers, req))
        .await
        .map_err(|s| KEY_PATH.error(s))?
        .into_inner();
    Ok(Json(key.into()))
}

/// Verification counts of a key per hour (the owner's; admins any key).
#[utoipa::path(get, path = "/api/v1/account/uc-api-keys/{key_id}/usage", tag = "user-keys",
    params(("key_id" = String, Path), ("from" = Option<String>, Query, description = "RFC 3339; default 30 days before `to`"),
           ("to" = Option<String>, Query, description = "RFC 3339; default now")),
    responses((status = 200, description = "OK", body = UsageJson), (status = 400, description = "Invalid key_id format", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
              (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn key_usage(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageJson>, RestError> {
    let req = pb::GetKeyUsageRequest {
        key_id,
        from: rest::query_time(q.from.as_ref(), "from")?,
        to: rest::query_time(q.to.as_ref(), "to")?,
    };
    let places = Places {
        path: &["key_id"],
        query: &["from", "to"],
    };
    let out = svc
        .get_key_usage(grpc_request(&headers, req))
        .await
        .map_err(|s| places.error(s))?
        .into_inner();
    Ok(Json(UsageJson {
        key_id: out.key_id,
        total_requests: out.total_requests,
        hours: out
            .hours
            .into_iter()
            .map(|h| HourJson {
                hour: rest::rfc3339_opt(h.hour.as_ref()),
                requests: h.requests,
            })
            .collect(),
        last_used: rest::rfc3339_opt(out.last_used.as_ref()),
    }))
}

/// Ops-Center's key check: the key is the credential, no session needed.
#[utoipa::path(post, path = "/api/v1/auth/validate-key", tag = "user-keys", request_body = ValidateKeyBody,
    responses((status = 200, description = "OK", body = ValidatedJson), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn validate_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ValidateKeyBody>,
) -> Result<Json<ValidatedJson>, RestError> {
    let req = pb::VerifyKeyRequest {
        api_key: body.api_key,
        required_scopes: body.required_scopes.unwrap_or_default(),
        client_ip: body.client_ip.unwrap_or_default(),
    };
    let out = svc
        .verify_key(grpc_request(&headers, req))
        .await?
        .into_inner();
    let rate_limit = (out.limit > 0).then(|| RateLimitJson {
        limit: out.limit,
        remaining: out.remaining,
        reset_at: rest::rfc3339_opt(out.reset_at.as_ref()),
    });
    if !out.valid {
        return Ok(Json(ValidatedJson {
            valid: false,
            reason: Some(out.reason().as_str_name().to_owned()),
            user: None,
            rate_limit,
        }));
    }
    Ok(Json(ValidatedJson {
        valid: true,
        reason: None,
        rate_limit,
        user: Some(KeyOwnerJson {
            id: out.user_id.clone(),
            expires_at: rest::rfc3339_opt(out.expires_at.as_ref()),
            user_id: out.user_id,
            key_id: out.key_id,
            permissions: out.permissions,
        }),
    }))
}
