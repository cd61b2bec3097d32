//! UserKeyService: a thin gRPC layer over `keyhouse_core::user_keys` and
//! `keyhouse_core::verify`. Each method resolves the caller and hands the request to the core.

use keyhouse_core::Error;
use keyhouse_core::auth::{Caller, Principal, Role, ServiceTokens};
use keyhouse_core::byok::Byok;
use keyhouse_core::change_feed::ChangeFeed;
use keyhouse_core::config::ServerSettings;
use keyhouse_core::crypto::fernet_ring::KeyRing;
use keyhouse_core::db;
use keyhouse_core::grpc::Authenticator;
use keyhouse_core::providers::BaseUrls;
use keyhouse_core::server::{self, Services};
use keyhouse_core::user_keys::UserKeys;
use keyhouse_core::verify::Verifier;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::{UserKeyService, UserKeyServiceServer};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

pub mod rest;
pub mod rest_byok;

pub const SERVICE_NAME: &str = "keyhouse.v1.UserKeyService";

/// Scopes an API key needs to be used on the management RPCs in place of a session.
const READ: &str = "keys:read";
const MANAGE: &str = "keys:manage";
const BYOK: &str = "byok:manage";

#[derive(Clone)]
pub struct UserKeyGrpc {
    auth: Authenticator,
    keys: UserKeys,
    verifier: Verifier,
    byok: Byok,
    services: ServiceTokens,
}

impl UserKeyGrpc {
    pub async fn new(
        db: DatabaseConnection,
        settings: &ServerSettings,
        feed: ChangeFeed,
        ring: KeyRing,
    ) -> anyhow::Result<Self> {
        let verifier =
            Verifier::start(db.clone(), &settings.keys.scopes, &settings.verify, &feed).await?;
        Ok(Self {
            byok: Byok::new(
                db.clone(),
                ring,
                BaseUrls::parse(&settings.provider_base_urls)?,
                std::time::Duration::from_secs(settings.byok_test_timeout_secs.max(1)),
            )?,
            services: ServiceTokens::parse(&settings.service_tokens)?,
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
        let rest = rest::router(self.clone()).merge(rest_byok::router(self.clone()));
        services.rest = std::mem::take(&mut services.rest).merge(rest);
        services
            .openapi
            .merge(<rest::Docs as utoipa::OpenApi>::openapi());
        services
            .openapi
            .merge(<rest_byok::Docs as utoipa::OpenApi>::openapi());
        services.grpc.add_service(UserKeyServiceServer::new(self));
        services.names.push(SERVICE_NAME);
    }
}

impl UserKeyGrpc {
    /// An internal service, by its service token. A user's session is refused outright.
    async fn service_caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, Status> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let token = keyhouse_core::auth::bearer(text("authorization"));
        if let Some(name) = token.and_then(|t| self.services.name_of(t)) {
            let principal = Principal {
                user_id: format!("service:{name}"),
                email: String::new(),
                role: Role::User,
            };
            return Ok(Caller {
                principal,
                request_id: keyhouse_core::auth::request_id(text("x-request-id")),
            });
        }
        // Tell a user apart from a stranger, without ever serving either.
        self.auth.caller(metadata).await?;
        Err(Error::PermissionDenied("a service token is required".into()).into())
    }
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
        req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), BYOK).await?;
        Ok(Response::new(self.byok.providers(&caller).await?))
    }

    async fn put_provider_key(
        &self,
        req: Request<pb::PutProviderKeyRequest>,
    ) -> Result<Response<pb::PutProviderKeyResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), BYOK).await?;
        Ok(Response::new(
            self.byok.put(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_provider_keys(
        &self,
        req: Request<pb::ListProviderKeysRequest>,
    ) -> Result<Response<pb::ListProviderKeysResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), BYOK).await?;
        Ok(Response::new(self.byok.list(&caller).await?))
    }

    async fn delete_provider_key(
        &self,
        req: Request<pb::DeleteProviderKeyRequest>,
    ) -> Result<Response<pb::DeleteProviderKeyResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), BYOK).await?;
        Ok(Response::new(
            self.byok.delete(&caller, req.into_inner()).await?,
        ))
    }

    async fn test_provider_key(
        &self,
        req: Request<pb::TestProviderKeyRequest>,
    ) -> Result<Response<pb::TestProviderKeyResponse>, Status> {
        let caller = self.auth.caller_with_scope(req.metadata(), BYOK).await?;
        Ok(Response::new(
            self.byok.test(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_provider_key_for_user(
        &self,
        req: Request<pb::GetProviderKeyForUserRequest>,
    ) -> Result<Response<pb::GetProviderKeyForUserResponse>, Status> {
        let caller = self.service_caller(req.metadata()).await?;
        Ok(Response::new(
            self.byok.hand_out(&caller, req.into_inner()).await?,
        ))
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
    let ring = settings.required_key_ring()?;
    let db = db::connect(&settings.database_url).await?;
    db::ensure_schema_current(&db).await?;
    let feed = ChangeFeed::start(&db, &settings.database_url).await?;
    let mut services = Services::new(db.clone());
    let grpc = UserKeyGrpc::new(db, &settings, feed, ring).await?;
    let verifier = grpc.verifier();
    grpc.register(&mut services);
    let served = server::serve(listener, services, &settings.cors_origins, shutdown).await;
    verifier.flush_usage().await?;
    served
}
