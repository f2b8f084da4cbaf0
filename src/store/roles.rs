//! Role rows: the policy's built-in roles (org_id = "") and each org's custom roles.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};

use super::entities::roles;
use super::{StoreError, encode_permissions};
use crate::domain::policy::Policy;

pub use roles::Model as RoleRow;

/// The org id under which built-in roles are stored.
pub const BUILT_IN_ORG: &str = "";

pub async fn find_custom<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    key: &str,
) -> Result<Option<RoleRow>, StoreError> {
    Ok(
        roles::Entity::find_by_id((org_id.to_owned(), key.to_owned()))
            .one(c)
            .await?,
    )
}

pub async fn list_custom<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
) -> Result<Vec<RoleRow>, StoreError> {
    Ok(roles::Entity::find()
        .filter(roles::Column::OrgId.eq(org_id))
        .order_by_asc(roles::Column::Key)
        .all(c)
        .await?)
}

/// How many custom roles an org has.
pub async fn count_custom<C: ConnectionTrait>(c: &C, org_id: &str) -> Result<u64, StoreError> {
    Ok(roles::Entity::find()
        .filter(roles::Column::OrgId.eq(org_id))
        .count(c)
        .await?)
}

pub async fn insert<C: ConnectionTrait>(c: &C, row: RoleRow) -> Result<(), StoreError> {
    roles::Entity::insert(roles::ActiveModel {
        org_id: Set(row.org_id),
        key: Set(row.key),
        display_name: Set(row.display_name),
        permissions: Set(row.permissions),
        built_in: Set(row.built_in),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn update<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    key: &str,
    display_name: &str,
    permissions: &[String],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    roles::Entity::update_many()
        .col_expr(roles::Column::DisplayName, Expr::value(display_name))
        .col_expr(
            roles::Column::Permissions,
            Expr::value(encode_permissions(permissions)),
        )
        .col_expr(roles::Column::UpdatedAt, Expr::value(at))
        .filter(roles::Column::OrgId.eq(org_id))
        .filter(roles::Column::Key.eq(key))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn delete<C: ConnectionTrait>(c: &C, org_id: &str, key: &str) -> Result<(), StoreError> {
    roles::Entity::delete_many()
        .filter(roles::Column::OrgId.eq(org_id))
        .filter(roles::Column::Key.eq(key))
        .exec(c)
        .await?;
    Ok(())
}

/// Makes the stored built-in rows match the policy, so the database records what the roles
/// meant when members were given them.
pub async fn sync_built_in<C: ConnectionTrait>(
    c: &C,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Replicas starting together would otherwise race on the same rows.
    super::advisory_xact_lock(c, "built_in_roles").await?;
    roles::Entity::delete_many()
        .filter(roles::Column::OrgId.eq(BUILT_IN_ORG))
        .exec(c)
        .await?;
    for role in policy.roles() {
        insert(
            c,
            RoleRow {
                org_id: BUILT_IN_ORG.to_owned(),
                key: role.key.clone(),
                display_name: role.display_name.clone(),
                permissions: encode_permissions(&role.permissions.to_strings()),
                built_in: true,
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
    }
    Ok(())
}
