//! The Ops-Center REST paths for user API keys (`/api/v1/account/uc-api-keys`). Each handler
//! turns JSON into the gRPC request, calls the same method gRPC clients call, and turns the
//! answer back into the JSON the Ops-Center front end reads.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyhouse_core::rest::{
    self, ErrorBody, JsonBody, OptionalJsonBody, RestError, ValidationErrorBody, grpc_request,
};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::UserKeyService;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::UserKeyGrpc;

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
        .with_state(service)
}

#[derive(OpenApi)]
#[openapi(
    paths(create_key, list_keys, get_key, revoke_key, regenerate_key),
    components(schemas(CreateKeyBody, RegenerateKeyBody, IssuedKeyJson, ApiKeyJson, RevokedJson, ErrorBody, ValidationErrorBody)),
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
        }
    }
}

/// Create an API key; the response holds the full key, once.
#[utoipa::path(post, path = "/api/v1/account/uc-api-keys", tag = "user-keys", request_body = CreateKeyBody,
    responses((status = 201, description = "Created: the only time the full key is shown", body = IssuedKeyJson), (status = 401, description = "Not authenticated or invalid session", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn create_key(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Result<Response, RestError> {
    let req = pb::CreateKeyRequest {
        name: body.name,
        expires_in_days: body.expires_in_days,
        permissions: body.permissions.unwrap_or_default(),
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
    responses((status = 200, description = "OK", body = Vec<ApiKeyJson>, headers(("X-Next-Page-Token" = String, description = "absent on the last page"))),
              (status = 401, description = "Not authenticated or invalid session", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn list_keys(
    State(svc): State<UserKeyGrpc>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let req = pb::ListKeysRequest {
        page_size: rest::query_int(query.get("page_size"), "page_size")?,
        page_token: query.get("page_token").cloned().unwrap_or_default(),
        status: query.get("status").cloned().unwrap_or_default(),
    };
    let page = svc
        .list_keys(grpc_request(&headers, req))
        .await?
        .into_inner();
    let keys: Vec<ApiKeyJson> = page.keys.into_iter().map(Into::into).collect();
    let mut response = Json(keys).into_response();
    if let Ok(next) = HeaderValue::from_str(&page.next_page_token)
        && !page.next_page_token.is_empty()
    {
        response.headers_mut().insert("x-next-page-token", next);
    }
    Ok(response)
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
        .await?
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
        .await?
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
    responses((status = 200, description = "OK", body = IssuedKeyJson), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
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
        .await?
        .into_inner();
    Ok(Json(key.into()))
}
