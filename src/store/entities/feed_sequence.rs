use sea_orm::entity::prelude::*;

/// One row (`id = 1`): the last `changes.seq` handed out, and the highest seq pruned.
/// Writers bump `n` inside their transaction, so its row lock orders sequence numbers by commit.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "feed_sequence")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub n: i64,
    pub pruned_through: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
