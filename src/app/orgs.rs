//! Organizations: create, read, update, soft-delete, list a user's.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::identity::Account;
use super::write::{Authority, Effect, Event};
use super::{App, AppResult, Page, PageRequest, RequestCtx};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::email::Email;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::invitation::ensure_seat_available;
use crate::store::members::MembershipRow;
use crate::store::orgs::OrgRow;
use crate::store::users::UserRow;
use crate::store::{invitations, members, orgs, users};

/// Who becomes the first owner of a new org.
#[derive(Debug, Clone)]
pub enum NewOwner {
    Existing(UserId),
    Person {
        email: Email,
        first_name: String,
        last_name: String,
    },
}

#[derive(Debug, Clone)]
pub struct NewOrg {
    pub name: String,
    pub plan: Option<String>,
    pub owner: NewOwner,
}

/// An org as callers see it, with its member count.
#[derive(Debug, Clone)]
pub struct OrgView {
    pub id: OrgId,
    pub name: String,
    pub plan: String,
    pub require_mfa: bool,
    pub created_at: DateTime<Utc>,
    pub member_count: u64,
}

impl OrgView {
    pub(crate) fn new(row: &OrgRow, member_count: u64) -> OrgView {
        OrgView {
            id: OrgId::from_row(&row.id),
            name: row.name.clone(),
            plan: row.plan.clone(),
            require_mfa: row.require_mfa,
            created_at: row.created_at,
            member_count,
        }
    }
}

/// A membership as callers see it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub org_id: OrgId,
    pub role: String,
    pub joined_at: DateTime<Utc>,
    /// The member's account, without its password hash or two-factor secret.
    pub user: Account,
}

impl MemberView {
    pub(crate) fn new(m: &MembershipRow, user: &UserRow) -> MemberView {
        MemberView {
            org_id: OrgId::from_row(&m.org_id),
            role: m.role.clone(),
            joined_at: m.joined_at,
            user: Account::from(user),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OrgChanges {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub require_mfa: Option<bool>,
}

impl App {
    fn check_plan(&self, plan: &str) -> Result<(), DomainError> {
        if self.policy.plan(plan).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = self.policy.plans().iter().map(|p| p.key.as_str()).collect();
        Err(DomainError::invalid_because(
            "plan",
            "UNKNOWN_PLAN",
            format!(
                "plan `{}` does not exist: use one of {}",
                crate::domain::permission::truncate(plan, 64),
                known.join(", ")
            ),
        ))
    }

    #[tracing::instrument(skip_all, fields(org_id))]
    pub async fn create_org(
        &self,
        ctx: &RequestCtx,
        req: NewOrg,
    ) -> AppResult<(OrgView, MemberView, ConsistencyToken)> {
        let plan = req
            .plan
            .unwrap_or_else(|| self.policy.default_plan().to_owned());
        self.check_plan(&plan)?;
        let now = self.now();
        let org_id = OrgId::generate().to_string();
        tracing::Span::current().record("org_id", org_id.as_str());

        let tx = self.store.write().await?;
        let user = match req.owner {
            NewOwner::Existing(id) => users::find(&*tx, &id.to_string())
                .await?
                .ok_or_else(|| {
                    DomainError::not_found(
                        "USER_NOT_FOUND",
                        format!("owner_user_id {id} is not a known user: pass owner {{email, first_name, last_name}} instead"),
                    )
                })?,
            NewOwner::Person {
                email,
                first_name,
                last_name,
            } => match users::find_by_email(&*tx, email.as_str()).await? {
                Some(existing) => existing,
                None => {
                    let row = UserRow {
                        id: UserId::generate().to_string(),
                        email: email.as_str().to_owned(),
                        first_name,
                        last_name,
                        created_at: now,
                        status: "active".into(),
                        password_hash: None,
                        mfa_secret: None,
                        mfa_enabled: false,
                        mfa_last_step: None,
                        updated_at: None,
                    };
                    users::insert(&*tx, row.clone()).await?;
                    row
                }
            },
        };
        let org = OrgRow {
            id: org_id.clone(),
            name: req.name,
            plan,
            require_mfa: false,
            created_at: now,
            deleted_at: None,
            version: 1,
        };
        orgs::insert(&*tx, org.clone()).await?;
        let membership = MembershipRow {
            org_id: org_id.clone(),
            user_id: user.id.clone(),
            role: self.policy.owner_role().to_owned(),
            joined_at: now,
        };
        members::insert(&*tx, membership.clone()).await?;
        let t = self
            .commit_org_events(
                tx,
                ctx,
                &org,
                &user.id,
                [
                    Event::new("organization.created", format!("organization:{org_id}")).after(
                        json!({"name": org.name, "plan": org.plan, "owner_user_id": user.id}),
                    ),
                ],
                Effect::Decisions,
            )
            .await?;
        Ok((
            OrgView::new(&org, 1),
            MemberView::new(&membership, &user),
            t,
        ))
    }

    pub async fn get_org(&self, ctx: &RequestCtx, org_id: &OrgId) -> AppResult<OrgView> {
        let c = self.store.conn();
        let org = self.readable_org(ctx, org_id, "members.view").await?;
        let member_count = orgs::member_count(c, org_id).await?;
        Ok(OrgView::new(&org, member_count))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn update_org(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        changes: OrgChanges,
    ) -> AppResult<(OrgView, ConsistencyToken)> {
        let id = org_id.to_string();
        if let Some(plan) = &changes.plan {
            self.check_plan(plan)?;
        }
        // Only require_mfa can change a decision; renames and plan changes keep caches warm.
        let effect = if changes.require_mfa.is_some() {
            Effect::Decisions
        } else {
            Effect::Records
        };
        let needs_update = changes.name.is_some() || changes.require_mfa.is_some();
        let first = if needs_update {
            "org.update"
        } else {
            "billing.manage"
        };
        let w = self
            .org_write(ctx, org_id, Authority::Permission(first), effect)
            .await?;
        let before = w.org.clone();
        if changes.plan.is_some() {
            w.actor.actor().require("billing.manage")?;
        }
        let member_count = orgs::member_count(w.conn(), org_id).await?;
        if let Some(plan) = changes.plan.as_deref().and_then(|p| self.policy.plan(p)) {
            let pending = invitations::count_pending(w.conn(), &id, self.now()).await?;
            ensure_seat_available(
                member_count,
                pending,
                0,
                plan.max_members,
                &plan.key,
                &plan.upgrade_hint,
            )?;
        }
        orgs::update(
            w.conn(),
            org_id,
            changes.name.clone(),
            changes.plan.clone(),
            changes.require_mfa,
        )
        .await?;
        let mut after = before.clone();
        if let Some(n) = changes.name {
            after.name = n;
        }
        if let Some(p) = changes.plan {
            after.plan = p;
        }
        if let Some(m) = changes.require_mfa {
            after.require_mfa = m;
        }
        let state =
            |o: &OrgRow| json!({"name": o.name, "plan": o.plan, "require_mfa": o.require_mfa});
        let t = w
            .commit([
                Event::new("organization.updated", format!("organization:{id}"))
                    .before(state(&before))
                    .after(state(&after)),
            ])
            .await?;
        Ok((OrgView::new(&after, member_count), t))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn delete_org(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
    ) -> AppResult<ConsistencyToken> {
        let id = org_id.to_string();
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission("org.delete"),
                Effect::Decisions,
            )
            .await?;
        let now = self.now();
        orgs::soft_delete(w.conn(), org_id, now).await?;
        let before = json!({"name": w.org.name, "plan": w.org.plan});
        w.commit([
            Event::new("organization.deleted", format!("organization:{id}"))
                .before(before)
                .after(json!({"deleted_at": now.to_rfc3339()})),
        ])
        .await
    }

    pub async fn list_orgs(
        &self,
        ctx: &RequestCtx,
        user_id: &UserId,
        page: PageRequest,
    ) -> AppResult<Page<(OrgView, String)>> {
        let actor = ctx.actor()?;
        if actor != *user_id {
            return Err(DomainError::denied(
                "ACTOR_MISMATCH",
                "ListOrganizations lists the actor's own organizations: set user_id to the x-actor-user-id",
            )
            .into());
        }
        let c = self.store.conn();
        self.active_actor(c, ctx).await?;
        let rows = orgs::list_for_user(c, user_id, page.after.as_deref(), page.size + 1).await?;
        let ids: Vec<String> = rows.iter().map(|(o, _)| o.id.clone()).collect();
        let counts = orgs::member_counts(c, &ids).await?;
        let views = rows
            .into_iter()
            .map(|(row, role)| {
                let member_count = counts.get(&row.id).copied().unwrap_or(0);
                (OrgView::new(&row, member_count), role)
            })
            .collect();
        Ok(Page::from_overfetch(views, page.size, |(o, _)| {
            o.id.to_string()
        }))
    }
}
