//! The first schema: user API keys, platform settings and their versions, BYOK provider keys,
//! sessions and the audit trail. Column names of `user_api_keys` and `platform_settings` follow
//! the Ops-Center tables keyhouse replaces.

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
        m.create_table(
            Table::create()
                .table(UserApiKeys::Table)
                .col(pk_uuid(UserApiKeys::Id))
                .col(string_len(UserApiKeys::UserId, 255))
                .col(string_len(UserApiKeys::KeyName, 255))
                .col(string_len(UserApiKeys::KeyHash, 255))
                .col(string_len(UserApiKeys::KeyPrefix, 32))
                .col(string_len(UserApiKeys::KeyLast4, 8))
                .col(json(UserApiKeys::Permissions))
                .col(timestamp_with_time_zone(UserApiKeys::CreatedAt))
                .col(timestamp_with_time_zone_null(UserApiKeys::LastUsed))
                .col(timestamp_with_time_zone_null(UserApiKeys::ExpiresAt))
                .col(boolean(UserApiKeys::IsActive))
                .col(timestamp_with_time_zone_null(UserApiKeys::RevokedAt))
                .col(json(UserApiKeys::Metadata))
                .to_owned(),
        )
        .await?;
        index(
            m,
            UserApiKeys::Table,
            "idx_user_api_keys_user_id",
            &[UserApiKeys::UserId],
        )
        .await?;
        index(
            m,
            UserApiKeys::Table,
            "idx_user_api_keys_key_prefix",
            &[UserApiKeys::KeyPrefix],
        )
        .await?;
        index(
            m,
            UserApiKeys::Table,
            "idx_user_api_keys_active_expires",
            &[UserApiKeys::IsActive, UserApiKeys::ExpiresAt],
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PlatformSettings::Table)
                .col(string_len(PlatformSettings::Key, 128).primary_key())
                .col(text(PlatformSettings::Value))
                .col(string_len(PlatformSettings::Category, 64))
                .col(boolean(PlatformSettings::IsSecret))
                .col(big_integer(PlatformSettings::Version))
                .col(string_len_null(PlatformSettings::UpdatedBy, 255))
                .col(timestamp_with_time_zone(PlatformSettings::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PlatformKeyVersions::Table)
                .col(pk_uuid(PlatformKeyVersions::Id))
                .col(string_len(PlatformKeyVersions::Name, 128))
                .col(big_integer(PlatformKeyVersions::Version))
                .col(text(PlatformKeyVersions::Ciphertext))
                .col(string_len(PlatformKeyVersions::KeyPreview, 32))
                .col(string_len(PlatformKeyVersions::CreatedBy, 255))
                .col(timestamp_with_time_zone(PlatformKeyVersions::CreatedAt))
                .col(big_integer_null(PlatformKeyVersions::RolledBackFrom))
                .to_owned(),
        )
        .await?;
        unique(
            m,
            PlatformKeyVersions::Table,
            "uq_platform_key_versions_name_version",
            &[PlatformKeyVersions::Name, PlatformKeyVersions::Version],
        )
        .await?;

        m.create_table(
            Table::create()
                .table(UserProviderKeys::Table)
                .col(pk_uuid(UserProviderKeys::Id))
                .col(string_len(UserProviderKeys::UserId, 255))
                .col(string_len(UserProviderKeys::Provider, 64))
                .col(text(UserProviderKeys::Ciphertext))
                .col(string_len(UserProviderKeys::KeyPreview, 32))
                .col(string_len_null(UserProviderKeys::Label, 255))
                .col(string_len_null(UserProviderKeys::Endpoint, 2048))
                .col(timestamp_with_time_zone(UserProviderKeys::AddedAt))
                .col(timestamp_with_time_zone(UserProviderKeys::UpdatedAt))
                .col(timestamp_with_time_zone_null(UserProviderKeys::LastTested))
                .col(string_len(UserProviderKeys::TestStatus, 16))
                .col(text_null(UserProviderKeys::TestMessage))
                .to_owned(),
        )
        .await?;
        unique(
            m,
            UserProviderKeys::Table,
            "uq_user_provider_keys_user_provider",
            &[UserProviderKeys::UserId, UserProviderKeys::Provider],
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(string_len(Sessions::TokenHash, 64).primary_key())
                .col(string_len(Sessions::UserId, 255))
                .col(string_len(Sessions::Email, 320))
                .col(string_len(Sessions::Role, 16))
                .col(timestamp_with_time_zone(Sessions::CreatedAt))
                .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                .to_owned(),
        )
        .await?;
        index(
            m,
            Sessions::Table,
            "idx_sessions_expires_at",
            &[Sessions::ExpiresAt],
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AuditEvents::Table)
                .col(pk_uuid(AuditEvents::Id))
                .col(timestamp_with_time_zone(AuditEvents::OccurredAt))
                .col(string_len(AuditEvents::Actor, 255))
                .col(string_len(AuditEvents::Action, 64))
                .col(string_len(AuditEvents::Target, 255))
                .col(string_len(AuditEvents::RequestId, 64))
                .col(json(AuditEvents::Details))
                .to_owned(),
        )
        .await?;
        index(
            m,
            AuditEvents::Table,
            "idx_audit_events_occurred_at",
            &[AuditEvents::OccurredAt],
        )
        .await?;
        index(
            m,
            AuditEvents::Table,
            "idx_audit_events_actor",
            &[AuditEvents::Actor],
        )
        .await?;
        index(
            m,
            AuditEvents::Table,
            "idx_audit_events_target",
            &[AuditEvents::Target],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            Sessions::Table.into_iden(),
            UserProviderKeys::Table.into_iden(),
            PlatformKeyVersions::Table.into_iden(),
            PlatformSettings::Table.into_iden(),
            UserApiKeys::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

async fn index<T: Iden + Copy + 'static>(
    m: &SchemaManager<'_>,
    table: T,
    name: &str,
    cols: &[T],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(*col);
    }
    m.create_index(stmt.to_owned()).await
}

async fn unique<T: Iden + Copy + 'static>(
    m: &SchemaManager<'_>,
    table: T,
    name: &str,
    cols: &[T],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table).unique();
    for col in cols {
        stmt.col(*col);
    }
    m.create_index(stmt.to_owned()).await
}

#[derive(DeriveIden, Clone, Copy)]
enum UserApiKeys {
    Table,
    Id,
    UserId,
    KeyName,
    KeyHash,
    KeyPrefix,
    KeyLast4,
    Permissions,
    CreatedAt,
    LastUsed,
    ExpiresAt,
    IsActive,
    RevokedAt,
    Metadata,
}

#[derive(DeriveIden, Clone, Copy)]
enum PlatformSettings {
    Table,
    Key,
    Value,
    Category,
    IsSecret,
    Version,
    UpdatedBy,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum PlatformKeyVersions {
    Table,
    Id,
    Name,
    Version,
    Ciphertext,
    KeyPreview,
    CreatedBy,
    CreatedAt,
    RolledBackFrom,
}

#[derive(DeriveIden, Clone, Copy)]
enum UserProviderKeys {
    Table,
    Id,
    UserId,
    Provider,
    Ciphertext,
    KeyPreview,
    Label,
    Endpoint,
    AddedAt,
    UpdatedAt,
    LastTested,
    TestStatus,
    TestMessage,
}

#[derive(DeriveIden, Clone, Copy)]
enum Sessions {
    Table,
    TokenHash,
    UserId,
    Email,
    Role,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditEvents {
    Table,
    Id,
    OccurredAt,
    Actor,
    Action,
    Target,
    RequestId,
    Details,
}
