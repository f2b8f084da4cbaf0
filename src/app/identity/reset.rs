//! Password reset by email.

use serde_json::json;

use super::*;

impl App {
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
        // Members whose domain enforces single sign-on have no password to reset: nothing is
        // sent, and the answer is the same as for any other address.
        let user = match user {
            Some(u) if self.sso_required_for(&*tx, &u).await?.is_some() => None,
            other => other,
        };
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
        // A link sent before the organization started enforcing single sign-on sets no
        // password; the transaction rolls back, so the link is not spent either.
        if let Some(org_id) = self.sso_required_for(&*tx, &user).await? {
            return Err(crate::app::sso::sso_required(&org_id).into());
        }
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
}
