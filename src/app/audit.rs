//! Reading the audit log.

use super::{App, AppResult, Page, PageRequest, RequestCtx};
use crate::domain::ids::OrgId;
use crate::store::audit;
use crate::store::audit::{AuditFilter, AuditRow};

impl App {
    pub async fn list_audit_events(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        filter: AuditFilter,
        page: PageRequest,
    ) -> AppResult<Page<AuditRow>> {
        let c = self.store.conn();
        let id = org_id.to_string();
        self.readable_org(ctx, &id, "audit.view").await?;
        let rows = audit::list(c, &id, &filter, page.after.as_deref(), page.size + 1).await?;
        Ok(Page::from_overfetch(rows, page.size, |r| r.id.clone()))
    }
}
