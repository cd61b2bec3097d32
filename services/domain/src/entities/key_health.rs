use sea_orm::entity::prelude::*;

/// The current health of one checked provider key, and the claim that lets one replica test it
/// per period. Never the key itself.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "key_health")]
pub struct Model {
    /// `platform` or `byok`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// The owner of a BYOK key; empty for a platform key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// The platform key's name, or the BYOK key's provider.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// `unknown`, `healthy` or `unhealthy`.
    pub status: String,
    pub last_tested: Option<DateTimeUtc>,
    pub last_latency_ms: Option<i64>,
    pub last_status_code: Option<i32>,
    pub last_error_class: Option<String>,
    /// When `status` last changed.
    pub changed_at: Option<DateTimeUtc>,
    /// Tested on the schedule (platform keys always, BYOK keys when their owner opted in).
    pub scheduled: bool,
    /// When the next scheduled test is due; moved forward by the replica that claims it.
    pub next_check_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
