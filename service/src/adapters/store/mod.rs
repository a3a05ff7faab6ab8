//! Every SQL statement of the service, behind one door per table:
//! [`runs`], [`tenants`], [`credentials`], [`folders`] and [`deliveries`]. Rows come out as
//! domain types; `sea_orm` types and errors never leave this module. State
//! changes are compare-and-set in SQL: losing one is a normal outcome
//! (`false`), not an error.

mod backend;
mod batch;
pub mod credentials;
pub mod deliveries;
mod error;
pub mod folders;
pub mod runs;
pub mod tenants;

use migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};

pub use error::StoreError;

/// A migration and when it was applied (`None`: pending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationState {
    pub name: String,
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The database, as handlers and jobs hold it.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// Poll ticks' row reads, batched.
    poll_rows: std::sync::Arc<batch::RowBatcher>,
}

impl Store {
    /// The names of migrations not yet applied (read only: the migrations
    /// table is not created).
    pub(crate) async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .migrations()
            .await?
            .into_iter()
            .filter(|m| m.applied_at.is_none())
            .map(|m| m.name)
            .collect())
    }

    /// Every migration, oldest first, with when it was applied; read only
    /// (the migrations table is not created: without it, all are pending).
    pub(crate) async fn migrations(&self) -> Result<Vec<MigrationState>, StoreError> {
        let pending: std::collections::HashSet<String> =
            migration::Migrator::get_pending_migrations_read_only(&self.db)
                .await?
                .iter()
                .map(|m| m.name().to_string())
                .collect();
        let all: Vec<String> = migration::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let mut applied_at = std::collections::HashMap::new();
        if all.iter().any(|name| !pending.contains(name)) {
            let rows = self
                .db
                .query_all_raw(Statement::from_string(
                    self.db.get_database_backend(),
                    "SELECT version, applied_at FROM seaql_migrations",
                ))
                .await?;
            for row in rows {
                let version: String = row.try_get("", "version")?;
                let at: i64 = row.try_get("", "applied_at")?;
                applied_at.insert(version, chrono::DateTime::from_timestamp(at, 0).unwrap_or_default());
            }
        }
        Ok(all
            .into_iter()
            .map(|name| MigrationState {
                applied_at: if pending.contains(&name) {
                    None
                } else {
                    Some(applied_at.get(&name).copied().unwrap_or_default())
                },
                name,
            })
            .collect())
    }

    /// True if the database answers a trivial query.
    pub(crate) async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    /// How many statements have read poll ticks' rows (each reads the rows
    /// of every tick due in its window).
    pub fn poll_row_statements(&self) -> u64 {
        self.poll_rows.statements()
    }
}

/// A PostgreSQL URL on the loopback interface that does not ask for a TLS
/// mode gets `sslmode=disable`: the default (`prefer`) negotiates TLS on
/// every connection to a server on the same machine, where it protects
/// nothing. Any URL that names an `sslmode` keeps it.
pub(crate) fn loopback_without_tls(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]" | "::1"));
    let postgres = matches!(parsed.scheme(), "postgres" | "postgresql");
    if !postgres || !loopback || parsed.query_pairs().any(|(k, _)| k == "sslmode") {
        return url.to_string();
    }
    parsed.query_pairs_mut().append_pair("sslmode", "disable");
    parsed.to_string()
}

/// An arbitrary, fixed key for the migration advisory lock.
const MIGRATION_LOCK_KEY: i64 = 0x5348_454c_4c51; // "SHELLQ"

/// Connects, creating the PostgreSQL database first when it is missing.
pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
    if url.starts_with("postgres") {
        create_database_if_missing(url).await?;
    }
    open(url, max_connections).await
}

/// Connects to a database that must exist (operators' commands: a typo in
/// its name is an error, not a new empty database).
pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
    let mut options = ConnectOptions::new(loopback_without_tls(url));
    // SQLite (the demo) has one writer: a single connection avoids the
    // deadlock of two deferred transactions upgrading to write at once.
    let max_connections = if url.starts_with("sqlite") { 1 } else { max_connections };
    // During an outage a query fails in seconds (its delivery is retried)
    // instead of waiting half a minute for a connection.
    options
        .max_connections(max_connections)
        .connect_timeout(std::time::Duration::from_secs(5))
        .acquire_timeout(std::time::Duration::from_secs(5))
        .sqlx_logging(false);
    Ok(Store {
        db: Database::connect(options).await?,
        poll_rows: Default::default(),
    })
}

async fn create_database_if_missing(url: &str) -> Result<(), DbErr> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| DbErr::Custom(format!("DATABASE_URL: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_string();
    if name.is_empty() || name == "postgres" {
        return Ok(());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(DbErr::Custom(
            "DATABASE_URL: the database name must be [A-Za-z0-9_-]".into(),
        ));
    }
    parsed.set_path("/postgres");
    let mut options = ConnectOptions::new(parsed.to_string());
    options.max_connections(1).sqlx_logging(false);
    let Ok(admin) = Database::connect(options).await else {
        // No maintenance database to talk to: let the real connect report.
        return Ok(());
    };
    let exists = |admin: DatabaseConnection| {
        let name = name.clone();
        async move {
            let row = admin
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                    [name.into()],
                ))
                .await?;
            Ok::<_, DbErr>((admin, row.is_some()))
        }
    };
    let (admin, found) = exists(admin).await?;
    if !found {
        let created = admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await;
        if let Err(e) = created {
            // Another replica may have created it in the meantime.
            let (_, found) = exists(admin.clone()).await?;
            if !found {
                return Err(e);
            }
        }
    }
    admin.close().await
}

/// Applies pending migrations; on PostgreSQL under an advisory lock, so many
/// replicas starting at once migrate one after the other.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let db = connect(url, 1).await?.db;
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .await?;
    }
    let result = migration::Migrator::up(&db, None).await;
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
            .await?;
    }
    db.close().await?;
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::loopback_without_tls;

    #[test]
    fn tls_is_not_negotiated_on_loopback_unless_asked() {
        assert_eq!(
            loopback_without_tls("postgres://u:p@127.0.0.1:5432/db"),
            "postgres://u:p@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            loopback_without_tls("postgres://localhost/db?application_name=x"),
            "postgres://localhost/db?application_name=x&sslmode=disable"
        );
        for kept in [
            "postgres://localhost/db?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://db.internal:5432/db",
            "sqlite::memory:",
        ] {
            assert_eq!(loopback_without_tls(kept), kept);
        }
    }
}
