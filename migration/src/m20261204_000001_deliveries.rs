use sea_orm_migration::prelude::*;

/// How many times the service saw each execute or cancel message of the
/// jobs stream delivered, by the message's stream sequence: a
/// max-deliveries advisory is acted on only when the deliveries the service
/// saw itself reach the consumer's `max_deliver` (an advisory can be
/// published by anyone allowed to publish its subject).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryDeliveries {
    Table,
    StreamSeq,
    Deliveries,
    SeenAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ShellQueryDeliveries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ShellQueryDeliveries::StreamSeq)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ShellQueryDeliveries::Deliveries)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ShellQueryDeliveries::SeenAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShellQueryDeliveries::Table).to_owned())
            .await
    }
}
