//! User rows.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

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
