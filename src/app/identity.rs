//! Accounts and sign-in: users, status, passwords, session tokens, password reset, TOTP.
//!
//! Account events are audited once per organization the user belongs to (the audit log is
//! per organization); a user with no organization leaves no audit row.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::{App, AppResult, RequestCtx};
use crate::domain::DomainError;
use crate::domain::email::Email;
use crate::domain::ids::{EventId, UserId};
use crate::domain::password::{self, HashParams, NewPassword, Verified};
use crate::domain::sealed::Sealer;
use crate::domain::session::{self, Claims};
use crate::domain::token::{hash_secret, new_secret};
use crate::domain::totp;
use crate::store::identity::{self as ids_store, ResetTokenRow, SigningKeyRow, UserChanges};
use crate::store::outbox::OutboxRow;
use crate::store::users::UserRow;
use crate::store::{audit, orgs, outbox, users};

/// The outbox kind of password reset emails.
pub const PASSWORD_RESET_EMAIL: &str = "password_reset_email";

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

/// A successful sign-in.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub user: UserRow,
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
    async fn audit_user<C: sea_orm::ConnectionTrait>(
        &self,
        c: &C,
        ctx: &RequestCtx,
        org_ids: &[String],
        event: AccountEvent<'_>,
        diff: (Option<Value>, Option<Value>),
    ) -> AppResult<()> {
        for org in org_ids {
            audit::insert(
                c,
                self.audit_event(
                    ctx,
                    org,
                    event.actor,
                    event.action,
                    &format!("user:{}", event.user_id),
                    diff.clone(),
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Locks (and bumps the version of) every live org of the user, in id order.
    async fn lock_user_orgs<C: sea_orm::ConnectionTrait>(
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

    async fn invalidate_all(&self, locked: &[(String, i64)]) {
        for (org, version) in locked {
            self.decisions.invalidate_org(org, *version).await;
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn get_user(&self, _ctx: &RequestCtx, user: UserRef) -> AppResult<UserRow> {
        let c = self.store.conn();
        Ok(match user {
            UserRef::Id(id) => users::find(c, &id.to_string())
                .await?
                .ok_or_else(|| user_not_found(&format!("with id {id}")))?,
            UserRef::Email(e) => users::find_by_email(c, e.as_str())
                .await?
                .ok_or_else(|| user_not_found("with that email"))?,
        })
    }

    fn require_self(ctx: &RequestCtx, user: UserId, what: &str) -> Result<(), DomainError> {
        if ctx.actor()? != user {
            return Err(DomainError::denied(
                "NOT_THE_USER",
                format!("only the user themselves may {what}"),
            ));
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn update_user(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        first_name: Option<String>,
        last_name: Option<String>,
    ) -> AppResult<UserRow> {
        Self::require_self(ctx, user, "change their name")?;
        let id = user.to_string();
        let tx = self.store.write().await?;
        let before = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
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
                AccountEvent {
                    actor: &id,
                    action: "user.updated",
                    user_id: &id,
                },
                (Some(user_json(&before)), Some(user_json(&after))),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    #[tracing::instrument(skip_all, fields(user_id = %user, status = status.as_str()))]
    pub async fn set_user_status(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        status: UserStatus,
    ) -> AppResult<UserRow> {
        let actor = ctx.actor()?;
        if actor == user {
            return Err(DomainError::denied(
                "CANNOT_CHANGE_OWN_STATUS",
                "users cannot disable or enable their own account: ask an admin of one of your organizations",
            )
            .into());
        }
        let id = user.to_string();
        let tx = self.store.write().await?;
        let before = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
        let locked = self.lock_user_orgs(&*tx, &id).await?;
        let mut allowed = false;
        for (org, _) in &locked {
            if self.authorize(&*tx, ctx, org, MANAGE_MEMBERS).await.is_ok() {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Err(DomainError::denied(
                "NOT_AN_ADMIN",
                format!("actor lacks {MANAGE_MEMBERS} in every organization user {id} belongs to"),
            )
            .into());
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
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent {
                actor: &actor.to_string(),
                action,
                user_id: &id,
            },
            (Some(user_json(&before)), Some(user_json(&after))),
        )
        .await?;
        tx.commit().await?;
        self.invalidate_all(&locked).await;
        Ok(after)
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
    /// missing or wrong code) answers the same `INVALID_CREDENTIALS`.
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
        // Why a sign-in failed goes to the audit log only, never to the caller.
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
                    AccountEvent {
                        actor: &u.id,
                        action: "user.sign_in_failed",
                        user_id: &u.id,
                    },
                    (None, Some(json!({"user_id": u.id, "failure": why}))),
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
        ids_store::update_user(
            &*tx,
            &user.id,
            UserChanges {
                password_hash: rehash.clone(),
                mfa_last_step: step.map(Some),
                ..Default::default()
            },
            now,
        )
        .await?;
        ids_store::clear_failures(&*tx, &subject).await?;
        self.audit_user(
            &*tx,
            ctx,
            &org_ids,
            AccountEvent {
                actor: &user.id,
                action: "user.signed_in",
                user_id: &user.id,
            },
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
            sub: user.id.clone(),
            email: user.email.clone(),
            orgs: org_ids,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: EventId::generate().to_string(),
        };
        let token = session::sign(&seed, &kid, &claims);
        Ok(SignInOutcome::SignedIn(Box::new(SignIn {
            user,
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
    #[tracing::instrument(skip_all)]
    pub async fn request_password_reset(&self, ctx: &RequestCtx, email: Email) -> AppResult<()> {
        let Some(user) = users::find_by_email(self.store.conn(), email.as_str()).await? else {
            return Ok(());
        };
        if UserStatus::from_stored(&user.status) == UserStatus::Disabled {
            return Ok(());
        }
        let settings = self.identity();
        let now = self.now();
        let secret = new_secret();
        let tx = self.store.write().await?;
        ids_store::insert_reset_token(
            &*tx,
            ResetTokenRow {
                id: EventId::generate().to_string(),
                user_id: user.id.clone(),
                token_hash: hash_secret(&secret),
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
            AccountEvent {
                actor: &user.id,
                action: "user.password_reset_requested",
                user_id: &user.id,
            },
            (None, Some(json!({"user_id": user.id}))),
        )
        .await?;
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
            AccountEvent {
                actor: &user.id,
                action: "user.password_reset",
                user_id: &user.id,
            },
            (None, Some(json!({"user_id": user.id}))),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts TOTP enrolment: a new secret, not yet in force until confirmed with a code.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn enroll_totp(&self, ctx: &RequestCtx, user: UserId) -> AppResult<Enrollment> {
        Self::require_self(ctx, user, "enrol in two-factor sign-in")?;
        let id = user.to_string();
        let settings = self.identity();
        let tx = self.store.write().await?;
        let row = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
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
    /// with a current code. Either changes what Check answers in orgs that require MFA.
    #[tracing::instrument(skip_all, fields(user_id = %user, enable))]
    pub async fn set_totp(
        &self,
        ctx: &RequestCtx,
        user: UserId,
        code: &str,
        enable: bool,
    ) -> AppResult<()> {
        Self::require_self(ctx, user, "change their two-factor sign-in")?;
        let id = user.to_string();
        let settings = self.identity();
        let now = self.now();
        let tx = self.store.write().await?;
        let row = users::find(&*tx, &id)
            .await?
            .ok_or_else(|| user_not_found(&format!("with id {id}")))?;
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
        let step =
            totp::verify(&secret, code, now, row.mfa_last_step).ok_or_else(Self::bad_code)?;
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
            AccountEvent {
                actor: &id,
                action: if enable {
                    "user.mfa_enabled"
                } else {
                    "user.mfa_disabled"
                },
                user_id: &id,
            },
            (
                Some(json!({"mfa_enabled": !enable})),
                Some(json!({"mfa_enabled": enable})),
            ),
        )
        .await?;
        tx.commit().await?;
        self.invalidate_all(&locked).await;
        Ok(())
    }
}
