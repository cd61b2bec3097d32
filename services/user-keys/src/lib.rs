//! UserKeyService: a thin gRPC layer over `keyhouse_core::user_keys` and
//! `keyhouse_core::verify`. Each method resolves the caller and hands the request to the core.

use keyhouse_core::change_feed::ChangeFeed;
use keyhouse_core::config::ServerSettings;
use keyhouse_core::db;
use keyhouse_core::grpc::Authenticator;
use keyhouse_core::server::{self, Services};
use keyhouse_core::user_keys::UserKeys;
use keyhouse_core::verify::Verifier;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::{UserKeyService, UserKeyServiceServer};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

pub mod rest;

pub const SERVICE_NAME: &str = "keyhouse.v1.UserKeyService";

/// Scopes an API key needs to be used on the management RPCs in place of a session.
const READ: &str = "keys:read";
const MANAGE: &str = "keys:manage";

#[derive(Clone)]
pub struct UserKeyGrpc {
    auth: Authenticator,
    keys: UserKeys,
    verifier: Verifier,
}

impl UserKeyGrpc {
    pub async fn new(
        db: DatabaseConnection,
        settings: &ServerSettings,
        feed: ChangeFeed,
    ) -> anyhow::Result<Self> {
        let verifier =
            Verifier::start(db.clone(), &settings.keys.scopes, &settings.verify, &feed).await?;
        Ok(Self {
            auth: Authenticator::with_api_keys(db.clone(), verifier.clone()),
            keys: UserKeys::new(db, settings.keys.clone(), feed, verifier.clone()),
            verifier,
        })
    }

    /// The verification path, for the binary to flush its usage counts at shutdown.
    pub fn verifier(&self) -> Verifier {
        self.verifier.clone()
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
        let caller = self.auth.caller_with_scope(req.metadata(), MANAGE).await?;
        Ok(Response::new(
            self.keys.create(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), READ).await?;
        Ok(Response::new(
            self.keys.list(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_key(
        &self,
        req: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), READ).await?;
        Ok(Response::new(
            self.keys.get(&caller, req.into_inner()).await?,
        ))
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), MANAGE).await?;
        Ok(Response::new(
            self.keys.revoke(&caller, req.into_inner()).await?,
        ))
    }

    async fn regenerate_key(
        &self,
        req: Request<pb::RegenerateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), MANAGE).await?;
        Ok(Response::new(
            self.keys.regenerate(&caller, req.into_inner()).await?,
        ))
    }

    async fn verify_key(
        &self,
        req: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        Ok(Response::new(self.verifier.verify(req.get_ref()).await?))
    }

    async fn get_key_usage(
        &self,
        req: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        let caller = self
            .auth
            .caller_with_scope(req.metadata(), "usage:read")
            .await?;
        Ok(Response::new(
            self.keys.usage(&caller, req.into_inner()).await?,
        ))
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
    let feed = ChangeFeed::start(&db, &settings.database_url).await?;
    let mut services = Services::new(db.clone());
    let grpc = UserKeyGrpc::new(db, &settings, feed).await?;
    let verifier = grpc.verifier();
    grpc.register(&mut services);
    let served = server::serve(listener, services, &settings.cors_origins, shutdown).await;
    verifier.flush_usage().await?;
    served
}
