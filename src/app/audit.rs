//! Reading the audit log.

use super::{App, AppResult, Page, PageRequest, RequestCtx, org_not_found};
use crate::domain::ids::OrgId;
use crate::store::audit::{AuditFilter, AuditRow};
use crate::store::{audit, orgs};

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
        orgs::find_live(c, &id)
            .await?
            .ok_or_else(|| org_not_found(&id))?;
        self.authorize(c, ctx, &id, "audit.view").await?;
        let rows = audit::list(c, &id, &filter, page.after.as_deref(), page.size + 1).await?;
        Ok(Page::from_overfetch(rows, page.size, |r| r.id.clone()))
    }
}
