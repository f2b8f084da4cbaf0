//! Reading accounts, renaming them, and switching them off and on.

use super::*;

impl App {
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
    ) -> AppResult<(Account, Vec<ConsistencyToken>)> {
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
        self.committed(&Changed::account(user, &locked)).await;
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
            let Some(m) =
                members::find(c, &OrgId::from_row(org), &UserId::from_row(target)).await?
            else {
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
}
