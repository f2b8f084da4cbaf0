//! Two-factor sign-in (TOTP): enrol, confirm, disable.

use serde_json::json;

use super::*;

impl App {
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
    ) -> AppResult<Vec<ConsistencyToken>> {
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
        self.committed(&Changed::account(user, &locked)).await;
        Ok(tokens_for(&locked))
    }
}
