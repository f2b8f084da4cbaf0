//! User rows.

use std::collections::HashMap;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, Set};

use super::StoreError;
use super::entities::users;

pub use users::Model as UserRow;

pub async fn find<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(users::Entity::find_by_id(id.to_owned()).one(c).await?)
}

pub async fn find_by_email<C: ConnectionTrait>(
    c: &C,
    email: &str,
) -> Result<Option<UserRow>, StoreError> {
    Ok(users::Entity::find()
        .filter(users::Column::Email.eq(email))
        .one(c)
        .await?)
}

pub async fn find_many<C: ConnectionTrait>(
    c: &C,
    ids: &[String],
) -> Result<HashMap<String, UserRow>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(users::Entity::find()
        .filter(users::Column::Id.is_in(ids.iter().cloned()))
        .all(c)
        .await?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect())
}

pub async fn insert<C: ConnectionTrait>(c: &C, row: UserRow) -> Result<(), StoreError> {
    users::Entity::insert(users::ActiveModel {
        id: Set(row.id),
        email: Set(row.email),
        first_name: Set(row.first_name),
        last_name: Set(row.last_name),
        created_at: Set(row.created_at),
        status: Set(row.status),
        password_hash: Set(row.password_hash),
        mfa_secret: Set(row.mfa_secret),
        mfa_enabled: Set(row.mfa_enabled),
        mfa_last_step: Set(row.mfa_last_step),
        updated_at: Set(row.updated_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// Locks a user's row until the transaction ends (an UPDATE takes the row lock on
/// PostgreSQL; SQLite writers are serialized already), so changes to the account and to the
/// set of its organizations happen one at a time. `None` when there is no such user.
pub async fn lock<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<UserRow>, StoreError> {
    let res = users::Entity::update_many()
        .col_expr(users::Column::Id, Expr::col(users::Column::Id))
        .filter(users::Column::Id.eq(id))
        .exec(c)
        .await?;
    if res.rows_affected == 0 {
        return Ok(None);
    }
    find(c, id).await
}

/// Records `step` as the account's last used TOTP step unless that step (or a later one) was
/// used already; `false` means another sign-in used the code first.
pub async fn claim_totp_step<C: ConnectionTrait>(
    c: &C,
    id: &str,
    step: i64,
) -> Result<bool, StoreError> {
    let res = users::Entity::update_many()
        .col_expr(users::Column::MfaLastStep, Expr::value(step))
        .filter(users::Column::Id.eq(id))
        .filter(
            Condition::any()
                .add(users::Column::MfaLastStep.is_null())
                .add(users::Column::MfaLastStep.lt(step)),
        )
        .exec(c)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Sets an account's email and names (a directory renaming an account it created).
pub async fn set_profile<C: ConnectionTrait>(
    c: &C,
    id: &str,
    email: &str,
    first_name: &str,
    last_name: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    users::Entity::update_many()
        .col_expr(users::Column::Email, Expr::value(email))
        .col_expr(users::Column::FirstName, Expr::value(first_name))
        .col_expr(users::Column::LastName, Expr::value(last_name))
        .col_expr(users::Column::UpdatedAt, Expr::value(Some(at)))
        .filter(users::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}
