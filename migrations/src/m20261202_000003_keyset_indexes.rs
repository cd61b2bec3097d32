//! Indexes that serve every keyset listing in its own order, so that a page costs the same on a
//! table of a million rows as on an empty one: a user's keys by (owner, created_at, id), and the
//! audit trail by (occurred_at, id), alone or after an actor, an action or a target. Each
//! replaces the single-column index it extends, where there was one.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (table, old index, new index, new columns)
const CHANGES: &[(&str, Option<&str>, &str, &[&str])] = &[
    (
        "user_api_keys",
        Some("idx_user_api_keys_user_id"),
        "idx_user_api_keys_owner_created",
        &["user_id", "created_at", "id"],
    ),
    (
        "audit_events",
        Some("idx_audit_events_occurred_at"),
        "idx_audit_events_time",
        &["occurred_at", "id"],
    ),
    (
        "audit_events",
        Some("idx_audit_events_actor"),
        "idx_audit_events_actor_time",
        &["actor", "occurred_at", "id"],
    ),
    (
        "audit_events",
        None,
        "idx_audit_events_action_time",
        &["action", "occurred_at", "id"],
    ),
    (
        "audit_events",
        Some("idx_audit_events_target"),
        "idx_audit_events_target_time",
        &["target", "occurred_at", "id"],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too, like every keyhouse migration.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, old, new, columns) in CHANGES {
            create(m, table, new, columns).await?;
            if let Some(old) = old {
                drop(m, table, old).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, old, new, columns) in CHANGES {
            if let Some(old) = old {
                create(m, table, old, &columns[..1]).await?;
            }
            drop(m, table, new).await?;
        }
        Ok(())
    }
}

async fn create(
    m: &SchemaManager<'_>,
    table: &str,
    name: &str,
    columns: &[&str],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(Alias::new(table));
    for column in columns {
        stmt.col(Alias::new(*column));
    }
    m.create_index(stmt.to_owned()).await
}

async fn drop(m: &SchemaManager<'_>, table: &str, name: &str) -> Result<(), DbErr> {
    m.drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
        .await
}
