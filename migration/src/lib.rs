//! Schema migrations. Written with sea-query builders only, so the same
//! migrations run on PostgreSQL (production) and SQLite (the demo).

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_tables;
mod m20261128_000002_perform_requested_at;
mod m20261128_000003_recent_runs_index;
mod m20261130_000001_terminal_event_confirmed;
mod m20261130_000002_cancel_handled;
mod m20261204_000001_deliveries;
mod m20261204_000002_retry_of;

pub struct Migrator;

/// The runs table, for migrations that add one column to it.
#[derive(DeriveIden)]
enum ShellQueryRuns {
    Table,
}

/// Adds a nullable timestamp column to `shell_query_runs`.
async fn add_run_timestamp(manager: &SchemaManager<'_>, column: impl IntoIden) -> Result<(), DbErr> {
    manager
        .alter_table(
            Table::alter()
                .table(ShellQueryRuns::Table)
                .add_column_if_not_exists(ColumnDef::new(column).timestamp_with_time_zone())
                .to_owned(),
        )
        .await
}

/// Drops a column of `shell_query_runs`.
async fn drop_run_column(manager: &SchemaManager<'_>, column: impl IntoIden) -> Result<(), DbErr> {
    manager
        .alter_table(
            Table::alter()
                .table(ShellQueryRuns::Table)
                .drop_column(column)
                .to_owned(),
        )
        .await
}

/// Marks rows that ended in the last 24 hours (PostgreSQL only: the demo's
/// SQLite database is new each time): `SET <column> = completed_at` where
/// `condition` holds too. A short update, not a rewrite of the table.
async fn mark_recent_runs(manager: &SchemaManager<'_>, column: &str, condition: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm_migration::sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "UPDATE shell_query_runs SET {column} = completed_at \
             WHERE completed_at > now() - interval '24 hours' AND {column} IS NULL{condition}"
        ))
        .await
        .map(|_| ())
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_tables::Migration),
            Box::new(m20261128_000002_perform_requested_at::Migration),
            Box::new(m20261128_000003_recent_runs_index::Migration),
            Box::new(m20261130_000001_terminal_event_confirmed::Migration),
            Box::new(m20261130_000002_cancel_handled::Migration),
            Box::new(m20261204_000001_deliveries::Migration),
            Box::new(m20261204_000002_retry_of::Migration),
        ]
    }
}
