//! Membership rows.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::StoreError;
use super::entities::{memberships, users as user_entity};
use super::users::{self, UserRow};
use crate::domain::ids::{OrgId, UserId};

pub use memberships::Model as MembershipRow;

pub async fn find<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    user_id: &UserId,
) -> Result<Option<MembershipRow>, StoreError> {
    Ok(
        memberships::Entity::find_by_id((org_id.to_string(), user_id.to_string()))
            .one(c)
            .await?,
    )
}

/// A membership together with its user, in one query (a join).
pub async fn find_with_user<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    user_id: &UserId,
) -> Result<Option<(MembershipRow, UserRow)>, StoreError> {
    Ok(
        find_many_with_users(c, org_id, std::slice::from_ref(user_id))
            .await?
            .pop(),
    )
}

/// Several users' memberships of one org with their accounts, in one query: an org write
/// reads its actor's and the changed members' together, one round trip under the lock.
pub async fn find_many_with_users<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    user_ids: &[UserId],
) -> Result<Vec<(MembershipRow, UserRow)>, StoreError> {
    let found = memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .filter(memberships::Column::UserId.is_in(user_ids.iter().map(UserId::to_string)))
        .find_also_related(user_entity::Entity)
        .all(c)
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|(m, u)| u.map(|u| (m, u)))
        .collect())
}

pub async fn insert<C: ConnectionTrait>(c: &C, row: MembershipRow) -> Result<(), StoreError> {
    memberships::Entity::insert(memberships::ActiveModel {
        org_id: Set(row.org_id),
        user_id: Set(row.user_id),
        role: Set(row.role),
        joined_at: Set(row.joined_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn set_role<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    user_id: &UserId,
    role: &str,
) -> Result<(), StoreError> {
    memberships::Entity::update_many()
        .col_expr(memberships::Column::Role, Expr::value(role))
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .filter(memberships::Column::UserId.eq(user_id.to_string()))
        .exec(c)
        .await?;
    Ok(())
}

/// Moves every holder of `from` to `to`; returns how many moved.
pub async fn reassign_role<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    from: &str,
    to: &str,
) -> Result<u64, StoreError> {
    let res = memberships::Entity::update_many()
        .col_expr(memberships::Column::Role, Expr::value(to))
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .filter(memberships::Column::Role.eq(from))
        .exec(c)
        .await?;
    Ok(res.rows_affected)
}

pub async fn delete<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    user_id: &UserId,
) -> Result<(), StoreError> {
    memberships::Entity::delete_many()
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .filter(memberships::Column::UserId.eq(user_id.to_string()))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn count_with_role<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    role: &str,
) -> Result<u64, StoreError> {
    Ok(memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .filter(memberships::Column::Role.eq(role))
        .count(c)
        .await?)
}

#[derive(Debug, sea_orm::FromQueryResult)]
struct RoleCount {
    role: String,
    n: i64,
}

/// How many members hold each role in an org, in one query.
pub async fn count_by_role<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
) -> Result<std::collections::HashMap<String, u64>, StoreError> {
    let rows = memberships::Entity::find()
        .select_only()
        .column(memberships::Column::Role)
        .column_as(memberships::Column::UserId.count(), "n")
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .group_by(memberships::Column::Role)
        .into_model::<RoleCount>()
        .all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.role, u64::try_from(r.n).unwrap_or(0)))
        .collect())
}

/// One page of an org's members (with their users), ordered by user id.
pub async fn list<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    role: Option<&str>,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<(MembershipRow, UserRow)>, StoreError> {
    let mut q =
        memberships::Entity::find().filter(memberships::Column::OrgId.eq(org_id.to_string()));
    if let Some(role) = role {
        q = q.filter(memberships::Column::Role.eq(role));
    }
    if let Some(after) = after {
        q = q.filter(memberships::Column::UserId.gt(after));
    }
    let ms = q
        .order_by_asc(memberships::Column::UserId)
        .limit(limit)
        .all(c)
        .await?;
    let ids: Vec<String> = ms.iter().map(|m| m.user_id.clone()).collect();
    let users = users::find_many(c, &ids).await?;
    Ok(ms
        .into_iter()
        .filter_map(|m| users.get(&m.user_id).cloned().map(|u| (m, u)))
        .collect())
}

/// All of a user's memberships (in live and deleted orgs alike).
pub async fn of_user<C: ConnectionTrait>(
    c: &C,
    user_id: &UserId,
) -> Result<Vec<MembershipRow>, StoreError> {
    Ok(memberships::Entity::find()
        .filter(memberships::Column::UserId.eq(user_id.to_string()))
        .order_by_asc(memberships::Column::OrgId)
        .all(c)
        .await?)
}
