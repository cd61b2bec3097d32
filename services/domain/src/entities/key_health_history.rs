use sea_orm::entity::prelude::*;

/// One live test of a provider key: what was tested and how it went, never the key.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "key_health_history")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `platform` or `byok`.
    pub kind: String,
    /// The owner of a BYOK key; empty for a platform key.
    pub user_id: String,
    /// The platform key's name, or the BYOK key's provider.
    pub name: String,
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub latency_ms: i64,
    /// The provider's HTTP status; 0 when it did not answer.
    pub status_code: i32,
    /// `auth`, `network`, `refused`, `timeout`, `server` or `http`; `None` when healthy.
    pub error_class: Option<String>,
    pub tested_at: DateTimeUtc,
    /// `schedule` or `manual`.
    pub trigger: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
