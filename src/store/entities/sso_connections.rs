use sea_orm::entity::prelude::*;

/// An organization's OpenID Connect connection. The client secret is sealed.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sso_connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub issuer: String,
    pub client_id: String,
    /// Sealed with `identity.secret_key`; empty sealed value for a public client.
    pub client_secret: String,
    /// JSON array of allowed redirect URIs.
    pub redirect_uris: String,
    pub default_role: String,
    pub jit_provisioning: bool,
    pub enforce: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
