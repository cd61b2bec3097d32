//! Per-key limits (requests per minute, allowed networks) and hourly usage counts, written
//! behind in batches by the verification path.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too (the default wraps only PostgreSQL's): a migration stopped
    /// half-way would leave a schema that every later run trips over.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .add_column(integer_null(UserApiKeys::RateLimitPerMinute))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .add_column(json_null(UserApiKeys::AllowedIps))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ApiKeyUsageHourly::Table)
                .col(uuid(ApiKeyUsageHourly::KeyId))
                .col(timestamp_with_time_zone(ApiKeyUsageHourly::Hour))
                .col(big_integer(ApiKeyUsageHourly::Requests))
                .primary_key(
                    Index::create()
                        .col(ApiKeyUsageHourly::KeyId)
                        .col(ApiKeyUsageHourly::Hour),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ApiKeyUsageHourly::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .drop_column(UserApiKeys::AllowedIps)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(UserApiKeys::Table)
                .drop_column(UserApiKeys::RateLimitPerMinute)
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum UserApiKeys {
    Table,
    RateLimitPerMinute,
    AllowedIps,
}

#[derive(DeriveIden)]
enum ApiKeyUsageHourly {
    Table,
    KeyId,
    Hour,
    Requests,
}
