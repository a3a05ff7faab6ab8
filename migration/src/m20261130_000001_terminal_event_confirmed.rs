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
    TerminalEventAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::add_run_timestamp(manager, ShellQueryRuns::TerminalEventAt).await?;
        crate::mark_recent_runs(manager, "terminal_event_at", "").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::drop_run_column(manager, ShellQueryRuns::TerminalEventAt).await
    }
}
