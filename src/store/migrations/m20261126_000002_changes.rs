//! The change feed: a commit-ordered `changes` table, the single-row `feed_sequence` counter
//! that hands out its gap-free cursors, and each webhook endpoint's delivery position.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FeedSequence {
    Table,
    Id,
    N,
    PrunedThrough,
}

#[derive(DeriveIden)]
enum Changes {
    Table,
    Seq,
    OrgId,
    Action,
    Target,
    ActorUserId,
    OccurredAt,
    OrgVersion,
}

#[derive(DeriveIden)]
enum WebhookCursors {
    Table,
    Name,
    Seq,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(FeedSequence::Table)
                    .col(integer(FeedSequence::Id).primary_key())
                    .col(big_integer(FeedSequence::N).default(0))
                    .col(big_integer(FeedSequence::PrunedThrough).default(0))
                    .to_owned(),
            )
            .await?;
        let seed = Query::insert()
            .into_table(FeedSequence::Table)
            .columns([
                FeedSequence::Id,
                FeedSequence::N,
                FeedSequence::PrunedThrough,
            ])
            .values([1.into(), 0i64.into(), 0i64.into()])
            .map_err(|e| DbErr::Custom(e.to_string()))?
            .to_owned();
        manager.exec_stmt(seed).await?;
        manager
            .create_table(
                Table::create()
                    .table(Changes::Table)
                    .col(big_integer(Changes::Seq).primary_key())
                    .col(string_len(Changes::OrgId, 36))
                    .col(string_len(Changes::Action, 64))
                    .col(string_len(Changes::Target, 128))
                    .col(string_len(Changes::ActorUserId, 64))
                    .col(timestamp_with_time_zone(Changes::OccurredAt))
                    .col(big_integer(Changes::OrgVersion))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("changes_by_org")
                    .table(Changes::Table)
                    .col(Changes::OrgId)
                    .col(Changes::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("changes_by_time")
                    .table(Changes::Table)
                    .col(Changes::OccurredAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookCursors::Table)
                    .col(string_len(WebhookCursors::Name, 128).primary_key())
                    .col(big_integer(WebhookCursors::Seq))
                    .col(timestamp_with_time_zone(WebhookCursors::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebhookCursors::Table.into_iden(),
            Changes::Table.into_iden(),
            FeedSequence::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
