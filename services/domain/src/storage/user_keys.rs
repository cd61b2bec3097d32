//! Queries over `user_api_keys`. Every lookup is scoped to its owner: another user's key is
//! simply not found.

use chrono::{DateTime, DurationRound, Utc};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DerivePartialModel, EntityTrait, QueryFilter, QueryOrder, Set,
};
use uuid::Uuid;

use crate::entities::user_api_keys::{self, ActiveModel, Column, Entity, Model};
use crate::error::Result;
use crate::paging::{self, Cursor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Expired,
    Revoked,
}

impl Status {
    pub fn of(is_active: bool, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        if !is_active {
            Status::Revoked
        } else if expires_at.is_some_and(|at| at <= now) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "expired" => Some(Status::Expired),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }

    fn condition(self, now: DateTime<Utc>) -> Condition {
        match self {
            Status::Revoked => Condition::all().add(Column::IsActive.eq(false)),
            Status::Expired => Condition::all()
                .add(Column::IsActive.eq(true))
                .add(Column::ExpiresAt.lte(now)),
            Status::Active => Condition::all().add(Column::IsActive.eq(true)).add(
                Condition::any()
                    .add(Column::ExpiresAt.is_null())
                    .add(Column::ExpiresAt.gt(now)),
            ),
        }
    }
}

#[tracing::instrument(name = "user_keys.insert", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn insert(conn: &impl ConnectionTrait, key: ActiveModel) -> Result<Model> {
    Ok(Entity::insert(key).exec_with_returning(conn).await?)
}

#[tracing::instrument(name = "user_keys.find_owned", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn find_owned(
    conn: &impl ConnectionTrait,
    user_id: &str,
    id: Uuid,
) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id)
        .filter(Column::UserId.eq(user_id))
        .one(conn)
        .await?)
}

/// What a listing shows of a key: every column but the hash, the owner and the metadata, which
/// a page of 500 would otherwise fetch and decode for nothing.
#[derive(Clone, Debug, DerivePartialModel)]
#[sea_orm(entity = "Entity")]
pub struct Listed {
    pub id: Uuid,
    pub key_name: String,
    pub key_prefix: String,
    pub key_last4: String,
    pub permissions: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub rate_limit_per_minute: Option<i32>,
    pub allowed_ips: Option<serde_json::Value>,
}

impl From<Model> for Listed {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            key_name: m.key_name,
            key_prefix: m.key_prefix,
            key_last4: m.key_last4,
            permissions: m.permissions,
            created_at: m.created_at,
            last_used: m.last_used,
            expires_at: m.expires_at,
            is_active: m.is_active,
            rate_limit_per_minute: m.rate_limit_per_minute,
            allowed_ips: m.allowed_ips,
        }
    }
}

/// One page of a user's keys, newest first; `limit + 1` rows are read to know if more follow.
#[tracing::instrument(name = "user_keys.list_page", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn list_page(
    conn: &impl ConnectionTrait,
    user_id: &str,
    status: Option<Status>,
    after: Option<Cursor>,
    limit: u64,
    now: DateTime<Utc>,
) -> Result<Vec<Listed>> {
    let mut query = Entity::find().filter(Column::UserId.eq(user_id));
    if let Some(status) = status {
        query = query.filter(status.condition(now));
    }
    Ok(
        paging::keyset(query, Column::CreatedAt, Column::Id, after, limit)
            .into_partial_model::<Listed>()
            .all(conn)
            .await?,
    )
}

/// Marks an active key revoked; returns whether a row changed.
#[tracing::instrument(name = "user_keys.revoke", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn revoke(
    conn: &impl ConnectionTrait,
    user_id: &str,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool> {
    let res = Entity::update_many()
        .col_expr(Column::IsActive, Expr::value(false))
        .col_expr(Column::RevokedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::UserId.eq(user_id))
        .filter(Column::IsActive.eq(true))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

/// The parts of a new secret that are stored.
pub struct NewSecret {
    pub key_hash: String,
    pub key_tag: String,
    pub key_prefix: String,
    pub key_last4: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Swaps the secret of an active key; returns the updated row, or `None` when the key is not
/// the caller's or is no longer active.
#[tracing::instrument(name = "user_keys.replace_secret", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn replace_secret(
    conn: &impl ConnectionTrait,
    user_id: &str,
    id: Uuid,
    secret: NewSecret,
) -> Result<Option<Model>> {
    let res = Entity::update_many()
        .set(user_api_keys::ActiveModel {
            key_hash: Set(secret.key_hash),
            key_tag: Set(Some(secret.key_tag)),
            key_prefix: Set(secret.key_prefix),
            key_last4: Set(secret.key_last4),
            expires_at: Set(secret.expires_at),
            ..Default::default()
        })
        .filter(Column::Id.eq(id))
        .filter(Column::UserId.eq(user_id))
        .filter(Column::IsActive.eq(true))
        .exec(conn)
        .await?;
    if res.rows_affected != 1 {
        return Ok(None);
    }
    find_owned(conn, user_id, id).await
}

/// Every key (any owner, any state) whose lookup prefix matches: almost always one.
#[tracing::instrument(name = "user_keys.find_by_prefix", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn find_by_prefix(conn: &impl ConnectionTrait, prefix: &str) -> Result<Vec<Model>> {
    Ok(Entity::find()
        .filter(Column::KeyPrefix.eq(prefix))
        .all(conn)
        .await?)
}

/// Any key by id, whoever owns it: for admins only.
#[tracing::instrument(name = "user_keys.find", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id).one(conn).await?)
}

/// A key's hourly usage in `[from, to)`, oldest first.
#[tracing::instrument(name = "user_keys.usage", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn usage(
    conn: &impl ConnectionTrait,
    id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<crate::entities::api_key_usage_hourly::Model>> {
    use crate::entities::api_key_usage_hourly as usage;
    Ok(usage::Entity::find()
        .filter(usage::Column::KeyId.eq(id))
        .filter(
            usage::Column::Hour.gte(
                from.duration_trunc(chrono::TimeDelta::hours(1))
                    .unwrap_or(from),
            ),
        )
        .filter(usage::Column::Hour.lt(to))
        .order_by_asc(usage::Column::Hour)
        .all(conn)
        .await?)
}

/// Stores a key's tag, if its secret is still the one that was checked.
#[tracing::instrument(name = "user_keys.set_tag", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn set_tag(
    conn: &impl ConnectionTrait,
    id: Uuid,
    key_hash: &str,
    tag: &str,
) -> Result<()> {
    Entity::update_many()
        .col_expr(Column::KeyTag, Expr::value(tag))
        .filter(Column::Id.eq(id))
        .filter(Column::KeyHash.eq(key_hash))
        .exec(conn)
        .await?;
    Ok(())
}

/// How many of a user's keys are active (not revoked, not expired) at `now`, counting no
/// further than `up_to`: a limit check costs the limit, not the user's history.
pub async fn count_active(
    conn: &impl ConnectionTrait,
    user_id: &str,
    now: DateTime<Utc>,
    up_to: u64,
) -> Result<u64> {
    count_owned(conn, user_id, Status::Active.condition(now), up_to).await
}

/// How many keys a user created since `since`, whatever became of them, counting no further
/// than `up_to`.
pub async fn count_created_since(
    conn: &impl ConnectionTrait,
    user_id: &str,
    since: DateTime<Utc>,
    up_to: u64,
) -> Result<u64> {
    count_owned(conn, user_id, Column::CreatedAt.gte(since).into(), up_to).await
}

#[tracing::instrument(name = "user_keys.count", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
async fn count_owned(
    conn: &impl ConnectionTrait,
    user_id: &str,
    condition: Condition,
    up_to: u64,
) -> Result<u64> {
    use sea_orm::{PaginatorTrait, QuerySelect};
    Ok(Entity::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::UserId.eq(user_id))
        .filter(condition)
        .limit(up_to)
        .count(conn)
        .await?)
}

/// Makes one user's key creations take turns until `conn`'s transaction ends, so that limits
/// counted inside it hold. SQLite's write transactions take turns already.
#[tracing::instrument(name = "user_keys.lock_owner", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn lock_owner(conn: &impl ConnectionTrait, user_id: &str) -> Result<()> {
    use sea_orm::{DbBackend, Statement};
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(hashtext('user_api_keys:' || $1))",
            [user_id.into()],
        ))
        .await?;
    }
    Ok(())
}
