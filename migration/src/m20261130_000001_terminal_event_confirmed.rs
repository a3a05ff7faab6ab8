use sea_orm_migration::prelude::*;

/// When the run's terminal status event was confirmed by the status stream.
/// A terminal row without it has an event still owed: the next poll
/// delivery or the reconciler publishes it (deduplicated by its message id).
/// Rows that ended before this column existed had their events published.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    TerminalEventAt,
    CompletedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(ShellQueryRuns::TerminalEventAt).timestamp_with_time_zone(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(ShellQueryRuns::Table)
                    .value(ShellQueryRuns::TerminalEventAt, Expr::col(ShellQueryRuns::CompletedAt))
                    .and_where(Expr::col(ShellQueryRuns::CompletedAt).is_not_null())
                    .and_where(Expr::col(ShellQueryRuns::TerminalEventAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .drop_column(ShellQueryRuns::TerminalEventAt)
                    .to_owned(),
            )
            .await
    }
}
