//! PlatformKeyService: a thin gRPC layer over `keyhouse_core::platform_keys`. Each method
//! resolves the caller and hands the request to the core; the core checks the admin role.

use std::pin::Pin;

use keyhouse_core::change_feed::ChangeFeed;
use keyhouse_core::config::ServerSettings;
use keyhouse_core::crypto::fernet_ring::KeyRing;
use keyhouse_core::db;
use keyhouse_core::grpc::Authenticator;
use keyhouse_core::platform_keys::PlatformKeys;
use keyhouse_core::providers::BaseUrls;
use keyhouse_core::server::{self, Services};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_server::{
    PlatformKeyService, PlatformKeyServiceServer,
};
use sea_orm::DatabaseConnection;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

pub mod rest;

pub const SERVICE_NAME: &str = "keyhouse.v1.PlatformKeyService";

#[derive(Clone)]
pub struct PlatformKeyGrpc {
    auth: Authenticator,
    keys: PlatformKeys,
}

impl PlatformKeyGrpc {
    pub fn new(
        db: DatabaseConnection,
        ring: KeyRing,
        settings: &ServerSettings,
        feed: ChangeFeed,
    ) -> anyhow::Result<Self> {
        let urls = BaseUrls::parse(&settings.provider_base_urls)?;
        let keys = PlatformKeys::new(db.clone(), ring, settings.platform_env(), urls, feed)?;
        Ok(Self {
            auth: Authenticator::new(db),
            keys,
        })
    }

    /// Adds this service (gRPC and its REST paths) to what a binary serves.
    pub fn register(self, services: &mut Services) {
        services.rest = std::mem::take(&mut services.rest).merge(rest::router(self.clone()));
        services
            .openapi
            .merge(<rest::Docs as utoipa::OpenApi>::openapi());
        services
            .grpc
            .add_service(PlatformKeyServiceServer::new(self));
        services.names.push(SERVICE_NAME);
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PlatformKeyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PlatformKeyService for PlatformKeyGrpc {
    type WatchPlatformKeysStream = EventStream;

    async fn list_platform_keys(
        &self,
        req: Request<pb::ListPlatformKeysRequest>,
    ) -> Result<Response<pb::ListPlatformKeysResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(self.keys.list(&caller).await?))
    }

    async fn update_platform_key(
        &self,
        req: Request<pb::UpdatePlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.update(&caller, req.into_inner()).await?,
        ))
    }

    async fn delete_platform_key(
        &self,
        req: Request<pb::DeletePlatformKeyRequest>,
    ) -> Result<Response<pb::DeletePlatformKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.delete(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_decrypted_platform_key(
        &self,
        req: Request<pb::GetDecryptedPlatformKeyRequest>,
    ) -> Result<Response<pb::GetDecryptedPlatformKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.decrypted(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_platform_key_versions(
        &self,
        req: Request<pb::ListPlatformKeyVersionsRequest>,
    ) -> Result<Response<pb::ListPlatformKeyVersionsResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.versions(&caller, req.into_inner()).await?,
        ))
    }

    async fn rollback_platform_key(
        &self,
        req: Request<pb::RollbackPlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.rollback(&caller, req.into_inner()).await?,
        ))
    }

    async fn test_platform_key(
        &self,
        req: Request<pb::TestPlatformKeyRequest>,
    ) -> Result<Response<pb::TestPlatformKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.test(&caller, req.into_inner()).await?,
        ))
    }

    async fn watch_platform_keys(
        &self,
        req: Request<pb::WatchPlatformKeysRequest>,
    ) -> Result<Response<Self::WatchPlatformKeysStream>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        let events = self.keys.watch(&caller, req.into_inner()).await?;
        let stream = ReceiverStream::new(events).map(|event| event.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.audit_events(&caller, req.into_inner()).await?,
        ))
    }
}

/// Serves PlatformKeyService alone (the split deployment). It never migrates, and it does not
/// start without an encryption key ring.
pub async fn run(
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ring = settings.required_key_ring()?;
    let db = db::connect(&settings.database_url).await?;
    db::ensure_schema_current(&db).await?;
    let feed = ChangeFeed::start(&db, &settings.database_url).await?;
    let mut services = Services::new(db.clone());
    PlatformKeyGrpc::new(db, ring, &settings, feed)?.register(&mut services);
    server::serve(listener, services, &settings.cors_origins, shutdown).await
}
