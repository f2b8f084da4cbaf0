//! Use cases: each RPC's behaviour as one function that validates nothing transport-specific,
//! runs the domain rules against storage inside one transaction, and records the audit event.

pub mod audit;
pub mod authz;
pub mod identity;
pub mod invitations;
pub mod members;
pub mod orgs;
pub mod roles;
pub mod scim;
pub mod sso;
mod write;

use std::sync::Arc;

use crate::store::Connection as ConnectionTrait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;

use crate::domain::DomainError;
use crate::domain::clock::Clock;
use crate::domain::consistency::ConsistencyToken;
use crate::domain::ids::{EventId, OrgId, UserId};
use crate::domain::permission::{Permission, PermissionSet};
use crate::domain::policy::Policy;
use crate::domain::roles::{Actor, ResolvedRole};
use crate::store::audit::AuditRow;
use crate::store::orgs::OrgRow;
use crate::store::{self, Store, decode_permissions};

/// Storage failures, as the transport maps them (unavailable, conflict, internal).
pub use crate::store::StoreError;

use self::authz::Decisions;

#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AppError {
    /// Whether this is the domain error with `reason`.
    pub fn has_reason(&self, reason: &str) -> bool {
        matches!(self, AppError::Domain(d) if d.reason() == reason)
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Tunables the use cases need.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub invitation_ttl: chrono::Duration,
    /// Whether invitation tokens go back to the inviting caller as well as by email.
    pub return_invitation_tokens: bool,
    pub identity: identity::IdentitySettings,
    /// `roles.max_per_org`: custom roles one organization may have.
    pub max_custom_roles_per_org: u32,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            invitation_ttl: chrono::Duration::days(7),
            return_invitation_tokens: true,
            identity: identity::IdentitySettings::default(),
            max_custom_roles_per_org: 100,
        }
    }
}

/// Who is calling and under which request id.
#[derive(Debug, Clone, Default)]
pub struct RequestCtx {
    pub actor: Option<UserId>,
    pub request_id: String,
    /// The service key that authenticated the call, recorded in audit events.
    pub key_name: Option<String>,
    /// Whether that key holds the `admin` scope: the platform operator, who may act on any
    /// account.
    pub operator: bool,
}

impl RequestCtx {
    pub fn actor(&self) -> Result<UserId, DomainError> {
        self.actor.ok_or_else(|| DomainError::Unauthenticated {
            reason: "MISSING_ACTOR",
            message: "send the acting user's id in the `x-actor-user-id` metadata".into(),
        })
    }
}

/// A page request after validation: how many and after which key.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: u64,
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to continue after; `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` fetched items.
    pub fn from_overfetch(mut items: Vec<T>, size: u64, key: impl Fn(&T) -> String) -> Page<T> {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if items.len() > size {
            items.truncate(size);
            let next = items.last().map(&key);
            Page { items, next }
        } else {
            Page { items, next: None }
        }
    }
}

/// The service's state shared by every RPC.
pub struct App {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub clock: Arc<dyn Clock>,
    pub settings: AppSettings,
    pub decisions: Decisions,
    /// Called after every commit on this replica (the change feed's wake-up).
    pub on_commit: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Single sign-on: settings, the providers' HTTP client and cached metadata.
    pub sso: sso::Sso,
}

/// An authorized actor within one org.
pub(crate) struct ActingMember {
    pub user_id: UserId,
    pub role: ResolvedRole,
    pub is_owner: bool,
    pub org: String,
}

impl ActingMember {
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            org: &self.org,
            role: &self.role,
            is_owner: self.is_owner,
        }
    }
}

/// A disabled account acts on nothing.
pub(crate) fn ensure_account_active(account: &store::users::UserRow) -> Result<(), DomainError> {
    if account.status == identity::STATUS_DISABLED {
        return Err(DomainError::denied(
            "USER_DISABLED",
            "the acting user's account is disabled: an admin of their organization can enable it",
        ));
    }
    Ok(())
}

pub(crate) fn org_not_found(org_id: &str) -> DomainError {
    DomainError::not_found(
        "ORG_NOT_FOUND",
        format!("organization {org_id} does not exist or was deleted"),
    )
}

/// The token naming the org's version as this write leaves it.
pub(crate) fn token(org: &OrgRow) -> ConsistencyToken {
    ConsistencyToken {
        org: OrgId::from_row(&org.id),
        version: org.version,
    }
}

impl App {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Resolves a role key in an org: a built-in role of the policy, or one of the org's
    /// custom roles. Permissions no longer in the catalog are dropped, never granted.
    pub(crate) async fn resolve_role<C: ConnectionTrait>(
        &self,
        c: &C,
        org_id: &str,
        key: &str,
    ) -> AppResult<Option<ResolvedRole>> {
        if let Some(b) = self.policy.built_in(key) {
            return Ok(Some(ResolvedRole {
                key: b.key.clone(),
                display_name: b.display_name.clone(),
                permissions: b.permissions.clone(),
                built_in: true,
            }));
        }
        if key.is_empty() || org_id.is_empty() {
            return Ok(None);
        }
        let Some(row) = store::roles::find_custom(c, org_id, key).await? else {
            return Ok(None);
        };
        Ok(Some(self.custom_role(row)))
    }

    pub(crate) fn custom_role(&self, row: store::roles::RoleRow) -> ResolvedRole {
        let permissions: PermissionSet = decode_permissions(&row.permissions)
            .iter()
            .filter_map(|p| Permission::parse(p).ok())
            .filter(|p| self.policy.knows(p))
            .collect();
        ResolvedRole {
            key: row.key,
            display_name: row.display_name,
            permissions,
            built_in: false,
        }
    }

    /// Resolves a role named in a request, or fails with `UNKNOWN_ROLE`.
    pub(crate) async fn role_for_request<C: ConnectionTrait>(
        &self,
        c: &C,
        org_id: &str,
        key: &str,
    ) -> AppResult<ResolvedRole> {
        self.resolve_role(c, org_id, key).await?.ok_or_else(|| {
            DomainError::invalid_because(
                "role",
                "UNKNOWN_ROLE",
                format!(
                    "role `{}` does not exist in this organization: ListRoles shows the roles you can use",
                    crate::domain::permission::truncate(key, 64)
                ),
            )
            .into()
        })
    }

    /// For reads: the live org, once the actor is shown to hold `permission` in it.
    pub(crate) async fn readable_org(
        &self,
        ctx: &RequestCtx,
        org_id: &OrgId,
        permission: &str,
    ) -> AppResult<OrgRow> {
        let c = self.store.conn();
        let org = store::orgs::find_live(c, org_id)
            .await?
            .ok_or_else(|| org_not_found(&org_id.to_string()))?;
        self.authorize_in(c, ctx, &org, permission).await?;
        Ok(org)
    }

    /// [`authorize`](Self::authorize) for a caller that already holds the org's row, so its
    /// two-factor rule is not read again.
    pub(crate) async fn authorize_in<C: ConnectionTrait>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        org: &OrgRow,
        permission: &str,
    ) -> AppResult<ActingMember> {
        let member = self
            .member_as_actor(c, ctx, &org.id, Some(org.require_mfa), permission)
            .await?;
        member.actor().require(permission)?;
        Ok(member)
    }

    /// Establishes the actor as a member of `org_id` holding `permission`.
    pub(crate) async fn authorize<C: ConnectionTrait>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        org_id: &str,
        permission: &str,
    ) -> AppResult<ActingMember> {
        let member = self
            .member_as_actor(c, ctx, org_id, None, permission)
            .await?;
        member.actor().require(permission)?;
        Ok(member)
    }

    /// The actor as a member of `org_id`; `org_requires_mfa` when the caller knows the org's
    /// rule already, else it is read (only for an actor without two-factor).
    async fn member_as_actor<C: ConnectionTrait>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        org_id: &str,
        org_requires_mfa: Option<bool>,
        permission_for_message: &str,
    ) -> AppResult<ActingMember> {
        let user_id = ctx.actor()?;
        let found = store::members::find_with_user(c, &OrgId::from_row(org_id), &user_id).await?;
        self.actor_from(
            c,
            user_id,
            found,
            org_id,
            org_requires_mfa,
            permission_for_message,
        )
        .await
    }

    /// The actor as a member, from their membership and account as read (`None`: not a
    /// member). The account is held to its status and to the org's two-factor rule.
    pub(crate) async fn actor_from<C: ConnectionTrait>(
        &self,
        c: &C,
        user_id: UserId,
        found: Option<(store::members::MembershipRow, store::users::UserRow)>,
        org_id: &str,
        org_requires_mfa: Option<bool>,
        permission_for_message: &str,
    ) -> AppResult<ActingMember> {
        let not_member = || {
            DomainError::denied(
                "NOT_A_MEMBER",
                format!(
                    "actor lacks {permission_for_message} in org {org_id}: the actor is not a member of it"
                ),
            )
        };
        let Some((m, account)) = found else {
            return Err(not_member().into());
        };
        ensure_account_active(&account)?;
        let requires_mfa = match org_requires_mfa {
            _ if account.mfa_enabled => false,
            Some(known) => known,
            None => store::orgs::find_live(c, &OrgId::from_row(org_id))
                .await?
                .is_some_and(|o| o.require_mfa),
        };
        if requires_mfa {
            return Err(DomainError::denied(
                "MFA_REQUIRED",
                format!(
                    "org {org_id} requires two-factor sign-in and the actor has none: enrol with EnrollTotp and ConfirmTotp first"
                ),
            )
            .into());
        }
        let role = self
            .resolve_role(c, org_id, &m.role)
            .await?
            .ok_or_else(not_member)?;
        let is_owner = role.key == self.policy.owner_role();
        Ok(ActingMember {
            user_id,
            role,
            is_owner,
            org: org_id.to_owned(),
        })
    }

    /// The actor's own account, when it is active: for calls that name an actor but no org.
    pub(crate) async fn active_actor<C: ConnectionTrait>(
        &self,
        c: &C,
        ctx: &RequestCtx,
    ) -> AppResult<store::users::UserRow> {
        let user_id = ctx.actor()?;
        let account = store::users::find(c, &user_id.to_string())
            .await?
            .ok_or_else(|| {
                DomainError::denied(
                    "UNKNOWN_ACTOR",
                    format!("{user_id} in x-actor-user-id is not a known user"),
                )
            })?;
        ensure_account_active(&account)?;
        Ok(account)
    }

    /// Builds an audit row for the current request; `diff` is the target's state before and
    /// after the change.
    pub(crate) fn audit_event(
        &self,
        ctx: &RequestCtx,
        org_id: &str,
        actor: &str,
        action: &str,
        target: &str,
        (before, after): (Option<Value>, Option<Value>),
    ) -> AuditRow {
        let mut after = after;
        if let (Some(key), Some(Value::Object(map))) = (&ctx.key_name, after.as_mut()) {
            map.insert("_service_key".into(), Value::String(key.clone()));
        }
        AuditRow {
            id: EventId::generate().to_string(),
            org_id: org_id.to_owned(),
            actor_user_id: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            before: before.map(|v| v.to_string()),
            after: after.map(|v| v.to_string()),
            occurred_at: self.now(),
            request_id: ctx.request_id.clone(),
        }
    }
}
