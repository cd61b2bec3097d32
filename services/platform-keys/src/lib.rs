//! PlatformKeyService. Every RPC is admin-only; until the platform-secrets work lands, an
//! admin gets UNIMPLEMENTED and anyone else the same refusal they will get then.

use std::pin::Pin;

use keyhouse_core::config::ServerSettings;
use keyhouse_core::db;
use keyhouse_core::grpc::Authenticator;
use keyhouse_core::server::{self, Services};
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::platform_key_service_server::{
    PlatformKeyService, PlatformKeyServiceServer,
};
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub const SERVICE_NAME: &str = "keyhouse.v1.PlatformKeyService";

#[derive(Clone)]
pub struct PlatformKeyGrpc {
    auth: Authenticator,
}

impl PlatformKeyGrpc {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            auth: Authenticator::new(db),
        }
    }

    pub fn register(self, services: &mut Services) {
        services
            .grpc
            .add_service(PlatformKeyServiceServer::new(self));
        services.names.push(SERVICE_NAME);
    }

    async fn not_yet<T>(&self, metadata: &MetadataMap, rpc: &str) -> Result<T, Status> {
        let caller = self.auth.caller(metadata).await?;
        caller.require_admin()?;
        Err(Status::unimplemented(format!(
            "{rpc} is not implemented yet"
        )))
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
        self.not_yet(req.metadata(), "ListPlatformKeys").await
    }

    async fn update_platform_key(
        &self,
        req: Request<pb::UpdatePlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        self.not_yet(req.metadata(), "UpdatePlatformKey").await
    }

    async fn delete_platform_key(
        &self,
        req: Request<pb::DeletePlatformKeyRequest>,
    ) -> Result<Response<pb::DeletePlatformKeyResponse>, Status> {
        self.not_yet(req.metadata(), "DeletePlatformKey").await
    }

    async fn get_decrypted_platform_key(
        &self,
        req: Request<pb::GetDecryptedPlatformKeyRequest>,
    ) -> Result<Response<pb::GetDecryptedPlatformKeyResponse>, Status> {
        self.not_yet(req.metadata(), "GetDecryptedPlatformKey")
            .await
    }

    async fn list_platform_key_versions(
        &self,
        req: Request<pb::ListPlatformKeyVersionsRequest>,
    ) -> Result<Response<pb::ListPlatformKeyVersionsResponse>, Status> {
        self.not_yet(req.metadata(), "ListPlatformKeyVersions")
            .await
    }

    async fn rollback_platform_key(
        &self,
        req: Request<pb::RollbackPlatformKeyRequest>,
    ) -> Result<Response<pb::UpdatePlatformKeyResponse>, Status> {
        self.not_yet(req.metadata(), "RollbackPlatformKey").await
    }

    async fn test_platform_key(
        &self,
        req: Request<pb::TestPlatformKeyRequest>,
    ) -> Result<Response<pb::TestPlatformKeyResponse>, Status> {
        self.not_yet(req.metadata(), "TestPlatformKey").await
    }

    async fn watch_platform_keys(
        &self,
        req: Request<pb::WatchPlatformKeysRequest>,
    ) -> Result<Response<Self::WatchPlatformKeysStream>, Status> {
        self.not_yet(req.metadata(), "WatchPlatformKeys").await
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.not_yet(req.metadata(), "ListAuditEvents").await
    }
}

/// Serves PlatformKeyService alone (the split deployment). It never migrates.
pub async fn run(
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = db::connect(&settings.database_url).await?;
    db::ensure_schema_current(&db).await?;
    let mut services = Services::default();
    PlatformKeyGrpc::new(db).register(&mut services);
    server::serve(listener, services, &settings.cors_origins, shutdown).await
}
