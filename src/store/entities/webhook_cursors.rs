use sea_orm::entity::prelude::*;

/// How far each configured webhook endpoint has been delivered: the feed position
/// (`pos`, `seq`) of the last delivered change.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_cursors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub seq: i64,
    pub updated_at: DateTimeUtc,
    pub pos: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
