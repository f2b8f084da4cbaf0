//! The reads behind a decision: live orgs, memberships and custom roles for many (org, user)
//! pairs at once, one query each whatever the number of pairs.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::StoreError;
use super::entities::{memberships, organizations, roles};
use super::members::MembershipRow;
use super::orgs::OrgRow;
use super::roles::RoleRow;

/// The orgs among `ids` that exist and are not deleted.
pub async fn live_orgs<C: ConnectionTrait>(
    c: &C,
    ids: &[String],
) -> Result<Vec<OrgRow>, StoreError> {
    Ok(organizations::Entity::find()
        .filter(organizations::Column::Id.is_in(ids.iter().cloned()))
        .filter(organizations::Column::DeletedAt.is_null())
        .all(c)
        .await?)
}

/// The memberships of any of `users` in any of `orgs`.
pub async fn memberships<C: ConnectionTrait>(
    c: &C,
    orgs: &[String],
    users: &[String],
) -> Result<Vec<MembershipRow>, StoreError> {
    if orgs.is_empty() || users.is_empty() {
        return Ok(Vec::new());
    }
    Ok(memberships::Entity::find()
        .filter(memberships::Column::OrgId.is_in(orgs.iter().cloned()))
        .filter(memberships::Column::UserId.is_in(users.iter().cloned()))
        .all(c)
        .await?)
}

/// Every custom role of `orgs`.
pub async fn custom_roles<C: ConnectionTrait>(
    c: &C,
    orgs: &[String],
) -> Result<Vec<RoleRow>, StoreError> {
    if orgs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(roles::Entity::find()
        .filter(roles::Column::OrgId.is_in(orgs.iter().cloned()))
        .all(c)
        .await?)
}
