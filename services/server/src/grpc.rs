//! The gRPC side of every service: resolving the caller from a request's metadata, and the one
//! mapping from the domain's error to a gRPC status.

use std::sync::Arc;

use keyhouse_domain::Error;
use keyhouse_domain::authorization::{self, Reach, Rule};
use keyhouse_domain::caller::{AuthFailure, Caller, IdentitySource, Principal, Role};
use keyhouse_domain::crypto::{api_key, session_token};
use keyhouse_domain::identity;
use keyhouse_domain::verify::Verifier;
use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::verify_key_response::Reason;
use tonic::metadata::MetadataMap;

use crate::auth::{self, ServiceTokens};
use crate::oidc::{self, Oidc};
use crate::session_cache::SessionCache;

/// The largest request message a service decodes, the same as the REST body limit: larger ones
/// are refused with OUT_OF_RANGE before they are buffered whole.
pub const MAX_MESSAGE_BYTES: usize = crate::rest::MAX_BODY_BYTES;

/// A domain result as a gRPC answer: what every service method returns.
pub fn reply<T>(result: keyhouse_domain::Result<T>) -> Result<tonic::Response<T>, tonic::Status> {
    result.map(tonic::Response::new).map_err(status)
}

/// The domain's error as a gRPC status. The error rides along as the status's source, so the
/// REST shim, which calls the gRPC methods, maps the same error to HTTP in its own one place.
pub fn status(err: Error) -> tonic::Status {
    use tonic::Code;
    let (code, message) = match &err {
        Error::NotFound(m) => (Code::NotFound, m.clone()),
        Error::InvalidArgument { .. } => (Code::InvalidArgument, err.to_string()),
        Error::Unauthenticated(why) => (Code::Unauthenticated, why.to_string()),
        Error::PermissionDenied(m) => (Code::PermissionDenied, m.clone()),
        Error::FailedPrecondition(m) => (Code::FailedPrecondition, m.clone()),
        Error::Aborted(m) => (Code::Aborted, m.clone()),
        Error::ResourceExhausted(m) => (Code::ResourceExhausted, m.clone()),
        Error::Unavailable(m) => (Code::Unavailable, m.clone()),
        Error::Internal(cause) => {
            tracing::error!(error = ?cause, "internal error");
            (Code::Internal, "internal error".to_owned())
        }
    };
    let mut status = tonic::Status::new(code, message);
    status.set_source(Arc::new(err));
    status
}

/// Resolves the caller of gRPC (and grpc-web, and REST, which calls the gRPC methods): a
/// session (keyhouse's own or Ops-Center's, through `identity::Sessions`) or an OIDC bearer
/// token, and where the authorization table allows it, a user API key as the credential of its
/// owner or an internal service's token. Every kind resolves to the one `Caller`, carrying where
/// it came from.
#[derive(Clone)]
pub struct Authenticator {
    identity: identity::Sessions,
    sessions: SessionCache,
    api_keys: Option<Verifier>,
    services: ServiceTokens,
    oidc: Option<Oidc>,
}

impl Authenticator {
    /// Sessions only, remembered in `sessions` for a moment once resolved.
    pub fn new(identity: identity::Sessions, sessions: SessionCache) -> Self {
        Self {
            identity,
            sessions,
            api_keys: None,
            services: ServiceTokens::default(),
            oidc: None,
        }
    }

    /// Also `Authorization: Bearer uc_...` for the key's owner (see `caller_with_scope`).
    pub fn with_api_keys(self, verifier: Verifier) -> Self {
        Self {
            api_keys: Some(verifier),
            ..self
        }
    }

    /// Also internal services' tokens, where a row allows them.
    pub fn with_service_tokens(self, services: ServiceTokens) -> Self {
        Self { services, ..self }
    }

    /// Also bearer JWTs from the configured OIDC issuer (see `oidc`).
    pub fn with_oidc(self, oidc: Option<Oidc>) -> Self {
        Self { oidc, ..self }
    }

    /// The caller of `service`'s `method`, as its row in the authorization table allows.
    pub async fn caller_of(
        &self,
        metadata: &MetadataMap,
        service: &str,
        method: &str,
    ) -> Result<Caller, tonic::Status> {
        let rule = authorization::rule(service, method).map_err(status)?;
        self.caller_for(metadata, rule).await
    }

    /// The caller of an RPC whose row in the authorization table is `rule`: an internal
    /// service's token where the row allows one, else a session, or an API key where the row
    /// names a scope for keys. A session the row gives nothing is refused (the domain checks the
    /// role again), after telling a stranger apart from a signed-in user.
    pub async fn caller_for(
        &self,
        metadata: &MetadataMap,
        rule: &Rule,
    ) -> Result<Caller, tonic::Status> {
        if rule.service_token
            && let Some(caller) = self.service(metadata, rule.rpc)?
        {
            return Ok(caller);
        }
        let caller = match rule.api_key_scope {
            Some(scope) => self.caller_with_scope(metadata, scope).await?,
            None => self.caller(metadata).await?,
        };
        let reach = match caller.principal.role {
            Role::Admin => rule.admin,
            Role::User => rule.user,
        };
        if reach == Reach::None {
            let why = match rule.admin {
                Reach::None => "a service token is required",
                _ => "Admin access required",
            };
            return Err(status(Error::PermissionDenied(why.into())));
        }
        Ok(caller)
    }

    /// An internal service, by its token: `service:<name>`, with no role beyond its row. A
    /// token bound to other RPCs is refused here rather than tried as a session.
    fn service(&self, metadata: &MetadataMap, rpc: &str) -> Result<Option<Caller>, tonic::Status> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let Some(service) = auth::bearer(text("authorization")).and_then(|t| self.services.find(t))
        else {
            return Ok(None);
        };
        if !service.may_call(rpc) {
            return Err(status(Error::PermissionDenied(format!(
                "the service token `{}` is not bound to {rpc} (KEYHOUSE_SERVICE_TOKENS)",
                service.name
            ))));
        }
        let name = service.name;
        Ok(Some(Caller {
            principal: Principal {
                user_id: format!("service:{name}"),
                email: String::new(),
                role: Role::User,
            },
            source: IdentitySource::ServiceToken,
            request_id: auth::request_id(text("x-request-id")),
            via_key: None,
        }))
    }

    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, tonic::Status> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        if let Some(oidc) = &self.oidc
            && let Some(jwt) = auth::bearer(text("authorization")).filter(|t| oidc::is_jwt(t))
        {
            return Ok(Caller {
                principal: not_a_service(oidc.principal(jwt).await.map_err(status)?)?,
                source: IdentitySource::Oidc,
                request_id: auth::request_id(text("x-request-id")),
                via_key: None,
            });
        }
        let token = auth::session_token(text("authorization"), text("cookie"))
            .ok_or_else(|| status(Error::Unauthenticated(AuthFailure::NoToken)))?;
        if token.starts_with(api_key::PREFIX) {
            return Err(status(Error::Unauthenticated(
                AuthFailure::ApiKeyNotAccepted,
            )));
        }
        let digest = session_token::digest(token);
        let now = chrono::Utc::now();
        let session = match self.sessions.get(&digest, now) {
            Some(session) => session,
            None => {
                let session = self.identity.resolve(token).await.map_err(status)?;
                self.sessions.put(digest, session.clone(), now);
                session
            }
        };
        Ok(Caller {
            principal: not_a_service(session.principal)?,
            source: session.source,
            request_id: auth::request_id(text("x-request-id")),
            via_key: None,
        })
    }

    /// Like `caller`, but an API key presented as the bearer token also works when it holds
    /// `scope`; the caller is then the key's owner, as a user.
    pub async fn caller_with_scope(
        &self,
        metadata: &MetadataMap,
        scope: &str,
    ) -> Result<Caller, tonic::Status> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let key = auth::bearer(text("authorization")).filter(|t| t.starts_with(api_key::PREFIX));
        let (Some(verifier), Some(key)) = (&self.api_keys, key) else {
            return self.caller(metadata).await;
        };
        let request = pb::VerifyKeyRequest {
            api_key: key.to_owned(),
            required_scopes: vec![scope.to_owned()],
            client_ip: String::new(),
        };
        // No client address here: a key limited to IP networks is refused, never let through.
        let (verdict, bounds) = verifier.authenticate(&request).await.map_err(status)?;
        let refused = |why: String| Err(status(Error::PermissionDenied(why)));
        match verdict.reason() {
            Reason::Valid => Ok(Caller {
                principal: Principal {
                    user_id: verdict.user_id,
                    email: String::new(),
                    role: Role::User,
                },
                source: IdentitySource::ApiKey,
                request_id: auth::request_id(text("x-request-id")),
                via_key: bounds,
            }),
            Reason::InsufficientScope => refused(format!("this API key lacks the {scope} scope")),
            Reason::RateLimited => refused("this API key is over its rate limit".into()),
            Reason::IpNotAllowed => refused(
                "this API key is limited to IP addresses, which keyhouse cannot check on \
                 management calls; use a session or a key without an IP allowlist"
                    .into(),
            ),
            _ => Err(status(Error::Unauthenticated(AuthFailure::InvalidSession))),
        }
    }
}

/// Internal services act as `service:<name>`, and only through their tokens: a user id of that
/// shape from an identity provider or a session would otherwise act as the service.
fn not_a_service(principal: Principal) -> Result<Principal, tonic::Status> {
    if principal.user_id.starts_with("service:") {
        tracing::warn!("a sign-in named a user id reserved for internal services; refused");
        return Err(status(Error::Unauthenticated(AuthFailure::InvalidSession)));
    }
    Ok(principal)
}
