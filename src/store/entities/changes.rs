use sea_orm::entity::prelude::*;

/// The change feed: one row per committed change. Its place in the feed is (`pos`, `seq`),
/// see `store::changes`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "changes")]
pub struct Model {
    /// Handed out by the database (a sequence / AUTOINCREMENT); orders rows of equal `pos`.
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub org_id: String,
    pub action: String,
    pub target: String,
    pub actor_user_id: String,
    pub occurred_at: DateTimeUtc,
    /// The org's version after the change (what its consistency token carries).
    pub org_version: i64,
    /// PostgreSQL: the writing transaction's id, or the org's previous change's `pos` if that
    /// is higher; 0 on SQLite and for rows written before the commit-order migration.
    pub pos: i64,
    /// PostgreSQL: the writing transaction's `pg_current_xact_id()` (an `xid8`, kept as
    /// bigint so both backends share the entity); 0 on SQLite.
    pub xid: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
