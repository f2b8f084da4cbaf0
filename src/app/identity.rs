//! Accounts and sign-in: users, status, passwords, session tokens, password reset, TOTP.
//!
//! Account events are audited once per organization the user belongs to (the audit log is
//! per organization); a user with no organization leaves no audit row.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::ensure_account_active;
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
        let settings = self.identity();
        let now = self.now();
        let (failures, oldest) =
            ids_store::failures_since(c, subject, now - settings.failure_window).await?;
        if failures >= u64::from(settings.max_failures) {
            let wait = oldest.map_or(1, |o| (o + settings.failure_window - now).num_seconds());
            return Err(too_many_attempts(wait).into());
        }
        Ok(())
    }

    /// Reads an account for the platform operator, the user themselves, or a holder of
    /// `members.view` in one of the user's orgs; to anyone else it does not exist.
    #[tracing::instrument(skip_all)]
    pub async fn get_user(&self, ctx: &RequestCtx, user: UserRef) -> AppResult<Account> {
        let c = self.store.conn();
        if !ctx.operator
            && let Some(actor) = users::find(c, &ctx.actor()?.to_string()).await?
        {
            ensure_account_active(&actor)?;
        }
        let row = match user {
            UserRef::Id(id) => users::find(c, &id.to_string()).await?,
            UserRef::Email(e) => users::find_by_email(c, e.as_str()).await?,
        }
        .ok_or_else(user_hidden)?;
        if ctx.operator || ctx.actor.is_some_and(|a| a.to_string() == row.id) {
            return Ok(Account::from(&row));
        }
        for org in ids_store::org_ids_of(c, &row.id).await? {
            if self.authorize(c, ctx, &org, "members.view").await.is_ok() {
                return Ok(Account::from(&row));
            }
        }
        Err(user_hidden().into())
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

    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn update_user(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        first_name: Option<String>,
        last_name: Option<String>,
    ) -> AppResult<Account> {
        let id = user.to_string();
        let tx = self.store.write().await?;
        let before = self
            .own_account(&*tx, ctx, user, "change their name")
            .await?;
        let now = self.now();
        ids_store::update_user(
            &*tx,
            &id,
            UserChanges {
                first_name,
                last_name,
                ..Default::default()
            },
            now,
        )
        .await?;
        let after = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
        if after != before {
            let org_ids = ids_store::org_ids_of(&*tx, &id).await?;
            self.audit_user(
                &*tx,
                ctx,
                &org_ids,
                AccountEvent::change(&id, "user.updated", &id),
                (Some(user_json(&before)), Some(user_json(&after))),
            )
            .await?;
        }
        tx.commit().await?;
        self.committed(&[]).await;
        Ok(Account::from(&after))
    }

    /// Disables or enables an account. The actor must manage the user in every organization
    /// the user belongs to (hold `members.manage` and outrank them there, as RemoveMember
    /// requires), or call with an `admin`-scoped key: otherwise anyone could make a throw-away
    /// org, get the victim into it, and switch the victim's account off everywhere.
    ///
    /// The user's row is locked first, so the set of their orgs cannot change (an
    /// AcceptInvitation elsewhere waits) between the check, the change and the invalidation.
    /// Returns the account and a consistency token naming every org whose answers changed.
    #[tracing::instrument(skip_all, fields(user_id = %user, status = status.as_str()))]
    pub async fn set_user_status(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        status: UserStatus,
    ) -> AppResult<(Account, String)> {
        if ctx.actor == Some(user) {
            return Err(DomainError::denied(
                "CANNOT_CHANGE_OWN_STATUS",
                "users cannot disable or enable their own account: ask an admin of one of your organizations",
            )
            .into());
        }
        if !ctx.operator {
            ctx.actor()?;
        }
        let id = user.to_string();
        let tx = self.store.write().await?;
        let before = users::lock(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
        let locked = self.lock_user_orgs(&*tx, &id).await?;
        if !ctx.operator {
            self.ensure_manages_everywhere(&*tx, ctx, &id, &locked)
                .await?;
        }
        let now = self.now();
        ids_store::update_user(
            &*tx,
            &id,
            UserChanges {
                status: Some(status.as_str().to_owned()),
                ..Default::default()
            },
            now,
        )
        .await?;
        let after = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
        let org_ids: Vec<String> = locked.iter().map(|(o, _)| o.clone()).collect();
        let action = match status {
            UserStatus::Active => "user.enabled",
            UserStatus::Disabled => "user.disabled",
        };
        let actor = ctx.actor.map(|a| a.to_string()).unwrap_or_default();
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent::change(&actor, action, &id),
            (Some(user_json(&before)), Some(user_json(&after))),
        )
        .await?;
        tx.commit().await?;
        self.committed(&locked).await;
        Ok((Account::from(&after), tokens_for(&locked)))
    }

    /// The actor holds `members.manage` and outranks `target` in each of `orgs` (all of the
    /// target's orgs), and there is at least one.
    async fn ensure_manages_everywhere<C: crate::store::Connection>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        target: &str,
        orgs: &[(String, i64)],
    ) -> AppResult<()> {
        if orgs.is_empty() {
            return Err(not_an_admin(format!(
                "user {target} belongs to no organization: only the platform operator (a service key with the admin scope) can change their status"
            ))
            .into());
        }
        let owner_role = self.policy.owner_role();
        for (org, _) in orgs {
            let actor = match self.authorize(c, ctx, org, MANAGE_MEMBERS).await {
                Ok(actor) => actor,
                // The actor's own account state says more than "not an admin".
                Err(e) if e.has_reason("USER_DISABLED") || e.has_reason("MFA_REQUIRED") => {
                    return Err(e);
                }
                Err(_) => {
                    return Err(not_an_admin(format!(
                        "actor lacks {MANAGE_MEMBERS} in org {org}, where user {target} is a member: \
                         only someone who manages the user in every organization they belong to can change their status"
                    ))
                    .into());
                }
            };
            let Some(m) = members::find(c, org, target).await? else {
                continue;
            };
            if let Some(current) = self.resolve_role(c, org, &m.role).await?
                && actor.actor().may_manage(&current, owner_role).is_err()
            {
                return Err(not_an_admin(format!(
                    "user {target} holds `{}` in org {org}, which the actor does not outrank",
                    current.key
                ))
                .into());
            }
        }
        Ok(())
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

    /// Signs a user in. Every mismatch (unknown email, wrong password, disabled account,
    /// missing, wrong or reused code) answers the same `INVALID_CREDENTIALS`.
    #[tracing::instrument(skip_all)]
    pub async fn authenticate(
        &self,
        ctx: &RequestCtx,
        email: &str,
        password: &str,
        totp_code: Option<&str>,
    ) -> AppResult<SignInOutcome> {
        let settings = self.identity().clone();
        let normalized = Email::parse("email", email)
            .map(|e| e.as_str().to_owned())
            .unwrap_or_else(|_| email.trim().to_lowercase());
        let subject = hash_secret(&normalized);
        let now = self.now();
        // The attempt is recorded as a failure before the password is checked (a success
        // clears it), under a lock on the subject: concurrent attempts cannot all pass the
        // limit check before any of them is recorded.
        let claim = self.store.write().await?;
        ids_store::lock_subject(&*claim, &subject).await?;
        let (failures, oldest) =
            ids_store::failures_since(&*claim, &subject, now - settings.failure_window).await?;
        if failures >= u64::from(settings.max_failures) {
            let wait = oldest
                .map(|o| (o + settings.failure_window - now).num_seconds().max(1))
                .unwrap_or(1);
            return Ok(SignInOutcome::Throttled(u64::try_from(wait).unwrap_or(1)));
        }
        ids_store::record_failure(&*claim, EventId::generate().to_string(), &subject, now).await?;
        claim.commit().await?;
        let c = self.store.conn();
        let user = users::find_by_email(c, &normalized).await?;
        let verified = verify_blocking(
            settings.hash,
            user.as_ref().and_then(|u| u.password_hash.clone()),
            password.to_owned(),
        )
        .await;
        // Why a sign-in failed goes to the server log only: neither the caller nor the
        // audit log (read by the org's admins) learns which factor was wrong.
        let mut why = None;
        let mut step = None;
        match &user {
            None => why = Some("unknown_email"),
            Some(_) if verified == Verified::No => why = Some("password"),
            Some(u) if UserStatus::from_stored(&u.status) == UserStatus::Disabled => {
                why = Some("disabled")
            }
            Some(u) if u.mfa_enabled => {
                let secret = u
                    .mfa_secret
                    .as_deref()
                    .and_then(|s| settings.sealer.open(&totp_context(&u.id), s));
                step = match (secret, totp_code) {
                    (Some(secret), Some(code)) => totp::verify(&secret, code, now, u.mfa_last_step),
                    _ => None,
                };
                if step.is_none() {
                    why = Some("totp");
                }
            }
            Some(_) => {}
        }
        let tx = self.store.write().await?;
        // A code counts once: of two sign-ins racing with the same code, only the one that
        // moves the last used step forward gets in.
        if let (None, Some(u), Some(step)) = (why, &user, step)
            && !users::claim_totp_step(&*tx, &u.id, step).await?
        {
            why = Some("totp_reused");
        }
        let org_ids = match &user {
            Some(u) => ids_store::org_ids_of(&*tx, &u.id).await?,
            None => Vec::new(),
        };
        if let Some(why) = why {
            if let Some(u) = &user {
                self.audit_user(
                    &*tx,
                    ctx,
                    &org_ids,
                    AccountEvent::activity("user.sign_in_failed", &u.id),
                    (None, Some(json!({"user_id": u.id}))),
                )
                .await?;
            }
            tx.commit().await?;
            tracing::info!(failure = why, "sign-in failed");
            return Err(invalid_credentials().into());
        }
        let Some(user) = user else {
            return Err(invalid_credentials().into());
        };
        let rehash = if verified == Verified::YesRehash {
            Some(hash_blocking(settings.hash, password.to_owned()).await?)
        } else {
            None
        };
        if rehash.is_some() {
            ids_store::update_user(
                &*tx,
                &user.id,
                UserChanges {
                    password_hash: rehash.clone(),
                    ..Default::default()
                },
                now,
            )
            .await?;
        }
        ids_store::clear_failures(&*tx, &subject).await?;
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent::activity("user.signed_in", &user.id),
            (
                None,
                Some(json!({"user_id": user.id, "mfa": step.is_some(), "rehashed": rehash.is_some()})),
            ),
        )
        .await?;
        tx.commit().await?;
        let (kid, seed) = self.active_signing_key().await?;
        let expires_at = now + settings.session_ttl;
        let claims = Claims {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: user.id.clone(),
            email: user.email.clone(),
            orgs: org_ids,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: EventId::generate().to_string(),
        };
        let token = session::sign(&seed, &kid, &claims);
        Ok(SignInOutcome::SignedIn(Box::new(SignIn {
            user: Account::from(&user),
            token,
            expires_at,
        })))
    }

    /// The key that signs new tokens: the newest one younger than the rotation period,
    /// or a new one.
    async fn active_signing_key(&self) -> AppResult<(String, [u8; 32])> {
        let settings = self.identity();
        let now = self.now();
        let c = self.store.conn();
        for row in ids_store::signing_keys_since(c, now - settings.key_rotation).await? {
            let seed = settings
                .sealer
                .open(&key_context(&row.kid), &row.private_key)
                .and_then(|s| <[u8; 32]>::try_from(s).ok());
            if let Some(seed) = seed {
                return Ok((row.kid, seed));
            }
        }
        let (seed, public) = session::new_key();
        let kid = session::kid_for(&public);
        ids_store::insert_signing_key(
            c,
            SigningKeyRow {
                kid: kid.clone(),
                public_key: public,
                private_key: settings.sealer.seal(&key_context(&kid), &seed),
                created_at: now,
            },
        )
        .await?;
        tracing::info!(kid = %kid, "new session signing key");
        Ok((kid, seed))
    }

    /// The JWKS document: every key that signed a token that may still be valid.
    pub async fn jwks(&self) -> AppResult<String> {
        self.active_signing_key().await?;
        let settings = self.identity();
        let since = self.now() - settings.key_rotation - settings.session_ttl;
        let keys: Vec<Value> = ids_store::signing_keys_since(self.store.conn(), since)
            .await?
            .iter()
            .map(|k| session::jwk(&k.kid, &k.public_key))
            .collect();
        Ok(json!({ "keys": keys }).to_string())
    }

    /// Sends a reset link when the email has an active account; answers the same either way.
    ///
    /// Both paths do the same work up to the email itself (count the request for the
    /// address under its lock, look the account up, commit), so neither the answer nor its
    /// timing tells whether the account exists. Past `max_reset_requests_per_email` requests
    /// within the failure window nothing is sent, so nobody floods an inbox through us.
    #[tracing::instrument(skip_all)]
    pub async fn request_password_reset(&self, ctx: &RequestCtx, email: Email) -> AppResult<()> {
        let settings = self.identity();
        let now = self.now();
        let secret = new_secret();
        let token_hash = hash_secret(&secret);
        let subject = reset_subject(email.as_str());
        let tx = self.store.write().await?;
        ids_store::lock_subject(&*tx, &subject).await?;
        let (recent, _) =
            ids_store::failures_since(&*tx, &subject, now - settings.failure_window).await?;
        ids_store::record_failure(&*tx, EventId::generate().to_string(), &subject, now).await?;
        let user = users::find_by_email(&*tx, email.as_str())
            .await?
            .filter(|u| UserStatus::from_stored(&u.status) == UserStatus::Active);
        let within_limit = recent < u64::from(settings.max_reset_requests_per_email);
        if let (true, Some(user)) = (within_limit, user) {
            // A new link retires the older ones: only the newest email works.
            ids_store::retire_reset_tokens(&*tx, &user.id, now).await?;
            ids_store::insert_reset_token(
                &*tx,
                ResetTokenRow {
                    id: EventId::generate().to_string(),
                    user_id: user.id.clone(),
                    token_hash,
                    created_at: now,
                    expires_at: now + settings.reset_ttl,
                    used_at: None,
                },
            )
            .await?;
            outbox::insert(
                &*tx,
                OutboxRow {
                    id: EventId::generate().to_string(),
                    kind: PASSWORD_RESET_EMAIL.into(),
                    org_id: String::new(),
                    payload: json!({
                        "user_id": user.id,
                        "to": user.email,
                        "first_name": user.first_name,
                        "token": secret,
                        "reset_url": format!("{}{secret}", settings.reset_url_base),
                        "expires_at": (now + settings.reset_ttl).to_rfc3339(),
                    })
                    .to_string(),
                    attempts: 0,
                    next_attempt_at: now,
                    last_error: None,
                    created_at: now,
                    delivered_at: None,
                },
            )
            .await?;
            let org_ids = ids_store::org_ids_of(&*tx, &user.id).await?;
            self.audit_user(
                &*tx,
                ctx,
                &org_ids,
                AccountEvent::activity("user.password_reset_requested", &user.id),
                (None, Some(json!({"user_id": user.id}))),
            )
            .await?;
        } else if !within_limit {
            tracing::info!("password reset requests for one address over the limit: none sent");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets a new password with a reset token; the token and every older one stop working.
    #[tracing::instrument(skip_all)]
    pub async fn reset_password(
        &self,
        ctx: &RequestCtx,
        token: &str,
        new_password: NewPassword,
    ) -> AppResult<()> {
        let hash = self.hash_password(&new_password).await?;
        let now = self.now();
        let tx = self.store.write().await?;
        let row = ids_store::use_reset_token(&*tx, &hash_secret(token), now)
            .await?
            .ok_or_else(|| {
                DomainError::not_found(
                    "RESET_TOKEN_INVALID",
                    "this password reset link is not valid, was already used or has expired: request a new one",
                )
            })?;
        let user = users::find(&*tx, &row.user_id)
            .await?
            .ok_or_else(|| user_not_found("for this reset link"))?;
        ids_store::update_user(
            &*tx,
            &user.id,
            UserChanges {
                password_hash: Some(hash),
                ..Default::default()
            },
            now,
        )
        .await?;
        ids_store::retire_reset_tokens(&*tx, &user.id, now).await?;
        ids_store::clear_failures(&*tx, &hash_secret(&user.email)).await?;
        let org_ids = ids_store::org_ids_of(&*tx, &user.id).await?;
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent::activity("user.password_reset", &user.id),
            (None, Some(json!({"user_id": user.id}))),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts TOTP enrolment: a new secret, not yet in force until confirmed with a code.
    /// Open to members of orgs that require two-factor (that is how they comply).
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn enroll_totp(&self, ctx: &RequestCtx, user: UserId) -> AppResult<Enrollment> {
        let id = user.to_string();
        let settings = self.identity();
        let tx = self.store.write().await?;
        let row = self
            .own_account(&*tx, ctx, user, "enrol in two-factor sign-in")
            .await?;
        if row.mfa_enabled {
            return Err(DomainError::precondition(
                "MFA_ALREADY_ENABLED",
                "two-factor sign-in is already enabled: disable it first to enrol a new authenticator",
            )
            .into());
        }
        let secret = totp::new_secret();
        ids_store::update_user(
            &*tx,
            &id,
            UserChanges {
                mfa_secret: Some(Some(settings.sealer.seal(&totp_context(&id), &secret))),
                mfa_last_step: Some(None),
                ..Default::default()
            },
            self.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(Enrollment {
            secret: totp::encode_secret(&secret),
            otpauth_uri: totp::otpauth_uri(&settings.totp_issuer, &row.email, &secret),
        })
    }

    fn bad_code() -> DomainError {
        DomainError::invalid_because(
            "code",
            "INVALID_CODE",
            "the code does not match: enter the current code from your authenticator app",
        )
    }

    /// Confirms enrolment (`enable = true`) or turns two-factor off (`enable = false`), each
    /// with a current code. Either changes what Check answers in orgs that require MFA, so
    /// the answer is a consistency token naming the user's orgs. A wrong code counts against
    /// the account's sign-in failure limit, like a wrong password.
    #[tracing::instrument(skip_all, fields(user_id = %user, enable))]
    pub async fn set_totp(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        code: &str,
        enable: bool,
    ) -> AppResult<String> {
        let id = user.to_string();
        let settings = self.identity();
        let now = self.now();
        let tx = self.store.write().await?;
        let row = self
            .own_account(&*tx, ctx, user, "change their two-factor sign-in")
            .await?;
        let subject = hash_secret(&row.email);
        self.ensure_not_throttled(&*tx, &subject).await?;
        if row.mfa_enabled == enable {
            return Err(if enable {
                DomainError::precondition(
                    "MFA_ALREADY_ENABLED",
                    "two-factor sign-in is already enabled",
                )
            } else {
                DomainError::precondition("MFA_NOT_ENABLED", "two-factor sign-in is not enabled")
            }
            .into());
        }
        let secret = row
            .mfa_secret
            .as_deref()
            .and_then(|s| settings.sealer.open(&totp_context(&id), s))
            .ok_or_else(|| {
                DomainError::precondition(
                    "MFA_NOT_ENROLLED",
                    "no authenticator is enrolled: call EnrollTotp first",
                )
            })?;
        let Some(step) = totp::verify(&secret, code, now, row.mfa_last_step) else {
            ids_store::record_failure(&*tx, EventId::generate().to_string(), &subject, now).await?;
            tx.commit().await?;
            return Err(Self::bad_code().into());
        };
        let locked = self.lock_user_orgs(&*tx, &id).await?;
        ids_store::update_user(
            &*tx,
            &id,
            UserChanges {
                mfa_enabled: Some(enable),
                mfa_secret: (!enable).then_some(None),
                mfa_last_step: Some(enable.then_some(step)),
                ..Default::default()
            },
            now,
        )
        .await?;
        let org_ids: Vec<String> = locked.iter().map(|(o, _)| o.clone()).collect();
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent::change(
                &id,
                if enable {
                    "user.mfa_enabled"
                } else {
                    "user.mfa_disabled"
                },
                &id,
            ),
            (
                Some(json!({"mfa_enabled": !enable})),
                Some(json!({"mfa_enabled": enable})),
            ),
        )
        .await?;
        tx.commit().await?;
        self.committed(&locked).await;
        Ok(tokens_for(&locked))
    }
}
