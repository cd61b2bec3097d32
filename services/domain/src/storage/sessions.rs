//! Sessions: issued by the operator command (or the Ops-Center login flow), resolved on every
//! authenticated request.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};
use zeroize::Zeroizing;

use crate::caller::{AuthFailure, Principal, Role};
use crate::crypto::session_token;
use crate::entities::sessions;
use crate::error::{Error, Result};

/// Stores a new session and returns its token, which exists nowhere else afterwards.
#[tracing::instrument(name = "sessions.create", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn create(
    conn: &impl ConnectionTrait,
    user_id: &str,
    email: &str,
    role: Role,
    ttl: Duration,
) -> Result<Zeroizing<String>> {
    if user_id.trim().is_empty() {
        return Err(Error::invalid("user", "user must not be empty"));
    }
    if ttl <= Duration::zero() {
        return Err(Error::invalid("ttl", "ttl must be positive"));
    }
    let token = session_token::generate()?;
    let now = super::now();
    sessions::ActiveModel {
        token_hash: Set(session_token::digest(&token)),
        user_id: Set(user_id.trim().to_owned()),
        email: Set(email.trim().to_owned()),
        role: Set(role.as_str().to_owned()),
        created_at: Set(now),
        expires_at: Set(now + ttl),
    }
    .insert(conn)
    .await?;
    Ok(token)
}

/// The principal of the live session stored under `digest` (`session_token::digest`), and
/// when the session ends; anything else is `Unauthenticated`.
#[tracing::instrument(name = "sessions.find", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn find(conn: &impl ConnectionTrait, digest: &str) -> Result<(Principal, DateTime<Utc>)> {
    let invalid = || Error::Unauthenticated(AuthFailure::InvalidSession);
    let session = sessions::Entity::find_by_id(digest.to_owned())
        .one(conn)
        .await?
        .ok_or_else(invalid)?;
    if session.expires_at <= super::now() {
        return Err(invalid());
    }
    let role = session.role.parse().map_err(|_| invalid())?;
    let principal = Principal {
        user_id: session.user_id,
        email: session.email,
        role,
    };
    Ok((principal, session.expires_at))
}
