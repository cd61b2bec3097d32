//! The Ops-Center REST paths for platform keys (`/api/v1/admin/platform-keys`) and the audit
//! trail (`/api/v1/admin/audit-events`). Each handler translates and calls the gRPC method.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_server::PlatformKeyService;
use keyhouse_server::rest::{
    self, ErrorBody, JsonBody, Path, Places, Query, RestError, ValidationErrorBody, grpc_request,
};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::PlatformKeyGrpc;

/// The REST path of each RPC here, as (RPC method, HTTP method, path): checked against the
/// OpenAPI document and the Helm chart's ingress, so that no RPC is half-added.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("ListPlatformKeys", "get", "/api/v1/admin/platform-keys"),
    (
        "UpdatePlatformKey",
        "put",
        "/api/v1/admin/platform-keys/{name}",
    ),
    (
        "DeletePlatformKey",
        "delete",
        "/api/v1/admin/platform-keys/{name}",
    ),
    (
        "GetDecryptedPlatformKey",
        "get",
        "/api/v1/admin/platform-keys/{name}/decrypted",
    ),
    (
        "ListPlatformKeyVersions",
        "get",
        "/api/v1/admin/platform-keys/{name}/versions",
    ),
    (
        "RollbackPlatformKey",
        "post",
        "/api/v1/admin/platform-keys/{name}/rollback",
    ),
    (
        "TestPlatformKey",
        "post",
        "/api/v1/admin/platform-keys/{name}/test",
    ),
    ("ListAuditEvents", "get", "/api/v1/admin/audit-events"),
    (
        "ListPlatformKeyHealth",
        "get",
        "/api/v1/admin/platform-keys/{name}/health",
    ),
];

pub fn router(service: PlatformKeyGrpc) -> Router {
    Router::new()
        .route("/api/v1/admin/platform-keys", get(list))
        .route(
            "/api/v1/admin/platform-keys/{name}",
            put(update).delete(delete),
        )
        .route(
            "/api/v1/admin/platform-keys/{name}/decrypted",
            get(decrypted),
        )
        .route("/api/v1/admin/platform-keys/{name}/versions", get(versions))
        .route(
            "/api/v1/admin/platform-keys/{name}/rollback",
            post(rollback),
        )
        .route("/api/v1/admin/platform-keys/{name}/test", post(test))
        .route("/api/v1/admin/platform-keys/{name}/health", get(health))
        .route("/api/v1/admin/audit-events", get(audit_events))
        .with_state(service)
}

#[derive(OpenApi)]
#[openapi(
    paths(list, update, delete, decrypted, versions, rollback, test, audit_events, health),
    components(schemas(PlatformKeyJson, PlatformKeyList, UpdateBody, UpdatedJson, PlatformKeyDeletedJson, DecryptedJson,
        VersionJson, VersionList, RollbackBody, PlatformKeyTestedJson, AuditEventJson, HealthCheckJson, ErrorBody, ValidationErrorBody)),
    tags((name = "platform-keys", description = "The platform's provider secrets (admins only)"))
)]
pub struct Docs;

#[derive(Serialize, ToSchema)]
pub struct PlatformKeyJson {
    /// The catalog name, used in paths.
    pub id: String,
    /// The display name.
    pub key_name: String,
    pub description: String,
    pub has_key: bool,
    pub key_preview: Option<String>,
    pub last_updated: Option<String>,
    /// `database`, `environment` or `not_set`.
    pub source: String,
    pub version: i64,
    /// `healthy`, `unhealthy` or `unknown` (never tested, or no value).
    pub health_status: String,
    pub last_tested: Option<String>,
    pub last_latency_ms: Option<i64>,
    /// Why the last test failed: `auth`, `network`, `refused`, `timeout`, `server` or `http`.
    pub health_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HealthCheckJson {
    pub tested_at: Option<String>,
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub latency_ms: i64,
    /// The provider's HTTP status; null when it did not answer.
    pub status_code: Option<i32>,
    /// `auth`, `network`, `refused`, `timeout`, `server` or `http`; null when healthy.
    pub error_class: Option<String>,
    /// `schedule` or `manual`.
    pub trigger: String,
}

#[derive(Serialize, ToSchema)]
pub struct PlatformKeyList {
    pub keys: Vec<PlatformKeyJson>,
    pub total: usize,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateBody {
    /// At least 10 characters and at most 1024 bytes (1 KiB), in the catalog's format.
    #[schema(max_length = 1024)]
    pub api_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct UpdatedJson {
    pub success: bool,
    pub message: String,
    pub key_preview: String,
    pub version: i64,
    pub next_steps: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PlatformKeyDeletedJson {
    pub success: bool,
    pub message: String,
    pub source: String,
}

#[derive(Serialize, ToSchema)]
pub struct DecryptedJson {
    pub api_key: String,
    pub source: String,
    pub warning: String,
}

#[derive(Serialize, ToSchema)]
pub struct VersionJson {
    pub version: i64,
    pub key_preview: String,
    pub created_by: String,
    pub created_at: Option<String>,
    pub is_current: bool,
    pub rolled_back_from: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<VersionJson>,
}

#[derive(Deserialize, ToSchema)]
pub struct RollbackBody {
    pub version: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PlatformKeyTestedJson {
    pub ok: bool,
    pub status_code: i32,
    pub latency_ms: i64,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventJson {
    pub id: String,
    pub occurred_at: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The `uc_` key that authenticated the call, when a key (not a session) did.
    pub via_key_id: Option<String>,
    /// Where the actor's identity came from: `session`, `ops_center_session`, `oidc`,
    /// `service_token`, `api_key` or `system` (keyhouse's background work); null on events
    /// recorded before keyhouse kept it.
    pub identity_source: Option<String>,
}

/// The platform key named in the path, for a 422's `loc`.
const NAME_PATH: Places = Places {
    path: &["name"],
    query: &[],
};

#[derive(Default, Deserialize)]
#[serde(default)]
struct ReasonQuery {
    reason: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PageQuery {
    page_size: Option<String>,
    page_token: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuditQuery {
    actor: String,
    action: String,
    target: String,
    since: Option<String>,
    until: Option<String>,
    page_size: Option<String>,
    page_token: String,
}

fn updated(out: pb::UpdatePlatformKeyResponse) -> Json<UpdatedJson> {
    Json(UpdatedJson {
        success: out.success,
        message: out.message,
        key_preview: out.key_preview,
        version: out.version,
        next_steps: out.next_steps,
    })
}

/// Every catalog key, masked.
#[utoipa::path(get, path = "/api/v1/admin/platform-keys", tag = "platform-keys",
    responses((status = 200, description = "OK", body = PlatformKeyList)))]
async fn list(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
) -> Result<Json<PlatformKeyList>, RestError> {
    let keys = svc
        .list_platform_keys(grpc_request(&headers, pb::ListPlatformKeysRequest {}))
        .await?
        .into_inner()
        .keys;
    let keys: Vec<PlatformKeyJson> = keys
        .into_iter()
        .map(|k| PlatformKeyJson {
            id: k.name,
            key_name: k.display_name,
            description: k.description,
            has_key: k.has_key,
            key_preview: (!k.key_preview.is_empty()).then_some(k.key_preview),
            last_updated: rest::rfc3339_opt(k.last_updated.as_ref()),
            source: k.source,
            version: k.version,
            last_tested: rest::rfc3339_opt(k.last_tested.as_ref()),
            last_latency_ms: k.last_tested.is_some().then_some(k.last_latency_ms),
            health_error: (!k.health_error.is_empty()).then_some(k.health_error),
            health_status: k.health_status,
        })
        .collect();
    Ok(Json(PlatformKeyList {
        total: keys.len(),
        keys,
    }))
}

/// Store a new value (a new version).
#[utoipa::path(put, path = "/api/v1/admin/platform-keys/{name}", tag = "platform-keys", params(("name" = String, Path)), request_body = UpdateBody,
    responses((status = 200, description = "OK", body = UpdatedJson), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn update(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<UpdatedJson>, RestError> {
    let req = pb::UpdatePlatformKeyRequest {
        name,
        api_key: body.api_key,
    };
    Ok(updated(
        svc.update_platform_key(grpc_request(&headers, req))
            .await
            .map_err(|s| NAME_PATH.error(s))?
            .into_inner(),
    ))
}

/// Remove the stored value; the environment value applies again.
#[utoipa::path(delete, path = "/api/v1/admin/platform-keys/{name}", tag = "platform-keys", params(("name" = String, Path)),
    responses((status = 200, description = "OK", body = PlatformKeyDeletedJson), (status = 404, description = "Not found", body = ErrorBody)))]
async fn delete(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PlatformKeyDeletedJson>, RestError> {
    let out = svc
        .delete_platform_key(grpc_request(
            &headers,
            pb::DeletePlatformKeyRequest { name },
        ))
        .await
        .map_err(|s| NAME_PATH.error(s))?
        .into_inner();
    Ok(Json(PlatformKeyDeletedJson {
        success: out.success,
        message: out.message,
        source: out.source,
    }))
}

/// The full secret; the read is audited first.
#[utoipa::path(get, path = "/api/v1/admin/platform-keys/{name}/decrypted", tag = "platform-keys",
    params(("name" = String, Path), ("reason" = Option<String>, Query, description = "recorded in the audit event")),
    responses((status = 200, description = "OK", body = DecryptedJson), (status = 404, description = "Not found", body = ErrorBody)))]
async fn decrypted(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ReasonQuery>,
) -> Result<Json<DecryptedJson>, RestError> {
    let req = pb::GetDecryptedPlatformKeyRequest {
        name,
        reason: q.reason,
    };
    let places = Places {
        path: &["name"],
        query: &["reason"],
    };
    let out = svc
        .get_decrypted_platform_key(grpc_request(&headers, req))
        .await
        .map_err(|s| places.error(s))?
        .into_inner();
    Ok(Json(DecryptedJson {
        api_key: out.api_key,
        source: out.source,
        warning: out.warning,
    }))
}

/// The stored versions, newest first.
#[utoipa::path(get, path = "/api/v1/admin/platform-keys/{name}/versions", tag = "platform-keys", params(("name" = String, Path)),
    responses((status = 200, description = "OK", body = VersionList), (status = 404, description = "Not found", body = ErrorBody)))]
async fn versions(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, RestError> {
    let out = svc
        .list_platform_key_versions(grpc_request(
            &headers,
            pb::ListPlatformKeyVersionsRequest { name },
        ))
        .await
        .map_err(|s| NAME_PATH.error(s))?
        .into_inner();
    let versions = out
        .versions
        .into_iter()
        .map(|v| VersionJson {
            created_at: rest::rfc3339_opt(v.created_at.as_ref()),
            version: v.version,
            key_preview: v.key_preview,
            created_by: v.created_by,
            is_current: v.is_current,
            rolled_back_from: (v.rolled_back_from != 0).then_some(v.rolled_back_from),
        })
        .collect();
    Ok(Json(VersionList { versions }))
}

/// Make an old version current again, as a new version.
#[utoipa::path(post, path = "/api/v1/admin/platform-keys/{name}/rollback", tag = "platform-keys", params(("name" = String, Path)), request_body = RollbackBody,
    responses((status = 200, description = "OK", body = UpdatedJson), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn rollback(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Json<UpdatedJson>, RestError> {
    let req = pb::RollbackPlatformKeyRequest {
        name,
        version: body.version,
    };
    Ok(updated(
        svc.rollback_platform_key(grpc_request(&headers, req))
            .await
            .map_err(|s| NAME_PATH.error(s))?
            .into_inner(),
    ))
}

/// One cheap authenticated request to the provider.
///
/// A provider URL the outbound guard refuses (not public and not in
/// `KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS`) is `ok: false` with the reason; nothing is sent.
#[utoipa::path(post, path = "/api/v1/admin/platform-keys/{name}/test", tag = "platform-keys", params(("name" = String, Path)),
    responses((status = 200, description = "OK", body = PlatformKeyTestedJson), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
async fn test(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<PlatformKeyTestedJson>, RestError> {
    let out = svc
        .test_platform_key(grpc_request(
            &headers,
            pb::TestPlatformKeyRequest {
                name,
                api_key: None,
            },
        ))
        .await
        .map_err(|s| NAME_PATH.error(s))?
        .into_inner();
    Ok(Json(PlatformKeyTestedJson {
        ok: out.ok,
        status_code: out.status_code,
        latency_ms: out.latency_ms,
        detail: out.detail,
    }))
}

/// The audit trail, newest first. The next page's token is in `X-Next-Page-Token`.
#[utoipa::path(get, path = "/api/v1/admin/audit-events", tag = "platform-keys",
    params(("actor" = Option<String>, Query), ("action" = Option<String>, Query), ("target" = Option<String>, Query),
           ("since" = Option<String>, Query, description = "RFC 3339"), ("until" = Option<String>, Query, description = "RFC 3339"),
           ("page_size" = Option<i32>, Query, description = "1-500, default 50"), ("page_token" = Option<String>, Query, description = "from X-Next-Page-Token")),
    responses((status = 200, description = "OK", body = Vec<AuditEventJson>, headers(("X-Next-Page-Token" = String, description = "absent on the last page"))), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn audit_events(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, RestError> {
    let req = pb::ListAuditEventsRequest {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since: rest::query_time(q.since.as_ref(), "since")?,
        until: rest::query_time(q.until.as_ref(), "until")?,
        page_size: rest::query_int(q.page_size.as_ref(), "page_size")?,
        page_token: q.page_token,
    };
    let places = Places::query(&[
        "actor",
        "action",
        "target",
        "since",
        "until",
        "page_size",
        "page_token",
    ]);
    let out = svc
        .list_audit_events(grpc_request(&headers, req))
        .await
        .map_err(|s| places.error(s))?
        .into_inner();
    let events = out
        .events
        .into_iter()
        .map(|e| AuditEventJson {
            occurred_at: rest::rfc3339_opt(e.occurred_at.as_ref()),
            details: serde_json::from_str(&e.details_json).unwrap_or_default(),
            via_key_id: (!e.via_key_id.is_empty()).then_some(e.via_key_id),
            identity_source: (!e.identity_source.is_empty()).then_some(e.identity_source),
            id: e.id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
        })
        .collect();
    Ok(rest::page::<AuditEventJson>(events, &out.next_page_token))
}

/// A key's health checks (scheduled and manual live tests), newest first. The next page's
/// token is in `X-Next-Page-Token`. History never holds the key.
#[utoipa::path(get, path = "/api/v1/admin/platform-keys/{name}/health", tag = "platform-keys",
    params(("name" = String, Path), ("page_size" = Option<i32>, Query, description = "1-500, default 50"), ("page_token" = Option<String>, Query, description = "from X-Next-Page-Token")),
    responses((status = 200, description = "OK", body = Vec<HealthCheckJson>, headers(("X-Next-Page-Token" = String, description = "absent on the last page"))), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "Validation error naming the field", body = ValidationErrorBody)))]
async fn health(
    State(svc): State<PlatformKeyGrpc>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, RestError> {
    let req = pb::ListPlatformKeyHealthRequest {
        name,
        page_size: rest::query_int(q.page_size.as_ref(), "page_size")?,
        page_token: q.page_token,
    };
    let places = Places {
        path: &["name"],
        query: &["page_size", "page_token"],
    };
    let out = svc
        .list_platform_key_health(grpc_request(&headers, req))
        .await
        .map_err(|s| places.error(s))?
        .into_inner();
    let checks = out
        .checks
        .into_iter()
        .map(|c| HealthCheckJson {
            tested_at: rest::rfc3339_opt(c.tested_at.as_ref()),
            status: c.status,
            latency_ms: c.latency_ms,
            status_code: (c.status_code != 0).then_some(c.status_code),
            error_class: (!c.error_class.is_empty()).then_some(c.error_class),
            trigger: c.trigger,
        })
        .collect();
    Ok(rest::page::<HealthCheckJson>(checks, &out.next_page_token))
}
