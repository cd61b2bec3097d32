//! The listener's router: native gRPC, grpc-web and REST on one port, with reflection, health,
//! CORS, metrics, traces, callers' gRPC deadlines and graceful shutdown; `connections` accepts
//! and limits the connections it is served on. `bootstrap::run` serves through `serve`.

use std::future::Future;

use axum::Router;
use axum::response::Response;
use http::{HeaderName, HeaderValue, Method, header};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tower_http::cors::{AllowOrigin, CorsLayer};

use sea_orm::DatabaseConnection;

use crate::{docs, probes};

/// What one binary serves: its gRPC services (with their full names, for health and
/// reflection, and the descriptor sets of those not in keyhouse's own contract), its REST routes
/// and their OpenAPI description. Each service crate adds itself.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub struct Services {
    pub grpc: RoutesBuilder,
    pub names: Vec<&'static str>,
    /// Encoded `FileDescriptorSet`s reflection serves besides keyhouse's own (Envoy's ext_authz).
    pub descriptors: Vec<&'static [u8]>,
    pub rest: Router,
    pub openapi: utoipa::openapi::OpenApi,
    /// Checked by `/readyz`.
    pub db: DatabaseConnection,
    /// Work to finish after the last call has drained (flushing usage counts).
    pub on_shutdown: Vec<BoxFuture<'static, anyhow::Result<()>>>,
    /// Tasks that run while the server serves and end with it (scheduled health checks).
    pub background: Vec<BoxFuture<'static, ()>>,
}

impl Services {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            grpc: RoutesBuilder::default(),
            names: Vec::new(),
            descriptors: Vec::new(),
            rest: Router::new(),
            openapi: docs::base_document(),
            db,
            on_shutdown: Vec::new(),
            background: Vec::new(),
        }
    }

    /// Runs `task` once serving starts, until the server stops.
    pub fn in_background(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push(Box::pin(task));
    }

    /// Runs `work` once the server has stopped taking calls and drained.
    pub fn on_shutdown(&mut self, work: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.on_shutdown.push(Box::pin(work));
    }
}

/// Serves until `shutdown` resolves, then stops taking connections and drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    settings: &crate::ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in &services.names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keyhouse_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for set in &services.descriptors {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in &services.names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let grpc = services
        .grpc
        .routes()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .into_axum_router()
        // Inside grpc-web's translation, so a grpc-web caller's deadline is kept too.
        .layer(axum::middleware::from_fn(crate::deadline::enforce))
        .layer(axum::middleware::from_fn(
            crate::rest::require_csrf_token_grpc,
        ))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(axum::middleware::map_response(no_store));

    let rest = services
        .rest
        .layer(axum::middleware::from_fn(crate::rest::require_csrf_token))
        .layer(axum::middleware::map_response(no_store))
        .merge(docs::router(services.openapi))
        .merge(probes::router(services.db));
    let mut app = rest
        .merge(grpc)
        // The web console's files and pages; unknown API paths answer like the REST API does,
        // not with a gRPC error.
        .fallback(crate::console::fallback)
        .method_not_allowed_fallback(probes::method_not_allowed)
        .layer(axum::middleware::from_fn(crate::metrics::track));
    if crate::telemetry::traces_enabled() {
        app = app.layer(axum::middleware::from_fn(crate::telemetry::trace_request));
    }
    if let Some(cors) = cors_layer(&settings.cors_origins)? {
        app = app.layer(cors);
    }
    let addr = listener.local_addr()?;
    tracing::info!(%addr, services = ?services.names, "serving gRPC, grpc-web and REST");
    // While draining, health says NOT_SERVING so that load balancers stop sending new calls.
    let names = services.names.clone();
    let draining = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("draining in-flight calls");
    };
    crate::connections::serve(listener, app, settings, draining).await;
    tracing::info!("server stopped");
    Ok(())
}

/// API answers may hold a secret (a new key, a decrypted one, a hand-out): no browser or proxy
/// may keep a copy. Set on every API answer rather than on the few that carry one, so a new RPC
/// cannot forget it; the documentation pages stay cacheable.
async fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Browsers may call only from the configured origins; with none configured there is no CORS
/// layer at all, so cross-origin browser calls fail closed.
fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            HeaderValue::from_str(o)
                .map_err(|_| anyhow::anyhow!("KEYHOUSE_CORS_ORIGINS: invalid origin '{o}'"))
        })
        .collect::<Result<_, _>>()?;
    if origins.is_empty() {
        return Ok(None);
    }
    let headers = [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "x-csrf-token",
        "x-request-id",
    ];
    let exposed = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-next-page-token",
    ];
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(headers.map(HeaderName::from_static))
            .expose_headers(exposed.map(HeaderName::from_static)),
    ))
}
