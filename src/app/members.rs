//! Members: list, read, change role, remove, transfer ownership.

use serde_json::json;

use super::orgs::MemberView;
use super::write::{Authority, Effect, Event};
use super::{App, AppResult, Page, PageRequest, RequestCtx};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::{OrgId, UserId};
use crate::domain::roles::ensure_owner_remains;
use crate::store::members;

fn member_not_found(org_id: &str, user_id: &str) -> DomainError {
    DomainError::not_found(
        "MEMBER_NOT_FOUND",
        format!("user {user_id} is not a member of organization {org_id}"),
    )
}

fn member_json(m: &MemberView) -> serde_json::Value {
    json!({"user_id": m.user.id.to_string(), "email": m.user.email, "role": m.role})
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
        self.readable_org(ctx, org_id, "members.view").await?;
        let rows = members::list(
            c,
            org_id,
            role.as_deref(),
            page.after.as_deref(),
            page.size + 1,
        )
        .await?;
        let views = rows
            .into_iter()
            .map(|(membership, user)| MemberView::new(&membership, &user))
            .collect();
        Ok(Page::from_overfetch(views, page.size, |m: &MemberView| {
            m.user.id.to_string()
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
        self.readable_org(ctx, org_id, "members.view").await?;
        let (membership, user_row) = members::find_with_user(c, org_id, user_id)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        Ok(MemberView::new(&membership, &user_row))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, user_id = %user_id))]
    pub async fn update_member_role(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        user_id: &UserId,
        role_key: &str,
    ) -> AppResult<(MemberView, ConsistencyToken)> {
        let (org, user) = (org_id.to_string(), user_id.to_string());
        let mut w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission("members.manage"),
                Effect::Member(*user_id),
            )
            .await?;
        let (membership, user_row) = w
            .member(user_id)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        let new_role = self.role_for_request(w.conn(), &org, role_key).await?;
        let before = MemberView::new(&membership, &user_row);
        if membership.role == new_role.key {
            return Ok((before, w.unchanged()));
        }
        let current = self
            .role_for_request(w.conn(), &org, &membership.role)
            .await?;
        let owner_role = self.policy.owner_role();
        w.actor.actor().may_manage(&current, owner_role)?;
        w.actor.actor().may_grant(&new_role, owner_role)?;
        if current.key == owner_role {
            let owners = members::count_with_role(w.conn(), org_id, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        members::set_role(w.conn(), org_id, user_id, &new_role.key).await?;
        let mut after = before.clone();
        after.role = new_role.key.clone();
        let token = w
            .commit([Event::new("member.role_changed", format!("user:{user}"))
                .before(member_json(&before))
                .after(member_json(&after))])
            .await?;
        Ok((after, token))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, user_id = %user_id))]
    pub async fn remove_member(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        user_id: &UserId,
    ) -> AppResult<ConsistencyToken> {
        let (org, user) = (org_id.to_string(), user_id.to_string());
        // Anyone may leave; removing someone else needs members.manage and outranking them.
        let leaving = ctx.actor()? == *user_id;
        let authority = if leaving {
            Authority::Membership {
                for_message: "members.manage",
            }
        } else {
            Authority::Permission("members.manage")
        };
        let mut w = self
            .org_write(ctx, org_id, authority, Effect::Member(*user_id))
            .await?;
        let (membership, user_row) = w
            .member(user_id)
            .await?
            .ok_or_else(|| member_not_found(&org, &user))?;
        let current = self.resolve_role(w.conn(), &org, &membership.role).await?;
        let owner_role = self.policy.owner_role();
        if let (false, Some(current)) = (leaving, &current) {
            w.actor.actor().may_manage(current, owner_role)?;
        }
        if membership.role == owner_role {
            let owners = members::count_with_role(w.conn(), org_id, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        members::delete(w.conn(), org_id, user_id).await?;
        let before = MemberView::new(&membership, &user_row);
        w.commit(
            [Event::new("member.removed", format!("user:{user}")).before(member_json(&before))],
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, new_owner = %new_owner))]
    pub async fn transfer_ownership(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        new_owner: &UserId,
    ) -> AppResult<(MemberView, MemberView, ConsistencyToken)> {
        let (org, target) = (org_id.to_string(), new_owner.to_string());
        let mut w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission("org.transfer"),
                // The acting owner is demoted, the new owner promoted: no one else changes.
                Effect::Members(ctx.actor()?, *new_owner),
            )
            .await?;
        let owner_role = self.policy.owner_role();
        if !w.actor.is_owner {
            return Err(DomainError::denied(
                "PRIVILEGE_ESCALATION",
                format!("only holders of `{owner_role}` can transfer ownership"),
            )
            .into());
        }
        if w.actor.user_id == *new_owner {
            return Err(DomainError::invalid_because(
                "new_owner_user_id",
                "ALREADY_OWNER",
                "you already own this organization: name another member as new_owner_user_id",
            )
            .into());
        }
        let (target_m, target_u) = w.member(new_owner)
            .await?
            .ok_or_else(|| {
                DomainError::precondition(
                    "NOT_A_MEMBER",
                    format!(
                        "user {target} is not a member of organization {org}: invite them first, then transfer"
                    ),
                )
            })?;
        let actor_id = w.actor_id();
        let actor_user = w.actor.user_id;
        let (actor_m, actor_u) = w
            .member(&actor_user)
            .await?
            .ok_or_else(|| member_not_found(&org, &actor_id))?;
        let demoted_to = self.policy.role_below_owner().to_owned();
        members::set_role(w.conn(), org_id, new_owner, owner_role).await?;
        members::set_role(w.conn(), org_id, &w.actor.user_id, &demoted_to).await?;
        let before =
            json!({"previous_owner": actor_id, "previous_role_of_new_owner": target_m.role});
        let mut previous = MemberView::new(&actor_m, &actor_u);
        previous.role = demoted_to.clone();
        let mut next = MemberView::new(&target_m, &target_u);
        next.role = owner_role.to_owned();
        let token = w
            .commit([
                Event::new("ownership.transferred", format!("user:{target}"))
                    .before(before)
                    .after(json!({"new_owner": target, "previous_owner_role": demoted_to})),
            ])
            .await?;
        Ok((previous, next, token))
    }
}
