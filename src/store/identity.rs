//! Identity rows: account changes, password reset tokens, signing keys, sign-in failures.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};

use super::StoreError;
use super::entities::{
    auth_failures, memberships, organizations, password_reset_tokens, signing_keys, users,
};

pub use password_reset_tokens::Model as ResetTokenRow;
pub use signing_keys::Model as SigningKeyRow;

/// Changes to one user; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub status: Option<String>,
    pub password_hash: Option<String>,
    pub mfa_secret: Option<Option<String>>,
    pub mfa_enabled: Option<bool>,
    pub mfa_last_step: Option<Option<i64>>,
}

pub async fn update_user<C: ConnectionTrait>(
    c: &C,
    id: &str,
    changes: UserChanges,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut am = users::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(id.to_owned()),
        ..Default::default()
    };
    if let Some(v) = changes.first_name {
        am.first_name = Set(v);
    }
    if let Some(v) = changes.last_name {
        am.last_name = Set(v);
    }
    if let Some(v) = changes.status {
        am.status = Set(v);
    }
    if let Some(v) = changes.password_hash {
        am.password_hash = Set(Some(v));
    }
    if let Some(v) = changes.mfa_secret {
        am.mfa_secret = Set(v);
    }
    if let Some(v) = changes.mfa_enabled {
        am.mfa_enabled = Set(v);
    }
    if let Some(v) = changes.mfa_last_step {
        am.mfa_last_step = Set(v);
    }
    if am.is_changed() {
        am.updated_at = Set(Some(now));
        am.update(c).await?;
    }
    Ok(())
}

/// Ids of the live orgs a user belongs to, ordered (the order orgs are locked in).
pub async fn org_ids_of<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
) -> Result<Vec<String>, StoreError> {
    let live = Query::select()
        .column(organizations::Column::Id)
        .from(organizations::Entity)
        .and_where(organizations::Column::DeletedAt.is_null())
        .to_owned();
    Ok(memberships::Entity::find()
        .filter(memberships::Column::UserId.eq(user_id))
        .filter(memberships::Column::OrgId.in_subquery(live))
        .order_by_asc(memberships::Column::OrgId)
        .all(c)
        .await?
        .into_iter()
        .map(|m| m.org_id)
        .collect())
}

pub async fn insert_reset_token<C: ConnectionTrait>(
    c: &C,
    row: ResetTokenRow,
) -> Result<(), StoreError> {
    password_reset_tokens::Entity::insert(password_reset_tokens::ActiveModel {
        id: Set(row.id),
        user_id: Set(row.user_id),
        token_hash: Set(row.token_hash),
        created_at: Set(row.created_at),
        expires_at: Set(row.expires_at),
        used_at: Set(row.used_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// Marks an unused, unexpired token used; `None` when there is no such token (or another
/// request used it first).
pub async fn use_reset_token<C: ConnectionTrait>(
    c: &C,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<ResetTokenRow>, StoreError> {
    let Some(row) = password_reset_tokens::Entity::find()
        .filter(password_reset_tokens::Column::TokenHash.eq(token_hash))
        .one(c)
        .await?
    else {
        return Ok(None);
    };
    if row.used_at.is_some() || row.expires_at <= now {
        return Ok(None);
    }
    let res = password_reset_tokens::Entity::update_many()
        .col_expr(password_reset_tokens::Column::UsedAt, Expr::value(now))
        .filter(password_reset_tokens::Column::Id.eq(row.id.as_str()))
        .filter(password_reset_tokens::Column::UsedAt.is_null())
        .exec(c)
        .await?;
    Ok((res.rows_affected == 1).then_some(row))
}

/// Retires every unused reset token of a user.
pub async fn retire_reset_tokens<C: ConnectionTrait>(
    c: &C,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    password_reset_tokens::Entity::update_many()
        .col_expr(password_reset_tokens::Column::UsedAt, Expr::value(now))
        .filter(password_reset_tokens::Column::UserId.eq(user_id))
        .filter(password_reset_tokens::Column::UsedAt.is_null())
        .exec(c)
        .await?;
    Ok(())
}

/// Signing keys made after `since`, newest first.
pub async fn signing_keys_since<C: ConnectionTrait>(
    c: &C,
    since: DateTime<Utc>,
) -> Result<Vec<SigningKeyRow>, StoreError> {
    Ok(signing_keys::Entity::find()
        .filter(signing_keys::Column::CreatedAt.gt(since))
        .order_by_desc(signing_keys::Column::CreatedAt)
        .all(c)
        .await?)
}

pub async fn insert_signing_key<C: ConnectionTrait>(
    c: &C,
    row: SigningKeyRow,
) -> Result<(), StoreError> {
    signing_keys::Entity::insert(signing_keys::ActiveModel {
        kid: Set(row.kid),
        public_key: Set(row.public_key),
        private_key: Set(row.private_key),
        created_at: Set(row.created_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn failures_since<C: ConnectionTrait>(
    c: &C,
    subject: &str,
    since: DateTime<Utc>,
) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
    let q = auth_failures::Entity::find()
        .filter(auth_failures::Column::Subject.eq(subject))
        .filter(auth_failures::Column::OccurredAt.gt(since));
    let n = q.clone().count(c).await?;
    let oldest = q
        .order_by_asc(auth_failures::Column::OccurredAt)
        .one(c)
        .await?
        .map(|r| r.occurred_at);
    Ok((n, oldest))
}

/// Serializes sign-in attempts for one subject until the transaction ends.
pub async fn lock_subject<C: ConnectionTrait>(c: &C, subject: &str) -> Result<(), StoreError> {
    super::advisory_xact_lock(c, &format!("auth_failures:{subject}")).await
}

pub async fn record_failure<C: ConnectionTrait>(
    c: &C,
    id: String,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    auth_failures::Entity::insert(auth_failures::ActiveModel {
        id: Set(id),
        subject: Set(subject.to_owned()),
        occurred_at: Set(at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// Deletes the failures recorded before `before`; returns how many.
pub async fn prune_failures<C: ConnectionTrait>(
    c: &C,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let res = auth_failures::Entity::delete_many()
        .filter(auth_failures::Column::OccurredAt.lt(before))
        .exec(c)
        .await?;
    Ok(res.rows_affected)
}

pub async fn clear_failures<C: ConnectionTrait>(c: &C, subject: &str) -> Result<(), StoreError> {
    auth_failures::Entity::delete_many()
        .filter(auth_failures::Column::Subject.eq(subject))
        .exec(c)
        .await?;
    Ok(())
}
