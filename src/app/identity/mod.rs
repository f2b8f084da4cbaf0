//! Accounts and sign-in: users, status, passwords, session tokens, password reset, TOTP.
//!
//! Account events are audited once per organization the user belongs to (the audit log is
//! per organization); a user with no organization leaves no audit row.

mod accounts;
mod reset;
mod sign_in;
mod two_factor;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::ensure_account_active;
use super::write::Changed;
use super::{App, AppResult, RequestCtx};
use crate::domain::DomainError;
use crate::domain::consistency::{self, ConsistencyToken};
use crate::domain::email::Email;
use crate::domain::ids::{EventId, OrgId, UserId};
use crate::domain::password::{self, HashParams, NewPassword, Verified};
use crate::domain::sealed::Sealer;
use crate::domain::session::{self, Claims};
use crate::domain::token::{hash_secret, new_secret};
use crate::domain::totp;
use crate::store::identity::{self as ids_store, ResetTokenRow, SigningKeyRow, UserChanges};
use crate::store::outbox::OutboxRow;
use crate::store::users::UserRow;
use crate::store::{audit, members, orgs, outbox, users};

pub use crate::store::outbox::PASSWORD_RESET_EMAIL;

pub const STATUS_ACTIVE: &str = "active";
pub const STATUS_DISABLED: &str = "disabled";

/// The permission that lets an org's admins disable and re-enable its members' accounts.
const MANAGE_MEMBERS: &str = "members.manage";

/// Identity tunables (from `[identity]` in config).
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub hash: HashParams,
    pub min_password_chars: usize,
    pub session_ttl: Duration,
    pub key_rotation: Duration,
    pub sealer: Sealer,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub max_caller_failures: u32,
    pub caller_failure_window: Duration,
    pub reset_ttl: Duration,
    pub reset_url_base: String,
    pub totp_issuer: String,
    pub issuer: String,
    pub audience: String,
    pub max_reset_requests_per_email: u32,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            hash: HashParams::default(),
            min_password_chars: 12,
            session_ttl: Duration::minutes(15),
            key_rotation: Duration::days(7),
            sealer: Sealer::ephemeral(),
            max_failures: 10,
            failure_window: Duration::minutes(15),
            max_caller_failures: 50,
            caller_failure_window: Duration::minutes(10),
            reset_ttl: Duration::hours(1),
            reset_url_base: String::new(),
            totp_issuer: "teamgate".into(),
            issuer: "teamgate".into(),
            audience: "teamgate".into(),
            max_reset_requests_per_email: 3,
        }
    }
}

impl IdentitySettings {
    pub fn from_config(c: &crate::config::IdentityConfig) -> IdentitySettings {
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        let sealer = if c.secret_key.expose().is_empty() {
            tracing::warn!(
                "identity.secret_key is not set: TOTP enrolments and signing keys will not survive a restart"
            );
            Sealer::ephemeral()
        } else {
            Sealer::from_base64(c.secret_key.expose()).unwrap_or_else(Sealer::ephemeral)
        };
        IdentitySettings {
            hash: HashParams {
                memory_kib: c.argon2_memory_kib,
                iterations: c.argon2_iterations,
                parallelism: c.argon2_parallelism,
            },
            min_password_chars: c.min_password_length,
            session_ttl: secs(c.session_ttl_secs),
            key_rotation: secs(c.key_rotation_secs),
            sealer,
            max_failures: c.max_failed_sign_ins,
            failure_window: secs(c.failure_window_secs),
            max_caller_failures: c.max_failed_sign_ins_per_caller,
            caller_failure_window: secs(c.caller_failure_window_secs),
            reset_ttl: secs(c.reset_ttl_secs),
            reset_url_base: c.reset_url_base.clone(),
            totp_issuer: c.totp_issuer.clone(),
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            max_reset_requests_per_email: c.max_reset_requests_per_email,
        }
    }
}

/// How a user is named in GetUser.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(UserId),
    Email(Email),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => STATUS_ACTIVE,
            UserStatus::Disabled => STATUS_DISABLED,
        }
    }

    pub fn from_stored(s: &str) -> UserStatus {
        if s == STATUS_DISABLED {
            UserStatus::Disabled
        } else {
            UserStatus::Active
        }
    }
}

/// An account as callers see it: no password hash, no two-factor secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub status: UserStatus,
    pub mfa_enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<&UserRow> for Account {
    fn from(u: &UserRow) -> Account {
        Account {
            id: u.id.clone(),
            email: u.email.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            status: UserStatus::from_stored(&u.status),
            mfa_enabled: u.mfa_enabled,
            created_at: u.created_at,
        }
    }
}

/// A successful sign-in.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub user: Account,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum SignInOutcome {
    SignedIn(Box<SignIn>),
    /// Too many failures for this account: retry after this many seconds.
    Throttled(u64),
}

#[derive(Debug, Clone)]
pub struct Enrollment {
    pub secret: String,
    pub otpauth_uri: String,
}

/// Who did what to which account, for the audit log.
struct AccountEvent<'a> {
    actor: &'a str,
    action: &'a str,
    user_id: &'a str,
    /// Whether the change feed carries it too: account changes that alter decisions or the
    /// roster do; sign-in activity does not (it stays in the audit log, behind `audit.view`).
    fed: bool,
}

impl<'a> AccountEvent<'a> {
    /// A change to the account (fed to the change feed).
    fn change(actor: &'a str, action: &'a str, user_id: &'a str) -> Self {
        AccountEvent {
            actor,
            action,
            user_id,
            fed: true,
        }
    }

    /// The user's own sign-in activity (audit log only).
    fn activity(action: &'a str, user_id: &'a str) -> Self {
        AccountEvent {
            actor: user_id,
            action,
            user_id,
            fed: false,
        }
    }
}

/// The same answer whether the account does not exist or the caller may not see it.
fn user_hidden() -> DomainError {
    user_not_found("with that id or email that you may see")
}

fn not_an_admin(message: String) -> DomainError {
    DomainError::denied("NOT_AN_ADMIN", message)
}

fn too_many_attempts(wait_secs: i64) -> DomainError {
    DomainError::exhausted(
        "TOO_MANY_ATTEMPTS",
        format!("too many failed attempts: retry in {} s", wait_secs.max(1)),
    )
}

/// Consistency tokens for the orgs an account change locked.
fn tokens_for(locked: &[(String, i64)]) -> String {
    let tokens: Vec<ConsistencyToken> = locked
        .iter()
        .filter_map(|(org, version)| {
            OrgId::from_stored(org).map(|org| ConsistencyToken {
                org,
                version: *version,
            })
        })
        .collect();
    consistency::encode_all(&tokens)
}

/// The subject under which password reset requests for one address are counted.
fn reset_subject(email: &str) -> String {
    hash_secret(&format!("reset:{email}"))
}

fn user_not_found(what: &str) -> DomainError {
    DomainError::not_found("USER_NOT_FOUND", format!("no user {what}"))
}

fn invalid_credentials() -> DomainError {
    DomainError::Unauthenticated {
        reason: "INVALID_CREDENTIALS",
        message: "the email, password or two-factor code is not correct".into(),
    }
}

fn user_json(u: &UserRow) -> Value {
    json!({
        "user_id": u.id,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "status": u.status,
        "mfa_enabled": u.mfa_enabled,
    })
}

fn totp_context(user_id: &str) -> String {
    format!("totp:{user_id}")
}

fn key_context(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// Hashes off the async runtime: Argon2 is deliberately slow.
async fn hash_blocking(params: HashParams, password: String) -> AppResult<String> {
    tokio::task::spawn_blocking(move || password::hash(&params, &password))
        .await
        .map_err(|e| DomainError::precondition("PASSWORD_HASHING_FAILED", e.to_string()))?
        .map_err(Into::into)
}

async fn verify_blocking(params: HashParams, stored: Option<String>, password: String) -> Verified {
    tokio::task::spawn_blocking(move || {
        let decoy = stored.is_none();
        let stored = stored.unwrap_or_else(|| password::decoy_hash(&params).to_owned());
        let verified = password::verify(&params, &stored, &password);
        if decoy { Verified::No } else { verified }
    })
    .await
    .unwrap_or(Verified::No)
}

impl App {
    fn identity(&self) -> &IdentitySettings {
        &self.settings.identity
    }

    /// Validates a new password against the configured rules.
    pub fn new_password(&self, field: &str, raw: &str) -> Result<NewPassword, DomainError> {
        NewPassword::parse(field, raw, self.identity().min_password_chars)
    }

    /// Hashes a validated password with the configured parameters.
    pub async fn hash_password(&self, password: &NewPassword) -> AppResult<String> {
        hash_blocking(self.identity().hash, password.expose().to_owned()).await
    }

    /// One audit row per live org of the user.
    async fn audit_user<C: crate::store::Connection>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        org_ids: &[String],
        event: AccountEvent<'_>,
        diff: (Option<Value>, Option<Value>),
    ) -> AppResult<()> {
        for org in org_ids {
            let row = self.audit_event(
                ctx,
                org,
                event.actor,
                event.action,
                &format!("user:{}", event.user_id),
                diff.clone(),
            );
            if event.fed {
                audit::insert(c, row).await?;
            } else {
                audit::insert_without_feed(c, row).await?;
            }
        }
        Ok(())
    }

    /// Locks (and bumps the version of) every live org of the user, in id order.
    async fn lock_user_orgs<C: crate::store::Connection>(
        &self,
        c: &C,
        user_id: &str,
    ) -> AppResult<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for org in ids_store::org_ids_of(c, user_id).await? {
            if let Some(row) = orgs::lock(c, &org).await? {
                out.push((row.id, row.version));
            }
        }
        Ok(out)
    }

    /// Refuses while the account (or address) `subject` has had too many failures lately.
    async fn ensure_not_throttled<C: crate::store::Connection>(
        &self,
        c: &C,
        subject: &str,
    ) -> AppResult<()> {
        match self.throttled_for(c, subject).await? {
            Some(wait) => Err(too_many_attempts(wait).into()),
            None => Ok(()),
        }
    }

    /// Seconds (at least 1) until `subject` may try again, while it has had
    /// `max_failed_sign_ins` failures within the failure window; `None` otherwise.
    async fn throttled_for<C: crate::store::Connection>(
        &self,
        c: &C,
        subject: &str,
    ) -> AppResult<Option<i64>> {
        let settings = self.identity();
        let now = self.now();
        let (failures, oldest) =
            ids_store::failures_since(c, subject, now - settings.failure_window).await?;
        if failures < u64::from(settings.max_failures) {
            return Ok(None);
        }
        Ok(Some(oldest.map_or(1, |o| {
            (o + settings.failure_window - now).num_seconds().max(1)
        })))
    }

    /// The user's own account, active, for calls a user makes about themselves; `lock` holds
    /// the row until the transaction ends.
    async fn own_account<C: crate::store::Connection>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        user: UserId,
        what: &str,
    ) -> AppResult<UserRow> {
        if ctx.actor()? != user {
            return Err(DomainError::denied(
                "NOT_THE_USER",
                format!("only the user themselves may {what}"),
            )
            .into());
        }
        let id = user.to_string();
        let row = users::lock(c, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
        ensure_account_active(&row)?;
        Ok(row)
    }

    /// Deletes the sign-in failures older than the failure window: no limit counts them any
    /// more, and without this every failed attempt (unknown emails included) would stay
    /// forever. Returns how many were deleted.
    pub async fn prune_auth_failures(&self) -> AppResult<u64> {
        let before = self.now() - self.identity().failure_window;
        let tx = self.store.write().await?;
        let pruned = ids_store::prune_failures(&*tx, before).await?;
        tx.commit().await?;
        Ok(pruned)
    }
}
