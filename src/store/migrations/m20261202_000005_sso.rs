//! Single sign-on: an organization's OpenID Connect connections, their email domains (unique
//! across the deployment, verified by DNS or by the operator), pending sign-ins (state, nonce
//! and PKCE verifier, single use) and the provider accounts linked to users.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum SsoConnections {
    Table,
    Id,
    OrgId,
    Issuer,
    ClientId,
    ClientSecret,
    RedirectUris,
    DefaultRole,
    JitProvisioning,
    Enforce,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SsoDomains {
    Table,
    Domain,
    ConnectionId,
    OrgId,
    VerificationToken,
    VerifiedAt,
    VerifiedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum SsoStates {
    Table,
    StateHash,
    ConnectionId,
    Nonce,
    PkceVerifier,
    RedirectUri,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum SsoIdentities {
    Table,
    Id,
    Issuer,
    Subject,
    UserId,
    ConnectionId,
    Email,
    CreatedAt,
    LastSignInAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SsoConnections::Table)
                    .col(string_len(SsoConnections::Id, 36).primary_key())
                    .col(string_len(SsoConnections::OrgId, 36))
                    .col(text(SsoConnections::Issuer))
                    .col(text(SsoConnections::ClientId))
                    .col(text(SsoConnections::ClientSecret))
                    .col(text(SsoConnections::RedirectUris))
                    .col(string_len(SsoConnections::DefaultRole, 64))
                    .col(boolean(SsoConnections::JitProvisioning))
                    .col(boolean(SsoConnections::Enforce))
                    .col(timestamp_with_time_zone(SsoConnections::CreatedAt))
                    .col(timestamp_with_time_zone(SsoConnections::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(SsoConnections::Table, SsoConnections::OrgId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sso_connections_by_org")
                    .table(SsoConnections::Table)
                    .col(SsoConnections::OrgId)
                    .to_owned(),
            )
            .await?;
        // The primary key makes a domain belong to one connection deployment-wide.
        manager
            .create_table(
                Table::create()
                    .table(SsoDomains::Table)
                    .col(string_len(SsoDomains::Domain, 253).primary_key())
                    .col(string_len(SsoDomains::ConnectionId, 36))
                    .col(string_len(SsoDomains::OrgId, 36))
                    .col(string_len(SsoDomains::VerificationToken, 64))
                    .col(timestamp_with_time_zone_null(SsoDomains::VerifiedAt))
                    .col(string_len_null(SsoDomains::VerifiedBy, 16))
                    .col(timestamp_with_time_zone(SsoDomains::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(SsoDomains::Table, SsoDomains::ConnectionId)
                            .to(SsoConnections::Table, SsoConnections::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sso_domains_by_connection")
                    .table(SsoDomains::Table)
                    .col(SsoDomains::ConnectionId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SsoStates::Table)
                    .col(string_len(SsoStates::StateHash, 64).primary_key())
                    .col(string_len(SsoStates::ConnectionId, 36))
                    .col(text(SsoStates::Nonce))
                    .col(text(SsoStates::PkceVerifier))
                    .col(text(SsoStates::RedirectUri))
                    .col(timestamp_with_time_zone(SsoStates::CreatedAt))
                    .col(timestamp_with_time_zone(SsoStates::ExpiresAt))
                    .col(timestamp_with_time_zone_null(SsoStates::UsedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sso_states_by_expiry")
                    .table(SsoStates::Table)
                    .col(SsoStates::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SsoIdentities::Table)
                    .col(string_len(SsoIdentities::Id, 36).primary_key())
                    .col(string_len(SsoIdentities::Issuer, 1024))
                    .col(string_len(SsoIdentities::Subject, 255))
                    .col(string_len(SsoIdentities::UserId, 36))
                    .col(string_len(SsoIdentities::ConnectionId, 36))
                    .col(string_len(SsoIdentities::Email, 254))
                    .col(timestamp_with_time_zone(SsoIdentities::CreatedAt))
                    .col(timestamp_with_time_zone(SsoIdentities::LastSignInAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(SsoIdentities::Table, SsoIdentities::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sso_identities_by_subject")
                    .table(SsoIdentities::Table)
                    .col(SsoIdentities::Issuer)
                    .col(SsoIdentities::Subject)
                    .unique()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SsoIdentities::Table.into_iden(),
            SsoStates::Table.into_iden(),
            SsoDomains::Table.into_iden(),
            SsoConnections::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
