//! The outbox: messages committed with their cause, delivered later with retries.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::StoreError;
use super::entities::outbox;

pub use outbox::Model as OutboxRow;

/// The outbox message kind for invitation emails.
pub const INVITATION_EMAIL: &str = "invitation_email";

/// The outbox message kind for password reset emails.
pub const PASSWORD_RESET_EMAIL: &str = "password_reset_email";

pub async fn insert<C: ConnectionTrait>(c: &C, row: OutboxRow) -> Result<(), StoreError> {
    outbox::Entity::insert(outbox::ActiveModel {
        id: Set(row.id),
        kind: Set(row.kind),
        org_id: Set(row.org_id),
        payload: Set(row.payload),
        attempts: Set(row.attempts),
        next_attempt_at: Set(row.next_attempt_at),
        last_error: Set(row.last_error),
        created_at: Set(row.created_at),
        delivered_at: Set(row.delivered_at),
    })
    .exec_without_returning(c)
    .await?;
    Ok(())
}

/// Undelivered messages.
pub async fn backlog<C: ConnectionTrait>(c: &C) -> Result<u64, StoreError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::DeliveredAt.is_null())
        .count(c)
        .await?)
}

/// Undelivered messages of `kinds` whose next attempt is due, oldest first.
pub async fn due_of_kinds<C: ConnectionTrait>(
    c: &C,
    kinds: &[&str],
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::Kind.is_in(kinds.iter().copied()))
        .filter(outbox::Column::DeliveredAt.is_null())
        .filter(outbox::Column::NextAttemptAt.lte(now))
        .order_by_asc(outbox::Column::NextAttemptAt)
        .limit(limit)
        .all(c)
        .await?)
}

/// Claims `row` for delivery by moving its next attempt to `until`, only if nobody else
/// claimed it since it was read: several workers (replicas) can deliver at once.
pub async fn claim<C: ConnectionTrait>(
    c: &C,
    row: &OutboxRow,
    until: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let res = outbox::Entity::update_many()
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(until))
        .filter(outbox::Column::Id.eq(row.id.as_str()))
        .filter(outbox::Column::NextAttemptAt.eq(row.next_attempt_at))
        .filter(outbox::Column::DeliveredAt.is_null())
        .exec(c)
        .await?;
    Ok(res.rows_affected == 1)
}

pub async fn mark_delivered<C: ConnectionTrait>(
    c: &C,
    id: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    outbox::Entity::update_many()
        .col_expr(outbox::Column::DeliveredAt, Expr::value(at))
        .col_expr(outbox::Column::Payload, Expr::value("{}"))
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn mark_failed<C: ConnectionTrait>(
    c: &C,
    id: &str,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    outbox::Entity::update_many()
        .col_expr(outbox::Column::LastError, Expr::value(error))
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

pub async fn find<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<OutboxRow>, StoreError> {
    Ok(outbox::Entity::find_by_id(id.to_owned()).one(c).await?)
}
