//! Organization rows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::StoreError;
use super::entities::{memberships, organizations};
use crate::domain::ids::{OrgId, UserId};

pub use organizations::Model as OrgRow;

/// Locks a live org for the rest of the transaction and bumps its version; `None` when it
/// does not exist or was deleted. Taking the row lock first serializes all writes to one org.
pub async fn lock<C: ConnectionTrait>(c: &C, org_id: &OrgId) -> Result<Option<OrgRow>, StoreError> {
    lock_and_add(c, org_id, 1).await
}

/// Locks a live org for the rest of the transaction without bumping its version, for changes
/// that cannot alter a decision (invitations, renames), so cached decisions stay warm.
pub async fn lock_unchanged<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
) -> Result<Option<OrgRow>, StoreError> {
    lock_and_add(c, org_id, 0).await
}

/// An UPDATE takes the row lock on PostgreSQL (SQLite writers are serialized already). Where
/// the backend has `RETURNING` (PostgreSQL) the locked row comes back from the same statement:
/// every org write starts here, so that is one round trip fewer on each.
async fn lock_and_add<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    step: i64,
) -> Result<Option<OrgRow>, StoreError> {
    let update = organizations::Entity::update_many()
        .col_expr(
            organizations::Column::Version,
            Expr::col(organizations::Column::Version).add(step),
        )
        .filter(organizations::Column::Id.eq(org_id.to_string()))
        .filter(organizations::Column::DeletedAt.is_null());
    if c.support_returning() {
        return Ok(update.exec_with_returning(c).await?.into_iter().next());
    }
    if update.exec(c).await?.rows_affected == 0 {
        return Ok(None);
    }
    find_live(c, org_id).await
}

pub async fn find_live<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
) -> Result<Option<OrgRow>, StoreError> {
    Ok(organizations::Entity::find_by_id(org_id.to_string())
        .filter(organizations::Column::DeletedAt.is_null())
        .one(c)
        .await?)
}

pub async fn insert<C: ConnectionTrait>(c: &C, row: OrgRow) -> Result<(), StoreError> {
    organizations::Entity::insert(organizations::ActiveModel {
        id: Set(row.id),
        name: Set(row.name),
        plan: Set(row.plan),
        require_mfa: Set(row.require_mfa),
        created_at: Set(row.created_at),
        deleted_at: Set(row.deleted_at),
        version: Set(row.version),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn update<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    name: Option<String>,
    plan: Option<String>,
    require_mfa: Option<bool>,
) -> Result<(), StoreError> {
    let mut am = organizations::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(org_id.to_string()),
        ..Default::default()
    };
    if let Some(n) = name {
        am.name = Set(n);
    }
    if let Some(p) = plan {
        am.plan = Set(p);
    }
    if let Some(m) = require_mfa {
        am.require_mfa = Set(m);
    }
    if am.is_changed() {
        am.update(c).await?;
    }
    Ok(())
}

pub async fn soft_delete<C: ConnectionTrait>(
    c: &C,
    org_id: &OrgId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    organizations::Entity::update_many()
        .col_expr(organizations::Column::DeletedAt, Expr::value(at))
        .filter(organizations::Column::Id.eq(org_id.to_string()))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn member_count<C: ConnectionTrait>(c: &C, org_id: &OrgId) -> Result<u64, StoreError> {
    Ok(memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org_id.to_string()))
        .count(c)
        .await?)
}

#[derive(Debug, FromQueryResult)]
struct OrgCount {
    org_id: String,
    n: i64,
}

pub async fn member_counts<C: ConnectionTrait>(
    c: &C,
    org_ids: &[String],
) -> Result<HashMap<String, u64>, StoreError> {
    if org_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = memberships::Entity::find()
        .select_only()
        .column(memberships::Column::OrgId)
        .column_as(memberships::Column::UserId.count(), "n")
        .filter(memberships::Column::OrgId.is_in(org_ids.iter().cloned()))
        .group_by(memberships::Column::OrgId)
        .into_model::<OrgCount>()
        .all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.org_id, u64::try_from(r.n).unwrap_or(0)))
        .collect())
}

/// One page of a user's live orgs with their role in each, ordered by org id.
pub async fn list_for_user<C: ConnectionTrait>(
    c: &C,
    user_id: &UserId,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<(OrgRow, String)>, StoreError> {
    let live = Query::select()
        .column(organizations::Column::Id)
        .from(organizations::Entity)
        .and_where(organizations::Column::DeletedAt.is_null())
        .to_owned();
    let mut q = memberships::Entity::find()
        .filter(memberships::Column::UserId.eq(user_id.to_string()))
        .filter(memberships::Column::OrgId.in_subquery(live));
    if let Some(after) = after {
        q = q.filter(memberships::Column::OrgId.gt(after));
    }
    let ms = q
        .order_by_asc(memberships::Column::OrgId)
        .limit(limit)
        .all(c)
        .await?;
    let ids: Vec<String> = ms.iter().map(|m| m.org_id.clone()).collect();
    let orgs: HashMap<String, OrgRow> = organizations::Entity::find()
        .filter(organizations::Column::Id.is_in(ids))
        .all(c)
        .await?
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    Ok(ms
        .into_iter()
        .filter_map(|m| orgs.get(&m.org_id).cloned().map(|o| (o, m.role)))
        .collect())
}
