//! The embedded deployment: every keyhouse service in one process on one port, migrating its
//! database on start. `main.rs` parses the command line; tests call `serve` directly.

pub mod sync_litellm;

use keyhouse_server::ServerSettings;
use keyhouse_server::bootstrap::{self, Deployment, Mount};

/// Every service keyhouse has, in the order they are mounted.
pub const SERVICES: [&dyn Mount; 2] = [
    &keyhouse_user_keys::Service,
    &keyhouse_platform_keys::Service,
];

/// `keyhouse serve`: every service, through the one bootstrap.
pub async fn serve(
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    bootstrap::run(
        settings,
        Deployment::Embedded,
        &SERVICES,
        listener,
        shutdown,
    )
    .await
}

/// The OpenAPI document of every REST path `keyhouse serve` answers: what `/openapi.json`
/// serves and `gen/openapi.json` holds.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = keyhouse_server::docs::base_document();
    doc.merge(keyhouse_user_keys::openapi());
    doc.merge(keyhouse_platform_keys::openapi());
    doc
}
