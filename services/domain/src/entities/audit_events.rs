use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub occurred_at: DateTimeUtc,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: String,
    /// A JSON object of non-secret detail.
    pub details: Json,
    /// The user key that authenticated the call, when one did.
    pub via_key_id: Option<Uuid>,
    /// Where the actor's identity came from (`IdentitySource::as_str`); null on events
    /// recorded before it was kept.
    pub identity_source: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
