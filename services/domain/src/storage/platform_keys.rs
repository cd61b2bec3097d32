//! Queries over `platform_settings` (the current value of each platform key) and
//! `platform_key_versions` (every value it has had).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use crate::entities::{platform_key_versions as versions, platform_settings as settings};
use crate::error::Result;

pub const CATEGORY: &str = "platform_keys";

#[tracing::instrument(name = "platform_keys.current", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn current(conn: &impl ConnectionTrait, name: &str) -> Result<Option<settings::Model>> {
    Ok(settings::Entity::find_by_id(name.to_owned())
        .one(conn)
        .await?)
}

#[tracing::instrument(name = "platform_keys.all_current", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn all_current(conn: &impl ConnectionTrait) -> Result<Vec<settings::Model>> {
    Ok(settings::Entity::find()
        .filter(settings::Column::Category.eq(CATEGORY))
        .all(conn)
        .await?)
}

#[tracing::instrument(name = "platform_keys.versions", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn versions(conn: &impl ConnectionTrait, name: &str) -> Result<Vec<versions::Model>> {
    Ok(versions::Entity::find()
        .filter(versions::Column::Name.eq(name))
        .order_by_desc(versions::Column::Version)
        .all(conn)
        .await?)
}

#[tracing::instrument(name = "platform_keys.version", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn version(
    conn: &impl ConnectionTrait,
    name: &str,
    version: i64,
) -> Result<Option<versions::Model>> {
    Ok(versions::Entity::find()
        .filter(versions::Column::Name.eq(name))
        .filter(versions::Column::Version.eq(version))
        .one(conn)
        .await?)
}

/// The preview of each current value, by name, in one query.
#[tracing::instrument(name = "platform_keys.previews", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn previews(
    conn: &impl ConnectionTrait,
    current: &[settings::Model],
) -> Result<HashMap<String, String>> {
    if current.is_empty() {
        return Ok(HashMap::new());
    }
    let pairs = current.iter().fold(Condition::any(), |any, row| {
        any.add(
            Condition::all()
                .add(versions::Column::Name.eq(row.key.as_str()))
                .add(versions::Column::Version.eq(row.version)),
        )
    });
    let rows: Vec<(String, String)> = versions::Entity::find()
        .select_only()
        .column(versions::Column::Name)
        .column(versions::Column::KeyPreview)
        .filter(pairs)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

pub struct NewVersion<'a> {
    pub name: &'a str,
    pub ciphertext: String,
    pub key_preview: String,
    pub created_by: &'a str,
    pub rolled_back_from: Option<i64>,
    pub at: DateTime<Utc>,
}

/// Records a new version and makes it current; returns its number. Run it in a transaction.
#[tracing::instrument(name = "platform_keys.store", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn store(conn: &impl ConnectionTrait, new: NewVersion<'_>) -> Result<i64> {
    let latest: Option<i64> = versions::Entity::find()
        .select_only()
        .column_as(versions::Column::Version.max(), "max")
        .filter(versions::Column::Name.eq(new.name))
        .into_tuple::<Option<i64>>()
        .one(conn)
        .await?
        .flatten();
    let number = latest.unwrap_or(0) + 1;
    versions::ActiveModel {
        id: Set(uuid::Uuid::new_v4()),
        name: Set(new.name.to_owned()),
        version: Set(number),
        ciphertext: Set(new.ciphertext.clone()),
        key_preview: Set(new.key_preview),
        created_by: Set(new.created_by.to_owned()),
        created_at: Set(new.at),
        rolled_back_from: Set(new.rolled_back_from),
    }
    .insert(conn)
    .await?;
    let row = settings::ActiveModel {
        key: Set(new.name.to_owned()),
        value: Set(new.ciphertext),
        category: Set(CATEGORY.to_owned()),
        is_secret: Set(true),
        version: Set(number),
        updated_by: Set(Some(new.created_by.to_owned())),
        updated_at: Set(new.at),
    };
    settings::Entity::insert(row)
        .on_conflict(
            OnConflict::column(settings::Column::Key)
                .update_columns([
                    settings::Column::Value,
                    settings::Column::Category,
                    settings::Column::IsSecret,
                    settings::Column::Version,
                    settings::Column::UpdatedBy,
                    settings::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await?;
    Ok(number)
}

/// Removes the current value (history stays); returns whether there was one.
#[tracing::instrument(name = "platform_keys.delete_current", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn delete_current(conn: &impl ConnectionTrait, name: &str) -> Result<bool> {
    let res = settings::Entity::delete_by_id(name.to_owned())
        .exec(conn)
        .await?;
    Ok(res.rows_affected > 0)
}
