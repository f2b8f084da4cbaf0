//! A directory's writes to its users: provision (create or link by email), update, deactivate
//! and delete. Deprovisioning removes the membership exactly as RemoveMember does: through
//! the org's one write path, audited as `member.removed`, a change-feed event, cached
//! decisions dropped so every Check denies at once.

use serde_json::json;

use super::super::write::{Effect, Event, OrgWrite};
use super::super::{App, AppResult, RequestCtx};
use super::{DirectoryUser, directory_user_id, ensure_version, user_not_found};
use crate::domain::DomainError;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::email::Email;
use crate::domain::ids::UserId;
use crate::domain::roles::ensure_owner_remains;
use crate::store::members::{self, MembershipRow};
use crate::store::scim::{self, ScimUserRow};
use crate::store::users::{self, UserRow};

/// A user as a directory sends it (POST, or PUT as a whole).
#[derive(Debug, Clone)]
pub struct NewDirectoryUser {
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
    pub external_id: Option<String>,
    pub active: bool,
}

/// The attributes a PUT or PATCH changes; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct DirectoryUserChange {
    pub email: Option<Email>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub external_id: Option<Option<String>>,
    pub active: Option<bool>,
}

fn provisioned_json(user: &UserRow, role: &str, external_id: Option<&str>) -> serde_json::Value {
    json!({"user_id": user.id, "email": user.email, "role": role, "external_id": external_id})
}

impl App {
    /// Opens a directory write that changes `user_id`'s membership only, so only their
    /// cached decisions go. The token is checked before the id: a bad token is refused
    /// whatever the id.
    async fn directory_user_write<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        secret: &str,
        user_id: &str,
    ) -> AppResult<(OrgWrite<'a>, UserId)> {
        let uid = directory_user_id(user_id);
        let effect = uid
            .as_ref()
            .map_or(Effect::Decisions, |u| Effect::Member(*u));
        let w = self.directory_write(ctx, secret, effect).await?;
        Ok((w, uid?))
    }

    /// Adds `user` to the org with the policy's invite role, within the plan's seats.
    async fn provision_membership(
        &self,
        w: &OrgWrite<'_>,
        user: &UserRow,
    ) -> AppResult<MembershipRow> {
        self.ensure_seat(w.conn(), &w.org).await?;
        let role = self
            .role_for_request(w.conn(), &w.org.id, self.policy.invite_role())
            .await?;
        w.actor.actor().may_grant(&role, self.policy.owner_role())?;
        let m = MembershipRow {
            org_id: w.org.id.clone(),
            user_id: user.id.clone(),
            role: role.key,
            joined_at: self.now(),
        };
        members::insert(w.conn(), m.clone()).await?;
        Ok(m)
    }

    /// Removes a membership as RemoveMember does, with the directory's authority; the last
    /// owner is refused first, with its own reason.
    async fn deprovision_membership(
        &self,
        w: &OrgWrite<'_>,
        membership: &MembershipRow,
        user: &UserRow,
    ) -> AppResult<Event> {
        let owner_role = self.policy.owner_role();
        if membership.role == owner_role {
            let owners = members::count_with_role(w.conn(), &w.id, owner_role).await?;
            ensure_owner_remains(owners.saturating_sub(1), owner_role)?;
        }
        if let Some(current) = self
            .resolve_role(w.conn(), &w.org.id, &membership.role)
            .await?
        {
            w.actor.actor().may_manage(&current, owner_role)?;
        }
        members::delete(w.conn(), &w.id, &UserId::from_row(&user.id)).await?;
        Ok(Event::new("member.removed", format!("user:{}", user.id))
            .before(json!({"user_id": user.id, "email": user.email, "role": membership.role}))
            .after(json!({"removed_by": "scim"})))
    }

    /// POST /Users: creates the account, or links the existing one with that email, and makes
    /// it a member (when `active`). A current member, or an account this directory already
    /// links, is a uniqueness conflict.
    #[tracing::instrument(skip_all)]
    pub async fn directory_create_user(
        &self,
        ctx: &RequestCtx,
        secret: &str,
        new: NewDirectoryUser,
    ) -> AppResult<(DirectoryUser, ConsistencyToken)> {
        let w = self.directory_write(ctx, secret, Effect::Decisions).await?;
        let org = w.org.id.clone();
        let existing = users::find_by_email(w.conn(), new.email.as_str()).await?;
        let now = self.now();
        let (user, created) = match existing {
            Some(u) => {
                let member = members::find(w.conn(), &w.id, &UserId::from_row(&u.id))
                    .await?
                    .is_some();
                let linked = scim::find_user(w.conn(), &org, &u.id).await?.is_some();
                if member || linked {
                    return Err(DomainError::exists(
                        "SCIM_USER_EXISTS",
                        format!(
                            "{} is already in this directory as user {}: GET or PATCH it",
                            u.email, u.id
                        ),
                    )
                    .into());
                }
                (users::lock(w.conn(), &u.id).await?.unwrap_or(u), false)
            }
            None => {
                let u = UserRow {
                    id: UserId::generate().to_string(),
                    email: new.email.as_str().to_owned(),
                    first_name: new.first_name.clone(),
                    last_name: new.last_name.clone(),
                    created_at: now,
                    status: "active".into(),
                    password_hash: None,
                    mfa_secret: None,
                    mfa_enabled: false,
                    mfa_last_step: None,
                    updated_at: None,
                };
                users::insert(w.conn(), u.clone()).await?;
                (u, true)
            }
        };
        let mut events = Vec::new();
        if new.active {
            let m = self.provision_membership(&w, &user).await?;
            events.push(
                Event::new("member.provisioned", format!("user:{}", user.id))
                    .after(provisioned_json(&user, &m.role, new.external_id.as_deref())),
            );
        } else {
            events.push(
                Event::new("scim.user_linked", format!("user:{}", user.id)).after(json!({
                    "user_id": user.id, "email": user.email, "external_id": new.external_id,
                })),
            );
        }
        if created {
            events.push(
                Event::new("user.created", format!("user:{}", user.id))
                    .after(json!({"user_id": user.id, "email": user.email, "by": "scim"})),
            );
        }
        scim::save_user(
            w.conn(),
            ScimUserRow {
                org_id: org.clone(),
                user_id: user.id.clone(),
                external_id: new.external_id,
                active: new.active,
                owns_account: created,
                version: 1,
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
        let view = self
            .directory_user_in(w.conn(), &w.id, &UserId::from_row(&user.id))
            .await?;
        let token = w.commit(events).await?;
        Ok((view, token))
    }

    /// PUT and PATCH /Users/{id}. The directory may rename (email and names) only the accounts
    /// it created; for an account that existed before, a different `userName` is refused
    /// (`SCIM_IMMUTABLE`) and names are left as the person set them.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn directory_update_user(
        &self,
        ctx: &RequestCtx,
        secret: &str,
        user_id: &str,
        change: DirectoryUserChange,
        if_match: Option<&str>,
    ) -> AppResult<(DirectoryUser, ConsistencyToken)> {
        let (w, uid) = self.directory_user_write(ctx, secret, user_id).await?;
        let org = w.org.id.clone();
        let user_id = uid.to_string();
        let user_id = user_id.as_str();
        let before = self.directory_user_in(w.conn(), &w.id, &uid).await?;
        ensure_version(if_match, &before.version)?;
        let user = users::lock(w.conn(), user_id)
            .await?
            .ok_or_else(|| user_not_found(user_id))?;
        let link = scim::find_user(w.conn(), &org, user_id).await?;
        let owns = link.as_ref().is_some_and(|l| l.owns_account);
        let now = self.now();
        let mut events = Vec::new();

        let email_changes = change
            .email
            .as_ref()
            .filter(|e| !e.as_str().eq_ignore_ascii_case(&user.email));
        let first = change.first_name.clone().unwrap_or(user.first_name.clone());
        let last = change.last_name.clone().unwrap_or(user.last_name.clone());
        if let Some(email) = email_changes {
            if !owns {
                return Err(DomainError::invalid_because(
                    "userName",
                    "SCIM_IMMUTABLE",
                    "this account existed before the directory linked it: its userName (email) is changed by its owner, not by the directory",
                )
                .into());
            }
            if users::find_by_email(w.conn(), email.as_str())
                .await?
                .is_some_and(|u| u.id != user.id)
            {
                return Err(DomainError::exists(
                    "SCIM_USER_EXISTS",
                    format!("{} belongs to another account", email.as_str()),
                )
                .into());
            }
        }
        if owns && (email_changes.is_some() || first != user.first_name || last != user.last_name) {
            let email = email_changes.map_or(user.email.as_str(), |e| e.as_str());
            users::set_profile(w.conn(), &user.id, email, &first, &last, now).await?;
            events.push(
                Event::new("user.updated", format!("user:{}", user.id))
                    .before(json!({"email": user.email, "first_name": user.first_name, "last_name": user.last_name}))
                    .after(json!({"email": email, "first_name": first, "last_name": last, "by": "scim"})),
            );
        }

        let membership = members::find(w.conn(), &w.id, &uid).await?;
        match (change.active, membership) {
            (Some(false), Some(m)) => {
                events.push(self.deprovision_membership(&w, &m, &user).await?);
            }
            (Some(true), None) => {
                let m = self.provision_membership(&w, &user).await?;
                let external = change
                    .external_id
                    .clone()
                    .unwrap_or_else(|| link.as_ref().and_then(|l| l.external_id.clone()));
                events.push(
                    Event::new("member.provisioned", format!("user:{}", user.id))
                        .after(provisioned_json(&user, &m.role, external.as_deref())),
                );
            }
            _ => {}
        }

        let external_id = change
            .external_id
            .clone()
            .unwrap_or_else(|| link.as_ref().and_then(|l| l.external_id.clone()));
        let active = members::find(w.conn(), &w.id, &uid).await?.is_some();
        let link_changed = link
            .as_ref()
            .is_none_or(|l| l.external_id != external_id || l.active != active);
        if events.is_empty() && !link_changed {
            return Ok((before, w.unchanged()));
        }
        scim::save_user(
            w.conn(),
            ScimUserRow {
                org_id: org.clone(),
                user_id: user.id.clone(),
                external_id: external_id.clone(),
                active,
                owns_account: owns,
                version: link.as_ref().map_or(1, |l| l.version + 1),
                created_at: link.as_ref().map_or(now, |l| l.created_at),
                updated_at: now,
            },
        )
        .await?;
        if events.is_empty() {
            events.push(
                Event::new("scim.user_updated", format!("user:{}", user.id))
                    .before(json!({"external_id": before.external_id}))
                    .after(json!({"external_id": external_id})),
            );
        }
        let view = self.directory_user_in(w.conn(), &w.id, &uid).await?;
        let token = w.commit(events).await?;
        Ok((view, token))
    }

    /// DELETE /Users/{id}: deprovisions (as `active: false`) and forgets the directory's link;
    /// the account itself stays, as it may belong to other organizations.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn directory_delete_user(
        &self,
        ctx: &RequestCtx,
        secret: &str,
        user_id: &str,
        if_match: Option<&str>,
    ) -> AppResult<ConsistencyToken> {
        let (w, uid) = self.directory_user_write(ctx, secret, user_id).await?;
        let org = w.org.id.clone();
        let user_id = uid.to_string();
        let user_id = user_id.as_str();
        let before = self.directory_user_in(w.conn(), &w.id, &uid).await?;
        ensure_version(if_match, &before.version)?;
        let user = users::lock(w.conn(), user_id)
            .await?
            .ok_or_else(|| user_not_found(user_id))?;
        let mut events = Vec::new();
        if let Some(m) = members::find(w.conn(), &w.id, &uid).await? {
            events.push(self.deprovision_membership(&w, &m, &user).await?);
        }
        scim::delete_user(w.conn(), &org, user_id).await?;
        events.push(
            Event::new("scim.user_deleted", format!("user:{user_id}"))
                .before(json!({"user_id": user_id, "external_id": before.external_id})),
        );
        w.commit(events).await
    }
}
