//! The embedded deployment: every keyhouse service in one process on one port, migrating its
//! database on start. `main.rs` parses the command line; tests call `serve` directly.

use keyhouse_core::change_feed::ChangeFeed;
use keyhouse_core::config::ServerSettings;
use keyhouse_core::db;
use keyhouse_core::server::{self, Services};
use keyhouse_platform_keys::PlatformKeyGrpc;
use keyhouse_user_keys::UserKeyGrpc;

pub mod duration;
pub mod key_file;

pub async fn serve(
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    settings.keys.validate()?;
    let ring = key_file::key_ring(&settings, true)?;
    let db = db::connect(&settings.database_url).await?;
    let applied = db::migrate(&db).await?;
    if applied > 0 {
        tracing::info!(applied, database = %db::redact_url(&settings.database_url), "database migrated");
    }
    let mut services = Services::new(db.clone());
    let feed = ChangeFeed::start(&db, &settings.database_url).await?;
    let users = UserKeyGrpc::new(db.clone(), &settings, feed.clone(), ring.clone()).await?;
    let verifier = users.verifier();
    users.register(&mut services);
    PlatformKeyGrpc::new(db, ring, &settings, feed)?.register(&mut services);
    let served = server::serve(listener, services, &settings.cors_origins, shutdown).await;
    // Usage counted since the last flush is written before the process ends.
    verifier.flush_usage().await?;
    served
}

/// The OpenAPI document of every REST path `keyhouse serve` answers: what `/openapi.json`
/// serves and `gen/openapi.json` holds.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = server::docs::base_document();
    doc.merge(<keyhouse_user_keys::rest::Docs as utoipa::OpenApi>::openapi());
    doc.merge(<keyhouse_user_keys::rest_byok::Docs as utoipa::OpenApi>::openapi());
    doc.merge(<keyhouse_platform_keys::rest::Docs as utoipa::OpenApi>::openapi());
    doc
}
