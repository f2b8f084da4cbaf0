use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Normalized (trimmed, lower-case); unique.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub created_at: DateTimeUtc,
    /// `active` or `disabled`.
    pub status: String,
    /// Argon2id PHC string; `None` until a password is set.
    pub password_hash: Option<String>,
    /// The TOTP secret, sealed with the configured key; set at enrolment.
    pub mfa_secret: Option<String>,
    pub mfa_enabled: bool,
    /// The last TOTP time step accepted, so a code is never used twice.
    pub mfa_last_step: Option<i64>,
    pub updated_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
