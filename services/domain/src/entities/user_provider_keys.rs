use sea_orm::entity::prelude::*;

/// A user's own key for one provider (BYOK), encrypted.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "user_provider_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: String,
    pub provider: String,
    pub ciphertext: String,
    pub key_preview: String,
    pub label: Option<String>,
    pub endpoint: Option<String>,
    pub added_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_tested: Option<DateTimeUtc>,
    pub test_status: String,
    pub test_message: Option<String>,
    /// The owner opted in to scheduled health checks of this key.
    pub health_checks: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
