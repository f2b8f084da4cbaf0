//! Reading the audit log.

use super::{App, AppResult, Page, PageRequest, RequestCtx};
use crate::domain::ids::OrgId;
use chrono::{DateTime, Utc};

use crate::store::audit;
use crate::store::audit::AuditRow;

pub use crate::store::audit::AuditFilter;

/// One entry of an org's audit log, as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: String,
    pub org_id: String,
    pub actor_user_id: String,
    pub action: String,
    pub target: String,
    /// The target's state before and after, as JSON text.
    pub before: Option<String>,
    pub after: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub request_id: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> AuditEvent {
        AuditEvent {
            id: r.id,
            org_id: r.org_id,
            actor_user_id: r.actor_user_id,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
            occurred_at: r.occurred_at,
            request_id: r.request_id,
        }
    }
}

impl App {
    pub async fn list_audit_events(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        filter: AuditFilter,
        page: PageRequest,
    ) -> AppResult<Page<AuditEvent>> {
        let c = self.store.conn();
        let id = org_id.to_string();
        self.readable_org(ctx, org_id, "audit.view").await?;
        let rows: Vec<AuditEvent> =
            audit::list(c, &id, &filter, page.after.as_deref(), page.size + 1)
                .await?
                .into_iter()
                .map(AuditEvent::from)
                .collect();
        Ok(Page::from_overfetch(rows, page.size, |r| r.id.clone()))
    }
}
