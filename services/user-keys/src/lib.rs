//! UserKeyService: a thin gRPC layer over `keyhouse_domain::user_keys`,
//! `keyhouse_domain::verify` and `keyhouse_domain::byok`. Each method resolves the caller and
//! hands the request to the domain. Envoy's ext_authz `Check` (`ext_authz.rs`) is served beside
//! it, from the same `Verifier`.

use keyhouse_domain::authorization;
use keyhouse_domain::byok::Byok;
use keyhouse_domain::crypto::key_tag::KeyTagger;
use keyhouse_domain::health;
use keyhouse_domain::providers::BaseUrls;
use keyhouse_domain::user_keys::UserKeys;
use keyhouse_domain::verify::Verifier;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_server::{UserKeyService, UserKeyServiceServer};
use keyhouse_server::Services;
use keyhouse_server::auth::ServiceTokens;
use keyhouse_server::bootstrap::{BoxFuture, Context, Mount};
use keyhouse_server::grpc::{Authenticator, reply};
use tonic::{Request, Response, Status};

pub mod ext_authz;
pub mod rest;
pub mod rest_byok;

pub const SERVICE_NAME: &str = "keyhouse.v1.UserKeyService";

/// The RPCs with no REST path, and why.
pub const GRPC_ONLY: &[(&str, &str)] = &[
    (
        "GetProviderKeyForUser",
        "internal services only (service tokens); the Ops-Center front end never calls it",
    ),
    (
        "GetKeyOptions",
        "the web console reads it over grpc-web; the Ops-Center front end has no such call",
    ),
];

#[derive(Clone)]
pub struct UserKeyGrpc {
    auth: Authenticator,
    keys: UserKeys,
    verifier: Verifier,
    byok: Byok,
    /// Looked up once: VerifyKey is the gateway's hot path.
    verify_rule: &'static authorization::Rule,
    ext_authz: ext_authz::ExtAuthz,
}

/// UserKeyService, for `bootstrap::run`'s list of services.
pub struct Service;

impl Mount for Service {
    fn mount<'a>(
        &'a self,
        ctx: &'a Context,
        services: &'a mut Services,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let grpc = UserKeyGrpc::new(ctx).await?;
            // Usage counted since the last flush is written before the process ends.
            let verifier = grpc.verifier.clone();
            services.on_shutdown(async move { Ok(verifier.flush_usage().await?) });
            // BYOK keys whose owners opted in are checked where BYOK is served.
            if let Some(checks) = health::schedule(grpc.byok.clone(), &ctx.settings.domain.health) {
                services.in_background(checks);
            }
            grpc.register(services);
            Ok(())
        })
    }
}

impl UserKeyGrpc {
    pub async fn new(ctx: &Context) -> anyhow::Result<Self> {
        let settings = &ctx.settings.domain;
        let db = &ctx.db;
        let verifier = Verifier::start(
            db.clone(),
            &settings.keys.scopes,
            &settings.verify,
            &ctx.feed,
            KeyTagger::from_ring(&ctx.ring),
        )
        .await?;
        let auth = Authenticator::new(ctx.identity.clone(), ctx.sessions.clone())
            .with_api_keys(verifier.clone())
            .with_service_tokens(ServiceTokens::parse(&ctx.settings.service_tokens)?)
            .with_oidc(ctx.oidc.clone());
        Ok(Self {
            ext_authz: ext_authz::ExtAuthz::new(
                verifier.clone(),
                auth.clone(),
                &ctx.settings.ext_authz,
            )?,
            byok: Byok::new(
                db.clone(),
                ctx.ring.clone(),
                BaseUrls::parse(&settings.provider_base_urls)?,
                settings.outbound()?,
                std::time::Duration::from_secs(settings.byok_test_timeout_secs.max(1)),
            ),
            auth,
            verify_rule: authorization::rule(SERVICE_NAME, "VerifyKey")?,
            keys: UserKeys::new(
                db.clone(),
                settings.keys.clone(),
                ctx.feed.clone(),
                verifier.clone(),
            ),
            verifier,
        })
    }

    /// Adds this service (gRPC and its REST paths) and Envoy's ext_authz to what a binary
    /// serves.
    pub fn register(self, services: &mut Services) {
        services.grpc.add_service(self.ext_authz.clone().server());
        services.names.push(ext_authz::SERVICE_NAME);
        services
            .descriptors
            .push(keyhouse_proto::envoy::EXT_AUTHZ_DESCRIPTOR_SET);
        let rest = rest::router(self.clone()).merge(rest_byok::router(self.clone()));
        services.rest = std::mem::take(&mut services.rest).merge(rest);
        services.openapi.merge(openapi());
        services.grpc.add_service(
            UserKeyServiceServer::new(self)
                .max_decoding_message_size(keyhouse_server::grpc::MAX_MESSAGE_BYTES),
        );
        services.names.push(SERVICE_NAME);
    }
}

/// The OpenAPI paths of this service's REST routes, with the answers every route shares.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = <rest::Docs as utoipa::OpenApi>::openapi();
    doc.merge(<rest_byok::Docs as utoipa::OpenApi>::openapi());
    keyhouse_server::docs::with_shared_answers(
        doc,
        SERVICE_NAME,
        &[rest::ROUTES, rest_byok::ROUTES].concat(),
    )
}

#[tonic::async_trait]
impl UserKeyService for UserKeyGrpc {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "CreateKey")
            .await?;
        reply(self.keys.create(&caller, req.into_inner()).await)
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListKeys")
            .await?;
        reply(self.keys.list(&caller, req.into_inner()).await)
    }

    async fn get_key(
        &self,
        req: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "GetKey")
            .await?;
        reply(self.keys.get(&caller, req.into_inner()).await)
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "RevokeKey")
            .await?;
        reply(self.keys.revoke(&caller, req.into_inner()).await)
    }

    async fn regenerate_key(
        &self,
        req: Request<pb::RegenerateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "RegenerateKey")
            .await?;
        reply(self.keys.regenerate(&caller, req.into_inner()).await)
    }

    async fn verify_key(
        &self,
        req: Request<pb::VerifyKeyRequest>,
    ) -> Result<Response<pb::VerifyKeyResponse>, Status> {
        if !self.verify_rule.anonymous {
            self.auth
                .caller_for(req.metadata(), self.verify_rule)
                .await?;
        }
        reply(self.verifier.verify(req.get_ref()).await)
    }

    async fn get_key_usage(
        &self,
        req: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "GetKeyUsage")
            .await?;
        reply(self.keys.usage(&caller, req.into_inner()).await)
    }

    async fn list_providers(
        &self,
        req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListProviders")
            .await?;
        reply(self.byok.providers(&caller).await)
    }

    async fn put_provider_key(
        &self,
        req: Request<pb::PutProviderKeyRequest>,
    ) -> Result<Response<pb::PutProviderKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "PutProviderKey")
            .await?;
        reply(self.byok.put(&caller, req.into_inner()).await)
    }

    async fn list_provider_keys(
        &self,
        req: Request<pb::ListProviderKeysRequest>,
    ) -> Result<Response<pb::ListProviderKeysResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "ListProviderKeys")
            .await?;
        reply(self.byok.list(&caller).await)
    }

    async fn delete_provider_key(
        &self,
        req: Request<pb::DeleteProviderKeyRequest>,
    ) -> Result<Response<pb::DeleteProviderKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "DeleteProviderKey")
            .await?;
        reply(self.byok.delete(&caller, req.into_inner()).await)
    }

    async fn test_provider_key(
        &self,
        req: Request<pb::TestProviderKeyRequest>,
    ) -> Result<Response<pb::TestProviderKeyResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "TestProviderKey")
            .await?;
        reply(self.byok.test(&caller, req.into_inner()).await)
    }

    async fn get_provider_key_for_user(
        &self,
        req: Request<pb::GetProviderKeyForUserRequest>,
    ) -> Result<Response<pb::GetProviderKeyForUserResponse>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "GetProviderKeyForUser")
            .await?;
        reply(self.byok.hand_out(&caller, req.into_inner()).await)
    }

    async fn get_key_options(
        &self,
        req: Request<pb::GetKeyOptionsRequest>,
    ) -> Result<Response<pb::KeyOptions>, Status> {
        let caller = self
            .auth
            .caller_of(req.metadata(), SERVICE_NAME, "GetKeyOptions")
            .await?;
        Ok(Response::new(self.keys.options(&caller)))
    }
}
