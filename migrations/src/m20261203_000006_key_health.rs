//! Health checks of provider keys: the current health of each checked key (`key_health`, which
//! also holds the claim that lets one replica test a key per period), one row per test
//! (`key_health_history`: what was tested, the result, never the key), and the BYOK owner's
//! opt-in (`user_provider_keys.health_checks`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(KeyHealth::Table)
                // `platform` (name: the platform key) or `byok` (name: the provider).
                .col(string_len(KeyHealth::Kind, 16))
                // Empty for a platform key.
                .col(string_len(KeyHealth::UserId, 255))
                .col(string_len(KeyHealth::Name, 128))
                // `unknown`, `healthy` or `unhealthy`.
                .col(string_len(KeyHealth::Status, 16))
                .col(timestamp_with_time_zone_null(KeyHealth::LastTested))
                .col(big_integer_null(KeyHealth::LastLatencyMs))
                .col(integer_null(KeyHealth::LastStatusCode))
                .col(string_len_null(KeyHealth::LastErrorClass, 32))
                .col(timestamp_with_time_zone_null(KeyHealth::ChangedAt))
                // Checked on the schedule: platform keys always, BYOK keys when opted in.
                .col(boolean(KeyHealth::Scheduled))
                // The claim: a replica moves it forward with a conditional UPDATE before testing.
                .col(timestamp_with_time_zone(KeyHealth::NextCheckAt))
                .primary_key(
                    Index::create()
                        .col(KeyHealth::Kind)
                        .col(KeyHealth::UserId)
                        .col(KeyHealth::Name),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_key_health_due")
                .table(KeyHealth::Table)
                .col(KeyHealth::Scheduled)
                .col(KeyHealth::NextCheckAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(KeyHealthHistory::Table)
                .col(pk_uuid(KeyHealthHistory::Id))
                .col(string_len(KeyHealthHistory::Kind, 16))
                .col(string_len(KeyHealthHistory::UserId, 255))
                .col(string_len(KeyHealthHistory::Name, 128))
                .col(string_len(KeyHealthHistory::Status, 16))
                .col(big_integer(KeyHealthHistory::LatencyMs))
                // 0 when the provider did not answer.
                .col(integer(KeyHealthHistory::StatusCode))
                // `auth`, `network`, `refused`, `timeout`, `server` or `http`; null when healthy.
                .col(string_len_null(KeyHealthHistory::ErrorClass, 32))
                .col(timestamp_with_time_zone(KeyHealthHistory::TestedAt))
                // `schedule` or `manual`.
                .col(string_len(KeyHealthHistory::Trigger, 16))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_key_health_history_key_tested_at")
                .table(KeyHealthHistory::Table)
                .col(KeyHealthHistory::Kind)
                .col(KeyHealthHistory::UserId)
                .col(KeyHealthHistory::Name)
                .col(KeyHealthHistory::TestedAt)
                .to_owned(),
        )
        .await?;

        m.alter_table(
            Table::alter()
                .table(UserProviderKeys::Table)
                .add_column(boolean(UserProviderKeys::HealthChecks).default(false))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(UserProviderKeys::Table)
                .drop_column(UserProviderKeys::HealthChecks)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(KeyHealthHistory::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(KeyHealth::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum KeyHealth {
    Table,
    Kind,
    UserId,
    Name,
    Status,
    LastTested,
    LastLatencyMs,
    LastStatusCode,
    LastErrorClass,
    ChangedAt,
    Scheduled,
    NextCheckAt,
}

#[derive(DeriveIden)]
enum KeyHealthHistory {
    Table,
    Id,
    Kind,
    UserId,
    Name,
    Status,
    LatencyMs,
    StatusCode,
    ErrorClass,
    TestedAt,
    Trigger,
}

#[derive(DeriveIden)]
enum UserProviderKeys {
    Table,
    HealthChecks,
}
