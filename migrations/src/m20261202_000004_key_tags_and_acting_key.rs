//! A keyed tag of each user key's secret, checked before bcrypt so that a forged key costs no
//! bcrypt; and the key that acted, on audit events made by a call authenticated with a key.

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
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
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

#[derive(DeriveIden)]
enum UserApiKeys {
    Table,
    KeyTag,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    ViaKeyId,
}
