//! The change feed without a global counter: a change's place in the feed comes from the
//! database's own commit order instead of the single `feed_sequence` row every writer had to
//! lock (see `store::changes` for why this order is gap-free).
//!
//! - `changes.pos` (PostgreSQL: the writing transaction's `pg_current_xact_id()`, raised to the
//!   org's previous change's `pos`; SQLite: 0) and `changes.xid` (the transaction id itself)
//!   are added; rows from before this migration keep `pos = 0`, so they sort before every
//!   new row in the old `seq` order and old `c1.<seq>` cursors keep meaning the same place.
//! - `seq` is handed out by the database: a sequence on PostgreSQL (no lock held until
//!   commit), `INTEGER PRIMARY KEY AUTOINCREMENT` on SQLite (one writer at a time, never reused
//!   after pruning), both continuing after the last number the counter gave out.
//! - `feed_sequence.n` is renamed `legacy_head`: nothing bumps it any more, it only says which
//!   `c1.` cursors this deployment handed out; a replica still running the old code fails its
//!   writes loudly instead of numbering changes the new readers would skip.
//! - `feed_sequence.pruned_pos` and `webhook_cursors.pos` make those positions pairs too.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "ALTER TABLE changes ADD COLUMN pos bigint NOT NULL DEFAULT 0, ADD COLUMN xid bigint NOT NULL DEFAULT 0",
    "CREATE SEQUENCE changes_seq_seq OWNED BY changes.seq",
    // The next number follows both the old counter and any row left (is_called = false when
    // nothing was ever numbered, so the first is 1).
    "SELECT setval('changes_seq_seq', GREATEST(head, 1), head > 0) FROM (
        SELECT GREATEST((SELECT n FROM feed_sequence WHERE id = 1), (SELECT max(seq) FROM changes), 0) AS head
     ) h",
    "ALTER TABLE changes ALTER COLUMN seq SET DEFAULT nextval('changes_seq_seq')",
    "DROP INDEX IF EXISTS changes_by_org",
    "CREATE INDEX changes_by_org_pos ON changes (org_id, pos, seq)",
    "CREATE INDEX changes_by_pos ON changes (pos, seq)",
    "ALTER TABLE feed_sequence RENAME COLUMN n TO legacy_head",
    "ALTER TABLE feed_sequence ADD COLUMN pruned_pos bigint NOT NULL DEFAULT 0",
    "ALTER TABLE webhook_cursors ADD COLUMN pos bigint NOT NULL DEFAULT 0",
];

const SQLITE_UP: &[&str] = &[
    "CREATE TABLE changes_v2 (
        seq integer NOT NULL PRIMARY KEY AUTOINCREMENT,
        org_id varchar(36) NOT NULL,
        action varchar(64) NOT NULL,
        target varchar(128) NOT NULL,
        actor_user_id varchar(64) NOT NULL,
        occurred_at timestamp_with_timezone_text NOT NULL,
        org_version integer NOT NULL,
        pos integer NOT NULL DEFAULT 0,
        xid integer NOT NULL DEFAULT 0
    )",
    "INSERT INTO changes_v2 (seq, org_id, action, target, actor_user_id, occurred_at, org_version)
        SELECT seq, org_id, action, target, actor_user_id, occurred_at, org_version FROM changes",
    "DROP TABLE changes",
    "ALTER TABLE changes_v2 RENAME TO changes",
    // AUTOINCREMENT continues after the highest number ever handed out, also when the old
    // rows were all pruned.
    "INSERT INTO sqlite_sequence (name, seq)
        SELECT 'changes', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes')",
    "UPDATE sqlite_sequence SET seq = max(seq, (SELECT n FROM feed_sequence WHERE id = 1)) WHERE name = 'changes'",
    "CREATE INDEX changes_by_org_pos ON changes (org_id, pos, seq)",
    "CREATE INDEX changes_by_pos ON changes (pos, seq)",
    "CREATE INDEX changes_by_time ON changes (occurred_at)",
    "ALTER TABLE feed_sequence RENAME COLUMN n TO legacy_head",
    "ALTER TABLE feed_sequence ADD COLUMN pruned_pos integer NOT NULL DEFAULT 0",
    "ALTER TABLE webhook_cursors ADD COLUMN pos integer NOT NULL DEFAULT 0",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let steps = match db.get_database_backend() {
            DbBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        for sql in steps {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    /// On SQLite too: the table is rebuilt, which must happen all at once (and on one
    /// connection, whose schema then cannot be a stale snapshot of another's).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Going back would need the counter to be rebuilt from commit order, which only this
        // version knows: restore from a backup instead.
        Err(DbErr::Migration(
            "the change feed's commit-order migration cannot be reverted".into(),
        ))
    }
}
