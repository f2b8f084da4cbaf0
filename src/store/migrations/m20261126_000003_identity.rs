//! Identity: account status, password hashes, TOTP secrets (encrypted), password reset
//! tokens, session-token signing keys and sign-in failures.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Status,
    PasswordHash,
    MfaSecret,
    MfaEnabled,
    MfaLastStep,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PasswordResetTokens {
    Table,
    Id,
    UserId,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    PublicKey,
    PrivateKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuthFailures {
    Table,
    Id,
    Subject,
    OccurredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        for col in [
            string_len(Users::Status, 16).default("active").to_owned(),
            text_null(Users::PasswordHash).to_owned(),
            text_null(Users::MfaSecret).to_owned(),
            boolean(Users::MfaEnabled).default(false).to_owned(),
            big_integer_null(Users::MfaLastStep).to_owned(),
            timestamp_with_time_zone_null(Users::UpdatedAt).to_owned(),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(PasswordResetTokens::Table)
                    .col(string_len(PasswordResetTokens::Id, 36).primary_key())
                    .col(string_len(PasswordResetTokens::UserId, 36))
                    .col(string_len_uniq(PasswordResetTokens::TokenHash, 64))
                    .col(timestamp_with_time_zone(PasswordResetTokens::CreatedAt))
                    .col(timestamp_with_time_zone(PasswordResetTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(PasswordResetTokens::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(PasswordResetTokens::Table, PasswordResetTokens::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("password_reset_tokens_by_user")
                    .table(PasswordResetTokens::Table)
                    .col(PasswordResetTokens::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .col(string_len(SigningKeys::Kid, 64).primary_key())
                    .col(string_len(SigningKeys::PublicKey, 128))
                    .col(text(SigningKeys::PrivateKey))
                    .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuthFailures::Table)
                    .col(string_len(AuthFailures::Id, 36).primary_key())
                    .col(string_len(AuthFailures::Subject, 64))
                    .col(timestamp_with_time_zone(AuthFailures::OccurredAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("auth_failures_by_subject")
                    .table(AuthFailures::Table)
                    .col(AuthFailures::Subject)
                    .col(AuthFailures::OccurredAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuthFailures::Table.into_iden(),
            SigningKeys::Table.into_iden(),
            PasswordResetTokens::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for col in [
            Users::UpdatedAt.into_iden(),
            Users::MfaLastStep.into_iden(),
            Users::MfaEnabled.into_iden(),
            Users::MfaSecret.into_iden(),
            Users::PasswordHash.into_iden(),
            Users::Status.into_iden(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
