use sea_orm_migration::prelude::*;

/// When the service handled a cancel (its event published or owed, the
/// QueryDefinition deleted): the service's own marker, never inferred from
/// `completed_at`, which the API sets when it cancels a row itself. Rows
/// canceled before this column existed were handled when `completed_at`
/// was set.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    CancelHandledAt,
    CompletedAt,
    Status,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .add_column_if_not_exists(
                        ColumnDef::new(ShellQueryRuns::CancelHandledAt).timestamp_with_time_zone(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(ShellQueryRuns::Table)
                    .value(ShellQueryRuns::CancelHandledAt, Expr::col(ShellQueryRuns::CompletedAt))
                    .and_where(Expr::col(ShellQueryRuns::Status).eq("canceled"))
                    .and_where(Expr::col(ShellQueryRuns::CompletedAt).is_not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ShellQueryRuns::Table)
                    .drop_column(ShellQueryRuns::CancelHandledAt)
                    .to_owned(),
            )
            .await
    }
}
