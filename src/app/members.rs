//! Members: list, read, change role, remove, transfer ownership.

use serde_json::json;

use super::orgs::MemberView;
use super::{App, AppResult, Page, PageRequest, RequestCtx, org_not_found, token};
use crate::domain::DomainError;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::roles::ensure_owner_remains;
use crate::store::{audit, members, orgs};

fn member_not_found(org_id: &str, user_id: &str) -> DomainError {
    DomainError::not_found(
        "MEMBER_NOT_FOUND",
        format!("user {user_id} is not a member of organization {org_id}"),
    )
}

fn member_json(m: &MemberView) -> serde_json::Value {
    json!({"user_id": m.user.id, "email": m.user.email, "role": m.membership.role})
}

impl App {
    pub async fn list_members(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        role: Option<String>,
        page: PageRequest,
    ) -> AppResult<Page<MemberView>> {
        let c = self.store.conn();
        let id = org_id.to_string();
        self.readable_org(ctx, &id, "members.view").await?;
        let rows = members::list(
            c,
            &id,
            role.as_deref(),
            page.after.as_deref(),
            page.size + 1,
        )
        .await?;
        let views = rows
            .into_iter()
            .map(|(membership, user)| MemberView { membership, user })
            .collect();
        Ok(Page::from_overfetch(views, page.size, |m: &MemberView| {
            m.user.id.clone()
        }))
    }

    pub async fn get_member(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        user_id: &UserId,
    ) -> AppResult<MemberView> {
        let c = self.store.conn();
        let (org, user) = (org_id.to_string(), user_id.to_string());
        self.readable_org(ctx, &org, "members.view").await?;
        let (membership, user_row) = members::find_with_user(c, &org, &user)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        Ok(MemberView {
            membership,
            user: user_row,
        })
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, user_id = %user_id))]
    pub async fn update_member_role(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        user_id: &UserId,
        role_key: &str,
    ) -> AppResult<(MemberView, String)> {
        let (org, user) = (org_id.to_string(), user_id.to_string());
        let tx = self.store.write().await?;
        let org_row = orgs::lock(&*tx, &org)
            .await?
            .ok_or_else(|| org_not_found(&org))?;
        let actor = self.authorize(&*tx, ctx, &org, "members.manage").await?;
        let (membership, user_row) = members::find_with_user(&*tx, &org, &user)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        let new_role = self.role_for_request(&*tx, &org, role_key).await?;
        let before = MemberView {
            membership: membership.clone(),
            user: user_row.clone(),
        };
        if membership.role == new_role.key {
            return Ok((before, token(&org_row)));
        }
        let current = self.role_for_request(&*tx, &org, &membership.role).await?;
        let owner_role = self.policy.owner_role();
        actor.actor().may_manage(&current, owner_role)?;
        actor.actor().may_grant(&new_role, owner_role)?;
        if current.key == owner_role {
            let owners = members::count_with_role(&*tx, &org, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        members::set_role(&*tx, &org, &user, &new_role.key).await?;
        let mut after = before.clone();
        after.membership.role = new_role.key.clone();
        audit::insert(
            &*tx,
            self.audit_event(
                ctx,
                &org,
                &actor.user_id.to_string(),
                "member.role_changed",
                &format!("user:{user}"),
                (Some(member_json(&before)), Some(member_json(&after))),
            ),
        )
        .await?;
        tx.commit().await?;
        self.decisions.invalidate_org(&org, org_row.version).await;
        Ok((after, token(&org_row)))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, user_id = %user_id))]
    pub async fn remove_member(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        user_id: &UserId,
    ) -> AppResult<String> {
        let (org, user) = (org_id.to_string(), user_id.to_string());
        let tx = self.store.write().await?;
        let org_row = orgs::lock(&*tx, &org)
            .await?
            .ok_or_else(|| org_not_found(&org))?;
        let leaving = ctx.actor()? == *user_id;
        let actor = if leaving {
            // Anyone may leave; the last-owner rule still applies.
            self.acting_member(&*tx, ctx, &org, "members.manage")
                .await?
        } else {
            self.authorize(&*tx, ctx, &org, "members.manage").await?
        };
        let (membership, user_row) = members::find_with_user(&*tx, &org, &user)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        let current = self.resolve_role(&*tx, &org, &membership.role).await?;
        let owner_role = self.policy.owner_role();
        if let (false, Some(current)) = (leaving, &current) {
            actor.actor().may_manage(current, owner_role)?;
        }
        if membership.role == owner_role {
            let owners = members::count_with_role(&*tx, &org, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        members::delete(&*tx, &org, &user).await?;
        let before = MemberView {
            membership,
            user: user_row,
        };
        audit::insert(
            &*tx,
            self.audit_event(
                ctx,
                &org,
                &actor.user_id.to_string(),
                "member.removed",
                &format!("user:{user}"),
                (Some(member_json(&before)), None),
            ),
        )
        .await?;
        tx.commit().await?;
        self.decisions.invalidate_org(&org, org_row.version).await;
        Ok(token(&org_row))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, new_owner = %new_owner))]
    pub async fn transfer_ownership(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        new_owner: &UserId,
    ) -> AppResult<(MemberView, MemberView, String)> {
        let (org, target) = (org_id.to_string(), new_owner.to_string());
        let tx = self.store.write().await?;
        let org_row = orgs::lock(&*tx, &org)
            .await?
            .ok_or_else(|| org_not_found(&org))?;
        let actor = self.authorize(&*tx, ctx, &org, "org.transfer").await?;
        let owner_role = self.policy.owner_role();
        if !actor.is_owner {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!("only holders of `{owner_role}` can transfer ownership"),
            )
            .into());
        }
        if actor.user_id == *new_owner {
            return Err(DomainError::invalid_because(
                "new_owner_user_id",
                "ALREADY_OWNER",
                "you already own this organization: name another member as new_owner_user_id",
            )
            .into());
        }
        let (target_m, target_u) = members::find_with_user(&*tx, &org, &target)
            .await?
            .ok_or_else(|| {
                DomainError::precondition(
                    "NOT_A_MEMBER",
                    format!(
                        "user {target} is not a member of organization {org}: invite them first, then transfer"
                    ),
                )
            })?;
        let actor_id = actor.user_id.to_string();
        let (actor_m, actor_u) = members::find_with_user(&*tx, &org, &actor_id)
            .await?
            .ok_or_else(|| member_not_found(&org, &actor_id))?;
        let demoted_to = self.policy.role_below_owner().to_owned();
        members::set_role(&*tx, &org, &target, owner_role).await?;
        members::set_role(&*tx, &org, &actor_id, &demoted_to).await?;
        let before =
            json!({"previous_owner": actor_id, "previous_role_of_new_owner": target_m.role});
        let mut previous = MemberView {
            membership: actor_m,
            user: actor_u,
        };
        previous.membership.role = demoted_to.clone();
        let mut next = MemberView {
            membership: target_m,
            user: target_u,
        };
        next.membership.role = owner_role.to_owned();
        audit::insert(
            &*tx,
            self.audit_event(
                ctx,
                &org,
                &actor_id,
                "ownership.transferred",
                &format!("user:{target}"),
                (
                    Some(before),
                    Some(json!({"new_owner": target, "previous_owner_role": demoted_to})),
                ),
            ),
        )
        .await?;
        tx.commit().await?;
        self.decisions.invalidate_org(&org, org_row.version).await;
        Ok((previous, next, token(&org_row)))
    }
}
