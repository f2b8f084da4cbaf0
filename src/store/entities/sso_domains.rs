use sea_orm::entity::prelude::*;

/// An email domain claimed by one connection; routes sign-ins once verified.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sso_domains")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub domain: String,
    pub connection_id: String,
    pub org_id: String,
    pub verification_token: String,
    pub verified_at: Option<DateTimeUtc>,
    /// `dns` or `operator`.
    pub verified_by: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
