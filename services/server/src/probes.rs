//! HTTP probes and the answers for paths and methods that do not exist.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::rest::RestError;
use keyhouse_domain::db;

pub fn router(db: DatabaseConnection) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "alive" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(crate::metrics::render))
        .with_state(db)
}

/// Ready when the database answers and its schema is the one this build expects. Anyone may
/// ask, so the answer is only ready or not: why not (which database, which migration) goes to
/// the log.
async fn ready(State(db): State<DatabaseConnection>) -> Response {
    // Behind the breaker, so that during an outage the answer is at once, not after the pool's
    // acquire timeout (longer than a probe's usual timeout).
    let check = db::guarded(&db, async {
        db.ping().await.map_err(keyhouse_domain::Error::from)?;
        db::ensure_schema_current(&db).await
    });
    match check.await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(reason = %format!("{:#}", anyhow::Error::new(e)), "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready" })),
            )
                .into_response()
        }
    }
}

pub async fn not_found() -> RestError {
    RestError::detail(StatusCode::NOT_FOUND, "Not Found")
}

pub async fn method_not_allowed() -> RestError {
    RestError::detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}
