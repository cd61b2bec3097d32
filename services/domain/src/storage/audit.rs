//! The audit trail: one row per state change or secret read, written in the same transaction
//! as the change. Details never hold a secret.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

use crate::caller::Caller;
use crate::entities::audit_events;
use crate::error::Result;
use crate::paging::{self, Cursor};

#[tracing::instrument(name = "audit.record", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
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
        via_key_id: Set(caller.via_key.as_ref().map(|k| k.key_id)),
        identity_source: Set(Some(caller.source.as_str().to_owned())),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// What ListAuditEvents filters on; `None` means any.
#[derive(Debug, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One page of events, newest first; `limit + 1` rows are read to know if more follow.
#[tracing::instrument(name = "audit.list", skip_all, fields(otel.kind = "client", db.system.name = super::system(conn)))]
pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &Filter,
    after: Option<Cursor>,
    limit: u64,
) -> Result<Vec<audit_events::Model>> {
    use audit_events::Column;
    // PostgreSQL refuses a NUL in a text parameter, so no stored value holds one: such a filter
    // matches nothing, on either database, and must not reach PostgreSQL as a failed query.
    let texts = [&filter.actor, &filter.action, &filter.target];
    if texts
        .iter()
        .any(|t| t.as_deref().is_some_and(|t| t.contains('\0')))
    {
        return Ok(Vec::new());
    }
    let mut query = audit_events::Entity::find();
    if let Some(actor) = &filter.actor {
        query = query.filter(Column::Actor.eq(actor.as_str()));
    }
    if let Some(action) = &filter.action {
        query = query.filter(Column::Action.eq(action.as_str()));
    }
    if let Some(target) = &filter.target {
        query = query.filter(Column::Target.eq(target.as_str()));
    }
    if let Some(since) = filter.since {
        query = query.filter(Column::OccurredAt.gte(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(Column::OccurredAt.lt(until));
    }
    Ok(
        paging::keyset(query, Column::OccurredAt, Column::Id, after, limit)
            .all(conn)
            .await?,
    )
}
