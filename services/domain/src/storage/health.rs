//! Queries over `key_health` (the current health of each checked key, and the claim on its next
//! scheduled test) and `key_health_history` (one row per test). Nothing here holds a key.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use crate::entities::{key_health, key_health_history};
use crate::error::Result;
use crate::paging::{self, Cursor};

/// Which key: (`kind`, owner or empty, platform key name or provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key<'a> {
    pub kind: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
}

fn of(key: Key<'_>) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(key_health::Column::Kind.eq(key.kind))
        .add(key_health::Column::UserId.eq(key.user_id))
        .add(key_health::Column::Name.eq(key.name))
}

#[tracing::instrument(name = "health.get", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn get(conn: &impl ConnectionTrait, key: Key<'_>) -> Result<Option<key_health::Model>> {
    Ok(key_health::Entity::find().filter(of(key)).one(conn).await?)
}

/// The current health of every key of `kind` (of `user_id`'s when given).
#[tracing::instrument(name = "health.list", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn list(
    conn: &impl ConnectionTrait,
    kind: &str,
    user_id: Option<&str>,
) -> Result<Vec<key_health::Model>> {
    let mut query = key_health::Entity::find().filter(key_health::Column::Kind.eq(kind));
    if let Some(user_id) = user_id {
        query = query.filter(key_health::Column::UserId.eq(user_id));
    }
    Ok(query.all(conn).await?)
}

/// Adds a row (`unknown`) for a key not checked before; an existing row is left as it is.
#[tracing::instrument(name = "health.ensure", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn ensure(
    conn: &impl ConnectionTrait,
    key: Key<'_>,
    scheduled: bool,
    next_check_at: DateTime<Utc>,
) -> Result<()> {
    key_health::Entity::insert(fresh(key, scheduled, next_check_at))
        .on_conflict(
            OnConflict::columns([
                key_health::Column::Kind,
                key_health::Column::UserId,
                key_health::Column::Name,
            ])
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec(conn)
        .await?;
    Ok(())
}

fn fresh(key: Key<'_>, scheduled: bool, next_check_at: DateTime<Utc>) -> key_health::ActiveModel {
    key_health::ActiveModel {
        kind: Set(key.kind.to_owned()),
        user_id: Set(key.user_id.to_owned()),
        name: Set(key.name.to_owned()),
        status: Set("unknown".into()),
        last_tested: Set(None),
        last_latency_ms: Set(None),
        last_status_code: Set(None),
        last_error_class: Set(None),
        changed_at: Set(None),
        scheduled: Set(scheduled),
        next_check_at: Set(next_check_at),
    }
}

/// Starts a key's health afresh (`unknown`, a new key replaced the old one) with `scheduled`,
/// its first scheduled test due at `next_check_at`.
#[tracing::instrument(name = "health.reset", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn reset(
    conn: &impl ConnectionTrait,
    key: Key<'_>,
    scheduled: bool,
    next_check_at: DateTime<Utc>,
) -> Result<()> {
    remove(conn, key).await?;
    fresh(key, scheduled, next_check_at).insert(conn).await?;
    Ok(())
}

/// Makes a key's next scheduled test due at `at` (a new value was stored).
#[tracing::instrument(name = "health.due_at", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn due_at(conn: &impl ConnectionTrait, key: Key<'_>, at: DateTime<Utc>) -> Result<()> {
    key_health::Entity::update_many()
        .set(key_health::ActiveModel {
            next_check_at: Set(at),
            ..Default::default()
        })
        .filter(of(key))
        .exec(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(name = "health.remove", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn remove(conn: &impl ConnectionTrait, key: Key<'_>) -> Result<()> {
    key_health::Entity::delete_many()
        .filter(of(key))
        .exec(conn)
        .await?;
    Ok(())
}

/// Scheduled keys of `kind` whose next test is due at `now`, the longest-waiting first.
#[tracing::instrument(name = "health.due", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn due(
    conn: &impl ConnectionTrait,
    kind: &str,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<key_health::Model>> {
    Ok(key_health::Entity::find()
        .filter(key_health::Column::Scheduled.eq(true))
        .filter(key_health::Column::NextCheckAt.lte(now))
        .filter(key_health::Column::Kind.eq(kind))
        .order_by_asc(key_health::Column::NextCheckAt)
        .limit(limit)
        .all(conn)
        .await?)
}

/// Claims `row`'s due test for this replica by moving its next test to `next`, only if no other
/// replica moved it since `row` was read: one statement, so exactly one replica gets `true`.
#[tracing::instrument(name = "health.claim", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn claim(
    conn: &impl ConnectionTrait,
    row: &key_health::Model,
    next: DateTime<Utc>,
) -> Result<bool> {
    let key = Key {
        kind: &row.kind,
        user_id: &row.user_id,
        name: &row.name,
    };
    let res = key_health::Entity::update_many()
        .set(key_health::ActiveModel {
            next_check_at: Set(next),
            ..Default::default()
        })
        .filter(of(key))
        .filter(key_health::Column::NextCheckAt.eq(row.next_check_at))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

/// One test's result, as `set_current` stores it.
pub struct Current<'a> {
    pub status: &'a str,
    pub tested_at: DateTime<Utc>,
    pub latency_ms: i64,
    pub status_code: i32,
    pub error_class: Option<&'a str>,
}

/// One test's result as the current health, only if the status is still `expected`: `false`
/// when another test changed it since it was read (read again and retry).
#[tracing::instrument(name = "health.set_current", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn set_current(
    conn: &impl ConnectionTrait,
    key: Key<'_>,
    expected: &str,
    current: &Current<'_>,
) -> Result<bool> {
    let mut set = key_health::ActiveModel {
        status: Set(current.status.to_owned()),
        last_tested: Set(Some(current.tested_at)),
        last_latency_ms: Set(Some(current.latency_ms)),
        last_status_code: Set(Some(current.status_code)),
        last_error_class: Set(current.error_class.map(str::to_owned)),
        ..Default::default()
    };
    if expected != current.status {
        set.changed_at = Set(Some(current.tested_at));
    }
    let res = key_health::Entity::update_many()
        .set(set)
        .filter(of(key))
        .filter(key_health::Column::Status.eq(expected))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

#[tracing::instrument(name = "health.add_history", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn add_history(
    conn: &impl ConnectionTrait,
    row: key_health_history::Model,
) -> Result<()> {
    key_health_history::ActiveModel {
        id: Set(row.id),
        kind: Set(row.kind),
        user_id: Set(row.user_id),
        name: Set(row.name),
        status: Set(row.status),
        latency_ms: Set(row.latency_ms),
        status_code: Set(row.status_code),
        error_class: Set(row.error_class),
        tested_at: Set(row.tested_at),
        trigger: Set(row.trigger),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// One page of a key's tests, newest first; `limit + 1` rows are read to know if more follow.
#[tracing::instrument(name = "health.history", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn history(
    conn: &impl ConnectionTrait,
    key: Key<'_>,
    after: Option<Cursor>,
    limit: u64,
) -> Result<Vec<key_health_history::Model>> {
    use key_health_history::Column;
    let query = key_health_history::Entity::find()
        .filter(Column::Kind.eq(key.kind))
        .filter(Column::UserId.eq(key.user_id))
        .filter(Column::Name.eq(key.name));
    Ok(
        paging::keyset(query, Column::TestedAt, Column::Id, after, limit)
            .all(conn)
            .await?,
    )
}
