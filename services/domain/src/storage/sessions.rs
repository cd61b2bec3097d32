//! Sessions: issued by the operator command (or the Ops-Center login flow), resolved on every
//! authenticated request, ended by `keyhouse session revoke` or by time (the server purges
//! expired rows and caps expiries beyond the longest a session may live).

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use sha2::{Digest, Sha256};
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
    let user_id = required_user(user_id)?;
    if ttl <= Duration::zero() {
        return Err(Error::invalid("ttl", "ttl must be positive"));
    }
    let token = session_token::generate()?;
    let now = super::now();
    sessions::ActiveModel {
        token_hash: Set(session_token::digest(&token)),
        user_id: Set(user_id.to_owned()),
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

/// What an operator sees of a session: never its token, nor the digest stored for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// `id_of` the session.
    pub id: String,
    pub user_id: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A session's id. Rows have none of their own (the token's digest is the key, and it stays out
/// of sight too), so the id is a hash of that digest cut to 16 hex digits: it tells a user's
/// sessions apart and leads back to neither the digest nor the token.
pub fn id_of(digest: &str) -> String {
    let mut id = hex::encode(Sha256::digest(format!("keyhouse session id\n{digest}")));
    id.truncate(16);
    id
}

/// The live sessions of `user_id`, oldest first.
#[tracing::instrument(name = "sessions.list", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn list(conn: &impl ConnectionTrait, user_id: &str) -> Result<Vec<SessionInfo>> {
    let user_id = required_user(user_id)?;
    let rows = sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::ExpiresAt.gt(super::now()))
        .order_by_asc(sessions::Column::CreatedAt)
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|s| SessionInfo {
            id: id_of(&s.token_hash),
            user_id: s.user_id,
            role: s.role,
            created_at: s.created_at,
            expires_at: s.expires_at,
        })
        .collect())
}

/// Ends the session `token` names; false when there is none (never issued, revoked, or expired
/// and purged).
#[tracing::instrument(name = "sessions.revoke", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn revoke(conn: &impl ConnectionTrait, token: &str) -> Result<bool> {
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::invalid("token", "token must not be empty"));
    }
    let res = sessions::Entity::delete_by_id(session_token::digest(token))
        .exec(conn)
        .await?;
    Ok(res.rows_affected > 0)
}

/// Ends the session of `user_id` with the id `id` (`id_of`); false when the user has none.
#[tracing::instrument(name = "sessions.revoke_id", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn revoke_id(conn: &impl ConnectionTrait, user_id: &str, id: &str) -> Result<bool> {
    let user_id = required_user(user_id)?;
    let found = sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user_id))
        .all(conn)
        .await?
        .into_iter()
        .find(|s| id_of(&s.token_hash) == id.trim());
    let Some(session) = found else {
        return Ok(false);
    };
    let res = sessions::Entity::delete_by_id(session.token_hash)
        .exec(conn)
        .await?;
    Ok(res.rows_affected > 0)
}

/// Ends every session of `user_id`; returns how many there were.
#[tracing::instrument(name = "sessions.revoke_user", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn revoke_user(conn: &impl ConnectionTrait, user_id: &str) -> Result<u64> {
    let user_id = required_user(user_id)?;
    let res = sessions::Entity::delete_many()
        .filter(sessions::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}

/// Deletes the sessions that have expired; returns how many.
#[tracing::instrument(name = "sessions.purge_expired", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn purge_expired(conn: &impl ConnectionTrait) -> Result<u64> {
    let res = sessions::Entity::delete_many()
        .filter(sessions::Column::ExpiresAt.lte(super::now()))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}

/// Brings every expiry later than `max_ttl` from now down to `max_ttl` from now; returns how
/// many sessions that shortened.
#[tracing::instrument(name = "sessions.cap_expiry", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn cap_expiry(conn: &impl ConnectionTrait, max_ttl: Duration) -> Result<u64> {
    let latest = super::now() + max_ttl;
    let res = sessions::Entity::update_many()
        .col_expr(sessions::Column::ExpiresAt, Expr::value(latest))
        .filter(sessions::Column::ExpiresAt.gt(latest))
        .exec(conn)
        .await?;
    Ok(res.rows_affected)
}

fn required_user(user_id: &str) -> Result<&str> {
    let user_id = user_id.trim();
    if user_id.is_empty() {
        return Err(Error::invalid("user", "user must not be empty"));
    }
    Ok(user_id)
}
