use sea_orm::entity::prelude::*;

/// The change feed: one row per committed change, numbered by a gap-free, commit-ordered `seq`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub org_id: String,
    pub action: String,
    pub target: String,
    pub actor_user_id: String,
    pub occurred_at: DateTimeUtc,
    /// The org's version after the change (what its consistency token carries).
    pub org_version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
