//! What every gRPC method does first: resolve the caller from the request's metadata.

use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::verify_key_response::Reason;
use sea_orm::DatabaseConnection;
use tonic::metadata::MetadataMap;

use crate::auth::{self, AuthFailure, Caller, Principal, Role};
use crate::crypto::api_key;
use crate::error::Error;
use crate::storage::sessions;
use crate::verify::Verifier;

/// Resolves sessions for gRPC (and grpc-web, and REST, which calls the gRPC methods), and,
/// where a service allows it, a user API key as the credential of its owner.
#[derive(Clone)]
pub struct Authenticator {
    db: DatabaseConnection,
    api_keys: Option<Verifier>,
}

impl Authenticator {
    /// Sessions only.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, api_keys: None }
    }

    /// Sessions, or `Authorization: Bearer uc_...` for the key's owner (see `caller_with_scope`).
    pub fn with_api_keys(db: DatabaseConnection, verifier: Verifier) -> Self {
        Self {
            db,
            api_keys: Some(verifier),
        }
    }

    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, tonic::Status> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let token = auth::session_token(text("authorization"), text("cookie"));
        let principal = sessions::resolve(&self.db, token).await?;
        Ok(Caller {
            principal,
            request_id: auth::request_id(text("x-request-id")),
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
        let verdict = verifier.verify_unlocated(&request).await?;
        let refused = |why: String| Err(Error::PermissionDenied(why).into());
        match verdict.reason() {
            Reason::Valid => Ok(Caller {
                principal: Principal {
                    user_id: verdict.user_id,
                    email: String::new(),
                    role: Role::User,
                },
                request_id: auth::request_id(text("x-request-id")),
            }),
            Reason::InsufficientScope => refused(format!("this API key lacks the {scope} scope")),
            Reason::RateLimited => refused("this API key is over its rate limit".into()),
            Reason::IpNotAllowed => refused(
                "this API key is limited to IP addresses, which keyhouse cannot check on \
                 management calls; use a session or a key without an IP allowlist"
                    .into(),
            ),
            _ => Err(Error::Unauthenticated(AuthFailure::InvalidSession).into()),
        }
    }
}
