//! The authorization code flow with PKCE: StartSso hands out the provider's URL with a
//! server-side state, nonce and verifier; CompleteSso redeems the state once, trades the
//! code for an ID token, verifies it, links or provisions the account and signs a session.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::provider::Client;
use super::*;
use crate::app::identity::{SessionKind, SignIn, UserStatus};
use crate::app::write::{Authority, Effect, Event};
use crate::app::{AppError, RequestCtx};
use crate::domain::ids::{ConnectionId, EventId, OrgId, UserId};
use crate::domain::sso::{
    Expected, IdClaims, IdTokenError, pkce_challenge, verified_email, verify_id_token,
};
use crate::domain::token::{hash_secret, new_secret};
use crate::store::audit;
use crate::store::identity as ids_store;
use crate::store::members::MembershipRow;
use crate::store::sso::{IdentityRow, StateRow};
use crate::store::users;

/// Whom StartSso signs in.
#[derive(Debug, Clone)]
pub enum SsoTarget {
    /// Routed by the email's domain to the connection that verified it.
    Email(Email),
    /// The org's connection; the id is needed when it has several.
    Org(OrgId, Option<ConnectionId>),
}

#[derive(Debug, Clone)]
pub struct StartedSso {
    pub authorization_url: String,
    pub expires_at: DateTime<Utc>,
    pub connection_id: String,
}

fn not_configured() -> DomainError {
    DomainError::precondition(
        "SSO_NOT_CONFIGURED",
        "no single sign-on connection serves this: sign in with a password, or ask the organization's owner to set one up",
    )
}

fn state_unknown() -> DomainError {
    DomainError::not_found(
        "SSO_STATE_UNKNOWN",
        "this sign-in is unknown: start again with StartSso",
    )
}

/// A readable name from the provider's claims, bounded like names typed in.
fn names_from(claims: &IdClaims) -> (String, String) {
    let clean = |s: Option<&String>| {
        s.map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
    };
    let first = clean(claims.given_name.as_ref());
    let last = clean(claims.family_name.as_ref());
    if first.is_empty() && last.is_empty() {
        return (clean(claims.name.as_ref()), String::new());
    }
    (first, last)
}

impl App {
    async fn connection_for(&self, target: &SsoTarget) -> AppResult<ConnectionRow> {
        let c = self.store.conn();
        let conn = match target {
            SsoTarget::Email(email) => {
                let domain = sso::find_domain(c, email_domain(email))
                    .await?
                    .ok_or_else(not_configured)?;
                if domain.verified_at.is_none() {
                    return Err(DomainError::precondition(
                        "SSO_DOMAIN_NOT_VERIFIED",
                        format!(
                            "{} is not verified yet, so it routes no sign-in: the organization's owner verifies it with VerifySsoDomain",
                            domain.domain
                        ),
                    )
                    .into());
                }
                sso::find_connection(c, &domain.connection_id)
                    .await?
                    .ok_or_else(not_configured)?
            }
            SsoTarget::Org(org, wanted) => {
                let all = sso::connections_of(c, &org.to_string()).await?;
                match wanted {
                    Some(id) => all
                        .into_iter()
                        .find(|r| r.id == id.to_string())
                        .ok_or_else(not_configured)?,
                    None if all.len() > 1 => {
                        return Err(DomainError::invalid_because(
                            "connection_id",
                            "SSO_CONNECTION_AMBIGUOUS",
                            "this organization has several single sign-on connections: pass connection_id",
                        )
                        .into());
                    }
                    None => all.into_iter().next().ok_or_else(not_configured)?,
                }
            }
        };
        if orgs::find_live(c, &OrgId::from_row(&conn.org_id))
            .await?
            .is_none()
        {
            return Err(not_configured().into());
        }
        Ok(conn)
    }

    /// Starts a sign-in: the URL to send the browser to. Nothing about accounts is read, so
    /// the answer says nothing about who has one.
    #[tracing::instrument(skip_all)]
    pub async fn start_sso(&self, target: SsoTarget, redirect_uri: &str) -> AppResult<StartedSso> {
        let conn = self.connection_for(&target).await?;
        if !decode_uris(&conn.redirect_uris)
            .iter()
            .any(|u| u == redirect_uri)
        {
            return Err(DomainError::invalid_because(
                "redirect_uri",
                "SSO_REDIRECT_URI_NOT_ALLOWED",
                "redirect_uri is not one of the connection's redirect_uris: add it with UpdateSsoConnection",
            )
            .into());
        }
        let meta = self.sso.providers.metadata(&conn.issuer).await?;
        let now = self.now();
        let state = new_secret();
        let nonce = new_secret();
        let verifier = new_secret();
        let state_hash = hash_secret(&state);
        let expires_at = now + self.sso.settings.state_ttl;
        let tx = self.store.write().await?;
        // Sign-ins nobody completed are dropped an hour after they expired.
        sso::prune_states(&*tx, now - chrono::Duration::hours(1)).await?;
        sso::insert_state(
            &*tx,
            StateRow {
                state_hash: state_hash.clone(),
                connection_id: conn.id.clone(),
                nonce: nonce.clone(),
                pkce_verifier: self
                    .settings
                    .identity
                    .sealer
                    .seal(&verifier_context(&state_hash), verifier.as_bytes()),
                redirect_uri: redirect_uri.to_owned(),
                created_at: now,
                expires_at,
                used_at: None,
            },
        )
        .await?;
        tx.commit().await?;
        let mut url =
            reqwest::Url::parse(&meta.discovery.authorization_endpoint).map_err(|_| {
                DomainError::unavailable(
                    "SSO_PROVIDER_UNAVAILABLE",
                    "the provider's authorization_endpoint is not a URL",
                )
            })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &conn.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", "openid email profile")
                .append_pair("state", &state)
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", &pkce_challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            if let SsoTarget::Email(email) = &target {
                q.append_pair("login_hint", email.as_str());
            }
        }
        Ok(StartedSso {
            authorization_url: url.into(),
            expires_at,
            connection_id: conn.id,
        })
    }

    /// Records a failed single sign-on in the connection's org (audit log only, never a
    /// code or token) and hands the error back.
    async fn sso_failed(
        &self,
        ctx: &RequestCtx,
        conn: &ConnectionRow,
        user_id: Option<&str>,
        err: AppError,
    ) -> AppError {
        let reason = match &err {
            AppError::Domain(d) => d.reason(),
            AppError::Store(_) => return err,
        };
        tracing::info!(reason, connection_id = %conn.id, "single sign-on failed");
        let row = self.audit_event(
            ctx,
            &conn.org_id,
            user_id.unwrap_or_default(),
            "sso.sign_in_failed",
            &format!("sso_connection:{}", conn.id),
            (None, Some(json!({"reason": reason, "user_id": user_id}))),
        );
        let write = async {
            let tx = self.store.write().await?;
            audit::insert_without_feed(&*tx, row).await?;
            tx.commit().await
        };
        if let Err(e) = write.await {
            tracing::warn!(error = %e, "could not audit a failed single sign-on");
        }
        err
    }

    /// Completes a sign-in with the `state` and `code` the provider returned.
    #[tracing::instrument(skip_all)]
    pub async fn complete_sso(
        &self,
        ctx: &RequestCtx,
        state: &str,
        code: &str,
    ) -> AppResult<SignIn> {
        let now = self.now();
        let state_hash = hash_secret(state);
        let c = self.store.conn();
        let Some(pending) = sso::find_state(c, &state_hash).await? else {
            tracing::info!(reason = "SSO_STATE_UNKNOWN", "single sign-on failed");
            return Err(state_unknown().into());
        };
        let Some(conn) = sso::find_connection(c, &pending.connection_id).await? else {
            tracing::info!(
                reason = "SSO_STATE_UNKNOWN",
                "single sign-on failed: connection gone"
            );
            return Err(state_unknown().into());
        };
        match self.redeem(ctx, &conn, &pending, code, now).await {
            Ok(done) => Ok(done),
            Err((user, e)) => Err(self.sso_failed(ctx, &conn, user.as_deref(), e).await),
        }
    }

    /// Everything after the state was found; a failure names the user when one was known.
    async fn redeem(
        &self,
        ctx: &RequestCtx,
        conn: &ConnectionRow,
        pending: &StateRow,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<SignIn, (Option<String>, AppError)> {
        let anon = |e: AppError| (None, e);
        let used = || {
            DomainError::precondition(
                "SSO_STATE_USED",
                "this sign-in was completed already: start again with StartSso",
            )
        };
        if pending.used_at.is_some() {
            return Err(anon(used().into()));
        }
        if pending.expires_at <= now {
            return Err(anon(
                DomainError::precondition(
                    "SSO_STATE_EXPIRED",
                    "this sign-in took too long and expired: start again with StartSso",
                )
                .into(),
            ));
        }
        // Single use before anything else: of two completions racing with one state, one
        // gets past here.
        let claimed = async {
            let tx = self.store.write().await?;
            let claimed = sso::claim_state(&*tx, &pending.state_hash, now).await?;
            tx.commit().await?;
            AppResult::Ok(claimed)
        }
        .await
        .map_err(anon)?;
        if !claimed {
            return Err(anon(used().into()));
        }
        let sealer = &self.settings.identity.sealer;
        let verifier = sealer
            .open(
                &verifier_context(&pending.state_hash),
                &pending.pkce_verifier,
            )
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| anon(state_unknown().into()))?;
        let secret = sealer
            .open(&secret_context(&conn.id), &conn.client_secret)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                anon(
                    DomainError::precondition(
                        "SSO_SECRET_UNREADABLE",
                        "the connection's client secret cannot be opened (identity.secret_key changed?): set it again with UpdateSsoConnection",
                    )
                    .into(),
                )
            })?;
        let providers = &self.sso.providers;
        let mut meta = providers
            .metadata(&conn.issuer)
            .await
            .map_err(|e| anon(e.into()))?;
        let client = Client {
            client_id: &conn.client_id,
            client_secret: &secret,
        };
        let id_token = providers
            .exchange(&meta, &client, code, &verifier, &pending.redirect_uri)
            .await
            .map_err(|e| anon(e.into()))?;
        let expect = Expected {
            issuer: &conn.issuer,
            client_id: &conn.client_id,
            nonce: &pending.nonce,
            now: now.timestamp(),
        };
        let mut verified = verify_id_token(&id_token, &meta.keys, &expect);
        if verified.as_ref().err() == Some(&IdTokenError::UnknownKey) {
            meta = providers
                .refresh_keys(&conn.issuer)
                .await
                .map_err(|e| anon(e.into()))?;
            verified = verify_id_token(&id_token, &meta.keys, &expect);
        }
        let claims = verified.map_err(|e| anon(e.into_domain().into()))?;
        let domains = sso::domains_of(self.store.conn(), &conn.id)
            .await
            .map_err(|e| anon(e.into()))?;
        let email =
            verified_email(&claims, &verified_domains(&domains)).map_err(|e| anon(e.into()))?;
        self.sign_in_linked(ctx, conn, &claims, &email, now).await
    }

    /// Finds the account (linked provider account first, then the verified email), joins it
    /// to the org when just-in-time provisioning allows, and signs the session.
    async fn sign_in_linked(
        &self,
        ctx: &RequestCtx,
        conn: &ConnectionRow,
        claims: &IdClaims,
        email: &Email,
        now: DateTime<Utc>,
    ) -> Result<SignIn, (Option<String>, AppError)> {
        let c = self.store.conn();
        let lift = |e: crate::store::StoreError| (None, AppError::from(e));
        let linked = sso::find_identity(c, &claims.iss, &claims.sub)
            .await
            .map_err(lift)?;
        let user = match &linked {
            Some(l) => users::find(c, &l.user_id).await.map_err(lift)?,
            None => users::find_by_email(c, email.as_str())
                .await
                .map_err(lift)?,
        };
        let known = user.as_ref().map(|u| u.id.clone());
        let fail = |e: DomainError| (known.clone(), AppError::from(e));
        if let Some(u) = &user
            && UserStatus::from_stored(&u.status) == UserStatus::Disabled
        {
            return Err(fail(DomainError::denied(
                "USER_DISABLED",
                "this account is disabled: an admin of its organization can enable it",
            )));
        }
        let member = match &user {
            Some(u) => members::find(c, &OrgId::from_row(&conn.org_id), &UserId::from_row(&u.id))
                .await
                .map_err(lift)?,
            None => None,
        };
        let user = if member.is_some() {
            let Some(user) = user else {
                return Err(fail(state_unknown()));
            };
            self.record_sso_sign_in(ctx, conn, &user, linked.as_ref(), claims, email, now)
                .await
                .map_err(|e| (known.clone(), e))?;
            user
        } else if conn.jit_provisioning {
            self.provision(ctx, conn, user, claims, email, now)
                .await
                .map_err(|e| (known.clone(), e))?
        } else {
            return Err(fail(DomainError::denied(
                "SSO_NOT_PROVISIONED",
                "this account is not a member of the organization and the connection does not provision members: ask for an invitation",
            )));
        };
        let org_ids = ids_store::org_ids_of(self.store.conn(), &user.id)
            .await
            .map_err(|e| (Some(user.id.clone()), e.into()))?;
        self.issue_session(
            &user,
            org_ids,
            SessionKind::Sso {
                connection_id: conn.id.clone(),
            },
        )
        .await
        .map_err(|e| (Some(user.id.clone()), e))
    }

    /// Links the provider account on its first sign-in (or records this one) and audits it.
    #[allow(clippy::too_many_arguments)]
    async fn record_sso_sign_in(
        &self,
        ctx: &RequestCtx,
        conn: &ConnectionRow,
        user: &UserRow,
        linked: Option<&IdentityRow>,
        claims: &IdClaims,
        email: &Email,
        now: DateTime<Utc>,
    ) -> AppResult<()> {
        let tx = self.store.write().await?;
        self.link(&*tx, conn, user, linked, claims, email, now)
            .await?;
        let row = self.audit_event(
            ctx,
            &conn.org_id,
            &user.id,
            "user.signed_in",
            &format!("user:{}", user.id),
            (
                None,
                Some(json!({"user_id": user.id, "method": "sso", "connection_id": conn.id})),
            ),
        );
        audit::insert_without_feed(&*tx, row).await?;
        tx.commit().await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn link<C: ConnectionTrait>(
        &self,
        c: &C,
        conn: &ConnectionRow,
        user: &UserRow,
        linked: Option<&IdentityRow>,
        claims: &IdClaims,
        email: &Email,
        now: DateTime<Utc>,
    ) -> AppResult<()> {
        match linked {
            Some(l) => sso::touch_identity(c, &l.id, email.as_str(), now).await?,
            None => {
                sso::insert_identity(
                    c,
                    IdentityRow {
                        id: EventId::generate().to_string(),
                        issuer: claims.iss.clone(),
                        subject: claims.sub.clone(),
                        user_id: user.id.clone(),
                        connection_id: conn.id.clone(),
                        email: email.as_str().to_owned(),
                        created_at: now,
                        last_sign_in_at: now,
                    },
                )
                .await?
            }
        }
        Ok(())
    }

    /// Just-in-time provisioning: the account (created when there is none) joins the org
    /// with the connection's default role, within the plan's seats, through the one write
    /// path every membership change takes.
    async fn provision(
        &self,
        ctx: &RequestCtx,
        conn: &ConnectionRow,
        existing: Option<UserRow>,
        claims: &IdClaims,
        email: &Email,
        now: DateTime<Utc>,
    ) -> AppResult<UserRow> {
        let user_id = existing
            .as_ref()
            .and_then(|u| UserId::from_stored(&u.id))
            .unwrap_or_else(UserId::generate);
        let w = self
            .org_write(
                ctx,
                &OrgId::from_row(&conn.org_id),
                Authority::Provisioning { user: user_id },
                Effect::Member(user_id),
            )
            .await?;
        let role = self
            .resolve_role(w.conn(), &conn.org_id, &conn.default_role)
            .await?
            .filter(|r| r.key != self.policy.owner_role())
            .ok_or_else(|| {
                DomainError::precondition(
                    "ROLE_NOT_FOUND",
                    "the connection's default role no longer exists: the organization's owner sets another with UpdateSsoConnection",
                )
            })?;
        let user = match existing {
            // Locked, so a concurrent SetUserStatus sees this membership or runs after it.
            Some(u) => users::lock(w.conn(), &u.id).await?.unwrap_or(u),
            None => {
                let (first_name, last_name) = names_from(claims);
                let u = UserRow {
                    id: user_id.to_string(),
                    email: email.as_str().to_owned(),
                    first_name,
                    last_name,
                    created_at: now,
                    status: crate::app::identity::STATUS_ACTIVE.into(),
                    password_hash: None,
                    mfa_secret: None,
                    mfa_enabled: false,
                    mfa_last_step: None,
                    updated_at: None,
                };
                users::insert(w.conn(), u.clone()).await?;
                u
            }
        };
        if UserStatus::from_stored(&user.status) == UserStatus::Disabled {
            return Err(DomainError::denied(
                "USER_DISABLED",
                "this account is disabled: an admin of its organization can enable it",
            )
            .into());
        }
        if members::find(w.conn(), &w.id, &UserId::from_row(&user.id))
            .await?
            .is_none()
        {
            self.ensure_seat(w.conn(), &w.org).await?;
            members::insert(
                w.conn(),
                MembershipRow {
                    org_id: conn.org_id.clone(),
                    user_id: user.id.clone(),
                    role: role.key.clone(),
                    joined_at: now,
                },
            )
            .await?;
        }
        let linked = sso::find_identity(w.conn(), &claims.iss, &claims.sub).await?;
        self.link(w.conn(), conn, &user, linked.as_ref(), claims, email, now)
            .await?;
        w.commit([
            Event::new("member.provisioned", format!("user:{}", user.id)).after(json!({
                "user_id": user.id,
                "email": user.email,
                "role": role.key,
                "connection_id": conn.id,
            })),
        ])
        .await?;
        Ok(user)
    }
}
