use sea_orm_migration::prelude::*;

/// When the service handled a cancel (its event published or owed, the
/// QueryDefinition deleted): the service's own marker, never inferred from
/// `completed_at`, which the API sets when it cancels a row itself. Rows
/// canceled in the 24 hours before this migration with `completed_at` set
/// were handled the old way and are marked; older cancels are outside the
/// window the service looks at (the backfill stays small).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    CancelHandledAt,
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
        // Only PostgreSQL holds rows from before: the demo's SQLite database
        // is new each time.
        if manager.get_database_backend() != sea_orm_migration::sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE shell_query_runs SET cancel_handled_at = completed_at \
                 WHERE completed_at > now() - interval '24 hours' AND cancel_handled_at IS NULL AND status = 'canceled'",
            )
            .await
            .map(|_| ())
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
