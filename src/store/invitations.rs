//! Invitation rows. Only a hash of each token is stored.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::StoreError;
use super::entities::invitations;

pub use invitations::Model as InvitationRow;

pub async fn insert<C: ConnectionTrait>(c: &C, row: InvitationRow) -> Result<(), StoreError> {
    invitations::Entity::insert(invitations::ActiveModel {
        id: Set(row.id),
        org_id: Set(row.org_id),
        email: Set(row.email),
        first_name: Set(row.first_name),
        last_name: Set(row.last_name),
        role: Set(row.role),
        token_hash: Set(row.token_hash),
        state: Set(row.state),
        invited_by_user_id: Set(row.invited_by_user_id),
        created_at: Set(row.created_at),
        expires_at: Set(row.expires_at),
        accepted_at: Set(row.accepted_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

pub async fn find<C: ConnectionTrait>(
    c: &C,
    id: &str,
) -> Result<Option<InvitationRow>, StoreError> {
    Ok(invitations::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?)
}

pub async fn find_by_token_hash<C: ConnectionTrait>(
    c: &C,
    hash: &str,
) -> Result<Option<InvitationRow>, StoreError> {
    Ok(invitations::Entity::find()
        .filter(invitations::Column::TokenHash.eq(hash))
        .one(c)
        .await?)
}

/// The pending (not yet expired) invitation for an email in an org, if any.
pub async fn find_pending_for_email<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    email: &str,
    now: DateTime<Utc>,
) -> Result<Option<InvitationRow>, StoreError> {
    Ok(invitations::Entity::find()
        .filter(invitations::Column::OrgId.eq(org_id))
        .filter(invitations::Column::Email.eq(email))
        .filter(invitations::Column::State.eq("pending"))
        .filter(invitations::Column::ExpiresAt.gt(now))
        .one(c)
        .await?)
}

/// Pending invitations that still hold a seat.
pub async fn count_pending<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(invitations::Entity::find()
        .filter(invitations::Column::OrgId.eq(org_id))
        .filter(invitations::Column::State.eq("pending"))
        .filter(invitations::Column::ExpiresAt.gt(now))
        .count(c)
        .await?)
}

pub async fn count_pending_with_role<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    role: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(invitations::Entity::find()
        .filter(invitations::Column::OrgId.eq(org_id))
        .filter(invitations::Column::State.eq("pending"))
        .filter(invitations::Column::Role.eq(role))
        .filter(invitations::Column::ExpiresAt.gt(now))
        .count(c)
        .await?)
}

/// Moves pending invitations (expired ones too, since a resend revives them) to another role.
pub async fn reassign_role<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    from: &str,
    to: &str,
) -> Result<u64, StoreError> {
    let res = invitations::Entity::update_many()
        .col_expr(invitations::Column::Role, Expr::value(to))
        .filter(invitations::Column::OrgId.eq(org_id))
        .filter(invitations::Column::State.eq("pending"))
        .filter(invitations::Column::Role.eq(from))
        .exec(c)
        .await?;
    Ok(res.rows_affected)
}

pub async fn set_state<C: ConnectionTrait>(
    c: &C,
    id: &str,
    state: &str,
    accepted_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    invitations::Entity::update_many()
        .col_expr(invitations::Column::State, Expr::value(state))
        .col_expr(invitations::Column::AcceptedAt, Expr::value(accepted_at))
        .filter(invitations::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn renew<C: ConnectionTrait>(
    c: &C,
    id: &str,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    invitations::Entity::update_many()
        .col_expr(invitations::Column::TokenHash, Expr::value(token_hash))
        .col_expr(invitations::Column::ExpiresAt, Expr::value(expires_at))
        .filter(invitations::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

/// Which invitations a list asks for. Expiry is derived, so it is a condition on time.
#[derive(Debug, Clone, Copy)]
pub enum StatusFilter {
    Pending,
    Accepted,
    Expired,
    Revoked,
}

/// One page of an org's invitations, newest first.
pub async fn list<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    status: Option<StatusFilter>,
    now: DateTime<Utc>,
    before_id: Option<&str>,
    limit: u64,
) -> Result<Vec<InvitationRow>, StoreError> {
    let mut q = invitations::Entity::find().filter(invitations::Column::OrgId.eq(org_id));
    q = match status {
        None => q,
        Some(StatusFilter::Pending) => q
            .filter(invitations::Column::State.eq("pending"))
            .filter(invitations::Column::ExpiresAt.gt(now)),
        Some(StatusFilter::Expired) => q
            .filter(invitations::Column::State.eq("pending"))
            .filter(invitations::Column::ExpiresAt.lte(now)),
        Some(StatusFilter::Accepted) => q.filter(invitations::Column::State.eq("accepted")),
        Some(StatusFilter::Revoked) => q.filter(invitations::Column::State.eq("revoked")),
    };
    if let Some(b) = before_id {
        q = q.filter(invitations::Column::Id.lt(b));
    }
    Ok(q.order_by_desc(invitations::Column::Id)
        .limit(limit)
        .all(c)
        .await?)
}
