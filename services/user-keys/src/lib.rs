//! UserKeyService: a thin gRPC layer over `keyhouse_core::user_keys`. Each method resolves the
//! caller and hands the request to the core; nothing else lives here.

use keyhouse_core::config::ServerSettings;
use keyhouse_core::db;
use keyhouse_core::grpc::Authenticator;
use keyhouse_core::server::{self, Services};
use keyhouse_core::user_keys::UserKeys;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::{UserKeyService, UserKeyServiceServer};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

pub mod rest;

pub const SERVICE_NAME: &str = "keyhouse.v1.UserKeyService";

#[derive(Clone)]
pub struct UserKeyGrpc {
    auth: Authenticator,
    keys: UserKeys,
}

impl UserKeyGrpc {
    pub fn new(db: DatabaseConnection, policy: keyhouse_core::config::KeyPolicy) -> Self {
        Self {
            auth: Authenticator::new(db.clone()),
            keys: UserKeys::new(db, policy),
        }
    }

    /// Adds this service (gRPC and its REST paths) to what a binary serves.
    pub fn register(self, services: &mut Services) {
        services.rest = std::mem::take(&mut services.rest).merge(rest::router(self.clone()));
        services
            .openapi
            .merge(<rest::Docs as utoipa::OpenApi>::openapi());
        services.grpc.add_service(UserKeyServiceServer::new(self));
        services.names.push(SERVICE_NAME);
    }
}

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented yet"
    )))
}

#[tonic::async_trait]
impl UserKeyService for UserKeyGrpc {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.create(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.list(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_key(
        &self,
        req: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.get(&caller, req.into_inner()).await?,
        ))
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.revoke(&caller, req.into_inner()).await?,
        ))
    }

    async fn regenerate_key(
        &self,
        req: Request<pb::RegenerateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let caller = self.auth.caller(req.metadata()).await?;
        Ok(Response::new(
            self.keys.regenerate(&caller, req.into_inner()).await?,
        ))
    }

    async fn verify_key(
        &self,
        _: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        unimplemented("VerifyKey")
    }

    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        unimplemented("ListProviders")
    }

    async fn put_provider_key(
        &self,
        _: Request<pb::PutProviderKeyRequest>,
    ) -> Result<Response<pb::PutProviderKeyResponse>, Status> {
        unimplemented("PutProviderKey")
    }

    async fn list_provider_keys(
        &self,
        _: Request<pb::ListProviderKeysRequest>,
    ) -> Result<Response<pb::ListProviderKeysResponse>, Status> {
        unimplemented("ListProviderKeys")
    }

    async fn delete_provider_key(
        &self,
        _: Request<pb::DeleteProviderKeyRequest>,
    ) -> Result<Response<pb::DeleteProviderKeyResponse>, Status> {
        unimplemented("DeleteProviderKey")
    }

    async fn test_provider_key(
        &self,
        _: Request<pb::TestProviderKeyRequest>,
    ) -> Result<Response<pb::TestProviderKeyResponse>, Status> {
        unimplemented("TestProviderKey")
    }
}

/// Serves UserKeyService alone (the split deployment). It never migrates: on a schema that is
/// behind it refuses to start and says to run `keyhouse migrate`.
pub async fn run(
    settings: ServerSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    settings.keys.validate()?;
    // BYOK keys are encrypted with the ring: refuse to start without one, not at first use.
    let _ring = settings.required_key_ring()?;
    let db = db::connect(&settings.database_url).await?;
    db::ensure_schema_current(&db).await?;
    let mut services = Services::new(db.clone());
    UserKeyGrpc::new(db, settings.keys.clone()).register(&mut services);
    server::serve(listener, services, &settings.cors_origins, shutdown).await
}
