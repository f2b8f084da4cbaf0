//! What the database references that a policy must declare: the roles members and pending
//! invitations hold, custom roles' permissions, plans, owners. `domain::drift::compare` decides
//! what is missing; this module only reads. Soft-deleted organizations are left out.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entities::{invitations, memberships, organizations, roles};
use super::roles::BUILT_IN_ORG;
use super::{StoreError, decode_permissions};
use crate::domain::drift::{CustomRoleRef, DriftReport, Ownerless, PlanUsage, RoleUsage, Snapshot};
use crate::domain::policy::Policy;

#[derive(Debug, FromQueryResult)]
struct RoleUsageRow {
    role: String,
    holders: i64,
    orgs: i64,
    example_org: Option<String>,
}

#[derive(Debug, FromQueryResult)]
struct PlanUsageRow {
    plan: String,
    orgs: i64,
    example_org: Option<String>,
}

#[derive(Debug, FromQueryResult)]
struct OwnerlessRow {
    orgs: i64,
    example_org: Option<String>,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn live_orgs() -> SelectStatement {
    Query::select()
        .column(organizations::Column::Id)
        .from(organizations::Entity)
        .and_where(organizations::Column::DeletedAt.is_null())
        .to_owned()
}

/// `SELECT 1 FROM roles WHERE roles.org_id = <table>.org_id AND roles.key = <table>.role`:
/// the row's role is one of its organization's custom roles.
fn custom_role_of<T, O, R>(table: T, org_col: O, role_col: R) -> SelectStatement
where
    T: sea_orm::sea_query::IntoIden + Copy,
    O: sea_orm::sea_query::IntoIden,
    R: sea_orm::sea_query::IntoIden,
{
    Query::select()
        .expr(Expr::val(1))
        .from(roles::Entity)
        .and_where(Expr::col((roles::Entity, roles::Column::OrgId)).equals((table, org_col)))
        .and_where(Expr::col((roles::Entity, roles::Column::Key)).equals((table, role_col)))
        .to_owned()
}

fn usage(rows: Vec<RoleUsageRow>) -> Vec<RoleUsage> {
    rows.into_iter()
        .map(|r| RoleUsage {
            role: r.role,
            holders: count(r.holders),
            orgs: count(r.orgs),
            example_org: r.example_org.unwrap_or_default(),
        })
        .collect()
}

/// Roles held by members of live organizations that are not a custom role of that
/// organization, with how many hold each.
pub async fn member_roles<C: ConnectionTrait>(c: &C) -> Result<Vec<RoleUsage>, StoreError> {
    let rows = memberships::Entity::find()
        .select_only()
        .column_as(memberships::Column::Role, "role")
        .column_as(Expr::col(memberships::Column::UserId).count(), "holders")
        .column_as(
            Expr::from(Func::count_distinct(Expr::col(memberships::Column::OrgId))),
            "orgs",
        )
        .column_as(
            Expr::from(Func::min(Expr::col(memberships::Column::OrgId))),
            "example_org",
        )
        .filter(memberships::Column::OrgId.in_subquery(live_orgs()))
        .filter(Expr::not_exists(custom_role_of(
            memberships::Entity,
            memberships::Column::OrgId,
            memberships::Column::Role,
        )))
        .group_by(memberships::Column::Role)
        .order_by_asc(memberships::Column::Role)
        .into_model::<RoleUsageRow>()
        .all(c)
        .await?;
    Ok(usage(rows))
}

/// Roles of pending, unexpired invitations to live organizations that are not a custom role
/// of that organization.
pub async fn invitation_roles<C: ConnectionTrait>(
    c: &C,
    now: DateTime<Utc>,
) -> Result<Vec<RoleUsage>, StoreError> {
    let rows = invitations::Entity::find()
        .select_only()
        .column_as(invitations::Column::Role, "role")
        .column_as(Expr::col(invitations::Column::Id).count(), "holders")
        .column_as(
            Expr::from(Func::count_distinct(Expr::col(invitations::Column::OrgId))),
            "orgs",
        )
        .column_as(
            Expr::from(Func::min(Expr::col(invitations::Column::OrgId))),
            "example_org",
        )
        .filter(invitations::Column::State.eq("pending"))
        .filter(invitations::Column::ExpiresAt.gt(now))
        .filter(invitations::Column::OrgId.in_subquery(live_orgs()))
        .filter(Expr::not_exists(custom_role_of(
            invitations::Entity,
            invitations::Column::OrgId,
            invitations::Column::Role,
        )))
        .group_by(invitations::Column::Role)
        .order_by_asc(invitations::Column::Role)
        .into_model::<RoleUsageRow>()
        .all(c)
        .await?;
    Ok(usage(rows))
}

/// Every custom role of a live organization, with its permissions as stored.
pub async fn custom_roles<C: ConnectionTrait>(c: &C) -> Result<Vec<CustomRoleRef>, StoreError> {
    let rows = roles::Entity::find()
        .filter(roles::Column::OrgId.ne(BUILT_IN_ORG))
        .filter(roles::Column::OrgId.in_subquery(live_orgs()))
        .order_by_asc(roles::Column::OrgId)
        .order_by_asc(roles::Column::Key)
        .all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CustomRoleRef {
            permissions: decode_permissions(&r.permissions),
            org_id: r.org_id,
            key: r.key,
        })
        .collect())
}

/// The plans live organizations are on, with how many are on each.
pub async fn plans<C: ConnectionTrait>(c: &C) -> Result<Vec<PlanUsage>, StoreError> {
    let rows = organizations::Entity::find()
        .select_only()
        .column_as(organizations::Column::Plan, "plan")
        .column_as(Expr::col(organizations::Column::Id).count(), "orgs")
        .column_as(
            Expr::from(Func::min(Expr::col(organizations::Column::Id))),
            "example_org",
        )
        .filter(organizations::Column::DeletedAt.is_null())
        .group_by(organizations::Column::Plan)
        .order_by_asc(organizations::Column::Plan)
        .into_model::<PlanUsageRow>()
        .all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| PlanUsage {
            plan: r.plan,
            orgs: count(r.orgs),
            example_org: r.example_org.unwrap_or_default(),
        })
        .collect())
}

/// Live organizations in which no member holds `owner_role`.
pub async fn ownerless<C: ConnectionTrait>(
    c: &C,
    owner_role: &str,
) -> Result<Option<Ownerless>, StoreError> {
    let holders = Query::select()
        .expr(Expr::val(1))
        .from(memberships::Entity)
        .and_where(
            Expr::col((memberships::Entity, memberships::Column::OrgId))
                .equals((organizations::Entity, organizations::Column::Id)),
        )
        .and_where(Expr::col((memberships::Entity, memberships::Column::Role)).eq(owner_role))
        .to_owned();
    let row = organizations::Entity::find()
        .select_only()
        .column_as(Expr::col(organizations::Column::Id).count(), "orgs")
        .column_as(
            Expr::from(Func::min(Expr::col(organizations::Column::Id))),
            "example_org",
        )
        .filter(organizations::Column::DeletedAt.is_null())
        .filter(Expr::not_exists(holders))
        .into_model::<OwnerlessRow>()
        .one(c)
        .await?;
    Ok(row.and_then(|r| {
        (r.orgs > 0).then(|| Ownerless {
            orgs: count(r.orgs),
            example_org: r.example_org.unwrap_or_default(),
        })
    }))
}

/// Everything a policy is compared against, read in one go.
pub async fn snapshot<C: ConnectionTrait>(
    c: &C,
    owner_role: &str,
    now: DateTime<Utc>,
) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        member_roles: member_roles(c).await?,
        invitation_roles: invitation_roles(c, now).await?,
        custom_roles: custom_roles(c).await?,
        plans: plans(c).await?,
        ownerless: ownerless(c, owner_role).await?,
    })
}

/// Compares `policy` with what the database references; an empty report means it can be used
/// without changing anyone's access behind their back.
pub async fn compare<C: ConnectionTrait>(
    c: &C,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<DriftReport, StoreError> {
    let snapshot = snapshot(c, policy.owner_role(), now).await?;
    Ok(crate::domain::drift::compare(policy, &snapshot))
}
