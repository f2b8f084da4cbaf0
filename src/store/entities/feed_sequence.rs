use sea_orm::entity::prelude::*;

/// One row (`id = 1`): where the change feed was pruned through, and the last `c1.` sequence
/// number the old global counter handed out (nothing bumps it any more; see
/// `m20261201_000004_feed_commit_order`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "feed_sequence")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub legacy_head: i64,
    /// The pruned-through position is (`pruned_pos`, `pruned_through`).
    pub pruned_through: i64,
    pub pruned_pos: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
