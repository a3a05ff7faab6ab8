use sea_orm_migration::prelude::*;

/// When Perform was about to be sent: a delivery that finds this set but no
/// TaskID knows an earlier one may have started the query.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    PerformRequestedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::add_run_timestamp(manager, ShellQueryRuns::PerformRequestedAt).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::drop_run_column(manager, ShellQueryRuns::PerformRequestedAt).await
    }
}
