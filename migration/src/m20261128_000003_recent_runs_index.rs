use sea_orm_migration::prelude::*;

/// The adaptive poll schedule reads the last runs of the same query of a
/// tenant: (tenant_id, sql_text_hash, completed_at) finds them without a scan.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    TenantId,
    SqlTextHash,
    CompletedAt,
}

const INDEX: &str = "idx_shell_query_runs_tenant_sql_completed";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(INDEX)
                    .table(ShellQueryRuns::Table)
                    .col(ShellQueryRuns::TenantId)
                    .col(ShellQueryRuns::SqlTextHash)
                    .col(ShellQueryRuns::CompletedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(ShellQueryRuns::Table).to_owned())
            .await
    }
}
