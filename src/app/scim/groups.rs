//! A directory's writes to its groups: a group's members are the members holding its mapped
//! role, so adding a member assigns that role and removing one gives back the policy's invite
//! role. The escalation and last-owner rules apply to every change, as to UpdateMemberRole.

use std::collections::BTreeSet;

use serde_json::json;

use super::super::write::{Effect, Event, OrgWrite};
use super::super::{App, AppResult, RequestCtx};
use super::{DirectoryGroup, ensure_version, group_not_found};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::UserId;
use crate::domain::roles::{ResolvedRole, ensure_owner_remains};
use crate::store::{members, scim};

/// Membership changes to one group; `replace` (a PUT, or a PATCH replacing `members`) sets
/// the whole list and is applied before `add` and `remove`.
#[derive(Debug, Clone, Default)]
pub struct GroupMembersChange {
    pub replace: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// A display name sent with the change: it must be the mapping's, which is managed over
    /// gRPC.
    pub display_name: Option<String>,
}

impl App {
    /// Gives `user_id` the role `to` (from whatever it holds) with the directory's authority.
    async fn directory_set_role(
        &self,
        w: &OrgWrite<'_>,
        user_id: &str,
        to: &ResolvedRole,
    ) -> AppResult<Option<Event>> {
        let org = w.org.id.clone();
        let found = match UserId::from_stored(user_id) {
            Some(uid) => members::find_with_user(w.conn(), &w.id, &uid)
                .await?
                .map(|found| (uid, found)),
            None => None,
        };
        let Some((uid, (m, u))) = found else {
            return Err(DomainError::invalid_because(
                "members",
                "SCIM_NOT_A_MEMBER",
                format!("user {user_id} is not an active member of this organization: provision it first"),
            )
            .into());
        };
        if m.role == to.key {
            return Ok(None);
        }
        let owner_role = self.policy.owner_role();
        if m.role == owner_role {
            let owners = members::count_with_role(w.conn(), &w.id, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        let current = self.role_for_request(w.conn(), &org, &m.role).await?;
        w.actor.actor().may_manage(&current, owner_role)?;
        w.actor.actor().may_grant(to, owner_role)?;
        members::set_role(w.conn(), &w.id, &uid, &to.key).await?;
        let user_id = uid.to_string();
        Ok(Some(
            Event::new("member.role_changed", format!("user:{user_id}"))
                .before(json!({"user_id": user_id, "email": u.email, "role": m.role}))
                .after(json!({"user_id": user_id, "email": u.email, "role": to.key, "changed_by": "scim"})),
        ))
    }

    #[tracing::instrument(skip_all, fields(group_id = %group_id))]
    pub async fn directory_change_group(
        &self,
        ctx: &RequestCtx,
        secret: &str,
        group_id: &str,
        change: GroupMembersChange,
        if_match: Option<&str>,
    ) -> AppResult<(DirectoryGroup, ConsistencyToken)> {
        let w = self.directory_write(ctx, secret, Effect::Decisions).await?;
        let org = w.org.id.clone();
        let mapping = scim::find_mapping(w.conn(), &org, group_id)
            .await?
            .ok_or_else(|| group_not_found(group_id))?;
        let before = self.group_view(w.conn(), &mapping).await?;
        ensure_version(if_match, &before.version)?;
        if let Some(name) = &change.display_name
            && name != &mapping.display_name
        {
            return Err(DomainError::invalid_because(
                "displayName",
                "SCIM_IMMUTABLE",
                "a group's displayName is its mapping's: an owner renames it with SetScimGroupMapping",
            )
            .into());
        }
        let role = self
            .resolve_role(w.conn(), &org, &mapping.role_key)
            .await?
            .ok_or_else(|| {
                DomainError::precondition(
                    "ROLE_NOT_FOUND",
                    format!(
                        "the role `{}` this group maps to no longer exists: an owner maps the group again",
                        mapping.role_key
                    ),
                )
            })?;
        let fallback = self
            .role_for_request(w.conn(), &org, self.policy.invite_role())
            .await?;
        let current: BTreeSet<String> = before.members.iter().map(|(id, _)| id.clone()).collect();
        let mut add: BTreeSet<String> = BTreeSet::new();
        let mut remove: BTreeSet<String> = BTreeSet::new();
        if let Some(all) = &change.replace {
            let wanted: BTreeSet<String> = all.iter().cloned().collect();
            remove.extend(current.difference(&wanted).cloned());
            add.extend(wanted.difference(&current).cloned());
        }
        for id in &change.add {
            remove.remove(id);
            add.insert(id.clone());
        }
        for id in &change.remove {
            add.remove(id);
            remove.insert(id.clone());
        }
        let mut events = Vec::new();
        for id in &remove {
            // Only a holder of this group's role leaves it; anyone else was not in it.
            let holds = match UserId::from_stored(id) {
                Some(uid) => members::find(w.conn(), &w.id, &uid)
                    .await?
                    .is_some_and(|m| m.role == role.key),
                None => false,
            };
            if holds && let Some(e) = self.directory_set_role(&w, id, &fallback).await? {
                events.push(e);
            }
        }
        for id in &add {
            if let Some(e) = self.directory_set_role(&w, id, &role).await? {
                events.push(e);
            }
        }
        if events.is_empty() {
            return Ok((before, w.unchanged()));
        }
        let view = self.group_view(w.conn(), &mapping).await?;
        let token = w.commit(events).await?;
        Ok((view, token))
    }
}
