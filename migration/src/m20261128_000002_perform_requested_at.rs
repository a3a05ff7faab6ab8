use sea_orm_migration::prelude::*;

/// When Perform was about to be sent: a delivery that finds this set but no
/// TaskID knows an earlier one may have started the query.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    PerformRequestedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(ShellQueryRuns::PerformRequestedAt).timestamp_with_time_zone(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .drop_column(ShellQueryRuns::PerformRequestedAt)
                    .to_owned(),
            )
            .await
    }
}
