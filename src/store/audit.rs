//! The audit log: one row per change, written in the change's own transaction.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::StoreError;
use super::entities::audit_events;

pub use audit_events::Model as AuditRow;

/// Records an audit event and appends it to the change feed (`store::changes`), both in the
/// caller's transaction, so the feed holds exactly the committed changes (on PostgreSQL in one
/// statement: one round trip for both rows).
pub async fn insert<C: ConnectionTrait>(c: &C, row: AuditRow) -> Result<(), StoreError> {
    super::changes::record_with_audit(c, row).await
}

/// Records an audit event that stays out of the change feed: sign-in activity, which only
/// holders of `audit.view` may see and which changes no decision or roster.
pub async fn insert_without_feed<C: ConnectionTrait>(
    c: &C,
    row: AuditRow,
) -> Result<(), StoreError> {
    audit_events::Entity::insert(audit_events::ActiveModel {
        id: Set(row.id),
        org_id: Set(row.org_id),
        actor_user_id: Set(row.actor_user_id),
        action: Set(row.action),
        target: Set(row.target),
        before: Set(row.before),
        after: Set(row.after),
        occurred_at: Set(row.occurred_at),
        request_id: Set(row.request_id),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor_user_id: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One page of an org's events, newest first (ids are time-ordered UUIDv7).
pub async fn list<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    filter: &AuditFilter,
    before_id: Option<&str>,
    limit: u64,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut q = audit_events::Entity::find().filter(audit_events::Column::OrgId.eq(org_id));
    if let Some(a) = &filter.actor_user_id {
        q = q.filter(audit_events::Column::ActorUserId.eq(a.as_str()));
    }
    if let Some(a) = &filter.action {
        q = q.filter(audit_events::Column::Action.eq(a.as_str()));
    }
    if let Some(s) = filter.since {
        q = q.filter(audit_events::Column::OccurredAt.gte(s));
    }
    if let Some(u) = filter.until {
        q = q.filter(audit_events::Column::OccurredAt.lt(u));
    }
    if let Some(b) = before_id {
        q = q.filter(audit_events::Column::Id.lt(b));
    }
    Ok(q.order_by_desc(audit_events::Column::Id)
        .limit(limit)
        .all(c)
        .await?)
}
