//! Who a session token belongs to. The server reads the token from a request (bearer or the
//! `session_token` cookie) and asks here; `uc_` keys and service tokens are resolved by the server
//! itself, from the verifier and its configured digests.
//!
//! The lookup order: a token shaped like keyhouse's own (`ks_…`) is looked up in the sessions
//! table first. Any other token, and a `ks_` token the table does not know, is looked up in
//! Ops-Center's Redis when `KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL` is set. So keyhouse's own
//! sessions never wait for Redis, and a Redis outage leaves them (and keys) working.

pub mod ops_center;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use crate::caller::{IdentitySource, Principal};
use crate::config::OpsCenterSessions;
use crate::crypto::session_token;
use crate::db;
use crate::error::{Error, Result};
use crate::storage::sessions;

pub use ops_center::OpsCenter;

/// A resolved session: who, from where, and until when the answer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub principal: Principal,
    pub source: IdentitySource,
    /// When the session ends (Ops-Center's: when Redis says its key expires; a key without a
    /// TTL ends never, as far as keyhouse can tell).
    pub until: DateTime<Utc>,
}

/// The sign-in capability: the session stores keyhouse reads, in the order above.
#[derive(Clone)]
pub struct Sessions {
    db: DatabaseConnection,
    ops_center: Option<OpsCenter>,
}

impl Sessions {
    /// Keyhouse's own sessions, and Ops-Center's when configured. A bad Ops-Center setting, or
    /// a Redis that cannot be reached at start, refuses to start, naming the setting.
    pub async fn start(db: DatabaseConnection, ops_center: &OpsCenterSessions) -> Result<Self> {
        Ok(Self {
            db,
            ops_center: OpsCenter::connect(ops_center).await?,
        })
    }

    /// The session `token` names, or `Unauthenticated`; `PermissionDenied` for an Ops-Center
    /// user whose role and groups map to nothing; `Unavailable` when the store that holds it
    /// cannot answer.
    pub async fn resolve(&self, token: &str) -> Result<Resolved> {
        let Some(ops_center) = &self.ops_center else {
            return self.own(token).await;
        };
        if token.starts_with(session_token::PREFIX) {
            match self.own(token).await {
                Err(Error::Unauthenticated(_)) => {}
                found => return found,
            }
        }
        ops_center.find(token).await
    }

    async fn own(&self, token: &str) -> Result<Resolved> {
        let digest = session_token::digest(token);
        let (principal, until) = db::guarded(&self.db, sessions::find(&self.db, &digest)).await?;
        Ok(Resolved {
            principal,
            source: IdentitySource::Session,
            until,
        })
    }
}
