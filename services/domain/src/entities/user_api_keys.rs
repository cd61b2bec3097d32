use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "user_api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: String,
    pub key_name: String,
    /// bcrypt of the full key; the key itself is never stored.
    pub key_hash: String,
    /// `uc_` + 12 hex, for lookup.
    pub key_prefix: String,
    /// The last four characters, for the preview.
    pub key_last4: String,
    /// A JSON array of scope names.
    pub permissions: Json,
    pub created_at: DateTimeUtc,
    pub last_used: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    pub is_active: bool,
    pub revoked_at: Option<DateTimeUtc>,
    pub metadata: Json,
    /// Requests allowed per minute; `None` is unlimited.
    pub rate_limit_per_minute: Option<i32>,
    /// A JSON array of CIDRs the key may be used from; `None` is anywhere.
    pub allowed_ips: Option<Json>,
    /// `crypto::key_tag` of the key, checked before bcrypt; `None` for keys made before tags.
    pub key_tag: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
