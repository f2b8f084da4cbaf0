use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organizations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub plan: String,
    pub require_mfa: bool,
    pub created_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
    /// Bumped by every change that can alter a decision in this org; consistency tokens carry it.
    pub version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
