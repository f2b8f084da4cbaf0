use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invitations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    /// SHA-256 of the current token; the token itself is never stored.
    pub token_hash: String,
    /// `pending`, `accepted` or `revoked`; expiry is derived from `expires_at`.
    pub state: String,
    pub invited_by_user_id: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub accepted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
