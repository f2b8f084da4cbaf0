//! Roles: the policy's built-in ones and each org's custom roles.

use serde_json::json;

use super::write::{Authority, Effect, Event, OrgWrite};
use super::{App, AppResult, Page, PageRequest, RequestCtx};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::OrgId;
use crate::domain::roles::{ResolvedRole, RoleKey, parse_permissions};
use crate::store::roles::RoleRow;
use crate::store::{encode_permissions, invitations, members, roles};

/// A role as listed, with how many members hold it.
#[derive(Debug, Clone)]
pub struct RoleView {
    pub role: ResolvedRole,
    pub member_count: u64,
}

#[derive(Debug, Clone)]
pub struct RoleDefinition {
    pub key: RoleKey,
    pub display_name: Option<String>,
    pub permissions: Vec<String>,
}

fn role_json(r: &ResolvedRole) -> serde_json::Value {
    json!({"key": r.key, "display_name": r.display_name, "permissions": r.permissions.to_strings()})
}

fn role_not_found(key: &str) -> DomainError {
    DomainError::not_found(
        "ROLE_NOT_FOUND",
        format!("this organization has no custom role `{key}`: ListRoles shows its roles"),
    )
}

fn built_in_immutable(key: &str) -> DomainError {
    DomainError::precondition(
        "BUILT_IN_ROLE",
        format!(
            "`{key}` is a built-in role from the policy and cannot be changed or deleted here: create a custom role instead"
        ),
    )
}

fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl App {
    /// One page of an org's roles: the policy's built-in roles in policy order, then the
    /// org's custom roles by key in byte order. A page continues after a role key: a custom
    /// key never equals a built-in one (CreateRole refuses those), so the key alone says
    /// which part of the list it is in.
    pub async fn list_roles(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        page: PageRequest,
    ) -> AppResult<Page<RoleView>> {
        let c = self.store.conn();
        let id = org_id.to_string();
        self.readable_org(ctx, org_id, "members.view").await?;
        let built_in = self.policy.roles();
        let (built_in_from, custom_after) = match page.after.as_deref() {
            None => (0, None),
            Some(after) => match built_in.iter().position(|b| b.key == after) {
                Some(i) => (i + 1, None),
                None => (built_in.len(), Some(after)),
            },
        };
        let wanted = usize::try_from(page.size.saturating_add(1)).unwrap_or(usize::MAX);
        let mut page_roles: Vec<ResolvedRole> = built_in[built_in_from..]
            .iter()
            .take(wanted)
            .map(|b| ResolvedRole {
                key: b.key.clone(),
                display_name: b.display_name.clone(),
                permissions: b.permissions.clone(),
                built_in: true,
            })
            .collect();
        if page_roles.len() < wanted {
            // Sorted here rather than by the database, whose collation may not be byte
            // order; `roles.max_per_org` keeps the set small.
            let mut custom = roles::list_custom(c, &id).await?;
            custom.sort_by(|a, b| a.key.cmp(&b.key));
            let more = wanted - page_roles.len();
            page_roles.extend(
                custom
                    .into_iter()
                    .filter(|r| custom_after.is_none_or(|after| r.key.as_str() > after))
                    .take(more)
                    .map(|r| self.custom_role(r)),
            );
        }
        let counts = members::count_by_role(c, org_id).await?;
        let items = page_roles
            .into_iter()
            .map(|role| RoleView {
                member_count: counts.get(&role.key).copied().unwrap_or(0),
                role,
            })
            .collect();
        Ok(Page::from_overfetch(items, page.size, |v| {
            v.role.key.clone()
        }))
    }

    /// Opens a write that changes or deletes the custom role `key`: `ROLE_NOT_FOUND` unless it
    /// exists, and the actor must hold every permission it carries (nobody edits a role more
    /// powerful than theirs). Returns the role as it is now.
    async fn custom_role_write<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        org_id: &OrgId,
        key: &str,
    ) -> AppResult<(OrgWrite<'a>, ResolvedRole)> {
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission("roles.manage"),
                Effect::Decisions,
            )
            .await?;
        let row = roles::find_custom(w.conn(), &w.org.id, key)
            .await?
            .ok_or_else(|| role_not_found(key))?;
        let role = self.custom_role(row);
        w.actor.actor().may_define(&role.permissions)?;
        Ok((w, role))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, role = %def.key))]
    pub async fn create_role(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        def: RoleDefinition,
    ) -> AppResult<(RoleView, ConsistencyToken)> {
        let id = org_id.to_string();
        let key = def.key.as_str();
        if self.policy.built_in(key).is_some() {
            return Err(DomainError::exists(
                "ROLE_EXISTS",
                format!("`{key}` is a built-in role: choose another key"),
            )
            .into());
        }
        let display_name = def.display_name.unwrap_or_else(|| key.to_owned());
        let perms = parse_permissions(&def.permissions, |p| self.policy.knows(p))?;
        // A new role is held by nobody yet: no decision changes.
        let w = self
            .org_write(
                ctx,
                org_id,
                Authority::Permission("roles.manage"),
                Effect::Records,
            )
            .await?;
        w.actor.actor().may_define(&perms)?;
        if roles::find_custom(w.conn(), &id, key).await?.is_some() {
            return Err(DomainError::exists(
                "ROLE_EXISTS",
                format!(
                    "this organization already has a role `{key}`: update it or pick another key"
                ),
            )
            .into());
        }
        // Counted under the org's row lock, so concurrent creates cannot both pass at the
        // limit.
        let max = self.settings.max_custom_roles_per_org;
        let existing = roles::count_custom(w.conn(), &id).await?;
        if existing >= u64::from(max) {
            return Err(DomainError::precondition(
                "ROLE_LIMIT",
                format!(
                    "this organization has {existing} custom roles and the limit is {max} (roles.max_per_org): delete a custom role it no longer needs first"
                ),
            )
            .into());
        }
        let now = self.now();
        roles::insert(
            w.conn(),
            RoleRow {
                org_id: id.clone(),
                key: key.to_owned(),
                display_name: display_name.clone(),
                permissions: encode_permissions(&perms.to_strings()),
                built_in: false,
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
        let role = ResolvedRole {
            key: key.to_owned(),
            display_name,
            permissions: perms,
            built_in: false,
        };
        let token = w
            .commit([Event::new("role.created", format!("role:{key}")).after(role_json(&role))])
            .await?;
        Ok((
            RoleView {
                role,
                member_count: 0,
            },
            token,
        ))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, role = %def.key))]
    pub async fn update_role(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        def: RoleDefinition,
    ) -> AppResult<(RoleView, ConsistencyToken)> {
        let id = org_id.to_string();
        let key = def.key.as_str();
        if self.policy.built_in(key).is_some() {
            return Err(built_in_immutable(key).into());
        }
        let perms = parse_permissions(&def.permissions, |p| self.policy.knows(p))?;
        let (w, before) = self.custom_role_write(ctx, org_id, key).await?;
        // The new permission set must be within the actor's own too: nobody widens a role.
        w.actor.actor().may_define(&perms)?;
        let display_name = def
            .display_name
            .unwrap_or_else(|| before.display_name.clone());
        let now = self.now();
        roles::update(w.conn(), &id, key, &display_name, &perms.to_strings(), now).await?;
        let after = ResolvedRole {
            key: key.to_owned(),
            display_name,
            permissions: perms,
            built_in: false,
        };
        let member_count = members::count_with_role(w.conn(), &w.id, key).await?;
        let token = w
            .commit([Event::new("role.updated", format!("role:{key}"))
                .before(role_json(&before))
                .after(role_json(&after))])
            .await?;
        Ok((
            RoleView {
                role: after,
                member_count,
            },
            token,
        ))
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id, role = %key))]
    pub async fn delete_role(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        key: &RoleKey,
        reassign_to: Option<&str>,
    ) -> AppResult<ConsistencyToken> {
        let id = org_id.to_string();
        let key = key.as_str();
        if self.policy.built_in(key).is_some() {
            return Err(built_in_immutable(key).into());
        }
        let (w, before) = self.custom_role_write(ctx, org_id, key).await?;
        let now = self.now();
        let holding_members = members::count_with_role(w.conn(), &w.id, key).await?;
        let holding_invitations =
            invitations::count_pending_with_role(w.conn(), &id, key, now).await?;
        let holders = holding_members + holding_invitations;
        let mut moved = 0;
        match reassign_to {
            Some(target) => {
                if target == key {
                    return Err(DomainError::invalid_because(
                        "reassign_to",
                        "INVALID_ARGUMENT",
                        "reassign_to must name a different role than the one being deleted",
                    )
                    .into());
                }
                let to =
                    self.role_for_request(w.conn(), &id, target)
                        .await
                        .map_err(|e| match e {
                            super::AppError::Domain(DomainError::Invalid {
                                reason,
                                message,
                                ..
                            }) => {
                                DomainError::invalid_because("reassign_to", reason, message).into()
                            }
                            other => other,
                        })?;
                w.actor.actor().may_grant(&to, self.policy.owner_role())?;
                moved += members::reassign_role(w.conn(), &w.id, key, &to.key).await?;
                moved += invitations::reassign_role(w.conn(), &id, key, &to.key).await?;
            }
            None if holders > 0 => {
                return Err(DomainError::precondition(
                    "ROLE_IN_USE",
                    format!(
                        "{holders} still hold `{key}` ({}, {}): pass reassign_to to move them to another role in the same step",
                        counted(holding_members, "member", "members"),
                        counted(holding_invitations, "pending invitation", "pending invitations"),
                    ),
                )
                .into());
            }
            None => {}
        }
        roles::delete(w.conn(), &id, key).await?;
        let mut before_json = role_json(&before);
        if let serde_json::Value::Object(m) = &mut before_json {
            m.insert("holders".into(), json!(holders));
        }
        w.commit([Event::new("role.deleted", format!("role:{key}"))
            .before(before_json)
            .after(json!({"reassigned_to": reassign_to, "moved": moved}))])
            .await
    }
}
