use sea_orm_migration::prelude::*;

/// `runs retry` makes a new run under a new runId from a failed or canceled
/// one: the new row names the run it retries.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    RetryOf,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .add_column_if_not_exists(ColumnDef::new(ShellQueryRuns::RetryOf).uuid())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::drop_run_column(manager, ShellQueryRuns::RetryOf).await
    }
}
