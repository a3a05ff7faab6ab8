//! Schema migrations. Written with sea-query builders only, so the same
//! migrations run on PostgreSQL (production) and SQLite (the demo).

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_tables;
mod m20261128_000002_perform_requested_at;
mod m20261128_000003_recent_runs_index;
mod m20261130_000001_terminal_event_confirmed;
mod m20261130_000002_cancel_handled;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_tables::Migration),
            Box::new(m20261128_000002_perform_requested_at::Migration),
            Box::new(m20261128_000003_recent_runs_index::Migration),
            Box::new(m20261130_000001_terminal_event_confirmed::Migration),
            Box::new(m20261130_000002_cancel_handled::Migration),
        ]
    }
}
