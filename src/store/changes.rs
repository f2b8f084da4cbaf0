//! The change feed's storage: every audited change also gets a row in `changes`, numbered by
//! `feed_sequence` inside the change's own transaction.
//!
//! Why a counter row and not an autoincrement id: an id is handed out when a row is inserted,
//! so a transaction holding id 7 can commit after a reader has already seen id 8 — and a
//! reader resuming "after 8" would miss 7 forever. Bumping the single `feed_sequence` row takes
//! its row lock (PostgreSQL) until commit, and SQLite writers are serialized anyway, so
//! sequence numbers are assigned in commit order with no gaps: once `n` is visible, every
//! lower number is committed and visible too.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IsolationLevel, QueryFilter,
    QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::entities::{changes, feed_sequence, organizations, webhook_cursors};
use super::{Store, StoreError};
use crate::store::audit::AuditRow;

pub use changes::Model as ChangeRow;

const SEQUENCE_ROW: i32 = 1;

/// Appends the change an audit event records; runs in the change's transaction.
pub async fn record<C: ConnectionTrait>(c: &C, event: &AuditRow) -> Result<i64, StoreError> {
    feed_sequence::Entity::update_many()
        .col_expr(
            feed_sequence::Column::N,
            Expr::col(feed_sequence::Column::N).add(1),
        )
        .filter(feed_sequence::Column::Id.eq(SEQUENCE_ROW))
        .exec(c)
        .await?;
    let seq = feed_sequence::Entity::find_by_id(SEQUENCE_ROW)
        .one(c)
        .await?
        .map(|r| r.n)
        .ok_or_else(|| {
            StoreError::Db(sea_orm::DbErr::RecordNotFound(
                "feed_sequence row 1 is missing: run the migrations".into(),
            ))
        })?;
    let org_version = organizations::Entity::find_by_id(event.org_id.clone())
        .one(c)
        .await?
        .map_or(0, |o| o.version);
    changes::Entity::insert(changes::ActiveModel {
        seq: Set(seq),
        org_id: Set(event.org_id.clone()),
        action: Set(event.action.clone()),
        target: Set(event.target.clone()),
        actor_user_id: Set(event.actor_user_id.clone()),
        occurred_at: Set(event.occurred_at),
        org_version: Set(org_version),
    })
    .exec_without_returning(c)
    .await?;
    Ok(seq)
}

/// The feed's current extent: the last committed seq and the highest pruned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub head: i64,
    pub pruned_through: i64,
}

pub async fn extent<C: ConnectionTrait>(c: &C) -> Result<Extent, StoreError> {
    let row = feed_sequence::Entity::find_by_id(SEQUENCE_ROW)
        .one(c)
        .await?;
    Ok(row.map_or(
        Extent {
            head: 0,
            pruned_through: 0,
        },
        |r| Extent {
            head: r.n,
            pruned_through: r.pruned_through,
        },
    ))
}

/// One read of the feed: the extent and up to `limit` changes after `after`, from one snapshot.
#[derive(Debug, Clone)]
pub struct Page {
    pub extent: Extent,
    pub rows: Vec<ChangeRow>,
}

impl Page {
    /// Where a reader stands after consuming this page: the last row, or the head when the
    /// page holds everything up to it (rows of other orgs are skipped over, not re-read).
    pub fn next_position(&self, after: i64, limit: u64) -> i64 {
        let full = u64::try_from(self.rows.len()).unwrap_or(u64::MAX) >= limit;
        match self.rows.last() {
            Some(last) if full => last.seq,
            _ => std::cmp::max(self.extent.head, after),
        }
    }

    /// Whether changes after `after` were already pruned, so reading on would leave a gap.
    pub fn pruned_past(&self, after: i64) -> bool {
        self.extent.pruned_through > after
    }
}

/// Reads changes with `after < seq <= head` (optionally of one org) in seq order, together
/// with the extent, in one read-only snapshot so the page and the extent agree.
pub async fn page(
    store: &Store,
    after: i64,
    org_id: Option<&str>,
    limit: u64,
) -> Result<Page, StoreError> {
    let db = store.conn();
    let (isolation, access) = match store.backend() {
        DbBackend::Postgres => (
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        ),
        _ => (None, None),
    };
    let tx = db.begin_with_config(isolation, access).await?;
    let extent = extent(&tx).await?;
    let mut q = changes::Entity::find()
        .filter(changes::Column::Seq.gt(after))
        .filter(changes::Column::Seq.lte(extent.head));
    if let Some(org) = org_id {
        q = q.filter(changes::Column::OrgId.eq(org));
    }
    let rows = q
        .order_by_asc(changes::Column::Seq)
        .limit(limit)
        .all(&tx)
        .await?;
    tx.commit().await?;
    Ok(Page { extent, rows })
}

/// Where to start for a consistency token (org, version): right before the first change that
/// produced that version, so nothing after the token is missed (a token does not name one
/// change: changes that cannot alter a decision keep the version). `None` when the changes
/// before it were pruned, so where it sits is no longer known.
pub async fn position_of_version<C: ConnectionTrait>(
    c: &C,
    org_id: &str,
    version: i64,
) -> Result<Option<i64>, StoreError> {
    let before = changes::Entity::find()
        .filter(changes::Column::OrgId.eq(org_id))
        .filter(changes::Column::OrgVersion.lt(version))
        .order_by_desc(changes::Column::Seq)
        .one(c)
        .await?;
    if let Some(row) = before {
        return Ok(Some(row.seq));
    }
    // Nothing older in this org: from the feed's start, unless that was pruned.
    Ok((extent(c).await?.pruned_through == 0).then_some(0))
}

/// Deletes changes that occurred before `cutoff`; returns the new pruned-through seq.
pub async fn prune(store: &Store, cutoff: DateTime<Utc>) -> Result<i64, StoreError> {
    let tx = store.write().await?;
    let newest_old = changes::Entity::find()
        .filter(changes::Column::OccurredAt.lt(cutoff))
        .order_by_desc(changes::Column::Seq)
        .one(&*tx)
        .await?;
    let current = extent(&*tx).await?;
    let Some(newest_old) = newest_old else {
        tx.commit().await?;
        return Ok(current.pruned_through);
    };
    let through = std::cmp::max(newest_old.seq, current.pruned_through);
    feed_sequence::Entity::update_many()
        .col_expr(feed_sequence::Column::PrunedThrough, Expr::value(through))
        .filter(feed_sequence::Column::Id.eq(SEQUENCE_ROW))
        .exec(&*tx)
        .await?;
    changes::Entity::delete_many()
        .filter(changes::Column::Seq.lte(through))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    Ok(through)
}

/// A webhook endpoint's delivery position, if it has one.
pub async fn webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(webhook_cursors::Entity::find_by_id(name.to_owned())
        .one(c)
        .await?
        .map(|r| r.seq))
}

/// Creates an endpoint's position if it has none yet; returns the stored position.
pub async fn init_webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
    seq: i64,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    webhook_cursors::Entity::insert(webhook_cursors::ActiveModel {
        name: Set(name.to_owned()),
        seq: Set(seq),
        updated_at: Set(at),
    })
    .on_conflict(
        OnConflict::column(webhook_cursors::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(c)
    .await?;
    Ok(webhook_cursor(c, name).await?.unwrap_or(seq))
}

/// Moves an endpoint's position from `from` to `to`; `false` when another replica moved it
/// first (the caller reloads the position).
pub async fn advance_webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
    from: i64,
    to: i64,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let res = webhook_cursors::Entity::update_many()
        .col_expr(webhook_cursors::Column::Seq, Expr::value(to))
        .col_expr(webhook_cursors::Column::UpdatedAt, Expr::value(at))
        .filter(webhook_cursors::Column::Name.eq(name))
        .filter(webhook_cursors::Column::Seq.eq(from))
        .exec(c)
        .await?;
    Ok(res.rows_affected == 1)
}
