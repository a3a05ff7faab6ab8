use sea_orm_migration::prelude::*;

/// When the run's terminal status event was confirmed by the status stream.
/// A terminal row without it has an event still owed: the next poll
/// delivery or the reconciler publishes it (deduplicated by its message id),
/// for runs that ended within the status stream's 24 hours. Rows that ended
/// in the 24 hours before this migration had their events published the
/// old way and are marked; older ones are outside every window, so the
/// backfill stays small (one short update, no rewrite of the table).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    TerminalEventAt,
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
        // Only PostgreSQL holds rows from before: the demo's SQLite database
        // is new each time.
        if manager.get_database_backend() != sea_orm_migration::sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE shell_query_runs SET terminal_event_at = completed_at \
                 WHERE completed_at > now() - interval '24 hours' AND terminal_event_at IS NULL",
            )
            .await
            .map(|_| ())
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
