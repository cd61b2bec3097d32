//! PlatformKeyService: a thin gRPC layer over `keyhouse_domain::platform_keys`. Each method
//! resolves the caller and hands the request to the domain; the domain checks the admin role.

use std::pin::Pin;

use keyhouse_domain::health;
use keyhouse_domain::platform_keys::PlatformKeys;
use keyhouse_domain::providers::BaseUrls;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_server::{
    PlatformKeyService, PlatformKeyServiceServer,
};
use keyhouse_server::Services;
use keyhouse_server::auth::ServiceTokens;
use keyhouse_server::bootstrap::{BoxFuture, Context, Mount};
use keyhouse_server::grpc::{self, Authenticator, reply};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

pub mod rest;
pub mod rest_llm_hub;

pub const SERVICE_NAME: &str = "keyhouse.v1.PlatformKeyService";

/// The RPCs with no REST path, and why.
pub const GRPC_ONLY: &[(&str, &str)] = &[
    (
        "WatchPlatformKeys",
        "a server stream: native gRPC and grpc-web only",
    ),
    (
        "ReportPlatformKeySync",
        "called only by the sync agent, which speaks gRPC",
    ),
];

#[derive(Clone)]
pub struct PlatformKeyGrpc {
    auth: Authenticator,
    keys: PlatformKeys,
}

/// PlatformKeyService, for `bootstrap::run`'s list of services.
pub struct Service;

impl Mount for Service {
    fn mount<'a>(
        &'a self,
        ctx: &'a Context,
        services: &'a mut Services,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let grpc = PlatformKeyGrpc::new(ctx)?;
            if let Some(checks) = health::schedule(grpc.keys.clone(), &ctx.settings.domain.health) {
                services.in_background(checks);
            }
            grpc.register(services);
            Ok(())
        })
    }
}

impl PlatformKeyGrpc {
    pub fn new(ctx: &Context) -> anyhow::Result<Self> {
        let settings = &ctx.settings.domain;
        let urls = BaseUrls::parse(&settings.provider_base_urls)?;
        let keys = PlatformKeys::new(
            ctx.db.clone(),
            ctx.ring.clone(),
            settings.platform_env(),
            urls,
            settings.outbound()?,
            ctx.feed.clone(),
        );
        Ok(Self {
            auth: Authenticator::new(ctx.identity.clone(), ctx.sessions.clone())
                .with_oidc(ctx.oidc.clone())
                .with_service_tokens(ServiceTokens::parse(&ctx.settings.service_tokens)?),
            keys,
        })
    }

    /// Adds this service (gRPC and its REST paths) to what a binary serves.
    pub fn register(self, services: &mut Services) {
        let rest = rest::router(self.clone()).merge(rest_llm_hub::router(self.clone()));
        services.rest = std::mem::take(&mut services.rest).merge(rest);
        services.openapi.merge(openapi());
        services.grpc.add_service(
            PlatformKeyServiceServer::new(self)
                .max_decoding_message_size(keyhouse_server::grpc::MAX_MESSAGE_BYTES),
        );
        services.names.push(SERVICE_NAME);
    }
}

/// The OpenAPI paths of this service's REST routes, with the answers every route shares.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = <rest::Docs as utoipa::OpenApi>::openapi();
    doc.merge(<rest_llm_hub::Docs as utoipa::OpenApi>::openapi());
    keyhouse_server::docs::with_shared_answers(
        doc,
        SERVICE_NAME,
        &[rest::ROUTES, rest_llm_hub::ROUTES].concat(),
    )
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PlatformKeyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PlatformKeyService for PlatformKeyGrpc {
    type WatchPlatformKeysStream = EventStream;

    async fn list_platform_keys(
        &self,
        req: Request<pb::ListPlatformKeysRequest>,
    ) -> Result<Response<pb::ListPlatformKeysResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListPlatformKeys")
            .await?;
        reply(self.keys.list(&caller).await)
    }

    async fn update_platform_key(
        &self,
        req: Request<pb::UpdatePlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "UpdatePlatformKey")
            .await?;
        reply(self.keys.update(&caller, req.into_inner()).await)
    }

    async fn delete_platform_key(
        &self,
        req: Request<pb::DeletePlatformKeyRequest>,
    ) -> Result<Response<pb::DeletePlatformKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "DeletePlatformKey")
            .await?;
        reply(self.keys.delete(&caller, req.into_inner()).await)
    }

    async fn get_decrypted_platform_key(
        &self,
        req: Request<pb::GetDecryptedPlatformKeyRequest>,
    ) -> Result<Response<pb::GetDecryptedPlatformKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "GetDecryptedPlatformKey")
            .await?;
        reply(self.keys.decrypted(&caller, req.into_inner()).await)
    }

    async fn list_platform_key_versions(
        &self,
        req: Request<pb::ListPlatformKeyVersionsRequest>,
    ) -> Result<Response<pb::ListPlatformKeyVersionsResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListPlatformKeyVersions")
            .await?;
        reply(self.keys.versions(&caller, req.into_inner()).await)
    }

    async fn rollback_platform_key(
        &self,
        req: Request<pb::RollbackPlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "RollbackPlatformKey")
            .await?;
        reply(self.keys.rollback(&caller, req.into_inner()).await)
    }

    async fn test_platform_key(
        &self,
        req: Request<pb::TestPlatformKeyRequest>,
    ) -> Result<Response<pb::TestPlatformKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "TestPlatformKey")
            .await?;
        reply(self.keys.test(&caller, req.into_inner()).await)
    }

    async fn watch_platform_keys(
        &self,
        req: Request<pb::WatchPlatformKeysRequest>,
    ) -> Result<Response<Self::WatchPlatformKeysStream>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "WatchPlatformKeys")
            .await?;
        let events = self
            .keys
            .watch(&caller, req.into_inner())
            .await
            .map_err(grpc::status)?;
        let stream = ReceiverStream::new(events).map(|event| event.map_err(grpc::status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_platform_key_sync(
        &self,
        req: Request<pb::ReportPlatformKeySyncRequest>,
    ) -> Result<Response<pb::ReportPlatformKeySyncResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ReportPlatformKeySync")
            .await?;
        reply(self.keys.report_sync(&caller, req.into_inner()).await)
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListAuditEvents")
            .await?;
        reply(self.keys.audit_events(&caller, req.into_inner()).await)
    }

    async fn list_platform_key_health(
        &self,
        req: Request<pb::ListPlatformKeyHealthRequest>,
    ) -> Result<Response<pb::ListPlatformKeyHealthResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListPlatformKeyHealth")
            .await?;
        reply(self.keys.health_history(&caller, req.into_inner()).await)
    }
}
