//! What every gRPC method does first: resolve the caller from the request's metadata.

use sea_orm::DatabaseConnection;
use tonic::metadata::MetadataMap;

use crate::auth::{self, Caller};
use crate::storage::sessions;

/// Resolves sessions for gRPC (and grpc-web, and REST, which calls the gRPC methods).
#[derive(Clone)]
pub struct Authenticator {
    db: DatabaseConnection,
}

impl Authenticator {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
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
}
