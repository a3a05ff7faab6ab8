use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
    Id,
    TenantId,
    UserId,
    Mid,
    SnippetName,
    SqlTextHash,
    SqlTextEncrypted,
    Status,
    TaskId,
    QueryDefinitionId,
    QueryCustomerKey,
    TargetDeCustomerKey,
    TargetUpdateType,
    PollStartedAt,
    ErrorMessage,
    RowCount,
    CreatedAt,
    StartedAt,
    CompletedAt,
    PollCount,
    PollNotRunningCount,
    PollNotRunningFirstAt,
    PollRowsetAttempts,
    PollRowsetFirstAt,
    PollProbeAttempts,
    PollLastProbeAt,
    PollTransientErrors,
    PollLastStatus,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Eid,
    Tssd,
}

#[derive(DeriveIden)]
enum Credentials {
    Table,
    Id,
    TenantId,
    UserId,
    Mid,
    AccessToken,
    RefreshToken,
    ExpiresAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TenantSettings {
    Table,
    TenantId,
    Mid,
    QppFolderId,
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().to_owned()
}

fn counter(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().default(0).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ShellQueryRuns::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ShellQueryRuns::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(ShellQueryRuns::TenantId).uuid().not_null())
                    .col(ColumnDef::new(ShellQueryRuns::UserId).uuid())
                    .col(ColumnDef::new(ShellQueryRuns::Mid).string().not_null())
                    .col(ColumnDef::new(ShellQueryRuns::SnippetName).string())
                    .col(ColumnDef::new(ShellQueryRuns::SqlTextHash).string().not_null())
                    .col(ColumnDef::new(ShellQueryRuns::SqlTextEncrypted).text())
                    .col(
                        ColumnDef::new(ShellQueryRuns::Status)
                            .string()
                            .not_null()
                            .default("queued")
                            .check(
                                Expr::col(ShellQueryRuns::Status)
                                    .is_in(["queued", "running", "ready", "failed", "canceled"]),
                            ),
                    )
                    .col(ColumnDef::new(ShellQueryRuns::TaskId).string())
                    .col(ColumnDef::new(ShellQueryRuns::QueryDefinitionId).string())
                    .col(ColumnDef::new(ShellQueryRuns::QueryCustomerKey).string())
                    .col(ColumnDef::new(ShellQueryRuns::TargetDeCustomerKey).string())
                    .col(ColumnDef::new(ShellQueryRuns::TargetUpdateType).string())
                    .col(timestamp(ShellQueryRuns::PollStartedAt))
                    .col(ColumnDef::new(ShellQueryRuns::ErrorMessage).text())
                    .col(ColumnDef::new(ShellQueryRuns::RowCount).integer())
                    .col(
                        timestamp(ShellQueryRuns::CreatedAt)
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(timestamp(ShellQueryRuns::StartedAt))
                    .col(timestamp(ShellQueryRuns::CompletedAt))
                    .col(counter(ShellQueryRuns::PollCount))
                    .col(counter(ShellQueryRuns::PollNotRunningCount))
                    .col(timestamp(ShellQueryRuns::PollNotRunningFirstAt))
                    .col(counter(ShellQueryRuns::PollRowsetAttempts))
                    .col(timestamp(ShellQueryRuns::PollRowsetFirstAt))
                    .col(counter(ShellQueryRuns::PollProbeAttempts))
                    .col(timestamp(ShellQueryRuns::PollLastProbeAt))
                    .col(counter(ShellQueryRuns::PollTransientErrors))
                    .col(ColumnDef::new(ShellQueryRuns::PollLastStatus).string())
                    .to_owned(),
            )
            .await?;
        // The reconciler scans live runs by status and age.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_shell_query_runs_status_created")
                    .table(ShellQueryRuns::Table)
                    .col(ShellQueryRuns::Status)
                    .col(ShellQueryRuns::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_shell_query_runs_tenant_user")
                    .table(ShellQueryRuns::Table)
                    .col(ShellQueryRuns::TenantId)
                    .col(ShellQueryRuns::UserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Tenants::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Tenants::Eid).string().not_null().unique_key())
                    .col(ColumnDef::new(Tenants::Tssd).string().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Credentials::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Credentials::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Credentials::TenantId).uuid().not_null())
                    .col(ColumnDef::new(Credentials::UserId).uuid())
                    .col(ColumnDef::new(Credentials::Mid).string().not_null())
                    .col(ColumnDef::new(Credentials::AccessToken).text())
                    .col(ColumnDef::new(Credentials::RefreshToken).text().not_null())
                    .col(timestamp(Credentials::ExpiresAt).not_null())
                    .col(timestamp(Credentials::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("uq_credentials_user_tenant_mid")
                    .table(Credentials::Table)
                    .col(Credentials::UserId)
                    .col(Credentials::TenantId)
                    .col(Credentials::Mid)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TenantSettings::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(TenantSettings::TenantId).uuid().not_null())
                    .col(ColumnDef::new(TenantSettings::Mid).string().not_null())
                    .col(ColumnDef::new(TenantSettings::QppFolderId).integer())
                    .primary_key(
                        Index::create()
                            .name("pk_tenant_settings")
                            .col(TenantSettings::TenantId)
                            .col(TenantSettings::Mid),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TenantSettings::Table.into_iden(),
            Credentials::Table.into_iden(),
            Tenants::Table.into_iden(),
            ShellQueryRuns::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
