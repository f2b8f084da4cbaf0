//! Invitations: invite by email, list, resend, revoke, accept — within the plan's seats.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::identity::Account;
use super::orgs::{MemberView, OrgView};
use super::write::{Authority, Effect, Event, OrgWrite};
use super::{App, AppResult, Page, PageRequest, RequestCtx, org_not_found};
use crate::domain::DomainError;
use crate::domain::email::Email;
use crate::domain::ids::{InvitationId, OrgId, UserId};
use crate::domain::invitation::{InvitationStatus, StoredState, ensure_seat_available};
use crate::domain::token::{hash_secret, new_secret};
use crate::store::invitations::InvitationRow;

use crate::store::Connection as ConnectionTrait;
pub use crate::store::invitations::StatusFilter;
use crate::store::members::MembershipRow;
use crate::store::orgs::OrgRow;
use crate::store::outbox::OutboxRow;
use crate::store::users::UserRow;
use crate::store::{invitations, members, orgs, outbox, users};

#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
    pub role: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InvitationView {
    pub row: InvitationRow,
    pub status: InvitationStatus,
}

#[derive(Debug, Clone, Default)]
pub struct Acceptance {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// The new account's password, hashed (see `App::hash_password`).
    pub password_hash: Option<String>,
}

pub use crate::store::outbox::INVITATION_EMAIL;

fn invitation_not_found() -> DomainError {
    DomainError::not_found(
        "INVITATION_NOT_FOUND",
        "no such invitation: check the id, or ListInvitations to find it",
    )
}

/// Compares two secrets' hashes in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invitation_json(row: &InvitationRow) -> serde_json::Value {
    json!({"invitation_id": row.id, "email": row.email, "role": row.role})
}

impl App {
    /// The token as the inviting caller may see it: only where the deployment says the caller
    /// delivers invitations itself (or in development). Otherwise it travels only by the
    /// invitation email, so an inviter never holds a secret that opens the invitee's account.
    fn handed_out(&self, secret: String) -> Option<String> {
        self.settings.return_invitation_tokens.then_some(secret)
    }

    fn view(&self, row: InvitationRow) -> InvitationView {
        let status = StoredState::from_stored(&row.state).status(row.expires_at, self.now());
        InvitationView { row, status }
    }

    async fn ensure_not_member<C: ConnectionTrait>(
        &self,
        c: &C,
        org_id: &str,
        email: &str,
    ) -> AppResult<Option<UserRow>> {
        let existing = users::find_by_email(c, email).await?;
        if let Some(u) = &existing
            && members::find(c, org_id, &u.id).await?.is_some()
        {
            return Err(DomainError::exists(
                "ALREADY_MEMBER",
                format!("{email} is already a member of this organization"),
            )
            .into());
        }
        Ok(existing)
    }

    pub(crate) async fn ensure_seat<C: ConnectionTrait>(
        &self,
        c: &C,
        org: &OrgRow,
    ) -> AppResult<()> {
        let Some(plan) = self.policy.plan(&org.plan) else {
            return Ok(());
        };
        let members = orgs::member_count(c, &org.id).await?;
        let pending = invitations::count_pending(c, &org.id, self.now()).await?;
        ensure_seat_available(
            members,
            pending,
            1,
            plan.max_members,
            &plan.key,
            &plan.upgrade_hint,
        )?;
        Ok(())
    }

    /// Writes the invitation email to the outbox, in the caller's transaction.
    async fn enqueue_invitation_email<C: ConnectionTrait>(
        &self,
        c: &C,
        org: &OrgRow,
        row: &InvitationRow,
        inviter: &str,
        secret: &str,
    ) -> AppResult<()> {
        let inviter_name = users::find(c, inviter)
            .await?
            .map(|u| {
                format!("{} {}", u.first_name, u.last_name)
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        let payload = json!({
            "invitation_id": row.id,
            "to": row.email,
            "first_name": row.first_name,
            "org_name": org.name,
            "inviter_name": inviter_name,
            "role": row.role,
            "token": secret,
            "expires_at": row.expires_at.to_rfc3339(),
        });
        let now = self.now();
        outbox::insert(
            c,
            OutboxRow {
                id: UserId::generate().to_string(),
                kind: INVITATION_EMAIL.into(),
                org_id: org.id.clone(),
                payload: payload.to_string(),
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                created_at: now,
                delivered_at: None,
            },
        )
        .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(org_id = %org_id))]
    pub async fn invite_member(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        req: NewInvitation,
    ) -> AppResult<(InvitationView, Option<String>, String)> {
        let id = org_id.to_string();
        // An invitation grants nothing until accepted: no decision changes.
        let w = self
            .org_write(
                ctx,
                &id,
                Authority::Permission("members.manage"),
                Effect::Records,
            )
            .await?;
        let role_key = req
            .role
            .unwrap_or_else(|| self.policy.invite_role().to_owned());
        let role = self.role_for_request(w.conn(), &id, &role_key).await?;
        w.actor.actor().may_grant(&role, self.policy.owner_role())?;
        let email = req.email.as_str();
        self.ensure_not_member(w.conn(), &id, email).await?;
        let now = self.now();
        if invitations::find_pending_for_email(w.conn(), &id, email, now)
            .await?
            .is_some()
        {
            return Err(DomainError::exists(
                "ALREADY_INVITED",
                format!("{email} already has a pending invitation: use ResendInvitation instead"),
            )
            .into());
        }
        self.ensure_seat(w.conn(), &w.org).await?;
        let secret = new_secret();
        let row = InvitationRow {
            id: InvitationId::generate().to_string(),
            org_id: id.clone(),
            email: email.to_owned(),
            first_name: req.first_name,
            last_name: req.last_name,
            role: role.key.clone(),
            token_hash: hash_secret(&secret),
            state: StoredState::Pending.as_str().into(),
            invited_by_user_id: w.actor_id(),
            created_at: now,
            expires_at: now + self.settings.invitation_ttl,
            accepted_at: None,
        };
        invitations::insert(w.conn(), row.clone()).await?;
        let actor_id = w.actor_id();
        self.enqueue_invitation_email(w.conn(), &w.org, &row, &actor_id, &secret)
            .await?;
        let token = w
            .commit([
                Event::new("member.invited", format!("invitation:{}", row.id))
                    .after(invitation_json(&row)),
            ])
            .await?;
        Ok((self.view(row), self.handed_out(secret), token))
    }

    pub async fn list_invitations(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        status: Option<StatusFilter>,
        page: PageRequest,
    ) -> AppResult<Page<InvitationView>> {
        let c = self.store.conn();
        let id = org_id.to_string();
        self.readable_org(ctx, &id, "members.view").await?;
        let rows = invitations::list(
            c,
            &id,
            status,
            self.now(),
            page.after.as_deref(),
            page.size + 1,
        )
        .await?;
        let views = rows.into_iter().map(|r| self.view(r)).collect();
        Ok(Page::from_overfetch(
            views,
            page.size,
            |v: &InvitationView| v.row.id.clone(),
        ))
    }

    /// Opens a write to the invitation's org with the actor authorized to manage it.
    async fn managed_invitation<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        invitation_id: &InvitationId,
    ) -> AppResult<(OrgWrite<'a>, InvitationView)> {
        let row = invitations::find(self.store.conn(), &invitation_id.to_string())
            .await?
            .ok_or_else(invitation_not_found)?;
        let w = self
            .org_write(
                ctx,
                &row.org_id,
                Authority::Permission("members.manage"),
                Effect::Records,
            )
            .await?;
        // Re-read under the org lock: the first read may predate a concurrent change.
        let row = invitations::find(w.conn(), &row.id)
            .await?
            .ok_or_else(invitation_not_found)?;
        Ok((w, self.view(row)))
    }

    #[tracing::instrument(skip_all, fields(invitation_id = %invitation_id))]
    pub async fn resend_invitation(
        &self,
        ctx: &RequestCtx,
        invitation_id: &InvitationId,
    ) -> AppResult<(InvitationView, Option<String>, String)> {
        let (w, inv) = self.managed_invitation(ctx, invitation_id).await?;
        inv.status.ensure_resendable()?;
        let role = self
            .resolve_role(w.conn(), &w.org.id, &inv.row.role)
            .await?
            .ok_or_else(|| {
                DomainError::precondition(
                    "ROLE_NOT_FOUND",
                    format!("the invited role `{}` no longer exists: revoke this invitation and invite again", inv.row.role),
                )
            })?;
        w.actor.actor().may_grant(&role, self.policy.owner_role())?;
        self.ensure_not_member(w.conn(), &w.org.id, &inv.row.email)
            .await?;
        if inv.status == InvitationStatus::Expired {
            // The email may have been invited again since this one expired: one pending
            // invitation per email.
            if let Some(other) =
                invitations::find_pending_for_email(w.conn(), &w.org.id, &inv.row.email, self.now())
                    .await?
            {
                return Err(DomainError::exists(
                    "ALREADY_INVITED",
                    format!(
                        "{} already has a newer pending invitation ({}): resend that one instead",
                        inv.row.email, other.id
                    ),
                )
                .into());
            }
            // An expired invitation gave its seat back; reviving it takes one again.
            self.ensure_seat(w.conn(), &w.org).await?;
        }
        let secret = new_secret();
        let expires_at: DateTime<Utc> = self.now() + self.settings.invitation_ttl;
        invitations::renew(w.conn(), &inv.row.id, &hash_secret(&secret), expires_at).await?;
        let mut row = inv.row.clone();
        row.token_hash = hash_secret(&secret);
        row.expires_at = expires_at;
        let actor_id = w.actor_id();
        self.enqueue_invitation_email(w.conn(), &w.org, &row, &actor_id, &secret)
            .await?;
        let token = w
            .commit([Event::new("invitation.resent", format!("invitation:{}", row.id))
                .before(json!({"expires_at": inv.row.expires_at.to_rfc3339()}))
                .after(json!({"email": row.email, "role": row.role, "expires_at": expires_at.to_rfc3339()}))])
            .await?;
        Ok((self.view(row), self.handed_out(secret), token))
    }

    #[tracing::instrument(skip_all, fields(invitation_id = %invitation_id))]
    pub async fn revoke_invitation(
        &self,
        ctx: &RequestCtx,
        invitation_id: &InvitationId,
    ) -> AppResult<(InvitationView, String)> {
        let (w, inv) = self.managed_invitation(ctx, invitation_id).await?;
        inv.status.ensure_revocable()?;
        invitations::set_state(w.conn(), &inv.row.id, StoredState::Revoked.as_str(), None).await?;
        let mut row = inv.row.clone();
        row.state = StoredState::Revoked.as_str().into();
        let token = w
            .commit([
                Event::new("invitation.revoked", format!("invitation:{}", row.id))
                    .before(invitation_json(&inv.row))
                    .after(json!({
                        "invitation_id": row.id,
                        "email": row.email,
                        "role": row.role,
                        "state": "revoked",
                    })),
            ])
            .await?;
        Ok((self.view(row), token))
    }

    #[tracing::instrument(skip_all)]
    pub async fn accept_invitation(
        &self,
        ctx: &RequestCtx,
        secret: &str,
        acceptance: Acceptance,
    ) -> AppResult<(MemberView, OrgView, String)> {
        let hash = hash_secret(secret);
        let unknown = || {
            DomainError::not_found(
                "INVITATION_NOT_FOUND",
                "this invitation link is not valid: ask the organization to send a new one",
            )
        };
        let first = invitations::find_by_token_hash(self.store.conn(), &hash)
            .await?
            .ok_or_else(unknown)?;
        let tx = self.store.write().await?;
        let org = orgs::lock(&*tx, &first.org_id)
            .await?
            .ok_or_else(|| org_not_found(&first.org_id))?;
        // Under the org lock, the state read now is the one this accept decides on.
        let row = invitations::find_by_token_hash(&*tx, &hash)
            .await?
            .filter(|r| constant_time_eq(r.token_hash.as_bytes(), hash.as_bytes()))
            .ok_or_else(unknown)?;
        let inv = self.view(row);
        inv.status.ensure_acceptable()?;
        let role = self
            .resolve_role(&*tx, &org.id, &inv.row.role)
            .await?
            .ok_or_else(|| {
                DomainError::precondition(
                    "ROLE_NOT_FOUND",
                    "the role this invitation grants no longer exists: ask the organization to invite you again",
                )
            })?;
        let existing = self
            .ensure_not_member(&*tx, &org.id, &inv.row.email)
            .await?;
        if acceptance.password_hash.is_some() && self.settings.return_invitation_tokens {
            // The inviting caller was handed this token too: a password chosen with it could
            // be the inviter's, who would then hold the invitee's sign-in everywhere.
            return Err(DomainError::precondition(
                "PASSWORD_NOT_ACCEPTED",
                "this deployment returns invitation tokens to the inviter (invitations.return_token), so accepting cannot set a password: accept without one, then set it with RequestPasswordReset",
            )
            .into());
        }
        let now = self.now();
        let user = match existing {
            Some(u) => {
                // Locks the account so that a concurrent SetUserStatus, which locks the user
                // before reading their orgs, sees this membership or runs entirely after it.
                let u = users::lock(&*tx, &u.id).await?.unwrap_or(u);
                // The token is a bearer secret that InviteMember also hands to the inviter: a
                // password set with it on an existing account would let the inviter take over
                // that person's sign-in everywhere. An existing account's password is set only
                // through its own email (RequestPasswordReset).
                if acceptance.password_hash.is_some() {
                    return Err(if u.password_hash.is_some() {
                        DomainError::precondition(
                            "PASSWORD_ALREADY_SET",
                            "this account already has a password: accept without one, or reset it with RequestPasswordReset",
                        )
                    } else {
                        DomainError::precondition(
                            "ACCOUNT_EXISTS",
                            "this email already has an account: accept without a password, then set one with RequestPasswordReset",
                        )
                    }
                    .into());
                }
                u
            }
            None => {
                let u = UserRow {
                    id: UserId::generate().to_string(),
                    email: inv.row.email.clone(),
                    first_name: acceptance
                        .first_name
                        .unwrap_or_else(|| inv.row.first_name.clone()),
                    last_name: acceptance
                        .last_name
                        .unwrap_or_else(|| inv.row.last_name.clone()),
                    created_at: now,
                    status: "active".into(),
                    password_hash: acceptance.password_hash,
                    mfa_secret: None,
                    mfa_enabled: false,
                    mfa_last_step: None,
                    updated_at: None,
                };
                users::insert(&*tx, u.clone()).await?;
                u
            }
        };
        let membership = MembershipRow {
            org_id: org.id.clone(),
            user_id: user.id.clone(),
            role: role.key.clone(),
            joined_at: now,
        };
        members::insert(&*tx, membership.clone()).await?;
        invitations::set_state(&*tx, &inv.row.id, StoredState::Accepted.as_str(), Some(now))
            .await?;
        let member_count = orgs::member_count(&*tx, &org.id).await?;
        let accepted = Event::new("invitation.accepted", format!("invitation:{}", inv.row.id))
            .before(invitation_json(&inv.row))
            .after(json!({"user_id": user.id, "email": user.email, "role": role.key}));
        let t = self
            .commit_org_events(tx, ctx, &org, &user.id, [accepted], Effect::Decisions)
            .await?;
        Ok((
            MemberView {
                membership,
                user: Account::from(&user),
            },
            OrgView {
                row: org,
                member_count,
            },
            t,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
