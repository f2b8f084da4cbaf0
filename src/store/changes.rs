//! The change feed's storage: every audited change also gets a row in `changes`, written in
//! the change's own transaction (in the same statement as its audit row on PostgreSQL).
//!
//! A change's place in the feed is its [`Position`] (`pos`, `seq`), and a reader only ever
//! returns rows whose place can no longer be taken by a transaction still running — so a
//! reader that resumes after the last row it returned misses nothing and repeats nothing.
//! Nothing on the write path is shared between organizations: no counter row, no advisory
//! lock; writes to one org are serialized by the org row lock the caller already holds.
//!
//! **PostgreSQL.** `pos` is the writing transaction's id (`pg_current_xact_id()`), raised to
//! the org's previous change's `pos` when that is higher; `seq` comes from a sequence and only
//! orders rows of equal `pos`. A reader takes the `xmin` of its snapshot as the watermark and
//! returns only rows with `pos < xmin`:
//! - every transaction with an id below `xmin` has ended, and one that has not started writing
//!   yet will get an id of at least the snapshot's `xmax`; since `pos` is never below the own
//!   id, no row with `pos < xmin` can appear later — the set below the watermark is final,
//!   and ordering it by (`pos`, `seq`) gives every reader, on every replica, the same order;
//! - transaction ids are taken when a transaction first writes, not when it commits, so two
//!   writers of one org can hold ids in the opposite order of their row-lock turns (one wrote
//!   something before locking the org). Raising `pos` to the previous change of the org (which
//!   committed before this writer got the lock, so this statement sees it) keeps each org's
//!   changes in the order the lock gave them; ties go to `seq`, handed out after the lock.
//!
//! The price is latency, not correctness: a long transaction that has written anything holds
//! the watermark back (cluster-wide) until it ends. SpiceDB's PostgreSQL datastore keys its
//! revisions on the same `xid8`/`pg_snapshot` machinery; it keeps whole snapshots as
//! revisions and orders by commit timestamp (`track_commit_timestamp`), where a feed with
//! compact, resumable cursors only needs the watermark.
//!
//! **SQLite** has one writer at a time, so `seq` (`AUTOINCREMENT`, never reused) already is
//! commit order; `pos` stays 0.
//!
//! Rows from before the commit-order migration have `pos = 0` and keep their `seq`, so old
//! `c1.<seq>` cursors still name the same place (before every newer row).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, SimpleExpr};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait, Value,
};

use super::entities::{changes, feed_sequence, webhook_cursors};
use super::{Store, StoreError};
use crate::store::audit::AuditRow;

pub use changes::Model as ChangeRow;

const STATE_ROW: i32 = 1;

/// A place in the feed: after every change with a smaller (`pos`, `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Position {
    pub pos: i64,
    pub seq: i64,
}

impl Position {
    /// Before every change.
    pub const START: Position = Position { pos: 0, seq: 0 };

    pub fn new(pos: i64, seq: i64) -> Position {
        Position { pos, seq }
    }

    /// The place of a change: right after it.
    pub fn of(row: &ChangeRow) -> Position {
        Position {
            pos: row.pos,
            seq: row.seq,
        }
    }

    /// Right before every change with `pos >= watermark` (`seq` starts at 1).
    pub fn below(watermark: i64) -> Position {
        Position {
            pos: watermark,
            seq: 0,
        }
    }

    fn after_cond(self) -> SimpleExpr {
        Expr::tuple([
            Expr::col(changes::Column::Pos),
            Expr::col(changes::Column::Seq),
        ])
        .gt(Expr::tuple([Expr::val(self.pos), Expr::val(self.seq)]))
    }

    fn through_cond(self) -> SimpleExpr {
        Expr::tuple([
            Expr::col(changes::Column::Pos),
            Expr::col(changes::Column::Seq),
        ])
        .lte(Expr::tuple([Expr::val(self.pos), Expr::val(self.seq)]))
    }
}

/// The transactions a PostgreSQL snapshot saw as finished: for starting a stream "from now"
/// exactly, without the changes that had committed above the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: i64,
    pub xmax: i64,
    pub xip: Vec<i64>,
}

impl Snapshot {
    /// Parses `pg_snapshot`'s text form `xmin:xmax:xip,xip,…`.
    pub fn parse(raw: &str) -> Option<Snapshot> {
        let mut parts = raw.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<i64>>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether transaction `xid` had ended when the snapshot was taken.
    pub fn had_ended(&self, xid: i64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }
}

/// Appends the change an audit event records; runs in the change's transaction, which holds
/// the org's row lock (`orgs::lock`) — that lock is what orders one org's changes.
pub async fn record<C: ConnectionTrait>(c: &C, event: &AuditRow) -> Result<(), StoreError> {
    let backend = c.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => concat!(
            "WITH tx AS (SELECT pg_current_xact_id()::text::bigint AS xid) ",
            "INSERT INTO changes (org_id, action, target, actor_user_id, occurred_at, org_version, xid, pos) ",
            "SELECT $1, $2, $3, $4, $5, COALESCE((SELECT version FROM organizations WHERE id = $1), 0), ",
            "tx.xid, GREATEST(tx.xid, (SELECT max(pos) FROM changes WHERE org_id = $1)) FROM tx"
        ),
        _ => concat!(
            "INSERT INTO changes (org_id, action, target, actor_user_id, occurred_at, org_version) ",
            "VALUES ($1, $2, $3, $4, $5, COALESCE((SELECT version FROM organizations WHERE id = $1), 0))"
        ),
    };
    c.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            event.org_id.clone().into(),
            event.action.clone().into(),
            event.target.clone().into(),
            event.actor_user_id.clone().into(),
            event.occurred_at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Writes an audit row and its change row. On PostgreSQL that is one statement (one round
/// trip); the org version is read inside it rather than passed in, so the callers' shape stays
/// `audit::insert(c, row)`.
pub async fn record_with_audit<C: ConnectionTrait>(c: &C, row: AuditRow) -> Result<(), StoreError> {
    if c.get_database_backend() != DbBackend::Postgres {
        record(c, &row).await?;
        return super::audit::insert_without_feed(c, row).await;
    }
    let sql = concat!(
        "WITH audit AS (",
        "INSERT INTO audit_events (id, org_id, actor_user_id, action, target, before, after, occurred_at, request_id) ",
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        "), tx AS (SELECT pg_current_xact_id()::text::bigint AS xid) ",
        "INSERT INTO changes (org_id, action, target, actor_user_id, occurred_at, org_version, xid, pos) ",
        "SELECT $2, $4, $5, $3, $8, COALESCE((SELECT version FROM organizations WHERE id = $2), 0), ",
        "tx.xid, GREATEST(tx.xid, (SELECT max(pos) FROM changes WHERE org_id = $2)) FROM tx"
    );
    let values: [Value; 9] = [
        row.id.into(),
        row.org_id.into(),
        row.actor_user_id.into(),
        row.action.into(),
        row.target.into(),
        row.before.into(),
        row.after.into(),
        row.occurred_at.into(),
        row.request_id.into(),
    ];
    c.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await?;
    Ok(())
}

/// The feed's current extent, read in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Every change before this is final (committed, and nothing can join it).
    pub head: Position,
    /// Changes up to here were pruned.
    pub pruned_through: Position,
    /// The last `c1.` number the old global counter handed out (before the commit-order
    /// migration); on SQLite, `c1.` cursors are current and `head` bounds them.
    pub legacy_head: i64,
    /// PostgreSQL: the snapshot the watermark came from.
    pub snapshot: Option<Snapshot>,
    /// PostgreSQL: changes have committed above the watermark; they become final as soon as
    /// the transactions that started before them end (read again shortly, not at the next
    /// poll: their wake-up has already been spent).
    pub pending: bool,
}

impl Extent {
    /// Whether `p` is a place this feed has handed out (or could have): not ahead of it.
    pub fn knows(&self, p: Position) -> bool {
        if p.pos == 0 {
            let bound = if self.head.pos == 0 {
                std::cmp::max(self.head.seq, self.legacy_head)
            } else {
                self.legacy_head
            };
            p.seq <= bound
        } else {
            p <= self.head
        }
    }
}

#[derive(Debug, FromQueryResult)]
struct ExtentRow {
    snapshot: Option<String>,
    max_seq: Option<i64>,
    max_pos: Option<i64>,
    legacy_head: i64,
    pruned_pos: i64,
    pruned_through: i64,
}

pub async fn extent<C: ConnectionTrait>(c: &C) -> Result<Extent, StoreError> {
    let backend = c.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => concat!(
            "SELECT pg_current_snapshot()::text AS snapshot, NULL::bigint AS max_seq, ",
            "(SELECT max(pos) FROM changes) AS max_pos, ",
            "legacy_head, pruned_pos, pruned_through FROM feed_sequence WHERE id = 1"
        ),
        _ => concat!(
            "SELECT NULL AS snapshot, (SELECT max(seq) FROM changes) AS max_seq, NULL AS max_pos, ",
            "legacy_head, pruned_pos, pruned_through FROM feed_sequence WHERE id = 1"
        ),
    };
    let row = ExtentRow::find_by_statement(Statement::from_string(backend, sql))
        .one(c)
        .await?
        .ok_or_else(|| {
            StoreError::Db(sea_orm::DbErr::RecordNotFound(
                "feed_sequence row 1 is missing: run the migrations".into(),
            ))
        })?;
    let pruned_through = Position::new(row.pruned_pos, row.pruned_through);
    let snapshot = row.snapshot.as_deref().and_then(Snapshot::parse);
    let head = match &snapshot {
        Some(s) => Position::below(s.xmin),
        None => Position::new(
            0,
            [
                row.max_seq.unwrap_or(0),
                row.legacy_head,
                row.pruned_through,
            ]
            .into_iter()
            .fold(0, std::cmp::max),
        ),
    };
    let pending = match (&snapshot, row.max_pos) {
        (Some(s), Some(max)) => max >= s.xmin,
        _ => false,
    };
    Ok(Extent {
        head: head.max(pruned_through),
        pruned_through,
        legacy_head: row.legacy_head,
        snapshot,
        pending,
    })
}

/// One read of the feed: the extent and up to `limit` changes after a position, from one
/// snapshot.
#[derive(Debug, Clone)]
pub struct Page {
    pub extent: Extent,
    pub rows: Vec<ChangeRow>,
}

impl Page {
    /// Where a reader stands after consuming this page: the last row, or the head when the
    /// page holds everything up to it (rows of other orgs are skipped over, not re-read).
    pub fn next_position(&self, after: Position, limit: u64) -> Position {
        let full = u64::try_from(self.rows.len()).unwrap_or(u64::MAX) >= limit;
        match self.rows.last() {
            Some(last) if full => Position::of(last),
            _ => std::cmp::max(self.extent.head, after),
        }
    }

    /// Whether changes after `after` were already pruned, so reading on would leave a gap.
    pub fn pruned_past(&self, after: Position) -> bool {
        self.extent.pruned_through > after
    }
}

/// Reads final changes after `after` (optionally of one org) in feed order, together with the
/// extent, in one read-only snapshot so the page and the extent agree.
pub async fn page(
    store: &Store,
    after: Position,
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
    let mut q = changes::Entity::find().filter(after.after_cond());
    q = match &extent.snapshot {
        // Only what no running transaction can still join: below the watermark.
        Some(s) => q.filter(changes::Column::Pos.lt(s.xmin)),
        // SQLite: everything committed is final, in `seq` order.
        None => q.filter(extent.head.through_cond()),
    };
    if let Some(org) = org_id {
        q = q.filter(changes::Column::OrgId.eq(org));
    }
    let rows = q
        .order_by_asc(changes::Column::Pos)
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
) -> Result<Option<Position>, StoreError> {
    let before = changes::Entity::find()
        .filter(changes::Column::OrgId.eq(org_id))
        .filter(changes::Column::OrgVersion.lt(version))
        .order_by_desc(changes::Column::Pos)
        .order_by_desc(changes::Column::Seq)
        .one(c)
        .await?;
    if let Some(row) = before {
        return Ok(Some(Position::of(&row)));
    }
    // Nothing older in this org: from the feed's start, unless that was pruned.
    Ok((extent(c).await?.pruned_through == Position::START).then_some(Position::START))
}

/// Deletes final changes that occurred before `cutoff`; returns the new pruned-through
/// position. Only the pruner writes the `feed_sequence` row now, so it is no writer's queue.
pub async fn prune(store: &Store, cutoff: DateTime<Utc>) -> Result<Position, StoreError> {
    let tx = store.write().await?;
    let current = extent(&*tx).await?;
    // Only below the watermark: a pruned-through position above it could pass over a change
    // that commits later, and readers jump to it.
    let newest_old = changes::Entity::find()
        .filter(changes::Column::OccurredAt.lt(cutoff))
        .filter(current.head.through_cond())
        .order_by_desc(changes::Column::Pos)
        .order_by_desc(changes::Column::Seq)
        .one(&*tx)
        .await?;
    let Some(newest_old) = newest_old else {
        tx.commit().await?;
        return Ok(current.pruned_through);
    };
    let through = std::cmp::max(Position::of(&newest_old), current.pruned_through);
    feed_sequence::Entity::update_many()
        .col_expr(feed_sequence::Column::PrunedPos, Expr::value(through.pos))
        .col_expr(
            feed_sequence::Column::PrunedThrough,
            Expr::value(through.seq),
        )
        .filter(feed_sequence::Column::Id.eq(STATE_ROW))
        .exec(&*tx)
        .await?;
    changes::Entity::delete_many()
        .filter(through.through_cond())
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    Ok(through)
}

/// A webhook endpoint's delivery position, if it has one.
pub async fn webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
) -> Result<Option<Position>, StoreError> {
    Ok(webhook_cursors::Entity::find_by_id(name.to_owned())
        .one(c)
        .await?
        .map(|r| Position::new(r.pos, r.seq)))
}

/// Creates an endpoint's position if it has none yet; returns the stored position.
pub async fn init_webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
    at_position: Position,
    at: DateTime<Utc>,
) -> Result<Position, StoreError> {
    webhook_cursors::Entity::insert(webhook_cursors::ActiveModel {
        name: Set(name.to_owned()),
        pos: Set(at_position.pos),
        seq: Set(at_position.seq),
        updated_at: Set(at),
    })
    .on_conflict(
        OnConflict::column(webhook_cursors::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(c)
    .await?;
    Ok(webhook_cursor(c, name).await?.unwrap_or(at_position))
}

/// Moves an endpoint's position from `from` to `to`; `false` when another replica moved it
/// first (the caller reloads the position).
pub async fn advance_webhook_cursor<C: ConnectionTrait>(
    c: &C,
    name: &str,
    from: Position,
    to: Position,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let res = webhook_cursors::Entity::update_many()
        .col_expr(webhook_cursors::Column::Pos, Expr::value(to.pos))
        .col_expr(webhook_cursors::Column::Seq, Expr::value(to.seq))
        .col_expr(webhook_cursors::Column::UpdatedAt, Expr::value(at))
        .filter(webhook_cursors::Column::Name.eq(name))
        .filter(webhook_cursors::Column::Pos.eq(from.pos))
        .filter(webhook_cursors::Column::Seq.eq(from.seq))
        .exec(c)
        .await?;
    Ok(res.rows_affected == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_tell_ended_transactions() {
        let s = Snapshot::parse("100:110:103,107").unwrap();
        assert_eq!(s.xip, vec![103, 107]);
        assert!(s.had_ended(99));
        assert!(s.had_ended(104));
        assert!(!s.had_ended(103));
        assert!(!s.had_ended(110));
        assert_eq!(Snapshot::parse("5:5:").unwrap().xip, Vec::<i64>::new());
        assert!(Snapshot::parse("5:x:").is_none());
    }

    #[test]
    fn positions_order_by_pos_then_seq() {
        assert!(Position::new(0, 900) < Position::new(3, 1));
        assert!(Position::below(7) < Position::new(7, 1));
        assert!(Position::new(6, 999) < Position::below(7));
    }

    #[test]
    fn extents_know_legacy_and_current_cursors() {
        let pg = Extent {
            head: Position::below(500),
            pruned_through: Position::START,
            legacy_head: 42,
            snapshot: None,
            pending: false,
        };
        assert!(pg.knows(Position::new(0, 42)));
        assert!(!pg.knows(Position::new(0, 43)));
        assert!(pg.knows(Position::new(499, 7)));
        assert!(!pg.knows(Position::new(500, 1)));
        let sqlite = Extent {
            head: Position::new(0, 60),
            ..pg
        };
        assert!(sqlite.knows(Position::new(0, 60)));
        assert!(!sqlite.knows(Position::new(0, 61)));
        assert!(!sqlite.knows(Position::new(3, 1)));
    }
}
