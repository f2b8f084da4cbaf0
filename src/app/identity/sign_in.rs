//! Signing in: passwords, two-factor codes, session tokens and their signing keys.

use serde_json::{Value, json};

use super::*;

impl App {
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
        if let Some(wait) = self.throttled_for(&*claim, &subject).await? {
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
        // Only after every factor matched: without the password nobody learns that an
        // account exists or which organization enforces single sign-on for it.
        if why.is_none()
            && let Some(u) = &user
            && let Some(org_id) = self.sso_required_for(c, u).await?
        {
            tracing::info!(org_id = %org_id, "password sign-in refused: single sign-on required");
            return Err(crate::app::sso::sso_required(&org_id).into());
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
        self.issue_session(&user, org_ids, SessionKind::Password)
            .await
            .map(|s| SignInOutcome::SignedIn(Box::new(s)))
    }

    /// Signs a session token for `user`, a member of `org_ids`.
    pub(crate) async fn issue_session(
        &self,
        user: &UserRow,
        org_ids: Vec<String>,
        kind: SessionKind,
    ) -> AppResult<SignIn> {
        let settings = self.identity();
        let now = self.now();
        let (kid, seed) = self.active_signing_key().await?;
        let expires_at = now + settings.session_ttl;
        let (amr, sso_connection) = match kind {
            SessionKind::Password => (Vec::new(), None),
            SessionKind::Sso { connection_id } => (vec!["sso".to_owned()], Some(connection_id)),
        };
        let claims = Claims {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: user.id.clone(),
            email: user.email.clone(),
            orgs: org_ids,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: EventId::generate().to_string(),
            amr,
            sso_connection,
        };
        let token = session::sign(&seed, &kid, &claims);
        Ok(SignIn {
            user: Account::from(user),
            token,
            expires_at,
        })
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
}
