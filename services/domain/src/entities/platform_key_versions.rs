use sea_orm::entity::prelude::*;

/// Every value a platform key has had, encrypted, for history and rollback.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "platform_key_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub version: i64,
    pub ciphertext: String,
    pub key_preview: String,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub rolled_back_from: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
