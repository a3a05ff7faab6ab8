//! Which database a connection speaks to, as the tracing conventions name it.

use sea_orm::{DatabaseConnection, DbBackend};

/// `db.system.name` of a connection, by the database conventions.
pub(crate) fn system_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Postgres => "postgresql",
        DbBackend::Sqlite => "sqlite",
        _ => "other_sql",
    }
}
