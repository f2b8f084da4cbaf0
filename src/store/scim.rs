//! SCIM provisioning rows: directory tokens, group → role mappings, and the directory's
//! link to each account it provisioned in an org.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::StoreError;
use super::entities::{scim_group_mappings, scim_tokens, scim_users};

pub use scim_group_mappings::Model as GroupMappingRow;
pub use scim_tokens::Model as ScimTokenRow;
pub use scim_users::Model as ScimUserRow;

pub async fn insert_token<C: ConnectionTrait>(c: &C, row: ScimTokenRow) -> Result<(), StoreError> {
    scim_tokens::Entity::insert(scim_tokens::ActiveModel {
        id: Set(row.id),
        org_id: Set(row.org_id),
        name: Set(row.name),
        token_hash: Set(row.token_hash),
        created_by: Set(row.created_by),
        created_at: Set(row.created_at),
        revoked_at: Set(row.revoked_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// The unrevoked token with this hash.
pub async fn live_token_by_hash<C: ConnectionTrait>(
    c: &C,
    hash: &str,
) -> Result<Option<ScimTokenRow>, StoreError> {
    Ok(scim_tokens::Entity::find()
        .filter(scim_tokens::Column::TokenHash.eq(hash))
        .filter(scim_tokens::Column::RevokedAt.is_null())
        .one(c)
        .await?)
}

pub async fn find_token<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    id: &str,
) -> Result<Option<ScimTokenRow>, StoreError> {
    Ok(scim_tokens::Entity::find_by_id(id.to_owned())
        .filter(scim_tokens::Column::OrgId.eq(org_id))
        .one(c)
        .await?)
}

/// An org's tokens, revoked ones included, oldest first.
pub async fn list_tokens<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
) -> Result<Vec<ScimTokenRow>, StoreError> {
    Ok(scim_tokens::Entity::find()
        .filter(scim_tokens::Column::OrgId.eq(org_id))
        .order_by_asc(scim_tokens::Column::Id)
        .all(c)
        .await?)
}

pub async fn revoke_token<C: ConnectionTrait>(
    c: &C,
    id: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    scim_tokens::Entity::update_many()
        .col_expr(scim_tokens::Column::RevokedAt, Expr::value(at))
        .filter(scim_tokens::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn list_mappings<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
) -> Result<Vec<GroupMappingRow>, StoreError> {
    Ok(scim_group_mappings::Entity::find()
        .filter(scim_group_mappings::Column::OrgId.eq(org_id))
        .order_by_asc(scim_group_mappings::Column::DisplayName)
        .all(c)
        .await?)
}

pub async fn find_mapping<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    id: &str,
) -> Result<Option<GroupMappingRow>, StoreError> {
    Ok(scim_group_mappings::Entity::find_by_id(id.to_owned())
        .filter(scim_group_mappings::Column::OrgId.eq(org_id))
        .one(c)
        .await?)
}

pub async fn find_mapping_by_name<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    display_name: &str,
) -> Result<Option<GroupMappingRow>, StoreError> {
    Ok(scim_group_mappings::Entity::find()
        .filter(scim_group_mappings::Column::OrgId.eq(org_id))
        .filter(scim_group_mappings::Column::DisplayName.eq(display_name))
        .one(c)
        .await?)
}

pub async fn insert_mapping<C: ConnectionTrait>(
    c: &C,
    row: GroupMappingRow,
) -> Result<(), StoreError> {
    scim_group_mappings::Entity::insert(scim_group_mappings::ActiveModel {
        id: Set(row.id),
        org_id: Set(row.org_id),
        display_name: Set(row.display_name),
        role_key: Set(row.role_key),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn set_mapping_role<C: ConnectionTrait>(
    c: &C,
    id: &str,
    role_key: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    scim_group_mappings::Entity::update_many()
        .col_expr(scim_group_mappings::Column::RoleKey, Expr::value(role_key))
        .col_expr(scim_group_mappings::Column::UpdatedAt, Expr::value(at))
        .filter(scim_group_mappings::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn delete_mapping<C: ConnectionTrait>(c: &C, id: &str) -> Result<(), StoreError> {
    scim_group_mappings::Entity::delete_by_id(id.to_owned())
        .exec(c)
        .await?;
    Ok(())
}

pub async fn find_user<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    user_id: &str,
) -> Result<Option<ScimUserRow>, StoreError> {
    Ok(
        scim_users::Entity::find_by_id((org_id.to_owned(), user_id.to_owned()))
            .one(c)
            .await?,
    )
}

/// Every account this org's directory has linked, active or not.
pub async fn list_users<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
) -> Result<Vec<ScimUserRow>, StoreError> {
    Ok(scim_users::Entity::find()
        .filter(scim_users::Column::OrgId.eq(org_id))
        .all(c)
        .await?)
}

/// Inserts or replaces the directory's link to an account.
pub async fn save_user<C: ConnectionTrait>(c: &C, row: ScimUserRow) -> Result<(), StoreError> {
    let found = find_user(c, &row.org_id, &row.user_id).await?.is_some();
    let model = scim_users::ActiveModel {
        org_id: Set(row.org_id),
        user_id: Set(row.user_id),
        external_id: Set(row.external_id),
        active: Set(row.active),
        owns_account: Set(row.owns_account),
        version: Set(row.version),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
    };
    if found {
        scim_users::Entity::update(model).exec(c).await?;
    } else {
        scim_users::Entity::insert(model)
            .exec_without_returning(c)
            .await?;
    }
    Ok(())
}

pub async fn delete_user<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    user_id: &str,
) -> Result<(), StoreError> {
    scim_users::Entity::delete_by_id((org_id.to_owned(), user_id.to_owned()))
        .exec(c)
        .await?;
    Ok(())
}
