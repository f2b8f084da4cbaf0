//! SCIM provisioning: per-organization directory tokens (stored hashed), the directory's
//! group → role mappings, and the link between a directory's user and a teamgate account.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ScimTokens {
    Table,
    Id,
    OrgId,
    Name,
    TokenHash,
    CreatedBy,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum ScimGroupMappings {
    Table,
    Id,
    OrgId,
    DisplayName,
    RoleKey,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ScimUsers {
    Table,
    OrgId,
    UserId,
    ExternalId,
    Active,
    OwnsAccount,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ScimTokens::Table)
                    .col(string_len(ScimTokens::Id, 36).primary_key())
                    .col(string_len(ScimTokens::OrgId, 36))
                    .col(string_len(ScimTokens::Name, 200))
                    .col(string_len_uniq(ScimTokens::TokenHash, 64))
                    .col(string_len(ScimTokens::CreatedBy, 64))
                    .col(timestamp_with_time_zone(ScimTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ScimTokens::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("scim_tokens_by_org")
                    .table(ScimTokens::Table)
                    .col(ScimTokens::OrgId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ScimGroupMappings::Table)
                    .col(string_len(ScimGroupMappings::Id, 36).primary_key())
                    .col(string_len(ScimGroupMappings::OrgId, 36))
                    .col(string_len(ScimGroupMappings::DisplayName, 200))
                    .col(string_len(ScimGroupMappings::RoleKey, 64))
                    .col(timestamp_with_time_zone(ScimGroupMappings::CreatedAt))
                    .col(timestamp_with_time_zone(ScimGroupMappings::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("scim_group_mappings_by_name")
                    .table(ScimGroupMappings::Table)
                    .col(ScimGroupMappings::OrgId)
                    .col(ScimGroupMappings::DisplayName)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ScimUsers::Table)
                    .col(string_len(ScimUsers::OrgId, 36))
                    .col(string_len(ScimUsers::UserId, 36))
                    .col(string_len_null(ScimUsers::ExternalId, 255))
                    .col(boolean(ScimUsers::Active))
                    .col(boolean(ScimUsers::OwnsAccount))
                    .col(big_integer(ScimUsers::Version))
                    .col(timestamp_with_time_zone(ScimUsers::CreatedAt))
                    .col(timestamp_with_time_zone(ScimUsers::UpdatedAt))
                    .primary_key(Index::create().col(ScimUsers::OrgId).col(ScimUsers::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("scim_users_by_external_id")
                    .table(ScimUsers::Table)
                    .col(ScimUsers::OrgId)
                    .col(ScimUsers::ExternalId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            ScimUsers::Table.into_iden(),
            ScimGroupMappings::Table.into_iden(),
            ScimTokens::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(t).to_owned())
                .await?;
        }
        Ok(())
    }
}
