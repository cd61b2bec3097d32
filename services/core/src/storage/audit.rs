//! The audit trail: one row per state change or secret read, written in the same transaction
//! as the change. Details never hold a secret.

use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

use crate::auth::Caller;
use crate::entities::audit_events;
use crate::error::Result;

pub async fn record(
    conn: &impl ConnectionTrait,
    caller: &Caller,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<()> {
    audit_events::ActiveModel {
        id: Set(uuid::Uuid::new_v4()),
        occurred_at: Set(super::now()),
        actor: Set(caller.principal.user_id.clone()),
        action: Set(action.to_owned()),
        target: Set(target.to_owned()),
        request_id: Set(caller.request_id.clone()),
        details: Set(details),
    }
    .insert(conn)
    .await?;
    Ok(())
}
