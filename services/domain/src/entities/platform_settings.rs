use sea_orm::entity::prelude::*;

/// The current stored value of each platform key (the Ops-Center table, plus version columns).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "platform_settings")]
pub struct Model {
    /// The catalog's internal name, e.g. `openrouter`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// Fernet ciphertext when `is_secret`.
    pub value: String,
    pub category: String,
    pub is_secret: bool,
    /// The `platform_key_versions.version` this value came from.
    pub version: i64,
    pub updated_by: Option<String>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
