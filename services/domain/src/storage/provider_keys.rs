//! Queries over `user_provider_keys`: one row per user and provider, always scoped to its owner.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use crate::entities::user_provider_keys::{ActiveModel, Column, Entity, Model};
use crate::error::Result;

#[tracing::instrument(name = "provider_keys.find", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn find(
    conn: &impl ConnectionTrait,
    user_id: &str,
    provider: &str,
) -> Result<Option<Model>> {
    Ok(Entity::find()
        .filter(Column::UserId.eq(user_id))
        .filter(Column::Provider.eq(provider))
        .one(conn)
        .await?)
}

#[tracing::instrument(name = "provider_keys.list", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn list(conn: &impl ConnectionTrait, user_id: &str) -> Result<Vec<Model>> {
    Ok(Entity::find()
        .filter(Column::UserId.eq(user_id))
        .order_by_asc(Column::Provider)
        .all(conn)
        .await?)
}

/// Stores (or replaces) a user's key for a provider; a replaced key is untested again.
#[tracing::instrument(name = "provider_keys.upsert", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn upsert(conn: &impl ConnectionTrait, row: Model) -> Result<()> {
    let model = ActiveModel {
        id: Set(row.id),
        user_id: Set(row.user_id),
        provider: Set(row.provider),
        ciphertext: Set(row.ciphertext),
        key_preview: Set(row.key_preview),
        label: Set(row.label),
        endpoint: Set(row.endpoint),
        added_at: Set(row.added_at),
        updated_at: Set(row.updated_at),
        last_tested: Set(None),
        test_status: Set("unknown".into()),
        test_message: Set(None),
        health_checks: Set(row.health_checks),
    };
    Entity::insert(model)
        .on_conflict(
            OnConflict::columns([Column::UserId, Column::Provider])
                .update_columns([
                    Column::Ciphertext,
                    Column::KeyPreview,
                    Column::Label,
                    Column::Endpoint,
                    Column::UpdatedAt,
                    Column::LastTested,
                    Column::TestStatus,
                    Column::TestMessage,
                    Column::HealthChecks,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(name = "provider_keys.delete", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn delete(conn: &impl ConnectionTrait, user_id: &str, provider: &str) -> Result<bool> {
    let res = Entity::delete_many()
        .filter(Column::UserId.eq(user_id))
        .filter(Column::Provider.eq(provider))
        .exec(conn)
        .await?;
    Ok(res.rows_affected > 0)
}

#[tracing::instrument(name = "provider_keys.record_test", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn record_test(
    conn: &impl ConnectionTrait,
    row: &Model,
    status: &str,
    message: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    // Only onto the key that was tested: if it was deleted or replaced while the test ran, the
    // result belongs to nothing stored now and is dropped.
    Entity::update_many()
        .set(ActiveModel {
            last_tested: Set(Some(at)),
            test_status: Set(status.to_owned()),
            test_message: Set(Some(message.to_owned())),
            ..Default::default()
        })
        .filter(Column::Id.eq(row.id))
        .filter(Column::Ciphertext.eq(row.ciphertext.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}
