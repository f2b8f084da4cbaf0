//! The reads behind a decision: live orgs, memberships and custom roles for many (org, user)
//! pairs at once, one query each whatever the number of pairs; and one pair's, in one query.

use sea_orm::sea_query::{Condition, Expr, ExprTrait, JoinType, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter};

use super::StoreError;
use super::entities::{memberships, organizations, roles, users};
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

/// Everything one (org, user) decision is built from, read in one statement (so from one
/// snapshot): the org's version and two-factor rule, the membership's role, the account's
/// status and two-factor, and the role's permissions when it is a custom one. `None` when the
/// org does not exist or was deleted.
#[derive(Debug, Clone, FromQueryResult)]
pub struct SubjectRow {
    pub version: i64,
    pub require_mfa: bool,
    pub role: Option<String>,
    pub user_status: Option<String>,
    pub mfa_enabled: Option<bool>,
    pub role_permissions: Option<String>,
}

/// The fully consistent check's read: one round trip, the same SQL text every time (so the
/// driver prepares it once per connection), on the primary keys of the four tables.
pub async fn subject<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    user_id: &str,
) -> Result<Option<SubjectRow>, StoreError> {
    use organizations::Column as O;
    let (o, m, u, r) = (
        organizations::Entity,
        memberships::Entity,
        users::Entity,
        roles::Entity,
    );
    let query = Query::select()
        .column((o, O::Version))
        .column((o, O::RequireMfa))
        .expr_as(Expr::col((m, memberships::Column::Role)), "role")
        .expr_as(Expr::col((u, users::Column::Status)), "user_status")
        .expr_as(Expr::col((u, users::Column::MfaEnabled)), "mfa_enabled")
        .expr_as(
            Expr::col((r, roles::Column::Permissions)),
            "role_permissions",
        )
        .from(o)
        .join(
            JoinType::LeftJoin,
            m,
            Condition::all()
                .add(Expr::col((m, memberships::Column::OrgId)).equals((o, O::Id)))
                .add(Expr::col((m, memberships::Column::UserId)).eq(user_id)),
        )
        .join(
            JoinType::LeftJoin,
            u,
            Expr::col((u, users::Column::Id)).eq(user_id),
        )
        .join(
            JoinType::LeftJoin,
            r,
            Condition::all()
                .add(Expr::col((r, roles::Column::OrgId)).equals((o, O::Id)))
                .add(Expr::col((r, roles::Column::Key)).equals((m, memberships::Column::Role))),
        )
        .and_where(Expr::col((o, O::Id)).eq(org_id))
        .and_where(Expr::col((o, O::DeletedAt)).is_null())
        .to_owned();
    let stmt = c.get_database_backend().build(&query);
    Ok(SubjectRow::find_by_statement(stmt).one(c).await?)
}
