//! A keyed tag of each user key's secret, checked before bcrypt so that a forged key costs no
//! bcrypt; the key that acted, on audit events made by a call authenticated with a key; and an
//! index that lets the active-keys limit count only a user's active keys (at most the limit),
//! not every key they ever revoked.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Null for keys made before: they gain their tag at their next successful verification.
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .add_column(string_null(UserApiKeys::KeyTag))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(AuditEvents::Table)
                .add_column(uuid_null(AuditEvents::ViaKeyId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name(ACTIVE_INDEX)
                .table(UserApiKeys::Table)
                .col(UserApiKeys::UserId)
                .col(UserApiKeys::IsActive)
                .col(UserApiKeys::ExpiresAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(ACTIVE_INDEX)
                .table(UserApiKeys::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(AuditEvents::Table)
                .drop_column(AuditEvents::ViaKeyId)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .drop_column(UserApiKeys::KeyTag)
                .to_owned(),
        )
        .await
    }
}

const ACTIVE_INDEX: &str = "idx_user_api_keys_owner_active";

#[derive(DeriveIden)]
enum UserApiKeys {
    Table,
    KeyTag,
    UserId,
    IsActive,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    ViaKeyId,
}
