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
    CancelHandledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::add_run_timestamp(manager, ShellQueryRuns::CancelHandledAt).await?;
        crate::mark_recent_runs(manager, "cancel_handled_at", " AND status = 'canceled'").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::drop_run_column(manager, ShellQueryRuns::CancelHandledAt).await
    }
}
